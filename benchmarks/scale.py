"""Scale: HADFL cycles of 10,000 devices with ``small_mlp`` on real MNIST, peak memory.

Runs in a fresh subprocess (so the peak resident memory is the run's own): builds the
run as ``train.train_and_evaluate`` does (real MNIST IDX files, IID shards of the 60k
training images, ``small_mlp`` with 55,050 parameters, plain SGD; speeds lognormal(0.8),
30% of devices down per cycle, rho = 0.01 so K = 100), runs cycles of the jitted,
donated cycle, and reports

* the bytes of the stacked device state (parameters and optimizer states of all N
  devices) and of the stacked data;
* XLA's memory analysis of the compiled cycle (arguments, outputs, temporaries), for the
  engine as configured and for the single masked loop (compiled only: at this scale the
  single loop would compute 18x the useful steps, see the waste table);
* the resident memory the state adds, and the peak resident memory during a cycle
  after the first (Linux ``VmHWM``, reset before the cycle), against the state's bytes;
* wall time of each cycle (the first includes compilation).

Command: ``python -m benchmarks.scale --devices 10000 --cycles 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np

from benchmarks import common
from benchmarks import compile_time


def scale_config(num_devices: int):
  from hadfl_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.dataset.name = 'mnist_idx'
  config.dataset.idx_dir = compile_time.mnist_dir()
  config.model = 'small_mlp'
  config.num_devices = num_devices
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.05
  config.profile.kind = 'lognormal'
  config.profile.sigma = 0.8
  config.faults.p_drop = 0.3
  config.hadfl.rho = 0.01
  config.hadfl.t_local = 0.5
  return config


def child(num_devices: int, num_cycles: int) -> dict[str, Any]:
  """The measurement itself (run in a fresh process)."""
  from hadfl_jax import algorithms  # pylint: disable=g-import-not-at-top
  from hadfl_jax import sharding  # pylint: disable=g-import-not-at-top
  from hadfl_jax import train  # pylint: disable=g-import-not-at-top
  from hadfl_jax import validation  # pylint: disable=g-import-not-at-top
  from hadfl_jax.core import engine as engine_lib  # pylint: disable=g-import-not-at-top
  config = scale_config(num_devices)
  setup = train.build_setup(config)
  rss_setup = common.proc_status_bytes('VmRSS')
  algorithm = train.build_algorithm(config, setup.problem)
  state = algorithm.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
  mesh = sharding.make_mesh(sharding.mesh_size(config.engine))
  cycle_fn, state, data = sharding.shard_cycle(algorithm.cycle, state, setup.device_data,
                                               mesh, num_devices)
  jax.block_until_ready(state)
  rss_state = common.proc_status_bytes('VmRSS')
  state_bytes = common.tree_bytes((state.devices.params, state.devices.opt_state))
  analyses = {}
  engine = validation.engine_config(config)
  single = algorithms.build(config.algorithm, setup.problem, algorithm.config,
                            engine.replace(num_buckets=1, bucket_mib=0.0))
  schedule = engine_lib.LocalTrainer(setup.problem, engine).schedule_for(
      setup.device_data.images.shape[2:])
  for name, algo in (('engine', algorithm), ('single_loop', single)):
    compiled = jax.jit(algo.cycle, donate_argnums=0).lower(state, data).compile()
    ma = compiled.memory_analysis()
    analyses[name] = dict(argument_bytes=ma.argument_size_in_bytes,
                          output_bytes=ma.output_size_in_bytes,
                          temp_bytes=ma.temp_size_in_bytes,
                          alias_bytes=ma.alias_size_in_bytes)
    del compiled
  seconds, useful, computed, rss_cycle, peak_cycle = [], 0, 0, None, None
  peak_before, reset_ok = 0, False
  for c in range(num_cycles):
    if c == 1:  # Measure the peak of the cycles after the first (which compiles).
      peak_before = common.proc_status_bytes('VmHWM')
      reset_ok = _try_reset_peak()
      rss_cycle = common.proc_status_bytes('VmRSS')
    start = time.perf_counter()
    state, info = cycle_fn(state, data)
    info = jax.device_get(info)
    seconds.append(time.perf_counter() - start)
    useful += int(info.budgets_N.sum())
    computed += schedule.computed_steps(info.budgets_N)
  if num_cycles > 1 and reset_ok:
    peak_cycle = common.proc_status_bytes('VmHWM')
  loss = float(np.mean(info.train_loss_N[info.budgets_N > 0]))
  return dict(
      num_devices=num_devices, model=config.model, params=setup.problem.num_params,
      schedule=dict(bucket_widths=list(schedule.bucket_widths), max_width=schedule.max_width,
                    unroll=schedule.unroll),
      state_bytes=state_bytes, data_bytes=common.tree_bytes(setup.device_data),
      compiled=analyses, rss_after_setup_bytes=rss_setup, rss_with_state_bytes=rss_state,
      rss_before_cycle_bytes=rss_cycle, peak_rss_in_cycle_bytes=peak_cycle,
      # VmHWM, not getrusage's ru_maxrss, which a child inherits from its parent's fork.
      peak_rss_bytes=max(peak_before if num_cycles > 1 else 0, peak_cycle or 0,
                         common.proc_status_bytes('VmHWM')),
      cycle_seconds=seconds,
      useful_device_steps=useful, computed_device_steps=computed,
      useful_examples_per_s_after_first=(
          useful / num_cycles * config.batch_size / np.median(seconds[1:])
          if num_cycles > 1 else None),
      last_train_loss=loss, finite=bool(np.isfinite(loss)), device=common.cpu_info())


def _try_reset_peak() -> bool:
  try:
    common.reset_peak_rss()
    return True
  except OSError:
    return False


def run(quick: bool) -> dict[str, Any]:
  n, cycles = (1000, 2) if quick else (10_000, 2)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # One JAX device, as a plain run on a CPU (benchmarks.run starts two host devices).
  flags = ' '.join(f for f in os.environ.get('XLA_FLAGS', '').split()
                   if 'host_platform_device_count' not in f)
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.scale', '--devices', str(n), '--cycles', str(cycles)],
      cwd=repo, capture_output=True, text=True, check=False,
      env=dict(os.environ, PYTHONPATH=repo, XLA_FLAGS=flags))
  if proc.returncode:
    raise RuntimeError(f'scale run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(r: dict[str, Any]) -> str:
  gb = lambda b: f'{b / 2**30:.2f} GiB'
  e, s = r['compiled']['engine'], r['compiled']['single_loop']
  x = lambda b: f"{b / r['state_bytes']:.2f}x the state"
  lines = [
      '| quantity | value |', '|---|---|',
      f"| devices, model | {r['num_devices']:,} x {r['model']} ({r['params']:,} params), "
      f"sub-buckets of {r['schedule']['max_width']}"
      f"{' as step copies' if r['schedule'].get('unroll') else ''} |",
      f"| stacked device state (params + optimizer) | {gb(r['state_bytes'])} |",
      f"| stacked MNIST shards (uint8) | {gb(r['data_bytes'])} |",
      f"| resident memory added by building the state | "
      f"{gb(r['rss_with_state_bytes'] - r['rss_after_setup_bytes'])} |",
      f"| XLA temporaries of one cycle: engine / single masked loop | {gb(e['temp_bytes'])}"
      f" ({x(e['temp_bytes'])}) / {gb(s['temp_bytes'])} ({x(s['temp_bytes'])}) |",
  ]
  if r['peak_rss_in_cycle_bytes']:
    extra = r['peak_rss_in_cycle_bytes'] - r['rss_before_cycle_bytes']
    lines.append(f"| peak resident memory during a cycle (after the first) | "
                 f"{gb(r['peak_rss_in_cycle_bytes'])}, of which {gb(extra)} ({x(extra)}) "
                 'above the resident memory before it |')
  lines += [
      f"| process peak resident memory (incl. 3 compilations) | {gb(r['peak_rss_bytes'])} |",
      f"| wall time per cycle (first includes compile) | "
      f"{', '.join(f'{t:.1f} s' for t in r['cycle_seconds'])} |",
      f"| useful / computed device-steps | {r['useful_device_steps']:,} / "
      f"{r['computed_device_steps']:,} ({r['useful_device_steps'] / r['computed_device_steps']:.0%}) |",
      f"| training loss finite | {r['finite']} ({r['last_train_loss']:.3f}) |",
  ]
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--devices', type=int, default=10_000)
  parser.add_argument('--cycles', type=int, default=2)
  args = parser.parse_args()
  print(json.dumps(child(args.devices, args.cycles)))


if __name__ == '__main__':
  main()
