"""Compile time of one cycle, proof that later cycles never recompile, and the cost of
buckets.

For the quick and the paper-like scenarios (real data: UCI digits, real MNIST) and each
``engine.num_buckets``, this builds the run exactly as ``train.train_and_evaluate`` does
(``sharding.shard_cycle``), then

* times the first call of the jitted cycle, split by JAX's own monitoring events into
  tracing, lowering and XLA compilation;
* runs more cycles of every bucket count, interleaved, whose budgets and synchronising
  groups change, and counts the traces of the cycle function and the XLA compilations
  JAX reports while they run: both must be 0 (``jax.monitoring`` events
  ``/jax/core/compile/*``), and the jit cache holds one entry;
* reports the median wall time of those later cycles, hence the number of cycles after
  which a bucket count's extra compile time has paid for itself.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import jax
import numpy as np

from benchmarks import common
from hadfl_jax.configs import default as default_config
from hadfl_jax.configs import paper_mnist
from hadfl_jax import sharding
from hadfl_jax import train
from hadfl_jax import validation
from hadfl_jax.core import engine as engine_lib

_EVENTS: list[tuple[str, float]] = []
_LISTENING = False


def _listen() -> None:
  global _LISTENING
  if not _LISTENING:
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **_: _EVENTS.append((name, secs)))
    _LISTENING = True


def mnist_dir() -> str:
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.environ.get('HADFL_MNIST_DIR', os.path.join(here, '..', 'shared', 'data', 'mnist'))


def scenario_config(name: str, num_buckets: int, bucket_mib: float | None = None):
  if name == 'quick':
    config = default_config.get_config()
  elif name == 'paper-like':
    config = paper_mnist.get_config()
    config.dataset.idx_dir = mnist_dir()
  else:
    raise ValueError(name)
  config.engine.num_buckets = num_buckets
  config.engine.bucket_mib = bucket_mib
  config.engine.mesh_shards = 1  # One JAX device, as a plain run on a CPU.
  return config


def prepare(name: str, num_buckets: int, bucket_mib: float | None,
            setup=None) -> dict[str, Any]:
  """Builds the run, calls the jitted cycle once and splits that call's time by phase.

  ``num_buckets=1, bucket_mib=0`` is the single masked loop; ``bucket_mib=None`` the
  engine's default sub-buckets.
  """
  _listen()
  config = scenario_config(name, num_buckets, bucket_mib)
  setup = setup or train.build_setup(config)
  algorithm = train.build_algorithm(config, setup.problem)
  traces = []

  def cycle(state, data):
    traces.append(1)
    return algorithm.cycle(state, data)

  state = algorithm.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
  mesh = sharding.make_mesh(sharding.mesh_size(config.engine))
  cycle_fn, state, data = sharding.shard_cycle(cycle, state, setup.device_data, mesh,
                                               setup.problem.num_devices)
  del _EVENTS[:]
  start = time.perf_counter()
  state, info = cycle_fn(state, data)
  jax.block_until_ready(info)
  first = time.perf_counter() - start
  phases = {}
  for event, secs in _EVENTS:
    key = event.rsplit('/', 1)[-1].replace('_duration', '')
    phases[key] = phases.get(key, 0.0) + secs
  schedule = engine_lib.LocalTrainer(setup.problem, validation.engine_config(config)
                                     ).schedule_for(setup.device_data.images.shape[2:])
  row = dict(
      scenario=name, model=config.model, num_devices=config.num_devices,
      num_buckets=num_buckets,
      bucket_widths=list(schedule.bucket_widths),
      max_width=schedule.max_width, unroll=schedule.unroll,
      first_cycle_s=first, trace_s=phases.get('jaxpr_trace', 0.0),
      lower_s=phases.get('jaxpr_to_mlir_module', 0.0),
      compile_s=phases.get('backend_compile', 0.0))
  run_state = dict(fn=cycle_fn, state=state, data=data, traces=traces,
                   budgets={tuple(np.asarray(info.budgets_N))}, seconds=[],
                   traces_before=len(traces))
  return dict(row=row, run=run_state, setup=setup)


def later_cycles(prepared: list[dict[str, Any]], num_cycles: int) -> None:
  """Runs more cycles of every prepared run, interleaved, counting recompilations."""
  del _EVENTS[:]
  for _ in range(num_cycles):
    for p in prepared:
      r = p['run']
      start = time.perf_counter()
      r['state'], info = r['fn'](r['state'], r['data'])
      info = jax.device_get(info)
      r['seconds'].append(time.perf_counter() - start)
      r['budgets'].add(tuple(np.asarray(info.budgets_N)))
  recompiles = sum(1 for event, _ in _EVENTS if event.endswith('backend_compile_duration'))
  for p in prepared:
    r = p['run']
    p['row'].update(
        later_cycles=num_cycles, distinct_budgets=len(r['budgets']),
        traces_after_first=len(r['traces']) - r['traces_before'],
        recompiles_after_first=recompiles,  # Over all runs together.
        jit_cache_entries=r['fn']._cache_size(),  # pylint: disable=protected-access
        cycle_s=statistics.median(r['seconds']))


def run(quick: bool) -> dict[str, Any]:
  variants = ((1, 0.0), (8, None))  # The single masked loop; the engine's default.
  plans = [('quick', 2 if quick else 8)]
  if not quick:
    plans.append(('paper-like', 3))
  rows = []
  for name, later in plans:
    prepared, setup = [], None
    for g, mib in variants:
      prepared.append(prepare(name, g, mib, setup))
      setup = prepared[-1]['setup']
    later_cycles(prepared, later)
    for p in prepared:
      rows.append(p['row'])
      print(f"  compile {name} buckets={p['row']['num_buckets']}: XLA compile "
            f"{p['row']['compile_s']:.1f} s, later cycle {p['row']['cycle_s']:.3f} s", flush=True)
  for row in rows:
    base = next(r for r in rows if r['scenario'] == row['scenario'] and r['num_buckets'] == 1)
    extra = (row['trace_s'] + row['lower_s'] + row['compile_s']
             - base['trace_s'] - base['lower_s'] - base['compile_s'])
    saved = base['cycle_s'] - row['cycle_s']
    row['cycle_speedup'] = base['cycle_s'] / row['cycle_s']
    row['break_even_cycles'] = (max(extra, 0.0) / saved) if saved > 0 else None
  return dict(rows=rows, device=common.cpu_info())


def _describe(widths: list[int], max_width: int, unroll: bool = False) -> str:
  if not widths and not max_width:
    return 'single masked loop'
  out = f"buckets {','.join(map(str, widths))}" if widths else 'one bucket'
  copies = ' as step copies' if unroll else ''
  return out + (f', sub-buckets of <= {max_width}{copies}' if max_width else '')


def markdown(result: dict[str, Any]) -> str:
  lines = ['| scenario | schedule | trace + lower | XLA compile | traces / recompiles '
           'in later cycles (distinct budgets) | jit cache | later cycle | speedup | pays off after |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    pay = 'n/a' if r['num_buckets'] == 1 else (
        'never' if r['break_even_cycles'] is None else f"{r['break_even_cycles']:.0f} cycles")
    lines.append(
        f"| {r['scenario']} ({r['model']}, N={r['num_devices']}) | "
        f"{_describe(r['bucket_widths'], r['max_width'], r.get('unroll', False))} | "
        f"{r['trace_s'] + r['lower_s']:.2f} s | {r['compile_s']:.2f} s | "
        f"{r['traces_after_first']} / {r['recompiles_after_first']} in {r['later_cycles']} "
        f"({r['distinct_budgets']}) | {r['jit_cache_entries']} | {r['cycle_s']:.3f} s | "
        f"{r['cycle_speedup']:.2f}x | {pay} |")
  return '\n'.join(lines)
