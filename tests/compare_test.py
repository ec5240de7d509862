"""The comparison: the quick scenario end to end, the ranking, speedups and caching."""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from hadfl_jax.configs import quick_compare
from hadfl_jax import algorithms
from hadfl_jax import compare
from hadfl_jax import train
from hadfl_jax import validation
from hadfl_jax.comparison import runs as runs_lib
from tests import fixtures


@pytest.fixture
def config(digits_data_dir):
  cfg = quick_compare.get_config()
  cfg.dataset.data_dir = digits_data_dir
  cfg.compare.seeds = (0,)  # One seed where the test is not about seeds (CPU time).
  return cfg


def test_quick_comparison_writes_results_report_and_plots(config, tmp_path):
  results = compare.compare(config, str(tmp_path), log=lambda _: None)
  algos = results['algorithms']
  assert set(algos) == set(config.compare.algorithms)
  for name, r in algos.items():
    assert r['chosen'] == ({'lr': 0.05} if name == 'ddp' else {'lr': 0.05, 'h': 5})
    assert r['busiest_link_bytes']['mean'] > 0
    assert 0 <= r['final_consensus_accuracy']['mean'] <= 1
    assert [s['seed'] for s in r['per_seed']] == [0]
    if name != 'hadfl':
      assert r['hadfl_speedup']['mean'] is None or r['hadfl_speedup']['mean'] > 0
  # HADFL reaches 90% on digits well within the cap.
  assert algos['hadfl']['time_to_target_s']['reached'] == 1
  with open(tmp_path / 'results.json') as f:
    written = json.load(f)
  assert written['algorithms']['dfedavg']['chosen']['h'] == 5
  assert written['seeds'] == [0]
  machine = written['machine']
  assert machine['backend'] == 'cpu' and machine['libraries']['jax']
  assert 'vector_extensions' in machine and machine['cpu_model']
  report = (tmp_path / 'report.md').read_text()
  assert '| hadfl |' in report and '| ddp |' in report and '## Per seed' in report
  for png in ('accuracy_vs_time.png', 'accuracy_vs_bytes.png'):
    assert (tmp_path / png).stat().st_size > 1000
  # The evaluation schedule is the same in simulated seconds for every algorithm.
  for name in algos:
    run = next(d for d in os.listdir(tmp_path / 'runs') if d.startswith(name + '_'))
    with open(tmp_path / 'runs' / run / 'seed0' / 'metrics.jsonl') as f:
      times = [json.loads(line)['sim_time_s'] for line in f]
    for a, b in zip(times[:-1], times[1:-1]):
      assert b >= max(a + 0.2, a * 1.1) - 1e-9


def _summary(path):
  with open(path / 'summary.json') as f:
    return json.load(f)


def test_every_point_runs_on_every_seed_and_is_reported_over_seeds(config, tmp_path, capsys):
  config.compare.algorithms = ('dfedavg',)
  config.compare.seeds = (0, 3)
  lines = []
  first = compare.compare(config, str(tmp_path), log=lines.append)
  assert capsys.readouterr().out == ''  # log= is the only output: no per-cycle lines.
  assert [line.split(']')[0] for line in lines] == ['[1/2', '[2/2']
  assert 'dfedavg h5_lr0.05 seed 0' in lines[0] and 'eta ' in lines[0]
  assert 'seed 3' in lines[1] and 'cached' not in lines[1] and 'eta' not in lines[1]
  runs = tmp_path / 'runs' / 'dfedavg_h5_lr0.05'
  s0, s3 = _summary(runs / 'seed0'), _summary(runs / 'seed3')
  # Each seed is its own partition, initialisation and draws.
  assert (runs / 'seed0' / 'partition.json').read_text() != (
      runs / 'seed3' / 'partition.json').read_text()
  r = first['algorithms']['dfedavg']
  assert [p['time_to_target_s'] for p in r['per_seed']] == [s0['time_to_target_s'],
                                                             s3['time_to_target_s']]
  accs = [s0['final_consensus_accuracy'], s3['final_consensus_accuracy']]
  assert r['final_consensus_accuracy']['mean'] == pytest.approx(np.mean(accs))
  half = 12.7062 * np.std(accs, ddof=1) / np.sqrt(2)  # t_{0.975, 1} from a table.
  assert r['final_consensus_accuracy']['ci95'] == pytest.approx(
      [np.mean(accs) - half, np.mean(accs) + half], rel=1e-4)
  # Seed 3 of the comparison is exactly the run `main` makes with --config.seed=3.
  single = config.copy_and_resolve_references()
  single.algorithm, single.seed = 'dfedavg', 3
  single.dfedavg.local_steps, single.optimizer.learning_rate = 5, 0.05
  single.eval_interval_s, single.eval_growth = 0.2, 0.1
  train.train_and_evaluate(single, str(tmp_path / 'single'), verbose=False)
  assert (tmp_path / 'single' / 'metrics.jsonl').read_text() == (
      runs / 'seed3' / 'metrics.jsonl').read_text()

  # Run again: every run is found finished and reused.
  summary = runs / 'seed0' / 'summary.json'
  stamp = os.stat(summary).st_mtime_ns
  lines.clear()
  second = compare.compare(config, str(tmp_path), log=lines.append)
  assert os.stat(summary).st_mtime_ns == stamp
  assert first['algorithms'] == second['algorithms']
  assert len(lines) == 2 and all(line.endswith('cached') for line in lines)
  compare.compare(config, str(tmp_path), log=None)  # Quiet.
  assert capsys.readouterr().out == ''


def test_sweep_and_ablation(config, tmp_path, monkeypatch):
  config.compare.algorithms = ('hadfl', 'dfedavg')
  config.compare.sweep = True
  config.compare.sweep_ratios = (1.0, 8.0)
  config.compare.ablation = True
  config.max_sim_time = 2.0  # HADFL reaches the target; D-FedAvg gives a lower bound.
  monkeypatch.setattr(compare, 'ABLATION', (('hadfl.rho', (0.5, 1.0)),))
  results = compare.compare(config, str(tmp_path), log=lambda _: None)
  rows = results['sweep']['rows']
  assert [r['ratio'] for r in rows] == [1.0, 8.0]
  assert set(rows[0]['hadfl_speedup']) == {'dfedavg'}
  for row in rows:  # Each ratio's runs, from their own directories.
    hadfl = _summary(tmp_path / 'sweep' / f'r{row["ratio"]:g}_hadfl' / 'seed0')
    assert row['time_to_target_s']['hadfl']['per_seed'] == [hadfl['time_to_target_s']]
  assert (tmp_path / 'sweep_speedup.png').exists()
  # The report's time-to-target table, one cell per algorithm from its run's summary.
  text = (tmp_path / 'report.md').read_text()
  def cell(ratio, name):
    tta = _summary(tmp_path / 'sweep' / f'r{ratio:g}_{name}' / 'seed0')['time_to_target_s']
    return 'not reached (0/1)' if tta is None else f'{tta:.2f} (1/1)'
  for row in rows:
    r = row['ratio']
    assert f'| {r:g} | {cell(r, "hadfl")} | {cell(r, "dfedavg")} |' in text
  assert 'not reached (0/1)' in text  # D-FedAvg's lower bound at ratio 8.
  assert [r['value'] for r in results['ablation']['rows']] == [0.5, 1.0]
  assert '| hadfl.rho | 1.0 |' in (tmp_path / 'ablation.md').read_text()
  assert 'not_run' not in results['sweep']
  # Collecting finished runs only: a ratio with a run missing has no row, the sweep lists
  # the run as not run, and nothing runs.
  shutil.rmtree(tmp_path / 'sweep' / 'r8_dfedavg' / 'seed0')
  config.compare.cached_only = True
  config.compare.ablation = False
  lines = []
  again = compare.compare(config, str(tmp_path), log=lines.append)
  assert [r['ratio'] for r in again['sweep']['rows']] == [1.0]
  assert again['sweep']['rows'][0] == rows[0]
  assert again['sweep']['not_run'] == [{'ratio': 8.0, 'algorithm': 'dfedavg', 'seed': 0}]
  assert any('sweep r=8 dfedavg seed 0' in line and 'not run' in line for line in lines)
  assert not (tmp_path / 'sweep' / 'r8_dfedavg' / 'seed0').exists()


def test_a_partial_sweep_pairs_the_seeds_every_algorithm_finished(config, tmp_path):
  # Two seeds, one run of seed 1 missing: that ratio's row covers seed 0 alone, HADFL's
  # and D-FedAvg's values are seed 0's own, and the row and the report say so.
  config.compare.algorithms = ('hadfl', 'dfedavg')
  config.compare.seeds = (0, 1)
  config.compare.sweep = True
  config.compare.sweep_ratios = (1.0, 8.0)
  config.max_sim_time = 2.0
  compare.compare(config, str(tmp_path), log=None)
  shutil.rmtree(tmp_path / 'sweep' / 'r8_dfedavg' / 'seed1')
  config.compare.cached_only = True
  results = compare.compare(config, str(tmp_path), log=None)
  full, partial = results['sweep']['rows']
  assert 'seeds' not in full and partial['seeds'] == [0]
  assert partial['not_run'] == [{'algorithm': 'dfedavg', 'seed': 1}]
  assert results['sweep']['not_run'] == [{'ratio': 8.0, 'algorithm': 'dfedavg', 'seed': 1}]
  for name in ('hadfl', 'dfedavg'):
    seed0 = _summary(tmp_path / 'sweep' / f'r8_{name}' / 'seed0')['time_to_target_s']
    assert partial['time_to_target_s'][name]['per_seed'] == [seed0]
    assert len(full['time_to_target_s'][name]['per_seed']) == 2
  hadfl0 = partial['time_to_target_s']['hadfl']['per_seed'][0]
  ratio = partial['hadfl_speedup']['dfedavg']['per_seed']
  assert len(ratio) == 1
  other = _summary(tmp_path / 'sweep' / 'r8_dfedavg' / 'seed0')
  assert ratio[0]['value'] == pytest.approx(
      (other['time_to_target_s'] or other['sim_time_s']) / hadfl0)
  assert '| 8 (seeds 0) |' in (tmp_path / 'report.md').read_text()


def test_option_grids_and_a_diverging_point(config, tmp_path):
  config.compare.options = 'prague.group_size=2,3;fedbuff.buffer_size=4'
  assert compare.grid_points(config, 'prague') == [
      {'lr': 0.05, 'h': 5, 'prague.group_size': 2}, {'lr': 0.05, 'h': 5, 'prague.group_size': 3}]
  assert compare.grid_points(config, 'fedbuff') == [
      {'lr': 0.05, 'h': 5, 'fedbuff.buffer_size': 4}]
  assert compare.grid_points(config, 'dfedavg') == [{'lr': 0.05, 'h': 5}]
  # A learning rate that diverges is a grid point that never reaches the target, not the
  # end of the comparison.
  config.compare.algorithms = ('prague',)
  config.compare.options = 'prague.group_size=2'
  config.compare.learning_rates = (0.05, 1e10)
  config.max_sim_time = 2.0
  results = compare.compare(config, str(tmp_path), log=lambda _: None)
  r = results['algorithms']['prague']
  assert r['chosen'] == {'lr': 0.05, 'h': 5, 'prague.group_size': 2}
  bad = next(g for g in r['grid'] if g['point']['lr'] == 1e10)
  assert bad['time_to_target_s']['reached'] == 0 and bad['diverged'] == 1
  summary = _summary(tmp_path / 'runs' / 'prague_h5_lr10000000000.0_group_size2' / 'seed0')
  assert 'not finite' in summary['diverged'] and summary['sim_time_s'] == 2.0
  assert '1 diverged' in (tmp_path / 'report.md').read_text()
  with open(tmp_path / 'runs' / 'prague_h5_lr0.05_group_size2' / 'seed0' / 'config.json') as f:
    assert json.load(f)['prague']['group_size'] == 2


def _rows(*rows):
  return [{'sim_time_s': t, 'loss': loss, 'consensus_accuracy': acc} for t, loss, acc in rows]


def test_collapse_rule_on_hand_made_histories():
  rule = runs_lib.collapse_rule(10, max_sim_time=100.0, patience=3)
  dead = (2.3025, 0.1135)  # ln(10) = 2.302585; chance is 0.1.
  assert rule(_rows((10, *dead), (11, *dead))) is None  # Fewer than `patience` rows.
  assert rule(_rows((9, *dead), (10, *dead), (11, *dead))) is None  # Before 10% of the cap.
  assert 'collapsed' in rule(_rows((5, 0.3, 0.9), (10, *dead), (11, *dead), (12, *dead)))
  assert rule(_rows((10, *dead), (11, 2.2, 0.15), (12, *dead))) is None  # One row learnt.
  assert rule(_rows((10, *dead), (11, 2.30, 0.25), (12, *dead))) is None  # Above 2/C.


def test_a_collapsed_point_is_stopped_and_recorded_as_a_miss(config, tmp_path, monkeypatch):
  # A rule that fires at every run's second evaluation (the real rule is tested above;
  # here: what the comparison does with it).
  monkeypatch.setattr(runs_lib, 'collapse_rule', lambda num_classes, max_sim_time: (
      lambda history: 'collapsed: by the test' if len(history) >= 2 else None))
  config.compare.algorithms = ('dfedavg',)
  config.target_accuracy = 0.99
  config.max_sim_time = 2.0
  results = compare.compare(config, str(tmp_path), log=lambda _: None)
  (point,) = results['algorithms']['dfedavg']['grid']
  assert point['collapsed'] == 1 and point['time_to_target_s']['reached'] == 0
  run_dir = tmp_path / 'runs' / 'dfedavg_h5_lr0.05' / 'seed0'
  summary = _summary(run_dir)
  assert summary['collapsed'].endswith('collapsed: by the test')
  assert summary['time_to_target_s'] is None and summary['sim_time_s'] == 2.0
  rows = (run_dir / 'metrics.jsonl').read_text().splitlines()
  assert len(rows) == 2  # Stopped at the second evaluation.
  assert summary['final_consensus_accuracy'] == json.loads(rows[-1])['consensus_accuracy']
  assert '1 collapsed' in (tmp_path / 'report.md').read_text()
  # Collected only, the stopped run is this point's run while collapsed runs are stopped,
  # and not one (the point not run, nothing started) when they are to run on.
  config.compare.cached_only = True
  again = compare.compare(config, str(tmp_path), log=lambda _: None)
  assert again['algorithms']['dfedavg']['grid'] == results['algorithms']['dfedavg']['grid']
  config.compare.stop_collapsed = False
  lines = []
  assert compare.compare(config, str(tmp_path), log=lines.append)['algorithms'] == {}
  assert lines[0].endswith('not run (cached_only)')
  assert _summary(run_dir)['collapsed'].endswith('collapsed: by the test')


def test_prune_rule_and_which_cached_runs_answer_a_budget():
  rule = runs_lib.prune_rule(3.0)
  assert rule([]) is None and rule(_rows((3.0, 0.5, 0.5))) is None  # Not past the budget.
  assert rule(_rows((2.0, 0.5, 0.5), (3.5, 0.4, 0.6))).startswith('pruned:')
  full = _record(None, 0.5, 10.0)
  pruned = compare.RunRecord(summary=dict(full.summary, pruned='pruned: ...',
                                          prune_budget_s=5.0), history=(), wall_time_s=0.0)
  assert not runs_lib.covers(None, 1.0)
  assert runs_lib.covers(full, None) and runs_lib.covers(full, 1.0)
  assert runs_lib.covers(pruned, 4.0) and runs_lib.covers(pruned, 5.0)
  assert not runs_lib.covers(pruned, 6.0) and not runs_lib.covers(pruned, None)
  # A run stopped as collapsed answers only while collapsed runs are stopped.
  collapsed = compare.RunRecord(summary=dict(full.summary, collapsed='collapsed: ...'),
                                history=(), wall_time_s=0.0)
  assert runs_lib.covers(collapsed, None) and runs_lib.covers(full, None, stop_collapsed=False)
  assert not runs_lib.covers(collapsed, None, stop_collapsed=False)


def test_a_speedup_over_fewer_seeds_than_run_says_how_many():
  from hadfl_jax.comparison import report, stats  # pylint: disable=g-import-not-at-top
  # HADFL missed seeds 2 and 3, where the baseline was fast: the mean is over 3 seeds.
  # Ratios 2, 3 and 1: mean 2, standard deviation 1, t(0.975, 2) / sqrt(3) = 2.484.
  speedup = stats.paired_speedup([1.0, None, None, 1.0, 2.0], [2.0, 0.1, 0.1, 3.0, 2.0],
                                 [10.0] * 5)
  assert speedup['n'] == 3 and report.fmt_speedup(speedup) == '2.00x ± 2.48x (3/5 seeds)'
  every = stats.paired_speedup([1.0, 2.0], [2.0, 2.0], [10.0] * 2)
  assert '(' not in report.fmt_speedup(every)


# True times to target of dfedavg's three points on seeds 0 and 1 (None: never).
_TRUE_TTA = {0.01: (5.0, 5.0), 0.02: (3.0, 4.0), 0.05: (6.0, 2.0)}


def _fake_run_point(calls):
  """run_point answering from _TRUE_TTA, stopping where prune_budget_s says (the first
  evaluation past the budget, 0.5 s later)."""

  def run(cfg, setup, evaluator, where, verbose=False, prune_budget_s=None):
    del setup, evaluator, where, verbose
    tta = _TRUE_TTA[cfg.optimizer.learning_rate][cfg.seed]
    calls.append((cfg.optimizer.learning_rate, cfg.seed, prune_budget_s))
    summary = {'time_to_target_s': tta, 'final_consensus_accuracy': 0.9, 'sim_time_s': tta}
    if prune_budget_s is not None and tta > prune_budget_s:
      summary.update(time_to_target_s=None, sim_time_s=max(prune_budget_s, 0.0) + 0.5,
                     pruned='pruned: by the fake', prune_budget_s=prune_budget_s)
    return compare.RunRecord(summary=summary, history=(), wall_time_s=0.0)

  return run


def test_winners_from_runs_its_winners_and_searches_the_algorithms_it_lacks(
    config, tmp_path, monkeypatch):
  calls = []

  def run(cfg, setup, evaluator, where, verbose=False, prune_budget_s=None):
    del setup, evaluator, where, verbose, prune_budget_s
    calls.append((cfg.algorithm, cfg.optimizer.learning_rate))
    tta = 0.1 / cfg.optimizer.learning_rate  # The larger lr, the faster: edges win.
    return compare.RunRecord(summary={'time_to_target_s': tta, 'final_consensus_accuracy': 0.9,
                                      'sim_time_s': tta}, history=(), wall_time_s=0.0)

  monkeypatch.setattr(compare, 'run_point', run)
  earlier = tmp_path / 'earlier.json'
  earlier.write_text(json.dumps({'algorithms': {'dfedavg': {'chosen': {'lr': 0.05, 'h': 5}}}}))
  config.compare.winners_from = str(earlier)
  config.compare.learning_rates = (0.01, 0.02)
  config.compare.local_steps = (5,)
  config.compare.extend_edges = 1
  tuned = compare.search(config, runs_lib.SeedSetups(config), None, str(tmp_path / 'w'),
                         ('dfedavg', 'dpsgd'), log=None)
  # D-FedAvg runs the earlier winner alone, not extended; D-PSGD, absent there, gets the
  # grid and its extension.
  assert sorted(calls) == [('dfedavg', 0.05), ('dpsgd', 0.01), ('dpsgd', 0.02),
                           ('dpsgd', 0.04)]
  assert tuned['dfedavg'].best.point == {'lr': 0.05, 'h': 5}
  assert tuned['dpsgd'].best.point == {'lr': 0.04, 'h': 5}


@pytest.mark.parametrize('prune', [False, True])
def test_pruning_stops_points_that_cannot_win_and_keeps_the_choice(config, tmp_path,
                                                                     monkeypatch, prune):
  calls = []
  monkeypatch.setattr(compare, 'run_point', _fake_run_point(calls))
  config.compare.algorithms = ('dfedavg',)
  config.compare.learning_rates = tuple(_TRUE_TTA)
  config.compare.local_steps = (5,)
  config.compare.seeds = (0, 1)
  config.compare.prune = prune
  (tuned,) = compare.tune(config, runs_lib.SeedSetups(config), None, str(tmp_path),
                          ('dfedavg',), log=None).values()
  assert tuned.best.point['lr'] == 0.02  # Sums 10, 7 and 8: the same choice either way.
  budgets = {(lr, seed): b for lr, seed, b in calls}
  if not prune:
    assert set(budgets.values()) == {None}
    return
  # Seed by seed: nothing is known before lr 0.01 has both seeds (sum 10); lr 0.02 may
  # then take 10 - 3 = 7 on seed 1 (it takes 4: best sum 7); lr 0.05 may take 7 - 6 = 1
  # and is stopped (it needs 2).
  assert budgets == {(0.01, 0): None, (0.02, 0): None, (0.05, 0): None,
                     (0.01, 1): None, (0.02, 1): 7.0, (0.05, 1): 1.0}
  grid = {g.point['lr']: g for g in tuned.grid}
  assert 'pruned' in grid[0.05].records[1].summary
  assert grid[0.05].records[1].time_to_target_s is None
  # Edge extension or options after it start from the sums found (search's bounds).
  assert compare.best_sums({'dfedavg': tuned}) == {'dfedavg': 7.0}


def test_a_pruned_run_is_recorded_and_rerun_for_a_larger_budget(config, tmp_path):
  from hadfl_jax import evaluation  # pylint: disable=g-import-not-at-top
  from hadfl_jax.comparison import grid  # pylint: disable=g-import-not-at-top
  config.target_accuracy, config.max_sim_time = 0.99, 2.0
  setup = runs_lib.SeedSetups(config)(0)
  evaluator = evaluation.Evaluator.for_model(setup.problem.model, setup.test,
                                             config.eval_batch_size,
                                             config.device_eval_examples,
                                             task=setup.problem.task)
  cfg = grid.apply_point(runs_lib.seeded(config, 0), 'dfedavg', {'lr': 0.05, 'h': 5},
                         setup.problem)
  where = str(tmp_path / 'run')
  rec = runs_lib.run_point(cfg, setup, evaluator, where, prune_budget_s=0.0)
  with open(os.path.join(where, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 1  # Stopped at the first evaluation, past 0 s.
  assert 'pruned: not at the target' in rec.summary['pruned'] and rec.time_to_target_s is None
  assert rec.sim_time_s == rows[0]['sim_time_s'] < config.max_sim_time
  assert rec.summary['prune_budget_s'] == 0.0
  timing = json.loads((tmp_path / 'run' / 'timing.json').read_text())
  assert timing['wall_time_s'] > 0 and timing['cpu_time_s'] > 0  # A pruned run's too.
  assert runs_lib.run_point(cfg, setup, evaluator, where, prune_budget_s=0.0).cached
  longer = runs_lib.run_point(cfg, setup, evaluator, where, prune_budget_s=None)
  assert not longer.cached and 'pruned' not in longer.summary
  assert longer.sim_time_s == pytest.approx(config.max_sim_time, abs=1.0)


def _record(tta, acc, sim):
  return compare.RunRecord(summary={'time_to_target_s': tta, 'final_consensus_accuracy': acc,
                                    'sim_time_s': sim}, history=(), wall_time_s=0.0)


def test_ranking_and_speedups_of_single_runs():
  fast, slow = _record(2.0, 0.9, 2.0), _record(6.0, 0.95, 6.0)
  never, never_worse = _record(None, 0.99, 30.0), _record(None, 0.5, 30.0)
  assert sorted([never_worse, never, slow, fast], key=compare.rank_key) == [
      fast, slow, never, never_worse]
  assert compare.speedup(fast, slow) == {'value': 3.0, 'lower_bound': False}
  assert compare.speedup(fast, never) == {'value': 15.0, 'lower_bound': True}
  assert compare.speedup(never, fast)['value'] is None


def test_a_bad_algorithms_tuple_is_named_before_any_work(config, tmp_path):
  # A command line's unquoted tuple '(hadfl, prague)' arrives as one name; the error must
  # name config.compare.algorithms, not config.algorithm (its first element's run).
  config.compare.algorithms = ('(hadfl, prague)',)
  with pytest.raises(validation.ConfigError, match=r'config\.compare\.algorithms='):
    compare.compare(config, str(tmp_path / 'study'), log=None)
  assert not (tmp_path / 'study').exists()


def test_grid_points(config):
  config.compare.learning_rates = (0.1, 0.2)
  config.compare.local_steps = (3, 7)
  assert compare.grid_points(config, 'ddp') == [{'lr': 0.1}, {'lr': 0.2}]
  assert len(compare.grid_points(config, 'hadfl')) == 4
  problem, _ = fixtures.make_tiny_problem()  # Speeds 10..40 steps/s: 25 ms per step.
  cfg = compare.apply_point(config, 'hadfl', {'lr': 0.1, 'h': 7}, problem)
  assert cfg.hadfl.t_local == pytest.approx(7 * 0.025)
  assert cfg.optimizer.learning_rate == 0.1
  cfg = compare.apply_point(config, 'dfedavg', {'lr': 0.2, 'h': 3, 'dfedavg.opt_state': 'keep'},
                            problem)
  assert (cfg.dfedavg.local_steps, cfg.dfedavg.opt_state) == (3, 'keep')
  # DDP's cycles last about one evaluation interval of simulated time.
  config.compare.eval_interval_s = 1.0
  cfg = compare.apply_point(config, 'ddp', {'lr': 0.1}, problem)
  steps = cfg.ddp.steps_per_cycle
  assert steps * algorithms.ddp.step_time(problem) == pytest.approx(1.0, rel=0.1)
  # Without an interval: 4 cycles of HADFL at the smallest H of the grid, extra H included.
  config.compare.eval_interval_s = 0.0
  config.profile.seconds_per_step = 0.01
  assert compare.eval_interval(config, problem) == pytest.approx(4 * 3 * 0.01)
  config.compare.extra_local_steps = 'dfedavg=2,20'
  assert compare.eval_interval(config, problem) == pytest.approx(4 * 2 * 0.01)



def test_edge_points_extend_a_grid_whose_edge_won():
  from hadfl_jax.comparison import grid
  points = [{'lr': lr, 'h': h} for lr in (0.05, 0.1) for h in (4, 8, 16)]
  # The largest lr and the smallest H won: twice the lr and half the H, the rest kept.
  assert grid.edge_points({'lr': 0.1, 'h': 4}, points) == [{'lr': 0.2, 'h': 4},
                                                           {'lr': 0.1, 'h': 2}]
  with_rho = [dict(p, **{'hadfl.rho': rho}) for p in points for rho in (0.25, 0.5)]
  assert grid.edge_points({'lr': 0.05, 'h': 16, 'hadfl.rho': 0.25}, with_rho) == [
      {'lr': 0.025, 'h': 16, 'hadfl.rho': 0.25}, {'lr': 0.05, 'h': 32, 'hadfl.rho': 0.25}]
  assert grid.edge_points({'lr': 0.05, 'h': 8}, points + [{'lr': 0.025, 'h': 8}]) == []
  # On its own line: H 2 ran at lr 0.1 only, so lr 0.1 is both ends there (although lr
  # 0.05 ran at other H), and H 2 is the smallest H at lr 0.1.
  extended = points + [{'lr': 0.2, 'h': 4}, {'lr': 0.1, 'h': 2}]
  assert grid.edge_points({'lr': 0.1, 'h': 2}, extended) == [
      {'lr': 0.2, 'h': 2}, {'lr': 0.05, 'h': 2}, {'lr': 0.1, 'h': 1}]
  # lr 0.1 at H 4 has 0.05 and 0.2 beside it on its line: interior.
  assert grid.edge_points({'lr': 0.1, 'h': 4}, extended + [{'lr': 0.1, 'h': 1}]) == []
  # A single value was fixed, not searched; H does not go below 1; DDP has no H.
  assert grid.edge_points({'lr': 0.1, 'h': 5}, [{'lr': 0.1, 'h': 5}]) == []
  assert grid.edge_points({'lr': 0.1, 'h': 1}, [{'lr': 0.1, 'h': 1}, {'lr': 0.1, 'h': 2}]) == []
  assert grid.edge_points({'lr': 0.2}, [{'lr': 0.1}, {'lr': 0.2}]) == [{'lr': 0.4}]


def test_option_points_at_the_best_point_leave_the_defaults_out(config):
  from hadfl_jax.comparison import grid
  default = algorithms.ALGORITHMS.get('prague').Config().group_size
  config.compare.options = f'prague.group_size=2,{default},{default + 1};hadfl.rho=0.25'
  config.compare.options_at_best = True
  assert compare.grid_points(config, 'prague') == [{'lr': 0.05, 'h': 5}]
  best = {'lr': 0.1, 'h': 20}
  assert grid.option_points(config, 'prague', best) == [
      dict(best, **{'prague.group_size': g}) for g in (2, default + 1)]
  assert grid.option_points(config, 'dfedavg', best) == []
  # The scenario's own value is the one the best point ran with, not the class default.
  config.prague = ml_collections.ConfigDict({'group_size': 2})
  assert grid.option_points(config, 'prague', best) == [
      dict(best, **{'prague.group_size': g}) for g in (default, default + 1)]


def test_search_extends_the_edge_and_runs_options_at_the_best(config, tmp_path):
  config.compare.algorithms = ('prague',)
  config.compare.learning_rates = (0.01, 0.02)
  config.compare.extend_edges = 1
  config.compare.options = 'prague.group_size=2'
  config.compare.options_at_best = True
  config.max_sim_time = 1.0  # Nobody reaches the target: ranked by final accuracy.
  lines = []
  results = compare.compare(config, str(tmp_path), log=lines.append)
  r = results['algorithms']['prague']
  points = [g['point'] for g in r['grid']]
  assert points[:2] == [{'lr': 0.01, 'h': 5}, {'lr': 0.02, 'h': 5}]
  # Whichever lr won the first grid, the extension is its neighbour outside the grid,
  # and the options ran at the best point after it.
  ranked = sorted(r['grid'][:2], key=lambda g: -g['final_consensus_accuracy']['mean'])
  edge = ranked[0]['point']['lr']
  assert points[2] == {'lr': edge * 2 if edge == 0.02 else edge / 2, 'h': 5}
  best = min(r['grid'][:3], key=lambda g: (-g['final_consensus_accuracy']['mean']))['point']
  assert points[3] == dict(best, **{'prague.group_size': 2})
  assert len(points) == 4 and len(lines) == 4  # Each point ran once.
  # The same command finds all of it again.
  lines.clear()
  again = compare.compare(config, str(tmp_path), log=lines.append)
  assert again['algorithms'] == results['algorithms']
  assert all(line.endswith('cached') for line in lines)
  # Collecting only finished runs with more rounds: a further edge point is listed as not
  # run, the rest is unchanged.
  config.compare.cached_only, config.compare.extend_edges = True, 3
  collected = compare.compare(config, str(tmp_path), log=None)['algorithms']['prague']
  assert collected['grid'] == r['grid'] and collected['chosen'] == r['chosen']
  assert all(p['lr'] not in (0.01, 0.02) for p in collected['not_run'])


def test_cached_only_collects_finished_runs(config, tmp_path):
  config.compare.algorithms = ('dfedavg', 'fedavg')
  config.compare.learning_rates = (0.05, 0.1)
  compare.compare(config, str(tmp_path / 'a'), log=lambda _: None)  # Nothing cached yet:
  config.compare.cached_only = True
  config.compare.algorithms = ('dfedavg', 'fedavg', 'dpsgd')
  results = compare.compare(config, str(tmp_path / 'a'), log=lambda _: None)
  assert set(results['algorithms']) == {'dfedavg', 'fedavg'}  # dpsgd never ran.
  empty = compare.compare(config, str(tmp_path / 'b'), log=lambda _: None)
  assert empty['algorithms'] == {}



def test_a_point_at_an_options_default_reuses_the_run_of_the_point_without_it(config, tmp_path):
  config.compare.algorithms = ('prague',)
  config.max_sim_time = 2.0
  first = compare.compare(config, str(tmp_path), log=lambda _: None)
  base = tmp_path / 'runs' / 'prague_h5_lr0.05' / 'seed0'
  stamp = os.stat(base / 'summary.json').st_mtime_ns
  # G = 3 is Prague's default: that point is the run above under another name; G = 2 is new.
  default = algorithms.ALGORITHMS.get('prague').Config().group_size
  config.compare.options = f'prague.group_size=2,{default}'
  lines = []
  second = compare.compare(config, str(tmp_path), log=lines.append)
  assert [line.endswith('cached') for line in lines] == [False, True]
  assert os.stat(base / 'summary.json').st_mtime_ns == stamp
  assert not (tmp_path / 'runs' / f'prague_group_size{default}_h5_lr0.05').exists()
  grid = {g['point']['prague.group_size']: g for g in second['algorithms']['prague']['grid']}
  old = first['algorithms']['prague']['grid'][0]
  assert grid[default]['time_to_target_s'] == old['time_to_target_s']
  assert grid[default]['final_consensus_accuracy'] == old['final_consensus_accuracy']
  # Collecting only finished runs finds it the same way.
  config.compare.cached_only = True
  third = compare.compare(config, str(tmp_path), log=lambda _: None)
  assert third['algorithms']['prague']['grid'] == second['algorithms']['prague']['grid']


def test_runs_cached_before_the_per_algorithm_sections_are_found(config):
  # Run keys written before each algorithm had its own config section (then one
  # `baselines` section served all; tests/testdata holds one, of D-FedAvg at H=5, lr 0.05)
  # are read in today's form, so such cached runs are found; so are keys written before
  # refine_target (their times to target are the scheduled evaluations': False).
  with open(fixtures.REPO / 'tests' / 'testdata' / 'run_key_before_sections.json') as f:
    old = json.load(f)
  config.hadfl.weights = 'data'
  config.target_accuracy, config.max_sim_time = 0.95, 60.0
  setup = train.build_setup(config)
  cfg = compare.apply_point(config, 'dfedavg', {'lr': 0.05, 'h': 5}, setup.problem)
  assert runs_lib.upgrade_run_key(old) != json.loads(json.dumps(runs_lib.run_key(cfg)))
  config.refine_target = False
  cfg = compare.apply_point(config, 'dfedavg', {'lr': 0.05, 'h': 5}, setup.problem)
  assert runs_lib.upgrade_run_key(old) == json.loads(json.dumps(runs_lib.run_key(cfg)))
  # A different value of the algorithm's own section is another run.
  cfg = compare.apply_point(config, 'dfedavg', {'lr': 0.05, 'h': 5, 'dfedavg.opt_state': 'keep'},
                            setup.problem)
  assert runs_lib.upgrade_run_key(old) != json.loads(json.dumps(runs_lib.run_key(cfg)))


def test_hadfl_run_keys_from_before_outsiders_and_group_size(config):
  # Keys of HADFL runs written before hadfl.outsiders and before K was in the key are
  # found as the 'planned' runs they were, unless K was rounded differently then.
  config.hadfl.weights = 'data'
  setup = train.build_setup(config)
  cfg = compare.apply_point(config, 'hadfl', {'lr': 0.05, 'h': 5}, setup.problem)
  now = json.loads(json.dumps(runs_lib.run_key(cfg)))
  assert now['hadfl']['outsiders'] == 'planned' and now['hadfl']['group_size'] == 4
  before = json.loads(json.dumps(now))
  del before['hadfl']['outsiders'], before['hadfl']['group_size']
  assert runs_lib.upgrade_run_key(before) == now
  cfg.hadfl.outsiders = 'carried'
  assert runs_lib.upgrade_run_key(before) != json.loads(json.dumps(runs_lib.run_key(cfg)))
  # rho 0.58 of 25 devices: K was 14 (0.58 * 25 = 14.499999999999998), it is 15.
  cfg.hadfl.outsiders, cfg.hadfl.rho, cfg.num_devices = 'planned', 0.58, 25
  cfg.profile.kind = 'geometric'
  now = json.loads(json.dumps(runs_lib.run_key(cfg)))
  before = dict(now, hadfl={k: v for k, v in now['hadfl'].items()
                            if k not in ('outsiders', 'group_size')})
  assert now['hadfl']['group_size'] == 15
  assert runs_lib.upgrade_run_key(before)['hadfl']['group_size'] == 14


def test_runs_of_an_earlier_algorithm_revision_are_not_reused(config, monkeypatch):
  # FedBuff's REVISION 2 serves a tick's uploads one at a time: its runs cached before
  # (keys without a revision) are not reused; other algorithms' keys are as they were.
  setup = train.build_setup(config)
  fedbuff = compare.apply_point(config, 'fedbuff', {'lr': 0.05, 'h': 5}, setup.problem)
  now = json.loads(json.dumps(runs_lib.run_key(fedbuff)))
  assert now['algorithm_revision'] == 2
  before = {k: v for k, v in now.items() if k != 'algorithm_revision'}
  assert runs_lib.upgrade_run_key(before) != now
  dfedavg = compare.apply_point(config, 'dfedavg', {'lr': 0.05, 'h': 5}, setup.problem)
  assert 'algorithm_revision' not in runs_lib.run_key(dfedavg)
  monkeypatch.setattr(algorithms.ALGORITHMS.get('fedbuff'), 'REVISION', 3)
  assert runs_lib.run_key(fedbuff)['algorithm_revision'] == 3
