r"""Time-to-accuracy comparison of HADFL and its baselines on one scenario.

``docs/spec.md``, "Baselines" and "Evaluation". One command runs several algorithms, each
on every seed of ``compare.seeds`` (a seed fixes the data partition, the model
initialisation, the device profile and every random draw; the algorithms of one seed share
them), with the same evaluation::

  python -m hadfl_jax.compare --config configs/paper_mnist.py --workdir DIR

and writes into ``DIR``:

* ``results.json``: per algorithm the time to target accuracy (simulated seconds) as a
  mean over seeds with its 95% confidence interval and the number of seeds that reached
  it, the final consensus accuracy, bytes through the busiest link, every seed's values,
  the chosen hyperparameters, every grid point, HADFL's speedup over each baseline (the
  mean of per-seed paired ratios, with its CI: :mod:`hadfl_jax.comparison.stats`), and the
  machine (backend, device kind, CPU model and vector extensions, library versions);
* ``report.md``: the same as tables, one column per seed too;
* ``accuracy_vs_time.png`` and ``accuracy_vs_bytes.png``: mean curves with 95% bands;
* with ``--config.compare.sweep=True``: ``sweep.json`` and ``sweep_speedup.png``, HADFL's
  speedup over each baseline against the fastest/slowest speed ratio;
* with ``--config.compare.ablation=True``: ``ablation.json`` and ``ablation.md``.

**Tuning.** Every algorithm takes its learning rate from ``compare.learning_rates`` and,
where it has one, its H from ``compare.local_steps`` (local steps of the baselines;
HADFL's fastest device runs H steps per cycle, i.e. ``t_local = H *
profile.seconds_per_step``; DDP has none); ``compare.options`` adds dimensions of an
algorithm's own options (``'prague.group_size=2,3,4;fedbuff.server_lr=0.5,1'``). Every
point runs on every seed, and the winner is chosen by the mean over the seeds, never by
the best seed: fewest seeds that missed the target, then the smallest mean time to target,
then the highest mean final accuracy. A grid whose edge won is extended
(``compare.extend_edges`` rounds: the point at twice or half of the winning learning rate
or H, until the choice is interior), and ``compare.options_at_best`` runs the options grid
only at each algorithm's best (lr, H), coordinate-wise, so that an algorithm with options
is not given a grid several times larger than one without (:func:`search`).

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
models only exist at round boundaries). With ``refine_target`` (the default), the time to
target is then resolved to the cycle: the first evaluation at or above the target has the
consensus models of the cycles since the previous one evaluated, in order, and the first
that reaches it gives the time (:func:`hadfl_jax.train.run`).

**Stopping.** A run stops when it reaches the target (``stop_at_target``), after
``max_sim_time`` simulated seconds, or after ``num_cycles`` cycles; an algorithm that
does not reach the target within the cap gets a speedup reported as a lower bound
(``>=``). Final accuracy is the accuracy at the end of the run. A grid point that
diverges, or whose model collapses to chance (``compare.stop_collapsed``,
:func:`hadfl_jax.comparison.runs.collapse_rule`), is stopped and recorded as a run that
missed the target over the whole cap. With ``compare.prune`` a tuning run also stops once
its point can no longer be chosen (:func:`tune`); the choices are those of the full grid.

Each seed's data, partition and profile are built once and shared by every run of that
seed; the test set and evaluator are shared by all (the evaluator's jitted functions
compile once); each grid point jits its own cycle. Runs go seed by seed, so a comparison
cut short holds complete seeds; every run is cached in ``runs/<algorithm>_<point>/seed<s>``
and reused when the comparison is run again.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from hadfl_jax import algorithms
from hadfl_jax import config_files
from hadfl_jax import data as data_lib
from hadfl_jax import evaluation
from hadfl_jax import machine
from hadfl_jax import train
from hadfl_jax import validation
from hadfl_jax import workdir as workdir_lib
from hadfl_jax.comparison import stats
from hadfl_jax.comparison.grid import apply_point
from hadfl_jax.comparison.grid import carried_over
from hadfl_jax.comparison.grid import edge_points
from hadfl_jax.comparison.grid import eval_interval
from hadfl_jax.comparison.grid import grid_points
from hadfl_jax.comparison.grid import option_points
from hadfl_jax.comparison.grid import parse_extra_local_steps
from hadfl_jax.comparison.grid import point_tag
from hadfl_jax.comparison.report import fmt_tta
from hadfl_jax.comparison.report import plot_curves
from hadfl_jax.comparison.report import plot_sweep
from hadfl_jax.comparison.report import rank_key
from hadfl_jax.comparison.report import report_markdown
from hadfl_jax.comparison.report import speedup
from hadfl_jax.comparison.report import summarise
from hadfl_jax.comparison.report import sweep_table
from hadfl_jax.comparison.report import sweep_tta_table
from hadfl_jax.comparison.runs import covers
from hadfl_jax.comparison.runs import load_run
from hadfl_jax.comparison.runs import RunCounter
from hadfl_jax.comparison.runs import RunIndex
from hadfl_jax.comparison.runs import RunRecord
from hadfl_jax.comparison.runs import PointRuns
from hadfl_jax.comparison.runs import run_dir
from hadfl_jax.comparison.runs import run_point
from hadfl_jax.comparison.runs import SeedSetups
from hadfl_jax.comparison.runs import seeded
from hadfl_jax.comparison.runs import Tuned
from hadfl_jax.comparison.runs import write_json
from hadfl_jax.core import profiles

__all__ = ['ABLATION', 'ablation', 'apply_point', 'compare',
           'eval_interval', 'grid_points', 'heterogeneity_sweep', 'parse_extra_local_steps',
           'point_tag', 'PointRuns', 'rank_key', 'run_point', 'RunRecord', 'search', 'SeedSetups',
           'speedup', 'summarise', 'Tuned', 'tune']


def print_line(msg: str) -> None:
  print(msg, flush=True)


def best_sums(tuned: dict[str, Tuned]) -> dict[str, float]:
  """Per algorithm, the sum over seeds of its best point's times to target, where that
  point reached the target on every seed (what pruning measures against)."""
  return {name: sum(r.time_to_target_s for r in t.best.records) for name, t in tuned.items()
          if t.best is not None and all(r.time_to_target_s is not None for r in t.best.records)}


def tune(config, setups, evaluator, workdir: str, names: Sequence[str],
         points_of=None, log=print_line, verbose: bool = False,
         bounds: dict[str, float] | None = None) -> dict[str, Tuned]:
  """Runs every algorithm's grid on every seed; returns per algorithm its winner and all
  points.

  Seed by seed (so that every algorithm's runs of one seed complete together), each grid
  point runs in ``runs/<algorithm>_<point>/seed<s>`` (cached; a point that computes what a
  finished run under another name did, an option at its default, reuses that run:
  :class:`~hadfl_jax.comparison.runs.RunIndex`). A point's result is its
  runs on all of ``compare.seeds``; the winner is the best by the mean over the seeds
  (:func:`rank_key`). With ``compare.cached_only``, a point some seed of which never ran,
  or ran in a way this command would redo (:func:`~hadfl_jax.comparison.runs.covers`),
  is listed as not run.

  With ``compare.prune``, a run stops once its point can no longer beat the best point
  of its algorithm so far that reached the target on every seed: when the point's times
  to target on the seeds before (a miss counting its run length) plus this run's
  simulated time exceed that point's sum (:func:`~hadfl_jax.comparison.runs.prune_rule`).
  Every algorithm's choice is the same as without pruning.

  Args:
    setups: seed -> the seed's :class:`~hadfl_jax.train.Setup` (:class:`SeedSetups`).
    log: gets a line per run (``None``: silent); ``verbose`` also prints every run's own
      per-evaluation lines.
    bounds: per algorithm, the best sum over seeds of times to target of points run
      before (:func:`best_sums`), for pruning.
  """
  seeds = tuple(config.compare.seeds)
  points = {name: (points_of or (lambda n: grid_points(config, n)))(name) for name in names}
  counter = RunCounter(sum(len(p) for p in points.values()) * len(seeds), log)
  found: dict[tuple[str, str], dict[int, RunRecord]] = {}
  index = RunIndex(workdir)  # A point that another point's run already computed reuses it.
  best_sum = dict(bounds or {})
  prune = bool(config.compare.get('prune'))
  for seed in seeds:
    setup = None
    for name in names:
      for point in points[name]:
        tag = point_tag(point)
        where = run_dir(workdir, name, tag, seed)
        label = f'{name} {tag} seed {seed}'
        setup = setup or setups(seed)
        cfg = apply_point(seeded(config, seed), name, point, setup.problem)
        before = found.get((name, tag), {})
        budget = (best_sum[name] - sum(r.time_to_target_s if r.time_to_target_s is not None
                                       else r.sim_time_s for r in before.values())
                  if prune and name in best_sum else None)
        rec = index.find(cfg, where)
        answers = covers(rec, budget, config.compare.get('stop_collapsed', True))
        if config.compare.get('cached_only'):
          # A run that would be redone (pruned too early, stopped as collapsed while
          # collapsed runs are to go on) is not this point's run: listed as not run.
          rec = dataclasses.replace(rec, cached=True) if answers else None
          counter(label, rec)
          if rec is None:
            continue  # Not run (CPU time): the point is listed as not run.
        else:
          if not answers:
            rec = run_point(cfg, setup, evaluator, where, verbose, prune_budget_s=budget)
            index.add(cfg, where)
          else:
            rec = dataclasses.replace(rec, cached=True)
          counter(label, rec, f'TTA {fmt_tta(rec.time_to_target_s)}  final acc '
                  f'{rec.final_consensus_accuracy:.4f}  sim {rec.sim_time_s:.1f}s'
                  + ('  (pruned)' if 'pruned' in rec.summary else ''))
        found.setdefault((name, tag), {})[seed] = rec.at(point)
        done = found[(name, tag)]
        if len(done) == len(seeds) and all(r.time_to_target_s is not None
                                           for r in done.values()):
          total = sum(r.time_to_target_s for r in done.values())
          best_sum[name] = min(best_sum.get(name, total), total)
  out = {}
  for name in names:
    complete, skipped = [], []
    for point in points[name]:
      recs = found.get((name, point_tag(point)), {})
      if len(recs) == len(seeds):
        complete.append(PointRuns(point=point, seeds=seeds,
                                  records=tuple(recs[s] for s in seeds)))
      else:
        skipped.append(dict(point, missing_seeds=[s for s in seeds if s not in recs]))
    if complete:
      out[name] = Tuned(best=min(complete, key=rank_key), grid=tuple(complete),
                        skipped=tuple(skipped))
  return out


def search(config, setups, evaluator, workdir: str, names: Sequence[str],
           log=print_line, verbose: bool = False) -> dict[str, Tuned]:
  """:func:`tune` over each algorithm's grid, then where the grid's edge won, over its
  extension, then over its options at its best point; returns per algorithm its winner
  and all points.

  ``compare.extend_edges`` rounds: an algorithm whose chosen learning rate or H is its
  grid's largest (smallest) gets the point at twice (half) of it
  (:func:`~hadfl_jax.comparison.grid.edge_points`), until its choice is interior or the
  rounds are spent. With ``compare.options_at_best`` the algorithm's options grid then
  runs at its chosen point only (:func:`~hadfl_jax.comparison.grid.option_points`). A
  point's runs are cached like any other, so the same command finds them again.
  """
  tuned = tune(config, setups, evaluator, workdir, names, log=log, verbose=verbose)
  carried = carried_over(config)  # The earlier comparison's winners: not searched.
  points = {name: [g.point for g in t.grid] + [
      {k: v for k, v in p.items() if k != 'missing_seeds'} for p in t.skipped]
            for name, t in tuned.items() if name not in carried}
  if not points:
    return tuned

  def more(new: dict[str, list[dict]]) -> None:
    """Runs the new points and adds them to their algorithms' grids."""
    new = {name: extra for name, extra in new.items() if extra}
    for name, extra in new.items():
      points[name] += extra
    found = tune(config, setups, evaluator, workdir, tuple(new), points_of=new.get, log=log,
                 verbose=verbose, bounds=best_sums(tuned))
    for name, extra in new.items():
      t = found.get(name) or Tuned(best=None, grid=(), skipped=tuple(
          dict(p, missing_seeds=list(config.compare.seeds)) for p in extra))
      grid, skipped = tuned[name].grid + t.grid, tuned[name].skipped + t.skipped
      tuned[name] = Tuned(best=min(grid, key=rank_key), grid=grid, skipped=skipped)

  for _ in range(config.compare.get('extend_edges', 0)):
    new = {name: edge_points(tuned[name].best.point, points[name]) for name in points
           if tuned[name].best is not None}
    if not any(new.values()):
      break
    more(new)
  if config.compare.get('options_at_best'):
    more({name: option_points(config, name, tuned[name].best.point) for name in points
          if tuned[name].best is not None})
  return tuned


def _profile_setup(setup, config):
  """``setup`` with the device profile of ``config`` (the data, partition and model stay)."""
  return dataclasses.replace(setup, problem=dataclasses.replace(
      setup.problem, profile=profiles.make_profile(config.profile, config.num_devices,
                                                   config.seed)))


def heterogeneity_sweep(config, setups, evaluator, tuned, workdir, log=print_line,
                        verbose: bool = False) -> dict:
  """HADFL's speedup over each baseline for speed ratios ``compare.sweep_ratios``, on
  every seed.

  Profiles are geometric from 1 to r over the N devices; every algorithm runs with the
  hyperparameters that won the main comparison (not re-tuned per ratio). Each row gives
  per algorithm the time to target over seeds and HADFL's paired speedup.

  With ``compare.cached_only`` only finished runs are collected: a row then holds the
  seeds on which every algorithm of the ratio finished (``seeds``; ``not_run`` lists the
  missing runs), and a ratio without such a seed has no row; the result's ``not_run``
  lists every missing run, so a partial sweep never reads as a complete one.
  """
  seeds = tuple(config.compare.seeds)
  cached_only = bool(config.compare.get('cached_only'))
  counter = RunCounter(len(config.compare.sweep_ratios) * len(tuned) * len(seeds), log)
  found: dict[tuple[float, str], dict[int, RunRecord]] = {}
  for seed in seeds:
    for ratio in config.compare.sweep_ratios:
      cfg = seeded(config, seed)
      cfg.profile.kind = 'geometric'
      cfg.profile.ratio = float(ratio)
      setup = _profile_setup(setups(seed), cfg)
      for name, t in tuned.items():
        c = apply_point(cfg, name, t.best.point, setup.problem)
        where = os.path.join(workdir, 'sweep', f'r{ratio:g}_{name}', f'seed{seed}')
        label = f'sweep r={ratio:g} {name} seed {seed}'
        if cached_only:
          rec = load_run(c, where)
          if not covers(rec, None, config.compare.get('stop_collapsed', True)):
            rec = None  # A run that run_point would redo is not this ratio's run.
          counter(label, rec and dataclasses.replace(rec, cached=True))
          if rec is None:
            continue
        else:
          rec = run_point(c, setup, evaluator, where, verbose)
          counter(label, rec, f'TTA {fmt_tta(rec.time_to_target_s)}')
        found.setdefault((float(ratio), name), {})[seed] = rec
  rows = []
  missing = [{'ratio': float(ratio), 'algorithm': name, 'seed': seed}
             for seed in seeds for ratio in config.compare.sweep_ratios for name in tuned
             if seed not in found.get((float(ratio), name), {})]
  for ratio in config.compare.sweep_ratios:
    done = {name: found.get((float(ratio), name), {}) for name in tuned}
    complete = tuple(s for s in seeds if all(s in d for d in done.values()))
    if not complete:
      continue
    runs = {name: PointRuns(point=t.best.point, seeds=complete,
                            records=tuple(done[name][s] for s in complete))
            for name, t in tuned.items()}
    row = {'ratio': float(ratio),
           'time_to_target_s': {n: r.time_to_target() for n, r in runs.items()},
           'final_consensus_accuracy': {n: r.mean('final_consensus_accuracy')
                                        for n, r in runs.items()}}
    if complete != seeds:
      row['seeds'] = list(complete)
      row['not_run'] = [{'algorithm': n, 'seed': s} for s in seeds for n in tuned
                        if s not in done[n]]
    if 'hadfl' in runs:
      row['hadfl_speedup'] = {n: stats.paired_speedup(runs['hadfl'].ttas, r.ttas,
                                                      r.run_lengths)
                              for n, r in runs.items() if n != 'hadfl'}
    rows.append(row)
  write_json(os.path.join(workdir, 'sweep.json'), rows)
  plot_sweep(rows, workdir)
  return {'rows': rows, **({'not_run': missing} if missing else {})}


ABLATION = (
    ('hadfl.selection', ('version', 'speed', 'uniform', 'staleness')),
    ('hadfl.weights', ('data', 'uniform', 'steps', 'version')),
    ('hadfl.rho', (0.25, 0.5, 0.75, 1.0)),
)


def ablation(config, setups, evaluator, base_point: dict, workdir: str, log=print_line,
             verbose: bool = False) -> dict:
  """HADFL's open choices, one factor at a time around ``base_point`` and the defaults,
  on every seed."""
  seeds = tuple(config.compare.seeds)
  counter = RunCounter(sum(len(values) for _, values in ABLATION) * len(seeds), log)
  found: dict[tuple[str, Any], list[RunRecord]] = {}
  for seed in seeds:
    setup = setups(seed)
    done = {}
    for field, values in ABLATION:
      for v in values:
        point = dict(base_point, **{field: v})
        cfg = apply_point(seeded(config, seed), 'hadfl', point, setup.problem)
        key = (cfg.hadfl.selection, cfg.hadfl.weights, cfg.hadfl.rho)
        repeated = key in done  # The same run as an earlier value's (e.g. the default).
        if not repeated:
          done[key] = run_point(cfg, setup, evaluator, os.path.join(
              workdir, 'ablation', point_tag(point), f'seed{seed}'), verbose)
        rec = done[key]
        found.setdefault((field, v), []).append(rec)
        counter(f'ablation {field}={v} seed {seed}',
                dataclasses.replace(rec, cached=rec.cached or repeated),
                f'TTA {fmt_tta(rec.time_to_target_s)}  final {rec.final_consensus_accuracy:.4f}')
  rows = []
  for field, values in ABLATION:
    for v in values:
      runs = PointRuns(point=dict(base_point, **{field: v}), seeds=seeds,
                       records=tuple(found[(field, v)]))
      rows.append({'field': field, 'value': v, 'time_to_target_s': runs.time_to_target(),
                   'final_consensus_accuracy': runs.mean('final_consensus_accuracy')})
  write_json(os.path.join(workdir, 'ablation.json'), rows)
  centre = validation.algorithm_config(
      apply_point(config, 'hadfl', base_point, setups(seeds[0]).problem))
  lines = ['# HADFL ablation', '',
           f'One factor at a time around selection={centre.selection}, '
           f'weights={centre.weights}, rho={centre.rho} at lr={base_point["lr"]}, '
           f'H={base_point.get("h")}; target {config.target_accuracy:.0%}; seeds '
           f'{", ".join(map(str, seeds))}. Mean ± 95% CI half width over the seeds (">=": some '
           'seed missed the target and counts as its run length).', '',
           '| option | value | time to target (sim s) | reached | per seed | final acc |',
           '|---|---|---|---|---|---|']
  for r in rows:
    tta = r['time_to_target_s']
    lines.append(f'| {r["field"]} | {r["value"]} | {stats.fmt_estimate(tta)} | '
                 f'{tta["reached"]}/{tta["n"]} | '
                 f'{", ".join(fmt_tta(t) for t in tta["per_seed"])} | '
                 f'{stats.fmt_estimate(r["final_consensus_accuracy"], 4)} |')
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
  # The compare section first (after the researcher's modules have registered their
  # algorithms), so that a bad algorithms tuple is named as such rather than as its
  # first element's config.algorithm.
  validation.import_modules(config)
  names = validation.compare_config(config).algorithms
  for name in names:
    cfg = copy.deepcopy(config)
    cfg.algorithm = name
    validation.validate(cfg)
  with workdir_lib.WorkdirLock(workdir):
    return _compare(config, workdir, names, log, verbose)


def _compare(config, workdir: str, names: Sequence[str], log, verbose: bool) -> dict:
  write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  seeds = tuple(config.compare.seeds)
  setups = SeedSetups(config)
  setup = setups(seeds[0])
  # The test set and model are the same for every seed: one evaluator (compiled once).
  evaluator = evaluation.Evaluator.for_model(setup.problem.model, setup.test,
                                             config.eval_batch_size,
                                             config.device_eval_examples,
                                             task=setup.problem.task,
                                             conv_impl=validation.engine_config(config).conv_impl)
  wall = time.perf_counter()
  tuned = search(config, setups, evaluator, workdir, names, log=log, verbose=verbose)
  results = {'algorithms': summarise(tuned), 'seeds': list(seeds),
             'confidence': stats.CONFIDENCE, 'target_accuracy': config.target_accuracy,
             'eval_interval_s': eval_interval(config, setup.problem),
             'eval_growth': float(config.compare.get('eval_growth', 0.1)),
             'max_sim_time_s': config.max_sim_time,
             'machine': {**machine.describe(),
                         'implementation': train.implementation(setup, evaluator)}}
  # What an algorithm's module says of its configuration (e.g. D-PSGD's graph).
  results['descriptions'] = {
      name: algorithms.ALGORITHMS.get(name).describe(validation.algorithm_config(config, name),
                                                     setup.problem)
      for name in tuned if hasattr(algorithms.ALGORITHMS.get(name), 'describe')}
  write_json(os.path.join(workdir, 'results.json'), results)
  if tuned:
    plot_curves(tuned, workdir, config.target_accuracy)
  report = report_markdown(config, results['algorithms'],
                           f'Comparison: {os.path.basename(os.path.normpath(workdir))}',
                           seeds=seeds, machine=results['machine'])
  for name, text in results['descriptions'].items():
    report += f'\n{name}: {text["text"]}\n'
  if config.compare.sweep and tuned:
    results['sweep'] = heterogeneity_sweep(config, setups, evaluator, tuned, workdir, log,
                                           verbose)
    rows = results['sweep']['rows']
    report += ('\n## Heterogeneity sweep\n\n![sweep](sweep_speedup.png)\n\n'
               "HADFL's speedup (mean of per-seed ratios, 95% CI):\n\n" + sweep_table(rows) +
               '\nTime to target (sim s; mean ± 95% CI half width, seeds that reached it):\n\n'
               + sweep_tta_table(rows))
  if config.compare.ablation and 'hadfl' in tuned:
    results['ablation'] = ablation(config, setups, evaluator, tuned['hadfl'].best.point,
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
  except train.Preempted as e:  # Finished runs are cached: the same command goes on.
    print(f'{e}; finished runs are kept in {flags_.workdir}/runs', file=sys.stderr)
    raise SystemExit(143) from None
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
