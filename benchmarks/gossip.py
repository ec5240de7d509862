"""Gossip mixing: a sum of D gathered rows, against a reduction over the gathered array.

:func:`hadfl_jax.core.mixing.apply_neighbours` (x_i <- sum_d w[i, d] x[cols[i, d]]) runs
at every exchange of AD-PSGD and Prague and every round of D-PSGD and decentralized
FedAvg, on the whole stacked state. It is written as D gathers, each scaled by its
weights and added: one elementwise fusion. The same function written the direct way,
gathering an (N, D, ...) array and summing over its axis 1 (:func:`reduction_form`),
compiles on XLA:CPU to a reduction that ran 20 to 70x slower. Both are timed here on the
CNN's stacked parameters (421,642 per device), for the mixings the algorithms use:
AD-PSGD's disjoint pairs (D = 2) and the Metropolis-Hastings ring (D = 3) and torus
(D = 5), N = 8 (paper-like) and 64 (many-devices). Medians of interleaved repeats, each
timing ``calls`` mixings of a donated state.

Then whole cycles of the algorithms that mix this way, on real MNIST (``HADFL_MNIST_DIR``,
default ``../shared/data/mnist``; skipped without it): each algorithm's cycle is
compiled twice, once with :func:`reduction_form` in place of ``apply_neighbours``
(substituted while it is traced), run a few cycles from the start so that the events
spread out as in a long run, then both are timed from that state, interleaved.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import compile_time
from hadfl_jax.algorithms import adpsgd
from hadfl_jax.algorithms import graphs
from hadfl_jax.core import mixing


def reduction_form(m: mixing.NeighbourMixing, tree_N):
  """The neighbour mixing as a reduction over the gathered (N, D, ...) array."""

  def mix_leaf(x_N):
    x_NxD = x_N[m.cols_NxD]
    w = m.weight_NxD.reshape(m.weight_NxD.shape + (1,) * (x_N.ndim - 1))
    return mixing.cast_like(jnp.sum(w * x_NxD.astype(jnp.float32), axis=1), x_N)

  return jax.tree.map(mix_leaf, tree_N)


FORMS = {'sum of gathered rows': mixing.apply_neighbours, 'reduction over D': reduction_form}


def make_mixing(kind: str, num_devices: int, seed: int = 0) -> mixing.NeighbourMixing:
  """``'pairs'`` (AD-PSGD: every device in one exchange with a random partner, D = 2) or a
  graph of :data:`hadfl_jax.algorithms.graphs.GRAPHS` with Metropolis-Hastings weights."""
  if kind == 'pairs':
    perm = np.random.default_rng(seed).permutation(num_devices)
    first, second = perm[0:num_devices - 1:2], perm[1::2]  # With N odd, one sits out.
    partner = np.arange(num_devices, dtype=np.int32)
    partner[first], partner[second] = second, first
    return adpsgd.pair_mixing(jnp.ones((num_devices,), bool), jnp.asarray(partner))
  return graphs.mh_mixing(graphs.make_graph(kind, num_devices))


def runner(form, m: mixing.NeighbourMixing, state, calls: int):
  """A closure that applies ``form`` ``calls`` times to a donated copy of ``state``."""
  apply = jax.jit(form, donate_argnums=1)
  box = {'x': jax.tree.map(jnp.copy, state)}

  def run():
    for _ in range(calls):
      box['x'] = apply(m, box['x'])
    jax.block_until_ready(box['x'])

  return run


@contextlib.contextmanager
def neighbour_form(form):
  """``mixing.apply_neighbours`` replaced by ``form`` (for tracing a cycle with it)."""
  original = mixing.apply_neighbours
  mixing.apply_neighbours = form
  try:
    yield
  finally:
    mixing.apply_neighbours = original


# (algorithm, its H, scenario config): the asynchronous ones and a round-based one.
CYCLE_CASES = (('adpsgd', 50, 'many_devices'), ('adpsgd', 50, 'paper_mnist'),
               ('prague', 20, 'paper_mnist'), ('dpsgd', 10, 'paper_mnist'))


def scenario_config(algorithm: str, h: int, scenario: str):
  """The config of one of :data:`CYCLE_CASES` on real MNIST."""
  config = importlib.import_module(f'hadfl_jax.configs.{scenario}').get_config()
  config.dataset.idx_dir = compile_time.mnist_dir()
  config.algorithm = algorithm
  config[algorithm].local_steps = h
  return config


def cycle_ab(config, warm: int, cycles: int, repeats: int) -> dict[str, Any]:
  """Seconds for ``cycles`` cycles of ``config.algorithm`` from a state ``warm`` cycles
  in, per form, and the local steps each form's cycles ran (the same: the forms differ
  only in float rounding)."""
  from hadfl_jax import train  # pylint: disable=g-import-not-at-top

  setup = train.build_setup(config)
  alg = train.build_algorithm(config, setup.problem)
  fns, steps = {}, {}
  for name, form in FORMS.items():
    state = alg.init(jax.random.key(0))
    with neighbour_form(form):  # Compiled now, with this form (a trace of its own).
      cycle = jax.jit(lambda state, data: alg.cycle(state, data)).lower(
          state, setup.device_data).compile()
    for _ in range(warm):
      state, _ = cycle(state, setup.device_data)
    jax.block_until_ready(state)

    def run_cycles(cycle=cycle, start=state, name=name):
      state, total = start, 0
      for _ in range(cycles):
        state, info = cycle(state, setup.device_data)
        total += info.budgets_N.sum()
      steps[name] = int(total)

    fns[name] = run_cycles
  seconds = common.interleaved_medians(fns, repeats)
  return dict(algorithm=config.algorithm, h=config[config.algorithm].local_steps,
              num_devices=config.num_devices, warm_cycles=warm, cycles=cycles,
              local_steps=steps, seconds=seconds,
              reduction_over_sum=seconds['reduction over D'] / seconds['sum of gathered rows'])


def run(quick: bool) -> dict[str, Any]:
  _, params = common.init_params('cnn')
  cases = [('pairs', 8), ('ring', 8), ('pairs', 64), ('torus', 64)]
  if quick:
    cases = cases[:2]
  calls, repeats = 3, 3 if quick else 5
  fns, meta = {}, {}
  for kind, n in cases:
    state = jax.tree.map(lambda x, n=n: jnp.broadcast_to(x, (n,) + x.shape) + 0.0, params)
    m = make_mixing(kind, n)
    for name, form in FORMS.items():
      fns[f'{kind}/{n}/{name}'] = runner(form, m, state, calls)
    meta[(kind, n)] = dict(slots=int(m.cols_NxD.shape[1]), state_bytes=common.tree_bytes(state))
  seconds = common.interleaved_medians(fns, repeats)
  rows = []
  for (kind, n), info in meta.items():
    ms = {name: 1e3 * seconds[f'{kind}/{n}/{name}'] / calls for name in FORMS}
    rows.append(dict(mixing=kind, num_devices=n, **info, ms_per_mixing=ms,
                     reduction_over_sum=ms['reduction over D'] / ms['sum of gathered rows']))
  result = dict(rows=rows, params=common.num_params(params), device=common.cpu_info())
  if quick:
    result['cycles_skipped'] = '--quick'
  elif not os.path.isdir(compile_time.mnist_dir()):
    result['cycles_skipped'] = f'no MNIST IDX files in {compile_time.mnist_dir()}'
  else:
    result['cycles'] = [dict(cycle_ab(scenario_config(*case), warm=5, cycles=5, repeats=3),
                             scenario=case[2]) for case in CYCLE_CASES]
  return result


def markdown(result: dict[str, Any]) -> str:
  lines = [f"Machine: {common.machine_line(result['device'])}.", '',
           f"The CNN's {result['params']:,} parameters per device; ms per mixing of the "
           'whole stacked state.', '',
           '| mixing | N | D | state (MB) | sum of gathered rows (ms) | reduction over D (ms) '
           '| reduction / sum |', '|---|---|---|---|---|---|---|']
  for r in result['rows']:
    ms = r['ms_per_mixing']
    lines.append(f"| {r['mixing']} | {r['num_devices']} | {r['slots']} | "
                 f"{r['state_bytes'] / 1e6:,.0f} | {ms['sum of gathered rows']:.1f} | "
                 f"{ms['reduction over D']:.1f} | **{r['reduction_over_sum']:.1f}x** |")
  if 'cycles_skipped' in result:
    lines += ['', f"Whole cycles: skipped ({result['cycles_skipped']})."]
    return '\n'.join(lines)
  lines += ['', 'Whole cycles on real MNIST, from a state some cycles in, interleaved '
            '(seconds for the cycles):', '',
            '| algorithm | H | scenario (N) | cycles after warm-up | local steps | '
            'sum of gathered rows (s) | reduction over D (s) | reduction / sum |',
            '|---|---|---|---|---|---|---|---|']
  for c in result['cycles']:
    sec = c['seconds']
    lines.append(f"| {c['algorithm']} | {c['h']} | {c['scenario']} ({c['num_devices']}) | "
                 f"{c['cycles']} after {c['warm_cycles']} | "
                 f"{c['local_steps']['sum of gathered rows']:,} | "
                 f"{sec['sum of gathered rows']:.2f} | {sec['reduction over D']:.2f} | "
                 f"**{c['reduction_over_sum']:.2f}x** |")
  return '\n'.join(lines)


def main(argv=None) -> int:
  return common.section_main(sys.modules[__name__], 'gossip',
                             'Gossip mixing: sum of gathered rows against a reduction', argv)


if __name__ == '__main__':
  raise SystemExit(main())
