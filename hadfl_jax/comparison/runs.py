"""One grid point's run, cached: a finished run of the same config is reused.

A run is keyed by :func:`run_key`: the resolved config without the comparison's grids,
without other algorithms' sections and without ``engine`` (how the simulation is
scheduled, which by its contract never changes what it computes beyond float rounding),
plus the evaluation schedule it implies. ``run_key.json`` is written last, once the run's
files are complete, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import math
import os
import shutil
import time
from typing import Any, Callable

from hadfl_jax import checkpoint
from hadfl_jax import train
from hadfl_jax import validation
from hadfl_jax.comparison import stats
from hadfl_jax.comparison.grid import eval_interval
from hadfl_jax.core import selection


RUN_KEY_FILE = 'run_key.json'


def write_json(path: str, obj) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(path + '.tmp', path)


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """One finished run of a grid point: its ``summary.json``, the rows of its
  ``metrics.jsonl``, its wall time and the grid point it ran.

  Attributes:
    summary: the run's final figures (:func:`hadfl_jax.train.summarize`).
    history: the evaluation rows.
    wall_time_s: wall-clock seconds the run took (not part of its results).
    point: the grid point (``lr``, maybe ``h`` and ``'<algorithm>.<field>'`` overrides).
    cached: True when this comparison found the run finished in its workdir and reused
      it instead of running it (``wall_time_s`` is then the original run's).
  """

  summary: dict[str, Any]
  history: tuple[dict[str, Any], ...]
  wall_time_s: float
  point: dict[str, Any] = dataclasses.field(default_factory=dict)
  cached: bool = False

  @property
  def time_to_target_s(self) -> float | None:
    return self.summary['time_to_target_s']

  @property
  def final_consensus_accuracy(self) -> float:
    return self.summary['final_consensus_accuracy']

  @property
  def best_consensus_accuracy(self) -> float:
    return self.summary['best_consensus_accuracy']

  @property
  def sim_time_s(self) -> float:
    return self.summary['sim_time_s']

  @property
  def bytes_sent(self) -> float:
    return self.summary['bytes_sent']

  @property
  def busiest_link_bytes(self) -> float:
    return self.summary['busiest_link_bytes']

  def at(self, point: dict[str, Any]) -> 'RunRecord':
    return dataclasses.replace(self, point=dict(point))


class RunCounter:
  """Logs a comparison's runs as they finish: which, its figures, cached or its wall
  time, and an estimate of the time left (from the runs actually run so far).

  Args:
    total: the number of runs this counter will see.
    log: called with each line (``None``: silent).
  """

  def __init__(self, total: int, log: Callable[[str], None] | None):
    self.total, self._log = total, log
    self.done = self.ran = 0
    self._ran_wall = 0.0

  def __call__(self, label: str, record: RunRecord | None, figures: str = '') -> None:
    """Counts one run (``record=None``: not run, e.g. ``cached_only``) and logs it."""
    self.done += 1
    if record is None:
      status = 'not run (cached_only)'
    elif record.cached:
      status = 'cached'
    else:
      self.ran += 1
      self._ran_wall += record.wall_time_s
      status = f'wall {train.format_duration(record.wall_time_s)}'
    left = self.total - self.done
    eta = (f', eta {train.format_duration(self._ran_wall / self.ran * left)}'
           if self.ran and left else '')
    if self._log is not None:
      self._log(f'[{self.done}/{self.total}] [{label}] {figures}{"  " if figures else ""}'
                f'{status}{eta}')


@dataclasses.dataclass(frozen=True)
class PointRuns:
  """One grid point run on every seed of the comparison.

  Attributes:
    point: the grid point.
    seeds: the seeds, in ``compare.seeds`` order.
    records: each seed's run, aligned with ``seeds``.
  """

  point: dict[str, Any]
  seeds: tuple[int, ...]
  records: tuple[RunRecord, ...]

  @property
  def ttas(self) -> list[float | None]:
    return [r.time_to_target_s for r in self.records]

  @property
  def run_lengths(self) -> list[float]:
    return [r.sim_time_s for r in self.records]

  @property
  def wall_time_s(self) -> float:
    return float(sum(r.wall_time_s for r in self.records))

  def time_to_target(self) -> dict:
    """Mean and 95% CI over seeds (:func:`hadfl_jax.comparison.stats.time_to_target`)."""
    return stats.time_to_target(self.ttas, self.run_lengths)

  def mean(self, field: str) -> dict:
    """Mean and 95% CI over seeds of a ``summary.json`` field."""
    return stats.mean_ci([r.summary[field] for r in self.records])

  def per_seed(self) -> list[dict[str, Any]]:
    """Each seed's figures, for ``results.json``."""
    return [{'seed': s, 'time_to_target_s': r.time_to_target_s,
             'final_consensus_accuracy': r.final_consensus_accuracy,
             'busiest_link_bytes': r.summary.get('busiest_link_bytes'),
             'bytes_sent': r.summary.get('bytes_sent'), 'sim_time_s': r.sim_time_s,
             'wall_time_s': r.wall_time_s} for s, r in zip(self.seeds, self.records)]


@dataclasses.dataclass(frozen=True)
class Tuned:
  """One algorithm's grid: every point run on every seed, the points not run (all
  seeds) or not complete, and the winner (:func:`hadfl_jax.comparison.report.rank_key`)."""

  best: PointRuns
  grid: tuple[PointRuns, ...]
  skipped: tuple[dict[str, Any], ...] = ()


class SeedSetups:
  """Each seed's :class:`~hadfl_jax.train.Setup` (its own data partition, initialisation
  and device profile), built when first asked for; only the latest is kept, so a
  comparison that goes seed by seed holds one seed's data at a time.
  """

  def __init__(self, config, build: Callable[[Any], train.Setup] = None):
    self._config, self._build = config, build or train.build_setup
    self._seed, self._setup = None, None

  def __call__(self, seed: int) -> train.Setup:
    if seed != self._seed:
      self._setup = None  # Free the previous seed's data first.
      self._setup = self._build(seeded(self._config, seed))
      self._seed = seed
    return self._setup


def seeded(config, seed: int):
  """A copy of ``config`` with ``seed``."""
  cfg = copy.deepcopy(config)
  cfg.seed = int(seed)
  return cfg


def run_dir(workdir: str, name: str, tag: str, seed: int) -> str:
  """Where one algorithm's grid point runs on one seed: ``runs/<name>_<point>/seed<s>``."""
  return os.path.join(workdir, 'runs', f'{name}_{tag}', f'seed{seed}')


def covers(record: RunRecord | None, prune_budget_s: float | None,
           stop_collapsed: bool = True) -> bool:
  """Whether a cached record answers a run with this pruning budget: any record but one
  pruned earlier than the budget now allows (a record of a run that went to its end
  answers every budget), and but one stopped as collapsed when collapsed runs are now
  to run on (``compare.stop_collapsed`` off)."""
  if record is None:
    return False
  if 'collapsed' in record.summary and not stop_collapsed:
    return False
  pruned_at = record.summary.get('prune_budget_s')
  if 'pruned' not in record.summary or pruned_at is None:
    return True
  return prune_budget_s is not None and pruned_at >= prune_budget_s


def run_point(config, setup: train.Setup, evaluator, workdir: str,
              verbose: bool = False, prune_budget_s: float | None = None) -> RunRecord:
  """Runs one algorithm with one config on a shared setup; returns its record.

  The run is :func:`hadfl_jax.train.train_and_evaluate`'s, on the shared data and
  evaluator, with the evaluation schedule in simulated seconds described in the module
  docstring. A finished run of the same config in ``workdir`` is reused (its record says
  ``cached``) unless it was pruned earlier than ``prune_budget_s`` allows
  (:func:`covers`). ``verbose`` prints the run's own lines (one per evaluation).
  ``prune_budget_s``: stop the run, unless it has reached the target, at the first
  evaluation past this simulated time (:func:`prune_rule`).
  """
  validation.validate(config)
  cached = load_run(config, workdir)
  if covers(cached, prune_budget_s, config.compare.get('stop_collapsed', True)):
    return dataclasses.replace(cached, cached=True)
  if os.path.isdir(workdir):  # A stale, unfinished or pruned run: start over.
    shutil.rmtree(workdir)
  run_config = copy.deepcopy(config)
  run_config.eval_interval_s = eval_interval(config, None)
  run_config.eval_growth = float(config.compare.get('eval_growth', 0.1))
  rules = []
  if config.compare.get('stop_collapsed', True) and config.loss == 'cross_entropy':
    rules.append(collapse_rule(setup.test.num_classes, config.max_sim_time))
  if prune_budget_s is not None:
    rules.append(prune_rule(prune_budget_s))
  give_up = (lambda history: next(filter(None, (rule(history) for rule in rules)), None)
             ) if rules else None
  wall, cpu = time.perf_counter(), time.process_time()
  try:
    train.train_and_evaluate(run_config, workdir, setup=setup, evaluator=evaluator,
                             give_up=give_up, verbose=verbose)
    with open(os.path.join(workdir, 'timing.json')) as f:
      timing = json.load(f)
  except (train.DivergenceError, train.GaveUp) as e:
    # One point of a grid that diverges, collapses (a learning rate too large) or is
    # pruned is a result, not the end of the comparison: recorded as a run that never
    # reached the target.
    kind = ('diverged' if not isinstance(e, train.GaveUp) else
            'pruned' if 'pruned:' in str(e) else 'collapsed')
    summary = diverged_summary(config, workdir, str(e), kind)
    if kind == 'pruned':
      summary['prune_budget_s'] = prune_budget_s
    write_json(os.path.join(workdir, 'summary.json'), summary)
    timing = {}
  timing['wall_time_s'] = time.perf_counter() - wall
  timing['cpu_time_s'] = time.process_time() - cpu  # The whole call's, as the wall time.
  write_json(os.path.join(workdir, 'timing.json'), timing)
  write_json(os.path.join(workdir, RUN_KEY_FILE), run_key(config))
  return load_run(config, workdir)


COLLAPSE_PATIENCE = 5  # Evaluations in a row.
COLLAPSE_AFTER = 0.1  # Of max_sim_time.


def collapse_rule(num_classes: int, max_sim_time: float,
                  patience: int = COLLAPSE_PATIENCE) -> Callable[[list[dict]], str | None]:
  """A give-up rule (:func:`hadfl_jax.train.run`) for a grid point whose model collapsed.

  A classifier whose consensus model has become a constant predictor (test loss at
  least 0.99 ln(C), the loss of a uniform guess, and accuracy at most 2/C) at
  ``patience`` evaluations in a row, all after ``COLLAPSE_AFTER`` of the cap, is stopped:
  with momentum SGD at too large a learning rate the ReLUs die and such a run stays at
  chance until the cap, which would cost a comparison as much compute as a good point.
  It is recorded as a run that never reached the target and ran the whole cap
  (:func:`diverged_summary`); that it could have recovered later is the assumption,
  stated in ``summary.json`` (``collapsed``). Not in the run key: a run that does not
  collapse computes the same with or without it.
  """
  chance_loss = math.log(num_classes)
  after_s = COLLAPSE_AFTER * max_sim_time

  def rule(history: list[dict]) -> str | None:
    last = history[-patience:]
    if len(last) < patience or last[0]['sim_time_s'] < after_s:
      return None
    if all(r['loss'] >= 0.99 * chance_loss and r['consensus_accuracy'] <= 2.0 / num_classes
           for r in last):
      return (f'collapsed: consensus test loss >= 0.99 ln({num_classes}) and accuracy '
              f'<= 2/{num_classes} at the last {patience} evaluations, from '
              f'{last[0]["sim_time_s"]:.2f} simulated s')
    return None

  return rule


def prune_rule(budget_s: float) -> Callable[[list[dict]], str | None]:
  """A give-up rule for a tuning run that can no longer change the choice.

  ``budget_s`` is how long this seed may take before its point's mean time to target
  must exceed that of the best point of its algorithm run so far, which reached the
  target on every seed (:func:`hadfl_jax.compare.tune`). Past it, without the target,
  the point ranks below that one whatever happens later (:func:`rank_key
  <hadfl_jax.comparison.report.rank_key>`: a missed seed ranks after none), so the run is
  stopped and recorded as a miss at the time it stopped (``pruned`` in ``summary.json``).
  The choice is the same as without pruning; the pruned point's own time to target is
  then only known to exceed the time it stopped at. Not in the run key: a run that
  reaches the target computes the same with or without it.
  """

  def rule(history: list[dict]) -> str | None:
    t = history[-1]['sim_time_s'] if history else 0.0
    if t > budget_s:
      return (f'pruned: not at the target by {t:.2f} simulated s, past the {budget_s:.2f} s '
              "after which its point's mean time to target exceeds the best point's")
    return None

  return rule


def diverged_summary(config, workdir: str, message: str, kind: str = 'diverged') -> dict:
  """``summary.json`` of a run stopped by divergence (or collapse or pruning, ``kind``): it
  never reached the target (unless it had before), its final accuracy is 0 when diverged
  (its model is not finite), else its last evaluation's. A diverged or collapsed run
  counts as having run ``max_sim_time`` (else as far as it got), so that a mean over seeds
  with such a seed is the lower bound of a run that never gets there; a pruned one as
  having run as far as it got (:func:`prune_rule`)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  else:
    open(path, 'w').close()
  reached = [r for r in rows if r['consensus_accuracy'] >= config.target_accuracy]
  last = rows[-1] if rows else {}
  final = last.get('consensus_accuracy', 0.0) if kind != 'diverged' else 0.0
  return {'algorithm': config.algorithm, kind: message,
          'target_accuracy': config.target_accuracy,
          'time_to_target_s': reached[0]['sim_time_s'] if reached else None,
          'final_consensus_accuracy': final,
          'best_consensus_accuracy': max((r['consensus_accuracy'] for r in rows), default=0.0),
          'sim_time_s': float(last.get('sim_time_s', 0.0) if kind == 'pruned'
                              else config.max_sim_time or last.get('sim_time_s', 0.0)),
          'bytes_sent': last.get('bytes_sent', 0.0),
          'busiest_link_bytes': last.get('busiest_link_bytes', 0.0)}


def run_key(config) -> dict:
  """What determines a run: the config without the comparison's grids, without the
  sections of other algorithms, without ``engine`` (how the simulation is scheduled,
  which by its contract never changes what it computes beyond float rounding) and
  without the data's location on this machine, plus the evaluation schedule it implies
  and the algorithm's ``REVISION`` where it is past 1."""
  d = checkpoint.active_sections(checkpoint.to_json_tree(validation.resolve(config)))
  _drop_locations(d)
  d.pop('compare', None)
  d.pop('engine', None)
  d.pop('eval_interval_s', None)  # Set from compare.*, recorded as eval_schedule.
  d.pop('eval_growth', None)
  d['eval_schedule'] = {'interval_s': eval_interval(config, None),
                        'growth': float(config.compare.get('eval_growth', 0.1))}
  if isinstance(d.get('hadfl'), dict):  # K itself: its rounding of rho N was once different.
    d['hadfl']['group_size'] = selection.group_size(d['hadfl']['rho'], d['num_devices'])
  # An algorithm whose computation was corrected declares its REVISION (from 2): runs of
  # an earlier revision are not reused (keys without it are revision 1).
  revision = checkpoint.algorithm_revision(config)
  if revision != 1:
    d['algorithm_revision'] = revision
  return d


def load_run(config, workdir: str) -> RunRecord | None:
  """A finished run of exactly this config in ``workdir`` (so grids can be extended and
  interrupted comparisons resumed without recomputing), else None.

  ``run_key.json`` is written last, once the run's files are complete.
  """
  names = (RUN_KEY_FILE, 'summary.json', 'metrics.jsonl', 'timing.json')
  paths = [os.path.join(workdir, f) for f in names]
  if not all(os.path.exists(p) for p in paths):
    return None
  with open(paths[0]) as f:
    if upgrade_run_key(json.load(f)) != json.loads(json.dumps(run_key(config))):
      return None
  with open(paths[1]) as f:
    summary = json.load(f)
  with open(paths[2]) as f:
    history = tuple(json.loads(line) for line in f if line.strip())
  with open(paths[3]) as f:
    wall = json.load(f).get('wall_time_s', float('nan'))
  return RunRecord(summary=summary, history=history, wall_time_s=wall)



def _canonical(key: dict) -> str:
  return json.dumps(key, sort_keys=True)


class RunIndex:
  """The finished runs under a comparison's ``runs/``, found by what determines them.

  A grid point is cached in its own directory (:func:`run_dir`), named by its tag. Two
  points with different tags can be the same run: ``'hadfl.rho': 0.5`` from
  ``compare.options`` is HADFL's default, so ``hadfl_h20_lr0.1_rho0.5`` computes exactly
  what ``hadfl_h20_lr0.1`` did. :meth:`find` returns such a run by its run key, wherever
  it lies, so a grid that gains a dimension reuses the runs that its earlier points made.
  The directories are read once, on the first lookup; runs made later are added.
  """

  def __init__(self, workdir: str):
    self._pattern = os.path.join(workdir, 'runs', '*', 'seed*', RUN_KEY_FILE)
    self._where: dict[str, str] | None = None

  def _scan(self) -> dict[str, str]:
    where = {}
    for path in sorted(glob.glob(self._pattern)):
      try:
        with open(path) as f:
          key = upgrade_run_key(json.load(f))
      except (OSError, ValueError, KeyError):
        continue  # Not a run key this version reads: not a cached run.
      where.setdefault(_canonical(key), os.path.dirname(path))
    return where

  def find(self, config, workdir: str | None = None) -> RunRecord | None:
    """The finished run of ``config``: in ``workdir`` if there, else wherever it lies."""
    found = load_run(config, workdir) if workdir else None
    if found is None:
      if self._where is None:
        self._where = self._scan()
      other = self._where.get(_canonical(json.loads(json.dumps(run_key(config)))))
      found = load_run(config, other) if other else None
    return found

  def add(self, config, workdir: str) -> None:
    if self._where is not None:
      self._where.setdefault(_canonical(json.loads(json.dumps(run_key(config)))), workdir)


def _drop_locations(key: dict) -> None:
  for field in ('data_dir', 'idx_dir'):  # Where the same data lives (checkpoint.py).
    key.get('dataset', {}).pop(field, None)


# The fields of the single ``baselines`` section of run keys written before each algorithm
# had its own section, by the algorithm that read them: new name <- old name.
_OLD_BASELINE_FIELDS = {
    'ddp': {'steps_per_cycle': 'ddp_steps'},
    'dfedavg': {'local_steps': 'local_steps', 'opt_state': 'opt_state'},
    'fedavg': {'local_steps': 'local_steps', 'fraction': 'fedavg_fraction',
               'opt_state': 'opt_state'},
    'dpsgd': {'local_steps': 'local_steps', 'graph': 'graph', 'opt_state': 'opt_state'},
}


def upgrade_run_key(key: dict) -> dict:
  """A run key written by an earlier version, in today's form.

  Before ``refine_target`` existed, runs resolved the time to target to the scheduled
  evaluations (``refine_target`` False). HADFL's section: see :func:`_upgrade_hadfl`.
  Before the per-algorithm sections, one ``baselines`` section served every baseline, ``hadfl`` was in every key, the
  coordinator's ``speed_ema`` lived in ``profile``, and there were no ``loss`` and
  ``imports`` fields (cross-entropy, nothing imported). The runs computed the same
  numbers (``tests/compare_test.py`` checks the upgrade), so cached runs stay usable.
  """
  key = json.loads(json.dumps(key))
  _drop_locations(key)
  key.setdefault('refine_target', False)
  if 'baselines' not in key:
    _upgrade_hadfl(key)
    return key
  baselines, hadfl = key.pop('baselines'), key.pop('hadfl')
  speed_ema = key['profile'].pop('speed_ema', 0.9)
  name = key['algorithm']
  if name == 'hadfl':
    key['hadfl'] = {**hadfl, 'speed_ema': speed_ema, 'outsiders': 'planned'}
  else:
    key[name] = {new: baselines[old] for new, old in _OLD_BASELINE_FIELDS[name].items()}
  key.setdefault('imports', [])
  key.setdefault('loss', 'cross_entropy')
  _upgrade_hadfl(key)
  return key


def _upgrade_hadfl(key: dict) -> None:
  """HADFL's section of a key written before ``outsiders`` (the runs were ``'planned'``)
  and before the key held K (rounded then as ``floor(rho N + 0.5)``, which floating point
  rounds down at some exact halves: 14 for rho 0.58 and N 25, where K is now 15)."""
  hadfl = key.get('hadfl')
  if not isinstance(hadfl, dict):
    return
  hadfl.setdefault('outsiders', 'planned')
  if 'group_size' not in hadfl and 'rho' in hadfl and 'num_devices' in key:
    hadfl['group_size'] = max(2, int(math.floor(hadfl['rho'] * key['num_devices'] + 0.5)))
