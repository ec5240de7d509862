"""Masking waste of the local-training loop, and what bucketing saves.

With heterogeneous budgets H_i a single masked loop computes ``N * max_i H_i``
device-steps, of which ``sum_i H_i`` are useful. For each of the spec's scenarios this
benchmark runs HADFL's planner (faults, selection, budgets; no training) for a number of
cycles and reports the wasted fraction of the computed device-steps under

* ``single``: one masked loop (the engine without buckets);
* ``static G``: the idea of the issue: devices grouped once by profiled speed into G
  equal groups, each running to its group's largest budget;
* ``sorted G``: what :class:`hadfl_jax.core.local.LocalSchedule` does: each cycle the
  devices are sorted by their actual budgets and cut into buckets whose static widths
  :func:`hadfl_jax.core.local.fit_bucket_widths` fitted to the speed profile.

FedAvg (K = round(C N) of N clients train H steps, the others none) is measured the same
way: ``before``, the single masked loop it ran over all N devices before the engine's
trainer was shared; ``after``, the engine's budget-sorted buckets with FedAvg's widths
(the K clients, then the idle rest: :func:`hadfl_jax.algorithms.fedavg.bucket_widths`).

Then it times local training with real budgets of the paper-like (CNN; budgets scaled
by 1/4 to save time) and many-devices (MLP) scenarios, single loop against bucket counts
and the engine's default (8 buckets, cut into cache-sized sub-buckets), side by side.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from hadfl_jax.algorithms import fedavg
from hadfl_jax.core import local

SCENARIOS = (
    common.Scenario('paper-like (N=8, speeds 1..8, CNN)', 8,
                    dict(kind='list', speeds=common.PAPER_SPEEDS),
                    dict(t_local=0.5), 421_642),
    common.Scenario('quick (N=8, speeds 1..8, t_local 0.1)', 8,
                    dict(kind='list', speeds=common.PAPER_SPEEDS),
                    dict(t_local=0.1), 4_810),
    common.Scenario('many-devices (N=64, lognormal 0.8, 30% down)', 64,
                    dict(kind='lognormal', sigma=0.8),
                    dict(t_local=0.5, p_drop=0.3), 421_642),
    common.Scenario('scale (N=10,000, lognormal 0.8, 30% down, rho 0.01)', 10_000,
                    dict(kind='lognormal', sigma=0.8),
                    dict(t_local=0.5, p_drop=0.3, rho=0.01), 55_050),
)
BUCKETS = (2, 4, 8, 16)


def static_groups_computed(speed_N: np.ndarray, num_groups: int, budgets_CxN: np.ndarray) -> int:
  """Device-steps of G static groups of equal size by profiled speed (the issue's idea)."""
  groups = np.array_split(np.argsort(-speed_N, kind='stable'), num_groups)
  return int(sum(len(g) * h[g].max() for h in budgets_CxN for g in groups))


def waste_table(num_cycles: int) -> list[dict[str, Any]]:
  rows = []
  for scenario in SCENARIOS:
    budgets_CxN = common.budget_trace(scenario, num_cycles)
    speed_N = common.make_profile(scenario).speed_N
    useful = int(budgets_CxN.sum())
    row = dict(scenario=scenario.name, num_devices=scenario.num_devices, cycles=num_cycles,
               mean_budget=float(budgets_CxN.mean()), max_budget=int(budgets_CxN.max()),
               single=1.0 - useful / (scenario.num_devices * budgets_CxN.max(axis=1)).sum())
    for g in BUCKETS:
      if g > scenario.num_devices:
        continue
      widths = local.fit_bucket_widths(speed_N, g)
      schedule = local.LocalSchedule(widths)
      computed = sum(schedule.computed_steps(h) for h in budgets_CxN)
      row[f'sorted_{g}'] = 1.0 - useful / computed
      row[f'static_{g}'] = 1.0 - useful / static_groups_computed(speed_N, g, budgets_CxN)
      row[f'widths_{g}'] = list(widths)
    rows.append(row)
  return rows


FEDAVG = ((8, 0.5, 50, 'paper-like (N=8, C=0.5, H=50)'),
          (64, 0.1, 50, 'many-devices (N=64, C=0.1, H=50)'),
          (10_000, 0.01, 50, 'scale (N=10,000, C=0.01, H=50)'))


def fedavg_waste_table(num_rounds: int, seed: int = 0,
                       p_drop: float = 0.3) -> list[dict[str, Any]]:
  """Masked-work fraction of FedAvg's local training, single loop vs the engine's buckets.

  Each round, each device is down with probability ``p_drop`` and K clients are drawn
  uniformly among the up devices (as :mod:`hadfl_jax.algorithms.fedavg` does); they run H
  steps, the others none.
  """
  rng = np.random.default_rng(seed)
  rows = []
  for n, fraction, h, name in FEDAVG:
    k = max(1, int(round(fraction * n)))
    schedule = local.LocalSchedule(fedavg.bucket_widths(k, n))
    useful = single = engine = 0
    for _ in range(num_rounds):
      up = np.flatnonzero(rng.random(n) >= p_drop)
      budgets_N = np.zeros(n, np.int64)
      budgets_N[rng.choice(up, size=min(k, up.size), replace=False)] = h
      useful += int(budgets_N.sum())
      single += n * int(budgets_N.max())
      engine += schedule.computed_steps(budgets_N)
    rows.append(dict(scenario=name, num_devices=n, clients=k, local_steps=h,
                     rounds=num_rounds, widths=list(schedule.bucket_widths),
                     masked_before=1.0 - useful / single, masked_after=1.0 - useful / engine))
  return rows


def time_buckets(model_name: str, scenario: common.Scenario, buckets: tuple[int, ...],
                 scale: float, num_cycles: int, repeats: int, per_device: int = 64
                 ) -> dict[str, Any]:
  """Wall time of local training under each bucket count, on real budgets (scaled).

  The last row is the engine's default: ``buckets[-1]`` buckets split into sub-buckets
  sized by ``local.default_bucket_mib()``.
  """
  from benchmarks import engine  # pylint: disable=g-import-not-at-top
  n = scenario.num_devices
  model, params = common.init_params(model_name)
  optimizer = optax.sgd(0.01, momentum=0.9)
  devices = local.init_devices(jax.random.PRNGKey(0), params, optimizer, n)
  data = common.random_device_data(n, per_device)
  step = local.make_device_step(model.apply, optimizer, 32)
  budgets_CxN = common.budget_trace(scenario, num_cycles)
  budgets_CxN = np.ceil(budgets_CxN * scale).astype(np.int32)
  speed_N = common.make_profile(scenario).speed_N
  schedules = {str(g): local.LocalSchedule(local.fit_bucket_widths(speed_N, g))
               for g in buckets}
  max_width = engine.default_schedule(model, params, optimizer).max_width
  schedules[f'{buckets[-1]}, sub-buckets of {max_width}'] = local.LocalSchedule(
      local.fit_bucket_widths(speed_N, buckets[-1]), max_width=max_width)
  fns, useful_fraction = {}, {}
  for label, schedule in schedules.items():
    train = jax.jit(lambda d, b, s=schedule: local.masked_local_train(step, d, data, b, s)[0])
    fns[label] = (lambda train=train: [jax.block_until_ready(train(devices, jnp.asarray(h)))
                                       for h in budgets_CxN])
    useful_fraction[label] = budgets_CxN.sum() / sum(schedule.computed_steps(h)
                                                     for h in budgets_CxN)
  seconds = common.interleaved_medians(fns, repeats)
  base = seconds[str(buckets[0])]
  return dict(model=model_name, scenario=scenario.name, budget_scale=scale,
              cycles=num_cycles, useful_device_steps=int(budgets_CxN.sum()),
              rows=[dict(buckets=label, seconds=seconds[label], speedup=base / seconds[label],
                         useful_fraction=float(useful_fraction[label])) for label in schedules])


def run(quick: bool) -> dict[str, Any]:
  table = waste_table(num_cycles=5 if quick else 20)
  fedavg = fedavg_waste_table(num_rounds=5 if quick else 20)
  timings = []
  if quick:
    timings.append(time_buckets('small_mlp', SCENARIOS[1], (1, 4), 1.0, 1, 1, per_device=16))
  else:
    timings.append(time_buckets('cnn', SCENARIOS[0], (1, 4, 8), 0.25, 1, 3))
    timings.append(time_buckets('mlp', SCENARIOS[2], (1, 8, 16), 1.0, 1, 3))
  return dict(waste=table, fedavg=fedavg, timings=timings)


def _pct(x):
  return '' if x is None else f'{100 * x:.0f}%'


def markdown(result: dict[str, Any]) -> str:
  lines = ['| scenario | mean / max H | single loop | ' + ' | '.join(
      f'static {g} / sorted {g}' for g in BUCKETS) + ' |', '|---' * (3 + len(BUCKETS)) + '|']
  for r in result['waste']:
    cells = [r['scenario'], f"{r['mean_budget']:.1f} / {r['max_budget']}", _pct(r['single'])]
    for g in BUCKETS:
      cells.append(f"{_pct(r.get(f'static_{g}'))} / **{_pct(r.get(f'sorted_{g}'))}**"
                   if f'sorted_{g}' in r else 'n/a')
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines.append('')
  lines.append('FedAvg\'s masked work (K of N clients train, the rest idle), before (one masked '
               'loop over all N) and after (the engine\'s budget-sorted buckets):')
  lines.append('')
  lines.append('| scenario | clients K | masked before | masked after |')
  lines.append('|---|---|---|---|')
  for r in result.get('fedavg', []):
    lines.append(f"| {r['scenario']} | {r['clients']} | {_pct(r['masked_before'])} | "
                 f"**{_pct(r['masked_after'])}** |")
  lines.append('')
  lines.append('Wall time of local training on the scenario\'s real budgets, side by side:')
  lines.append('')
  lines.append('| model, scenario | buckets | useful work | time | speedup vs single loop |')
  lines.append('|---|---|---|---|---|')
  for t in result['timings']:
    for row in t['rows']:
      lines.append(f"| {t['model']}, {t['scenario']} (budgets x{t['budget_scale']:g}, "
                   f"{t['cycles']} cycles) | {row['buckets']} | "
                   f"{100 * row['useful_fraction']:.0f}% | {row['seconds']:.2f} s | "
                   f"{row['speedup']:.2f}x |")
  return '\n'.join(lines)
