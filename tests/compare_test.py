"""The comparison: the quick scenario end to end, the ranking, speedups and caching."""

import json
import os

import pytest

from hadfl_jax.configs import quick_compare
from hadfl_jax import algorithms
from hadfl_jax import compare
from hadfl_jax import train
from tests import fixtures


@pytest.fixture
def config(digits_data_dir):
  cfg = quick_compare.get_config()
  cfg.dataset.data_dir = digits_data_dir
  return cfg


def test_quick_comparison_writes_results_report_and_plots(config, tmp_path):
  results = compare.compare(config, str(tmp_path), log=lambda _: None)
  algos = results['algorithms']
  assert set(algos) == set(config.compare.algorithms)
  for name, r in algos.items():
    assert r['chosen'] == ({'lr': 0.05} if name == 'ddp' else {'lr': 0.05, 'h': 5})
    assert r['busiest_link_bytes'] > 0
    assert 0 <= r['final_consensus_accuracy'] <= 1
    if name != 'hadfl':
      assert r['hadfl_speedup']['value'] is None or r['hadfl_speedup']['value'] > 0
  # HADFL reaches 90% on digits well within the cap.
  assert algos['hadfl']['time_to_target_s'] is not None
  with open(tmp_path / 'results.json') as f:
    assert json.load(f)['algorithms']['dfedavg']['chosen']['h'] == 5
  report = (tmp_path / 'report.md').read_text()
  assert '| hadfl |' in report and '| ddp |' in report
  for png in ('accuracy_vs_time.png', 'accuracy_vs_bytes.png'):
    assert (tmp_path / png).stat().st_size > 1000
  # The evaluation schedule is the same in simulated seconds for every algorithm.
  for name in algos:
    run = next(d for d in os.listdir(tmp_path / 'runs') if d.startswith(name + '_'))
    with open(tmp_path / 'runs' / run / 'metrics.jsonl') as f:
      times = [json.loads(line)['sim_time_s'] for line in f]
    for a, b in zip(times[:-1], times[1:-1]):
      assert b >= max(a + 0.2, a * 1.1) - 1e-9


def test_finished_runs_are_reused_and_marked_cached(config, tmp_path, capsys):
  config.compare.algorithms = ('dfedavg',)
  config.compare.learning_rates = (0.05, 0.1)
  lines = []
  first = compare.compare(config, str(tmp_path), log=lines.append)
  assert capsys.readouterr().out == ''  # log= is the only output: no per-cycle lines.
  assert [line.split(']')[0] for line in lines] == ['[1/2', '[2/2']
  assert 'dfedavg h5_lr0.05' in lines[0] and 'eta ' in lines[0] and 'cached' not in lines[0]
  assert 'eta' not in lines[1]  # Nothing left.
  summary = tmp_path / 'runs' / 'dfedavg_h5_lr0.05' / 'summary.json'
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
  assert (tmp_path / 'sweep_speedup.png').exists()
  assert [r['value'] for r in results['ablation']['rows']] == [0.5, 1.0]
  assert '| hadfl.rho | 1.0 |' in (tmp_path / 'ablation.md').read_text()


def _record(tta, acc, sim):
  return compare.RunRecord(summary={'time_to_target_s': tta, 'final_consensus_accuracy': acc,
                                    'sim_time_s': sim}, history=(), wall_time_s=0.0)


def test_ranking_and_speedups():
  fast, slow = _record(2.0, 0.9, 2.0), _record(6.0, 0.95, 6.0)
  never, never_worse = _record(None, 0.99, 30.0), _record(None, 0.5, 30.0)
  assert sorted([never_worse, never, slow, fast], key=compare.rank_key) == [
      fast, slow, never, never_worse]
  assert compare.speedup(fast, slow) == {'value': 3.0, 'lower_bound': False}
  assert compare.speedup(fast, never) == {'value': 15.0, 'lower_bound': True}
  assert compare.speedup(never, fast)['value'] is None


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


def test_ablation_over_seeds(tmp_path):
  rows = lambda t1, t2: [
      {'field': 'hadfl.rho', 'value': 0.5, 'time_to_target_s': t1,
       'final_consensus_accuracy': 0.9, 'sim_time_s': 10.0},
      {'field': 'hadfl.rho', 'value': 1.0, 'time_to_target_s': t2,
       'final_consensus_accuracy': 0.8, 'sim_time_s': 10.0}]
  paths = []
  for i, r in enumerate([rows(2.0, None), rows(4.0, 6.0)]):
    paths.append(str(tmp_path / f'{i}.json'))
    with open(paths[-1], 'w') as f:
      json.dump(r, f)
  table = compare.ablation_over_seeds(paths)
  assert '| hadfl.rho | 0.5 | 3.00 | 2.00, 4.00 | 0.9000 |' in table
  assert '| hadfl.rho | 1.0 | >= 8.00 | not reached, 6.00 | 0.8000 |' in table


def test_runs_cached_before_the_per_algorithm_sections_are_found(config):
  # results/quick_digits was computed before each algorithm had its own config section;
  # its COMMAND, run today, finds every cached run (runs/<algorithm>_<point>/run_key.json).
  config.hadfl.weights = 'data'
  config.compare.algorithms = ('hadfl', 'dfedavg', 'ddp', 'fedavg', 'dpsgd')  # Then.
  config.target_accuracy, config.max_sim_time = 0.95, 60.0
  config.compare.learning_rates, config.compare.local_steps = (0.02, 0.05, 0.1), (5, 20)
  setup = train.build_setup(config)
  runs = fixtures.REPO / 'results' / 'quick_digits' / 'runs'
  found = 0
  for name in config.compare.algorithms:
    for point in compare.grid_points(config, name):
      cfg = compare.apply_point(config, name, point, setup.problem)
      run = runs / f'{name}_{compare.point_tag(point)}'
      assert compare.load_run(cfg, str(run)) is not None, run
      found += 1
  assert found == 27
  # A different value of the algorithm's own section is another run.
  cfg = compare.apply_point(config, 'dfedavg', {'lr': 0.05, 'h': 5, 'dfedavg.opt_state': 'keep'},
                            setup.problem)
  assert compare.load_run(cfg, str(runs / 'dfedavg_h5_lr0.05')) is None
