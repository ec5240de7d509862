r"""How the event clock's tick width changes AD-PSGD's results, and what it saves.

A tick processes every event within ``window_s`` of the earliest pending one, as if they
were simultaneous (``hadfl_jax/core/events.py``). With a window below the gaps between
events a tick is one event (exact: ``tests/events_test.py``); a wider one groups events:
fewer ticks, less wall time, and models that see each other at slightly different times.
This measures, on the quick scenario (UCI digits, 8 devices, speeds 1..8, AD-PSGD with
H = 1 on a ring), for each window and seeds 0-4: the simulated time to 90% consensus
accuracy (evaluated after every 0.02 simulated seconds), the final accuracy after 2.5
simulated seconds, and the wall time of simulating those 2.5 seconds (one jitted call, no
evaluations, compiled beforehand), as a ratio to the exact window's in the same run.

  python -m benchmarks.event_window --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import numpy as np

from benchmarks import common
from hadfl_jax import algorithms
from hadfl_jax import evaluation
from hadfl_jax import train
from hadfl_jax.configs import default

EXACT = 1e-7  # Far below any gap between two events of the quick scenario.
WINDOWS = (EXACT, 0.0025, 0.005, 0.01, 0.02, 0.04)  # 0.005: the default (auto) width.
SEEDS = (0, 1, 2, 3, 4)
TARGET, HORIZON_S, CYCLE_S = 0.9, 2.5, 0.02


def run_one(config, setup, evaluator, window: float) -> dict:
  problem = setup.problem
  algorithm = algorithms.build('adpsgd', problem, algorithms.config_of(
      'adpsgd', dict(window_s=window, cycle_s=CYCLE_S)))
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  state, progress = train.run(algorithm, algorithm.init(key), setup.device_data, evaluator,
                              num_cycles=10**6, target_accuracy=TARGET,
                              max_sim_time=HORIZON_S, verbose=False)
  # The simulation's own wall time, without evaluations or compilation: the same
  # horizon in one jitted cycle (a warm-up call first).
  timed = algorithm.config.replace(cycle_s=HORIZON_S)
  long = algorithms.build('adpsgd', problem, timed)
  cycle = jax.jit(long.cycle)
  jax.block_until_ready(cycle(long.init(key), setup.device_data))
  wall = time.perf_counter()
  jax.block_until_ready(cycle(long.init(key), setup.device_data))
  wall = time.perf_counter() - wall
  return dict(window_s=window, seed=config.seed, time_to_target_s=progress.time_to_target_s,
              final_accuracy=progress.history[-1]['consensus_accuracy'],
              events=int(np.sum(state.clock.events_N)), simulation_wall_s=wall)


def mean_ci(values) -> tuple[float, float]:
  """Mean and the half-width of its 95% confidence interval (Student t, n - 1 dof)."""
  x = np.asarray(values, np.float64)
  t975 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 8: 2.36, 10: 2.26}
  half = t975.get(len(x), 1.96) * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else 0.0
  return float(x.mean()), float(half)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', default='benchmarks/results')
  args = parser.parse_args()
  rows = []
  for seed in SEEDS:
    config = default.get_config()
    config.seed = seed
    setup = train.build_setup(config)
    evaluator = evaluation.Evaluator.for_model(setup.problem.model, setup.test,
                                               config.eval_batch_size, config.device_eval_examples,
                                               task=setup.problem.task)
    for window in WINDOWS:
      rows.append(run_one(config, setup, evaluator, window))
      print(rows[-1], flush=True)
  summary = []
  exact_wall = {r['seed']: r['simulation_wall_s'] for r in rows if r['window_s'] == EXACT}
  for window in WINDOWS:
    mine = [r for r in rows if r['window_s'] == window]
    reached = [r['time_to_target_s'] for r in mine if r['time_to_target_s'] is not None]
    summary.append(dict(
        window_s=window, seeds=len(mine), reached=len(reached),
        time_to_target_s=mean_ci(reached) if reached else None,
        final_accuracy=mean_ci([r['final_accuracy'] for r in mine]),
        wall_vs_exact=mean_ci([r['simulation_wall_s'] / exact_wall[r['seed']] for r in mine])))
  info = common.cpu_info()
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'event_window.json'), 'w') as f:
    json.dump(dict(machine=info, rows=rows, summary=summary), f, indent=2)
  lines = [
      '# Event clock: tick width against exactness and wall time', '',
      f'AD-PSGD (H = 1, ring) on the quick scenario; seeds {SEEDS[0]}-{SEEDS[-1]}; mean and '
      f'95% CI. Machine: {info["cpu_model"]}, {info["cpu_count"]} cores, vector extensions '
      f'{", ".join(info["vector_extensions"]) or "unknown"}; jax {info["jax_version"]}. '
      'Simulated figures do not depend on the machine; wall time (simulating 2.5 s, no '
      "evaluation) is a ratio to the exact window's, per seed, in the same run.", '',
      '| window (s) | time to 90% (sim s) | reached | accuracy at 2.5 s | wall / exact |',
      '|---|---|---|---|---|']
  for s in summary:
    tta = (f'{s["time_to_target_s"][0]:.3f} +- {s["time_to_target_s"][1]:.3f}'
           if s['time_to_target_s'] else 'n/a')
    lines.append(
        f'| {s["window_s"]:g}{" (exact)" if s["window_s"] == EXACT else ""} | {tta} | '
        f'{s["reached"]}/{s["seeds"]} | {s["final_accuracy"][0]:.4f} +- '
        f'{s["final_accuracy"][1]:.4f} | {s["wall_vs_exact"][0]:.2f} +- '
        f'{s["wall_vs_exact"][1]:.2f} |')
  with open(os.path.join(args.out, 'event_window.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
