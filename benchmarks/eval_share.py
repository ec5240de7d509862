r"""Where a paper-like run's wall time goes: training cycles against evaluation.

A comparison evaluates on a schedule in simulated seconds (every ``eval_interval_s`` at
first, then every 10%; :mod:`hadfl_jax.compare`), and with ``refine_target`` evaluates the
consensus models kept since the last evaluation once the target is reached. This runs
one paper-like run as a comparison runs it (real MNIST, HADFL at lr 0.05 and H 50, seed 0,
evaluation every simulated second, 500 test images per device model, to 98%) and reports
from its ``timing.json`` the share of its wall time spent evaluating (goal: at most 15%),
with the implementation choices it ran (:mod:`hadfl_jax.core.autotune`). Both parts of
the share are timed in the same process, so it is a ratio of one run on one machine.

``--study DIR`` reports the same share for every finished run of a comparison's workdir
(``runs/<algorithm>_<point>/seed<s>/timing.json``), per algorithm, without running
anything. Needs the MNIST IDX files (``HADFL_MNIST_DIR``, default ``../shared/data/mnist``).

  python -m benchmarks.eval_share --out benchmarks/results          # about 1.5 minutes
  python -m benchmarks.eval_share --out /tmp/b --study results/paper_mnist
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks import compile_time

GOAL = 0.15


def paper_like_run(seed: int = 0, algorithm: str = 'hadfl', lr: float = 0.05,
                   h: int = 50) -> dict[str, Any]:
  """One paper-like run at the comparison's schedule; its timing and summary."""
  from hadfl_jax import train  # pylint: disable=g-import-not-at-top
  from hadfl_jax.comparison import grid  # pylint: disable=g-import-not-at-top
  from hadfl_jax.configs import paper_mnist  # pylint: disable=g-import-not-at-top

  config = paper_mnist.get_config()
  config.dataset.idx_dir = compile_time.mnist_dir()
  config.seed = seed
  config.hadfl.weights = 'data'
  config.compare.eval_interval_s = 1.0
  config.eval_interval_s, config.eval_growth = 1.0, 0.1
  config.device_eval_examples = 500
  config.max_sim_time, config.num_cycles = 60.0, 100_000
  setup = train.build_setup(config)
  config = grid.apply_point(config, algorithm, {'lr': lr, 'h': h}, setup.problem)
  with tempfile.TemporaryDirectory() as workdir:
    summary = train.train_and_evaluate(config, workdir, setup=setup, verbose=False)
    with open(os.path.join(workdir, 'timing.json')) as f:
      timing = json.load(f)
  return dict(algorithm=algorithm, seed=seed, lr=lr, h=h, timing=timing,
              time_to_target_s=summary['time_to_target_s'],
              eval_share=timing['eval_s'] / timing['wall_time_s'])


def study_shares(workdir: str) -> list[dict[str, Any]]:
  """Per algorithm, the evaluation share of the finished runs of a comparison."""
  by_algorithm: dict[str, list[float]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'runs', '*', 'seed*', 'timing.json'))):
    with open(path) as f:
      timing = json.load(f)
    if 'eval_s' not in timing or not timing.get('wall_time_s'):
      continue
    name = os.path.basename(os.path.dirname(os.path.dirname(path))).split('_')[0]
    by_algorithm.setdefault(name, []).append(timing['eval_s'] / timing['wall_time_s'])
  return [dict(algorithm=name, runs=len(v), mean=float(np.mean(v)), max=float(np.max(v)))
          for name, v in by_algorithm.items()]


def run(quick: bool, study: str | None = None) -> dict[str, Any]:
  del quick  # One run is the measurement; there is nothing smaller that means the same.
  out: dict[str, Any] = dict(device=common.cpu_info(), goal=GOAL)
  if study:
    out['study'] = dict(workdir=study, rows=study_shares(study))
  else:
    out['run'] = paper_like_run()
  return out


def markdown(result: dict[str, Any]) -> str:
  dev = result['device']
  lines = [f'Machine: {common.machine_line(dev)}.', '']
  if 'run' in result:
    r, t = result['run'], result['run']['timing']
    lines += [f'Paper-like {r["algorithm"]} (lr {r["lr"]}, H {r["h"]}, seed {r["seed"]}) to '
              f'98% in {r["time_to_target_s"]:.2f} simulated s: wall {t["wall_time_s"]:.1f} s, '
              f'cycles {t["cycles_s"]:.1f} s, evaluation {t["eval_s"]:.1f} s '
              f'({t["evaluations"]} scheduled, {t.get("refinement_evaluations", 0)} '
              f'refining the target), implementation {t.get("implementation")}.', '',
              f'Evaluation share of the wall time: **{r["eval_share"]:.1%}** '
              f'(goal <= {result["goal"]:.0%}: {"met" if r["eval_share"] <= result["goal"] else "NOT met"}); '
              f'of the cycles and evaluations alone (without setup, compilation of the '
              f'evaluator and file writing): {t["eval_s"] / (t["eval_s"] + t["cycles_s"]):.1%}.']
  if 'study' in result:
    lines += [f'Finished runs of `{result["study"]["workdir"]}`:', '',
              '| algorithm | runs | evaluation share, mean | max |', '|---|---|---|---|']
    lines += [f'| {r["algorithm"]} | {r["runs"]} | {r["mean"]:.1%} | {r["max"]:.1%} |'
              for r in result['study']['rows']]
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--study', default=None, help="a comparison's workdir to summarise")
  args = parser.parse_args(argv)
  result = run(False, args.study)
  text = markdown(result)
  name = 'eval_share_study' if args.study else 'eval_share'
  common.write_result(args.out, name, 'Evaluation share of a paper-like run', result, text)
  print(text)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
