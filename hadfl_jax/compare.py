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
import json
import os
import shutil
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np
from ml_collections import config_flags

from hadfl_jax import algorithms
from hadfl_jax import checkpoint
from hadfl_jax import evaluation
from hadfl_jax import train
from hadfl_jax import validation
from hadfl_jax.core import profiles

RUN_KEY_FILE = 'run_key.json'


def _write_json(path: str, obj) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(path + '.tmp', path)


def parse_extra_local_steps(spec: str) -> dict[str, tuple[int, ...]]:
  """``'dfedavg=20,10;dpsgd=5'`` -> ``{'dfedavg': (20, 10), 'dpsgd': (5,)}``."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(';'))):
    name, _, values = part.partition('=')
    out[name.strip()] = tuple(int(v) for v in values.split(',') if v.strip())
  return out


def grid_points(config, algorithm: str) -> list[dict]:
  """The hyperparameter grid of one algorithm: dicts with ``lr`` and maybe ``h``.

  With ``compare.winners_from`` (the path of an earlier ``results.json``) the grid is the
  single point that won there, where that comparison ran the algorithm.
  """
  cmp = config.compare
  if cmp.get('winners_from'):
    with open(cmp.winners_from) as f:
      earlier = json.load(f)['algorithms']
    if algorithm in earlier:
      return [dict(earlier[algorithm]['chosen'])]
  points = []
  extra = parse_extra_local_steps(cmp.get('extra_local_steps') or '')
  steps = sorted(set(cmp.local_steps) | set(extra.get(algorithm, ())))
  for lr in cmp.learning_rates:
    if 'h' in algorithms.grid_knobs(algorithm):
      points.extend({'lr': float(lr), 'h': int(h)} for h in steps)
    else:
      points.append({'lr': float(lr)})
  return points


def apply_point(config, algorithm: str, point: dict, problem) -> ml_collections.ConfigDict:
  """A copy of ``config`` that runs ``algorithm`` with the grid point's values.

  ``lr`` sets the optimizer's learning rate; the algorithm's module maps the rest (``h``,
  and e.g. DDP's cycle length from the evaluation interval) onto its typed config
  (:func:`hadfl_jax.algorithms.apply_grid_point`); ``'<algorithm>.<field>'`` keys (an
  ablation's) override its fields.
  """
  cfg = copy.deepcopy(config)
  cfg.algorithm = algorithm
  cfg.optimizer.learning_rate = point['lr']
  section = algorithms.apply_grid_point(
      algorithm, validation.algorithm_config(cfg), point,
      algorithms.GridContext(problem=problem, eval_interval_s=eval_interval(config, problem)))
  with cfg.unlocked():
    cfg[algorithm] = section.to_config_dict()
  return cfg


def eval_interval(config, problem) -> float:
  """``compare.eval_interval_s``, or (0) about 4 cycles of HADFL at the grid's smallest H."""
  if config.compare.eval_interval_s > 0:
    return float(config.compare.eval_interval_s)
  h = min(config.compare.local_steps)
  del problem
  return float(4 * h * config.profile.seconds_per_step)


def point_tag(point: dict) -> str:
  return '_'.join(f'{k.split(".")[-1]}{v}' for k, v in sorted(point.items()))


def run_point(config, setup: train.Setup, evaluator, workdir: str) -> dict:
  """Runs one algorithm with one config on a shared setup; returns its record.

  The run is :func:`hadfl_jax.train.train_and_evaluate`'s, on the shared data and
  evaluator, with the evaluation schedule in simulated seconds described in the module
  docstring. A finished run of the same config in ``workdir`` is reused.
  """
  validation.validate(config)
  cached = _load_run(config, workdir)
  if cached is not None:
    return cached
  if os.path.isdir(workdir):  # A stale or unfinished run of another config: start over.
    shutil.rmtree(workdir)
  run_config = copy.deepcopy(config)
  run_config.eval_interval_s = eval_interval(config, None)
  run_config.eval_growth = float(config.compare.get('eval_growth', 0.1))
  wall = time.perf_counter()
  train.train_and_evaluate(run_config, workdir, setup=setup, evaluator=evaluator)
  with open(os.path.join(workdir, 'timing.json')) as f:
    timing = json.load(f)
  timing['wall_time_s'] = time.perf_counter() - wall
  _write_json(os.path.join(workdir, 'timing.json'), timing)
  _write_json(os.path.join(workdir, RUN_KEY_FILE), _run_key(config))
  return _load_run(config, workdir)


def _run_key(config) -> dict:
  """What determines a run: the config without the comparison's grids, without the
  sections of other algorithms and without ``engine`` (how the simulation is scheduled,
  which by its contract never changes what it computes beyond float rounding), plus the
  evaluation schedule it implies."""
  d = checkpoint.active_sections(checkpoint.to_json_tree(validation.resolve(config)))
  d.pop('compare', None)
  d.pop('engine', None)
  d.pop('eval_interval_s', None)  # Set from compare.*, recorded as eval_schedule.
  d.pop('eval_growth', None)
  d['eval_schedule'] = {'interval_s': eval_interval(config, None),
                        'growth': float(config.compare.get('eval_growth', 0.1))}
  return d


def _load_run(config, workdir: str) -> dict | None:
  """A finished run of exactly this config in ``workdir`` (so grids can be extended and
  interrupted comparisons resumed without recomputing), else None.

  ``run_key.json`` is written last, once the run's files are complete.
  """
  names = (RUN_KEY_FILE, 'summary.json', 'metrics.jsonl', 'timing.json')
  paths = [os.path.join(workdir, f) for f in names]
  if not all(os.path.exists(p) for p in paths):
    return None
  with open(paths[0]) as f:
    if json.load(f) != json.loads(json.dumps(_run_key(config))):
      return None
  with open(paths[1]) as f:
    record = json.load(f)
  with open(paths[2]) as f:
    history = [json.loads(line) for line in f if line.strip()]
  with open(paths[3]) as f:
    wall = json.load(f).get('wall_time_s', float('nan'))
  return {**record, 'wall_time_s': wall, 'history': history}


def rank_key(record: dict):
  """Smaller is better: reached the target first, then higher final accuracy."""
  tta = record['time_to_target_s']
  return (0, tta, -record['final_consensus_accuracy']) if tta is not None else (
      1, 0.0, -record['final_consensus_accuracy'])


def speedup(hadfl: dict, other: dict) -> dict:
  """TTA(other) / TTA(hadfl); a lower bound when only HADFL reached the target."""
  a, b = hadfl['time_to_target_s'], other['time_to_target_s']
  if a is None:
    return {'value': None, 'lower_bound': False}
  if b is None:
    return {'value': other['sim_time_s'] / a, 'lower_bound': True}
  return {'value': b / a, 'lower_bound': False}


def _print(msg: str) -> None:
  print(msg, flush=True)


def tune(config, setup, evaluator, workdir: str, names: Sequence[str],
         points_of=None, log=_print) -> dict[str, dict]:
  """Runs every algorithm's grid; returns per algorithm its winner and all points."""
  out = {}
  for name in names:
    points = (points_of or (lambda n: grid_points(config, n)))(name)
    records, skipped = [], []
    for point in points:
      cfg = apply_point(config, name, point, setup.problem)
      run_dir = os.path.join(workdir, 'runs', f'{name}_{point_tag(point)}')
      if config.compare.get('cached_only') and _load_run(cfg, run_dir) is None:
        skipped.append(point)  # Not run (CPU time); the report lists it.
        log(f'[{name} {point_tag(point)}] not run (cached_only)')
        continue
      rec = run_point(cfg, setup, evaluator, run_dir)
      rec['point'] = point
      records.append(rec)
      tta = rec['time_to_target_s']
      log(f'[{name} {point_tag(point)}] TTA '
          f'{"not reached" if tta is None else f"{tta:.2f}s"}  final acc '
          f'{rec["final_consensus_accuracy"]:.4f}  sim {rec["sim_time_s"]:.1f}s  '
          f'wall {rec["wall_time_s"]:.0f}s')
    if not records:
      continue
    best = min(records, key=rank_key)
    out[name] = {'best': best, 'grid': records, 'skipped': skipped}
  return out


def _fmt_tta(t):
  return 'not reached' if t is None else f'{t:.2f}'


def _fmt_speedup(s):
  if s['value'] is None:
    return 'n/a'
  return f'{">= " if s["lower_bound"] else ""}{s["value"]:.2f}x'


def summarise(tuned: dict[str, dict]) -> dict:
  """results.json's content (without the per-evaluation histories)."""
  res = {}
  hadfl = tuned.get('hadfl', {}).get('best')
  for name, t in tuned.items():
    b = t['best']
    res[name] = {
        'time_to_target_s': b['time_to_target_s'],
        'final_consensus_accuracy': b['final_consensus_accuracy'],
        'best_consensus_accuracy': b['best_consensus_accuracy'],
        'busiest_link_bytes': b['busiest_link_bytes'],
        'bytes_sent': b['bytes_sent'],
        'sim_time_s': b['sim_time_s'],
        'chosen': b['point'],
        'grid': [{k: r[k] for k in ('point', 'time_to_target_s', 'final_consensus_accuracy',
                                    'sim_time_s', 'wall_time_s')} for r in t['grid']],
        'not_run': t.get('skipped', []),
    }
    if hadfl is not None and name != 'hadfl':
      res[name]['hadfl_speedup'] = speedup(hadfl, b)
  return res


def report_markdown(config, results: dict, title: str) -> str:
  lines = [f'# {title}', '',
           f'Target: {config.target_accuracy:.0%} consensus test accuracy; simulated time cap '
           f'{config.max_sim_time or "none"} s; seed {config.seed}; '
           f'{config.num_devices} devices; model `{config.model}`; data `{config.dataset.name}` '
           f'({config.partition.kind}' +
           (f', alpha {config.partition.alpha}' if config.partition.kind == 'dirichlet' else '') +
           ').', '']
  if config.compare.get('winners_from'):
    lines += [f'Hyperparameters carried over from `{config.compare.winners_from}` (the points '
              'that won there), not re-tuned here.', '']
  lines += [f'Evaluation (the same for every algorithm, in simulated seconds): after the first '
            f'cycle that ends past the next point, next point = max(t + '
            f'{eval_interval(config, None):g} s, t x {1 + config.compare.get("eval_growth", 0.1):g}). '
            'Runs stop at the target' + (' or the cap' if config.max_sim_time else '') +
            '; "final acc" is the consensus accuracy at the end of the run (so about the target '
            'for runs that reach it). Speedup = TTA(baseline) / TTA(HADFL); ">=" when the '
            'baseline never reached the target (its run length over HADFL\'s TTA). HADFL\'s H is '
            'the steps of its fastest device per cycle (t_local = H x seconds per step).', '']
  lines += ['| algorithm | time to target (sim s) | HADFL speedup | final acc | busiest link (MB) '
           '| chosen lr | chosen H |',
           '|---|---|---|---|---|---|---|']
  for name, r in results.items():
    sp = _fmt_speedup(r['hadfl_speedup']) if 'hadfl_speedup' in r else '1.00x'
    lines.append(f'| {name} | {_fmt_tta(r["time_to_target_s"])} | {sp} | '
                 f'{r["final_consensus_accuracy"]:.4f} | {r["busiest_link_bytes"] / 1e6:.1f} | '
                 f'{r["chosen"]["lr"]} | {r["chosen"].get("h", "-")} |')
  lines += ['', '## Grid', '', '| algorithm | lr | H | time to target (sim s) | final acc '
            '| sim time (s) | wall (s) |', '|---|---|---|---|---|---|---|']
  for name, r in results.items():
    for g in r['grid']:
      lines.append(f'| {name} | {g["point"]["lr"]} | {g["point"].get("h", "-")} | '
                   f'{_fmt_tta(g["time_to_target_s"])} | {g["final_consensus_accuracy"]:.4f} | '
                   f'{g["sim_time_s"]:.1f} | {g["wall_time_s"]:.0f} |')
    for p in r.get('not_run', []):
      lines.append(f'| {name} | {p["lr"]} | {p.get("h", "-")} | not run (CPU time) | | | |')
  return '\n'.join(lines) + '\n'


def plot_curves(tuned: dict[str, dict], workdir: str, target: float) -> list[str]:
  """accuracy_vs_time.png and accuracy_vs_bytes.png of every algorithm's winner."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []
  for key, xlabel, fname, scale in (
      ('sim_time_s', 'simulated time (s)', 'accuracy_vs_time.png', 1.0),
      ('bytes_sent', 'communicated bytes, all devices and server (MB)',
       'accuracy_vs_bytes.png', 1e-6)):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, t in tuned.items():
      h = t['best']['history']
      ax.plot([r[key] * scale for r in h], [r['consensus_accuracy'] for r in h],
              marker='.', label=name)
    ax.axhline(target, color='gray', ls='--', lw=0.8)
    ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('consensus test accuracy')
    lo = min(min(r['consensus_accuracy'] for r in t['best']['history']) for t in tuned.values())
    ax.set_ylim(max(lo, target - 0.1), 1.0)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(workdir, fname)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def heterogeneity_sweep(config, setup_fn, evaluator, tuned, workdir, log=_print) -> dict:
  """HADFL's speedup over each baseline for speed ratios ``compare.sweep_ratios``.

  Profiles are geometric from 1 to r over the N devices; every algorithm runs with the
  hyperparameters that won the main comparison (not re-tuned per ratio).
  """
  rows = []
  for ratio in config.compare.sweep_ratios:
    cfg = copy.deepcopy(config)
    cfg.profile.kind = 'geometric'
    cfg.profile.ratio = float(ratio)
    setup = setup_fn(cfg)
    recs = {}
    for name, t in tuned.items():
      point = t['best']['point']
      c = apply_point(cfg, name, point, setup.problem)
      recs[name] = run_point(c, setup, evaluator,
                             os.path.join(workdir, 'sweep', f'r{ratio:g}_{name}'))
      log(f'[sweep r={ratio:g} {name}] TTA {_fmt_tta(recs[name]["time_to_target_s"])}')
    row = {'ratio': float(ratio),
           'time_to_target_s': {n: r['time_to_target_s'] for n, r in recs.items()},
           'final_consensus_accuracy': {n: r['final_consensus_accuracy'] for n, r in recs.items()}}
    if 'hadfl' in recs:
      row['hadfl_speedup'] = {n: speedup(recs['hadfl'], r) for n, r in recs.items()
                              if n != 'hadfl'}
    rows.append(row)
    _write_json(os.path.join(workdir, 'sweep.json'), rows)
  plot_sweep(rows, workdir)
  return {'rows': rows}


def plot_sweep(rows, workdir: str) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  names = sorted({n for r in rows for n in r.get('hadfl_speedup', {})})
  for name in names:
    xs, ys, lb = [], [], []
    for r in rows:
      s = r['hadfl_speedup'].get(name)
      if s and s['value'] is not None:
        xs.append(r['ratio'])
        ys.append(s['value'])
        lb.append(s['lower_bound'])
    line, = ax.plot(xs, ys, marker='o', label=f'over {name}')
    for x, y, b in zip(xs, ys, lb):
      if b:
        ax.plot([x], [y], marker='^', color=line.get_color(), ms=9)
  ax.axhline(1.0, color='gray', lw=0.8)
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('speed ratio fastest / slowest')
  ax.set_ylabel("HADFL's speedup in time to target")
  ax.set_title('heterogeneity sweep (triangles: lower bounds)')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(workdir, 'sweep_speedup.png')
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


ABLATION = (
    ('hadfl.selection', ('version', 'speed', 'uniform', 'staleness')),
    ('hadfl.weights', ('data', 'uniform', 'steps', 'version')),
    ('hadfl.rho', (0.25, 0.5, 0.75, 1.0)),
)


def ablation(config, setup, evaluator, base_point: dict, workdir: str, log=_print) -> dict:
  """HADFL's open choices, one factor at a time around ``base_point`` and the defaults."""
  rows = []
  done = {}
  for field, values in ABLATION:
    for v in values:
      point = dict(base_point, **{field: v})
      cfg = apply_point(config, 'hadfl', point, setup.problem)
      key = (cfg.hadfl.selection, cfg.hadfl.weights, cfg.hadfl.rho)
      if key not in done:
        done[key] = run_point(cfg, setup, evaluator,
                              os.path.join(workdir, 'ablation', point_tag(point)))
      rec = done[key]
      rows.append({'field': field, 'value': v, 'time_to_target_s': rec['time_to_target_s'],
                   'final_consensus_accuracy': rec['final_consensus_accuracy'],
                   'sim_time_s': rec['sim_time_s']})
      log(f'[ablation {field}={v}] TTA {_fmt_tta(rec["time_to_target_s"])} '
          f'final {rec["final_consensus_accuracy"]:.4f}')
  _write_json(os.path.join(workdir, 'ablation.json'), rows)
  lines = ['# HADFL ablation', '',
           f'One factor at a time around the defaults (selection={config.hadfl.selection}, '
           f'weights={config.hadfl.weights}, rho={config.hadfl.rho}) at lr={base_point["lr"]}, '
           f'H={base_point.get("h")}; target {config.target_accuracy:.0%}.', '',
           '| option | value | time to target (sim s) | final acc |', '|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["field"]} | {r["value"]} | {_fmt_tta(r["time_to_target_s"])} | '
                 f'{r["final_consensus_accuracy"]:.4f} |')
  with open(os.path.join(workdir, 'ablation.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return {'rows': rows}


def ablation_over_seeds(paths: Sequence[str]) -> str:
  """A markdown table of several ``ablation.json`` (one per seed): mean and per-seed TTA.

  Points that never reached the target count as their run length (marked), so a mean
  with such a point is a lower bound.
  """
  runs = []
  for p in paths:
    with open(p) as f:
      runs.append(json.load(f))
  lines = ['| option | value | mean TTA (sim s) | TTA per seed | mean final acc |',
           '|---|---|---|---|---|']
  for i, row in enumerate(runs[0]):
    ttas = [r[i]['time_to_target_s'] for r in runs]
    vals = [t if t is not None else r[i]['sim_time_s'] for t, r in zip(ttas, runs)]
    mark = '>= ' if any(t is None for t in ttas) else ''
    per = ', '.join(_fmt_tta(t) for t in ttas)
    acc = np.mean([r[i]['final_consensus_accuracy'] for r in runs])
    lines.append(f'| {row["field"]} | {row["value"]} | {mark}{np.mean(vals):.2f} | {per} | '
                 f'{acc:.4f} |')
  return '\n'.join(lines) + '\n'


def compare(config: ml_collections.ConfigDict, workdir: str, log=_print) -> dict:
  """Runs the comparison (and optionally sweep and ablation) described in the module
  docstring; returns results.json's content."""
  os.makedirs(workdir, exist_ok=True)
  names = tuple(config.compare.algorithms)
  for name in names:
    cfg = copy.deepcopy(config)
    cfg.algorithm = name
    validation.validate(cfg)
  _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  setup = train.build_setup(config)
  evaluator = evaluation.Evaluator(setup.problem.model.apply, setup.test,
                                   config.eval_batch_size, config.device_eval_examples,
                                   task=setup.problem.task)
  wall = time.perf_counter()
  tuned = tune(config, setup, evaluator, workdir, names, log=log)
  results = {'algorithms': summarise(tuned), 'target_accuracy': config.target_accuracy,
             'eval_interval_s': eval_interval(config, setup.problem),
             'eval_growth': float(config.compare.get('eval_growth', 0.1)),
             'max_sim_time_s': config.max_sim_time}
  # What an algorithm's module says of its configuration (e.g. D-PSGD's graph).
  results['descriptions'] = {
      name: algorithms.ALGORITHMS.get(name).describe(validation.algorithm_config(config, name),
                                                     setup.problem)
      for name in tuned if hasattr(algorithms.ALGORITHMS.get(name), 'describe')}
  _write_json(os.path.join(workdir, 'results.json'), results)
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
    results['sweep'] = heterogeneity_sweep(config, setup_fn, evaluator, tuned, workdir, log)
    report += '\n## Heterogeneity sweep\n\n![sweep](sweep_speedup.png)\n\n' + _sweep_table(
        results['sweep']['rows'])
  if config.compare.ablation and 'hadfl' in tuned:
    results['ablation'] = ablation(config, setup, evaluator, tuned['hadfl']['best']['point'],
                                   workdir, log)
    report += '\n## Ablation\n\nSee [ablation.md](ablation.md).\n'
  report += ('\n![accuracy vs time](accuracy_vs_time.png)\n\n'
             '![accuracy vs bytes](accuracy_vs_bytes.png)\n')
  results['wall_time_s'] = time.perf_counter() - wall
  _write_json(os.path.join(workdir, 'results.json'), results)
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(report)
  return results


def _sweep_table(rows) -> str:
  names = sorted({n for r in rows for n in r.get('hadfl_speedup', {})})
  lines = ['| ratio | HADFL TTA (s) | ' + ' | '.join(f'speedup over {n}' for n in names) + ' |',
           '|---|---|' + '---|' * len(names)]
  for r in rows:
    lines.append(f'| {r["ratio"]:g} | {_fmt_tta(r["time_to_target_s"].get("hadfl"))} | ' +
                 ' | '.join(_fmt_speedup(r['hadfl_speedup'][n]) for n in names) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  flags_ = flags.FLAGS
  compare(flags_.config, flags_.workdir)
  with open(os.path.join(flags_.workdir, 'report.md')) as f:
    print(f.read())


if __name__ == '__main__':
  # Flags are defined only when this module is the program, so that importing it next to
  # hadfl_jax.main (which defines its own --config and --workdir) is fine.
  config_flags.DEFINE_config_file('config', None, 'Scenario config (configs/*.py).')
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
