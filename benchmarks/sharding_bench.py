"""Sharding speedup: the same HADFL cycles on a mesh of 1 and of 2 host CPU devices.

Runs in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``; in it,
two copies of the same simulation, one with the device axis on a 1-device mesh and one
split over a 2-device mesh (``hadfl_jax.sharding``), run their cycles interleaved. On a
CPU, XLA gives each host device its own stream of work, so two devices can keep two
cores busy where one device runs many small ops one after another; the figure is the
ratio of median times, for local training alone (one cycle's budgets) and for the whole
cycle (which adds selection and the group average: under GSPMD the K selected rows are
gathered across the shards by an all-reduce of K x M values). Budgets: the paper-like
speeds 1..8 tiled to N (so both halves of the device axis get the same mix of speeds),
rho = 0.5, with the engine's default buckets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

from benchmarks import common


def _child(plans: list[tuple[str, int, float]], cycles: int) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from hadfl_jax import sharding  # pylint: disable=g-import-not-at-top
  from hadfl_jax.algorithms import base  # pylint: disable=g-import-not-at-top
  from hadfl_jax import algorithms  # pylint: disable=g-import-not-at-top
  from hadfl_jax.algorithms import hadfl  # pylint: disable=g-import-not-at-top
  from hadfl_jax.core import engine as engine_lib  # pylint: disable=g-import-not-at-top
  from hadfl_jax.core import local  # pylint: disable=g-import-not-at-top
  from hadfl_jax.core import profiles  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 2, jax.devices()
  rows = []
  for model_name, n, t_local in plans:
    model, params = common.init_params(model_name)
    speed_N = np.resize(np.asarray(common.PAPER_SPEEDS), n) * 10.0
    problem = base.Problem(
        model=model, optimizer=optax.sgd(0.01, momentum=0.9), init_params=params,
        profile=profiles.DeviceProfile(speed_N=speed_N, bandwidth_N=np.full(n, 12.5e6),
                                       latency=0.005),
        num_examples_N=np.full(n, 64), batch_size=32)
    data = common.random_device_data(n, 64)
    runs = {}
    for shards in (1, 2):
      engine = engine_lib.EngineConfig(num_buckets=8, bucket_mib=local.CPU_BUCKET_MIB,
                                       mesh_shards=shards)
      config = hadfl.Config(t_local=t_local, weights='data')
      algo = algorithms.build('hadfl', problem, config, engine)
      trainer = engine_lib.LocalTrainer(problem, engine)
      state = algo.init(jax.random.PRNGKey(0))
      fn, state, placed = sharding.shard_cycle(algo.cycle, state, data,
                                               sharding.make_mesh(shards), n)
      budgets_N = jax.jit(lambda s, c=config: hadfl.plan(problem, c, s))(state)['budgets_N']
      train = jax.jit(lambda d, x, b, t=trainer: t(d, x, b)[0])
      box = dict(state=state)

      def cycle(fn=fn, box=box, placed=placed):
        box['state'], info = fn(box['state'], placed)
        jax.block_until_ready(info)

      runs[f'cycle/{shards}'] = cycle
      runs[f'local/{shards}'] = (lambda train=train, box=box, placed=placed, b=budgets_N:
                                 jax.block_until_ready(train(box['state'].devices, placed, b)))
    seconds = common.interleaved_medians(runs, cycles)
    rows.append(dict(model=model_name, num_devices=n, t_local=t_local, cycles=cycles,
                     seconds=seconds,
                     speedup_cycle=seconds['cycle/1'] / seconds['cycle/2'],
                     speedup_local=seconds['local/1'] / seconds['local/2']))
  return dict(rows=rows)


def run(quick: bool) -> dict[str, Any]:
  plans = ([('small_mlp', 16, 0.1)] if quick else
           [('small_mlp', 64, 0.1), ('mlp', 64, 0.1), ('cnn', 16, 0.05)])
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu', PYTHONPATH=repo)
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.sharding_bench', '--plans',
                         json.dumps(plans), '--cycles', '2' if quick else '4'],
                        cwd=repo, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f'sharding benchmark failed:\n{proc.stderr[-4000:]}')
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out['device'] = common.cpu_info()
  return out


def markdown(result: dict[str, Any]) -> str:
  lines = ['| model | N | local training: 1 host device / 2 | speedup | whole cycle: 1 / 2 | '
           'speedup |', '|---|---|---|---|---|---|']
  for r in result['rows']:
    s = r['seconds']
    lines.append(f"| {r['model']} | {r['num_devices']} | {s['local/1']:.3f} s / "
                 f"{s['local/2']:.3f} s | **{r['speedup_local']:.2f}x** | {s['cycle/1']:.3f} s / "
                 f"{s['cycle/2']:.3f} s | **{r['speedup_cycle']:.2f}x** |")
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--plans', required=True)
  parser.add_argument('--cycles', type=int, default=4)
  args = parser.parse_args()
  plans = [tuple(p) for p in json.loads(args.plans)]
  print(json.dumps(_child(plans, args.cycles)))


if __name__ == '__main__':
  main()
