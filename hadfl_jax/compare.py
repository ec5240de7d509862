r"""Time-to-accuracy comparison of HADFL and its baselines on one scenario.

``docs/spec.md``, "Baselines" and "Evaluation". One command runs several algorithms on the
same data partition, model initialisation, seed, device profile and evaluation::

  python -m hadfl_jax.compare --config configs/paper_mnist.py --workdir DIR

and writes into ``DIR``:

* ``results.json``: per algorithm the time to target accuracy (simulated seconds), the
  final consensus accuracy, bytes through the busiest link, the chosen hyperparameters,
  every grid point, and HADFL's speedup over each baseline;
* ``report.md``: the same as tables;
* ``accuracy_vs_time.png`` and ``accuracy_vs_bytes.png``;
* with ``--config.compare.sweep=True``: ``sweep.json`` and ``sweep_speedup.png``, HADFL's
  speedup over each baseline against the fastest/slowest speed ratio;
* with ``--config.compare.ablation=True``: ``ablation.json`` and ``ablation.md``.

**Tuning.** Every algorithm takes its learning rate from ``compare.learning_rates`` and,
where it has one, its H from ``compare.local_steps`` (the local steps of dfedavg,
fedavg and dpsgd; HADFL's fastest device runs H steps per cycle, i.e. ``t_local = H *
profile.seconds_per_step``; DDP has none). The winner is the grid point with the
smallest time to target; points that never reach it rank after all that do, by their
final accuracy.

**Fair evaluation.** How finely time to accuracy is resolved depends on how often a run
is evaluated in *simulated* time, so every run uses the same schedule in simulated
seconds, whatever its cycle length: after each cycle, the consensus model is evaluated if
the simulated time has passed the next evaluation point, and the next point is
``max(t + eval_interval_s, t * (1 + eval_growth))``. Short cycles are therefore evaluated
about every ``eval_interval_s`` at first and then with a relative resolution of
``eval_growth`` (10% by default), so long runs are not evaluated hundreds of times. DDP's
jitted cycle is cut to about ``eval_interval_s`` of simulated time (``ddp_steps``), so
that its evaluation points are as fine as the others'. An algorithm whose own round is
longer than the interval is evaluated after every round: that coarseness is real (its
models only exist at round boundaries).

**Stopping.** A run stops when it reaches the target (``stop_at_target``), after
``max_sim_time`` simulated seconds, or after ``num_cycles`` cycles; an algorithm that
does not reach the target within the cap gets a speedup reported as a lower bound
(``>=``). Final accuracy is the accuracy at the end of the run.

The data, test set and evaluator are built once per scenario and shared by every run
(the evaluator's jitted functions compile once); each grid point jits its own cycle.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from hadfl_jax import algorithms
from hadfl_jax import config_files
from hadfl_jax import data as data_lib
from hadfl_jax import evaluation
from hadfl_jax import train
from hadfl_jax import validation
from hadfl_jax import workdir as workdir_lib
from hadfl_jax.comparison.grid import apply_point
from hadfl_jax.comparison.grid import eval_interval
from hadfl_jax.comparison.grid import grid_points
from hadfl_jax.comparison.grid import parse_extra_local_steps
from hadfl_jax.comparison.grid import point_tag
from hadfl_jax.comparison.report import ablation_over_seeds
from hadfl_jax.comparison.report import fmt_tta
from hadfl_jax.comparison.report import plot_curves
from hadfl_jax.comparison.report import plot_sweep
from hadfl_jax.comparison.report import rank_key
from hadfl_jax.comparison.report import report_markdown
from hadfl_jax.comparison.report import speedup
from hadfl_jax.comparison.report import summarise
from hadfl_jax.comparison.report import sweep_table
from hadfl_jax.comparison.runs import load_run
from hadfl_jax.comparison.runs import RunCounter
from hadfl_jax.comparison.runs import RunRecord
from hadfl_jax.comparison.runs import Tuned
from hadfl_jax.comparison.runs import run_point
from hadfl_jax.comparison.runs import write_json
from hadfl_jax.core import profiles

__all__ = ['ABLATION', 'ablation', 'ablation_over_seeds', 'apply_point', 'compare',
           'eval_interval', 'grid_points', 'heterogeneity_sweep', 'parse_extra_local_steps',
           'point_tag', 'rank_key', 'run_point', 'RunRecord', 'speedup', 'summarise', 'Tuned',
           'tune']


def print_line(msg: str) -> None:
  print(msg, flush=True)


def tune(config, setup, evaluator, workdir: str, names: Sequence[str],
         points_of=None, log=print_line, verbose: bool = False) -> dict[str, Tuned]:
  """Runs every algorithm's grid; returns per algorithm its winner and all points.

  ``log`` gets a line per run (``None``: silent); ``verbose`` also prints every run's
  own per-evaluation lines.
  """
  points = {name: (points_of or (lambda n: grid_points(config, n)))(name) for name in names}
  counter = RunCounter(sum(len(p) for p in points.values()), log)
  out = {}
  for name in names:
    records, skipped = [], []
    for point in points[name]:
      cfg = apply_point(config, name, point, setup.problem)
      run_dir = os.path.join(workdir, 'runs', f'{name}_{point_tag(point)}')
      label = f'{name} {point_tag(point)}'
      if config.compare.get('cached_only') and load_run(cfg, run_dir) is None:
        skipped.append(point)  # Not run (CPU time); the report lists it.
        counter(label, None)
        continue
      rec = run_point(cfg, setup, evaluator, run_dir, verbose).at(point)
      records.append(rec)
      counter(label, rec, f'TTA {fmt_tta(rec.time_to_target_s)}  final acc '
              f'{rec.final_consensus_accuracy:.4f}  sim {rec.sim_time_s:.1f}s')
    if not records:
      continue
    best = min(records, key=rank_key)
    out[name] = Tuned(best=best, grid=tuple(records), skipped=tuple(skipped))
  return out


def heterogeneity_sweep(config, setup_fn, evaluator, tuned, workdir, log=print_line,
                        verbose: bool = False) -> dict:
  """HADFL's speedup over each baseline for speed ratios ``compare.sweep_ratios``.

  Profiles are geometric from 1 to r over the N devices; every algorithm runs with the
  hyperparameters that won the main comparison (not re-tuned per ratio).
  """
  rows = []
  counter = RunCounter(len(config.compare.sweep_ratios) * len(tuned), log)
  for ratio in config.compare.sweep_ratios:
    cfg = copy.deepcopy(config)
    cfg.profile.kind = 'geometric'
    cfg.profile.ratio = float(ratio)
    setup = setup_fn(cfg)
    recs = {}
    for name, t in tuned.items():
      point = t.best.point
      c = apply_point(cfg, name, point, setup.problem)
      recs[name] = run_point(c, setup, evaluator,
                             os.path.join(workdir, 'sweep', f'r{ratio:g}_{name}'), verbose)
      counter(f'sweep r={ratio:g} {name}', recs[name],
              f'TTA {fmt_tta(recs[name].time_to_target_s)}')
    row = {'ratio': float(ratio),
           'time_to_target_s': {n: r.time_to_target_s for n, r in recs.items()},
           'final_consensus_accuracy': {n: r.final_consensus_accuracy for n, r in recs.items()}}
    if 'hadfl' in recs:
      row['hadfl_speedup'] = {n: speedup(recs['hadfl'], r) for n, r in recs.items()
                              if n != 'hadfl'}
    rows.append(row)
    write_json(os.path.join(workdir, 'sweep.json'), rows)
  plot_sweep(rows, workdir)
  return {'rows': rows}


ABLATION = (
    ('hadfl.selection', ('version', 'speed', 'uniform', 'staleness')),
    ('hadfl.weights', ('data', 'uniform', 'steps', 'version')),
    ('hadfl.rho', (0.25, 0.5, 0.75, 1.0)),
)


def ablation(config, setup, evaluator, base_point: dict, workdir: str, log=print_line,
             verbose: bool = False) -> dict:
  """HADFL's open choices, one factor at a time around ``base_point`` and the defaults."""
  rows = []
  done = {}
  counter = RunCounter(sum(len(values) for _, values in ABLATION), log)
  for field, values in ABLATION:
    for v in values:
      point = dict(base_point, **{field: v})
      cfg = apply_point(config, 'hadfl', point, setup.problem)
      key = (cfg.hadfl.selection, cfg.hadfl.weights, cfg.hadfl.rho)
      repeated = key in done  # The same run as an earlier value's (e.g. the default).
      if not repeated:
        done[key] = run_point(cfg, setup, evaluator,
                              os.path.join(workdir, 'ablation', point_tag(point)), verbose)
      rec = done[key]
      rows.append({'field': field, 'value': v, 'time_to_target_s': rec.time_to_target_s,
                   'final_consensus_accuracy': rec.final_consensus_accuracy,
                   'sim_time_s': rec.sim_time_s})
      counter(f'ablation {field}={v}', dataclasses.replace(rec, cached=rec.cached or repeated),
              f'TTA {fmt_tta(rec.time_to_target_s)}  final {rec.final_consensus_accuracy:.4f}')
  write_json(os.path.join(workdir, 'ablation.json'), rows)
  lines = ['# HADFL ablation', '',
           f'One factor at a time around the defaults (selection={config.hadfl.selection}, '
           f'weights={config.hadfl.weights}, rho={config.hadfl.rho}) at lr={base_point["lr"]}, '
           f'H={base_point.get("h")}; target {config.target_accuracy:.0%}.', '',
           '| option | value | time to target (sim s) | final acc |', '|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["field"]} | {r["value"]} | {fmt_tta(r["time_to_target_s"])} | '
                 f'{r["final_consensus_accuracy"]:.4f} |')
  with open(os.path.join(workdir, 'ablation.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return {'rows': rows}


def compare(config: ml_collections.ConfigDict, workdir: str, log=print_line,
            verbose: bool = False) -> dict:
  """Runs the comparison (and optionally sweep and ablation) described in the module
  docstring; returns results.json's content.

  Args:
    config: the scenario config (a packaged one: ``hadfl_jax.configs``).
    workdir: where the runs (cached, resumable) and the report go.
    log: called with one line per run (which, its figures, cached or its wall time, the
      time left); ``None`` prints nothing.
    verbose: also print every run's own lines (one per evaluation).

  Raises:
    ConfigError: an invalid field (for any of the compared algorithms).
    WorkdirBusyError: another comparison is using ``workdir``.
  """
  names = tuple(config.compare.algorithms)
  for name in names:
    cfg = copy.deepcopy(config)
    cfg.algorithm = name
    validation.validate(cfg)
  with workdir_lib.WorkdirLock(workdir):
    return _compare(config, workdir, names, log, verbose)


def _compare(config, workdir: str, names: Sequence[str], log, verbose: bool) -> dict:
  write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  setup = train.build_setup(config)
  evaluator = evaluation.Evaluator(setup.problem.model.apply, setup.test,
                                   config.eval_batch_size, config.device_eval_examples,
                                   task=setup.problem.task)
  wall = time.perf_counter()
  tuned = tune(config, setup, evaluator, workdir, names, log=log, verbose=verbose)
  results = {'algorithms': summarise(tuned), 'target_accuracy': config.target_accuracy,
             'eval_interval_s': eval_interval(config, setup.problem),
             'eval_growth': float(config.compare.get('eval_growth', 0.1)),
             'max_sim_time_s': config.max_sim_time}
  # What an algorithm's module says of its configuration (e.g. D-PSGD's graph).
  results['descriptions'] = {
      name: algorithms.ALGORITHMS.get(name).describe(validation.algorithm_config(config, name),
                                                     setup.problem)
      for name in tuned if hasattr(algorithms.ALGORITHMS.get(name), 'describe')}
  write_json(os.path.join(workdir, 'results.json'), results)
  if tuned:
    plot_curves(tuned, workdir, config.target_accuracy)
  report = report_markdown(config, results['algorithms'],
                           f'Comparison: {os.path.basename(os.path.normpath(workdir))}')
  for name, text in results['descriptions'].items():
    report += f'\n{name}: {text["text"]}\n'
  if config.compare.sweep:
    # Only the profile changes: the data, partition and model are shared.
    setup_fn = lambda c: dataclasses.replace(setup, problem=dataclasses.replace(
        setup.problem, profile=profiles.make_profile(c.profile, c.num_devices, c.seed)))
    results['sweep'] = heterogeneity_sweep(config, setup_fn, evaluator, tuned, workdir, log,
                                           verbose)
    report += '\n## Heterogeneity sweep\n\n![sweep](sweep_speedup.png)\n\n' + sweep_table(
        results['sweep']['rows'])
  if config.compare.ablation and 'hadfl' in tuned:
    results['ablation'] = ablation(config, setup, evaluator, tuned['hadfl'].best.point,
                                   workdir, log, verbose)
    report += '\n## Ablation\n\nSee [ablation.md](ablation.md).\n'
  report += ('\n![accuracy vs time](accuracy_vs_time.png)\n\n'
             '![accuracy vs bytes](accuracy_vs_bytes.png)\n')
  results['wall_time_s'] = time.perf_counter() - wall
  write_json(os.path.join(workdir, 'results.json'), results)
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(report)
  return results


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  flags_ = flags.FLAGS
  try:
    compare(flags_.config, flags_.workdir, log=None if flags_.quiet else print_line,
            verbose=flags_.verbose_runs and not flags_.quiet)
  except (validation.ConfigError, data_lib.DatasetError, train.DivergenceError,
          workdir_lib.WorkdirBusyError) as e:
    raise SystemExit(f'error: {e}') from None
  if not flags_.quiet:
    with open(os.path.join(flags_.workdir, 'report.md')) as f:
      print(f.read())


if __name__ == '__main__':
  # Flags are defined only when this module is the program, so that importing it next to
  # hadfl_jax.main (which defines its own --config and --workdir) is fine.
  config_flags.DEFINE_config_file(
      'config', None, 'A scenario config file, or a packaged config by name (paper_mnist, ...).')
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.DEFINE_bool('quiet', False, 'Print nothing but errors and warnings.')
  flags.DEFINE_bool('verbose_runs', False, "Also print each run's line per evaluation.")
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=config_files.parse_flags)
