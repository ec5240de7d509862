"""Sharding speedup: the same HADFL cycles on a mesh of 1 and of 2 host CPU devices.

Runs in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``; in it,
two copies of the same simulation, one with the device axis on a 1-device mesh and one
split over a 2-device mesh (``hadfl_jax.sharding``), run their cycles interleaved. On a
CPU, XLA gives each host device its own stream of work, so two devices can keep two
cores busy where one device runs many small ops one after another; the figure is the
ratio of median cycle times. Budgets: the paper-like speeds 1..8 tiled to N, with the
engine's default buckets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from benchmarks import common


def _child(plans: list[tuple[str, int, float]], cycles: int) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from hadfl_jax import sharding  # pylint: disable=g-import-not-at-top
  from hadfl_jax.algorithms import base  # pylint: disable=g-import-not-at-top
  from hadfl_jax.algorithms import hadfl  # pylint: disable=g-import-not-at-top
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
      algo = hadfl.Hadfl(problem, hadfl.HadflOptions(
          t_local=t_local, num_buckets=8, bucket_mib=local.CPU_BUCKET_MIB, num_shards=shards))
      state = algo.init(jax.random.PRNGKey(0))
      fn, state, placed = sharding.shard_cycle(algo.cycle, state, data,
                                               sharding.make_mesh(shards), n)
      state, info = fn(state, placed)  # Compile.
      jax.block_until_ready(info)
      runs[shards] = dict(fn=fn, state=state, data=placed, seconds=[])
    for _ in range(cycles):
      for r in runs.values():
        start = time.perf_counter()
        r['state'], info = r['fn'](r['state'], r['data'])
        jax.block_until_ready(info)
        r['seconds'].append(time.perf_counter() - start)
    s1, s2 = (float(np.median(runs[s]['seconds'])) for s in (1, 2))
    rows.append(dict(model=model_name, num_devices=n, t_local=t_local, cycles=cycles,
                     seconds_1=s1, seconds_2=s2, speedup=s1 / s2))
  return dict(rows=rows)


def run(quick: bool) -> dict[str, Any]:
  plans = ([('small_mlp', 16, 0.1)] if quick else
           [('mlp', 64, 0.1), ('cnn', 8, 0.1), ('cnn', 64, 0.02)])
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
  lines = ['| model | N | cycle on 1 host device | on 2 host devices | speedup |',
           '|---|---|---|---|---|']
  for r in result['rows']:
    lines.append(f"| {r['model']} | {r['num_devices']} | {r['seconds_1']:.3f} s | "
                 f"{r['seconds_2']:.3f} s | **{r['speedup']:.2f}x** |")
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
