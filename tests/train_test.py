"""End-to-end runs of the run loop and the command line on the embedded digits data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hadfl_jax import train
from hadfl_jax import validation
from tests import fixtures


def _read(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  return rows, summary


def test_run_writes_config_metrics_and_summary(quick_config, tmp_path):
  summary = train.train_and_evaluate(quick_config, str(tmp_path))
  rows, written = _read(tmp_path)
  assert written == summary
  assert [r['cycle'] for r in rows] == [3, 6]
  for key in ('cycle', 'sim_time_s', 'consensus_accuracy', 'mean_device_accuracy',
              'min_device_accuracy', 'loss', 'bytes_sent'):
    assert key in rows[0]
  assert rows[0]['sim_time_s'] < rows[1]['sim_time_s'] == pytest.approx(summary['sim_time_s'])
  assert 0 < rows[1]['min_device_accuracy'] <= rows[1]['mean_device_accuracy'] <= 1
  # Learning happened: ten classes, chance is 10%.
  assert summary['final_consensus_accuracy'] > 0.5
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['num_devices'] == quick_config.num_devices
  with open(tmp_path / 'partition.json') as f:
    assert json.load(f)['summary']['num_examples'] == 1437
  # Wall and CPU time, the cycles' and evaluations' shares within the wall time.
  timing = json.loads((tmp_path / 'timing.json').read_text())
  assert timing['cpu_time_s'] > 0 and timing['evaluations'] == 2
  assert 0 < timing['cycles_s'] + timing['eval_s'] < timing['wall_time_s']


def test_same_seed_same_numbers_other_seed_other_numbers(quick_config, tmp_path):
  train.train_and_evaluate(quick_config, str(tmp_path / 'a'))
  train.train_and_evaluate(quick_config, str(tmp_path / 'b'))
  quick_config.seed = 1
  train.train_and_evaluate(quick_config, str(tmp_path / 'c'))
  assert _read(tmp_path / 'a') == _read(tmp_path / 'b')
  assert _read(tmp_path / 'a')[0] != _read(tmp_path / 'c')[0]


def test_time_to_target_is_the_first_evaluation_reaching_it(quick_config, tmp_path):
  quick_config.target_accuracy = 0.3
  quick_config.eval_every = 1
  summary = train.train_and_evaluate(quick_config, str(tmp_path))
  rows, _ = _read(tmp_path)
  first = next(r for r in rows if r['consensus_accuracy'] >= 0.3)
  assert summary['time_to_target_s'] == first['sim_time_s']
  assert summary['cycle_at_target'] == first['cycle']


def test_refined_time_to_target_is_that_of_evaluating_every_cycle(quick_config, tmp_path):
  # The reference: evaluated after every cycle, no refinement.
  quick_config.refine_target = False
  quick_config.eval_every = 1
  train.train_and_evaluate(quick_config, str(tmp_path / 'every'))
  every, _ = _read(tmp_path / 'every')
  acc = [r['consensus_accuracy'] for r in every]
  # A target first crossed at a cycle that the coarse schedule (every 3) does not evaluate.
  first = max(c for c in (1, 2, 4, 5) if acc[c - 1] > max(acc[:c - 1], default=0.0))
  quick_config.target_accuracy = acc[first - 1]
  quick_config.stop_at_target = True
  quick_config.eval_every = 3
  scheduled = train.train_and_evaluate(quick_config, str(tmp_path / 'scheduled'))
  quick_config.refine_target = True
  refined = train.train_and_evaluate(quick_config, str(tmp_path / 'refined'))
  assert scheduled['cycle_at_target'] == 3 * (first // 3 + 1)
  assert 'target_refinement' not in scheduled
  assert refined['cycle_at_target'] == first
  assert refined['time_to_target_s'] == every[first - 1]['sim_time_s']
  # What was evaluated: the cycles after the last evaluation below the target, up to it.
  rows = refined['target_refinement']
  assert [r['cycle'] for r in rows] == list(range(3 * (first // 3) + 1, first + 1))
  assert [r['consensus_accuracy'] for r in rows] == pytest.approx(acc[rows[0]['cycle'] - 1:first],
                                                                  abs=1e-6)
  # The scheduled evaluations, the curves, are those of the unrefined run.
  assert _read(tmp_path / 'refined')[0] == _read(tmp_path / 'scheduled')[0]


def test_ledger_matches_bytes_of_the_spec(quick_config, tmp_path):
  # rho = 1: every cycle all 8 devices ring-all-reduce the 4,810-parameter model.
  quick_config.hadfl.rho = 1.0
  summary = train.train_and_evaluate(quick_config, str(tmp_path))
  per_cycle = 2 * 7 / 8 * 4810 * 4
  assert summary['bytes_sent_per_device'] == pytest.approx(6 * per_cycle, rel=1e-6)
  assert summary['busiest_link_bytes'] == pytest.approx(6 * per_cycle, rel=1e-6)


@pytest.mark.parametrize('field,value,message', [
    ('dataset.name', 'no_such_dataset', 'config.dataset.name'),
    ('model', 'resnet9000', 'config.model'),
    ('hadfl.rho', 1.5, 'config.hadfl.rho'),
    ('hadfl.rho', 0.0, 'config.hadfl.rho'),
    ('optimizer.learning_rate', -0.1, 'config.optimizer.learning_rate'),
    ('partition.alpha', 0.0, 'config.partition.alpha'),
    ('profile.speeds', (1.0, 2.0), 'config.profile.speeds'),
])
def test_bad_input_stops_before_any_work(quick_config, tmp_path, field, value, message):
  section, _, name = field.rpartition('.')
  target = quick_config[section] if section else quick_config
  target[name] = value
  with pytest.raises(validation.ConfigError, match=message):
    train.train_and_evaluate(quick_config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_k_greater_than_n_is_refused(quick_config, tmp_path):
  quick_config.num_devices = 1
  quick_config.profile.speeds = (1.0,)
  with pytest.raises(validation.ConfigError, match='K = max.* > N = 1'):
    train.train_and_evaluate(quick_config, str(tmp_path))


def test_missing_idx_directory_is_named(quick_config, tmp_path):
  quick_config.dataset.name = 'mnist_idx'
  quick_config.dataset.idx_dir = str(tmp_path / 'nowhere')
  with pytest.raises(validation.ConfigError, match='dataset.idx_dir.*does not exist'):
    train.train_and_evaluate(quick_config, str(tmp_path / 'run'))


@pytest.mark.slow
def test_command_line(digits_data_dir, tmp_path):
  cmd = [sys.executable, '-m', 'hadfl_jax.main', '--config', 'configs/default.py',
         '--workdir', str(tmp_path), f'--config.dataset.data_dir={digits_data_dir}',
         '--config.num_cycles=4', '--config.eval_every=2', '--config.num_devices=4',
         '--config.profile.speeds=(1.0, 2.0, 3.0, 4.0)']
  out = subprocess.run(cmd, cwd=fixtures.REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'final consensus accuracy' in out.stdout
  rows, summary = _read(tmp_path)
  assert len(rows) == 2 and summary['num_devices'] == 4
  bad = subprocess.run(cmd + ['--config.hadfl.rho=2.0'], cwd=fixtures.REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0
  assert 'config.hadfl.rho=2.0 is invalid' in bad.stderr
  assert np.isfinite(summary['sim_time_s'])


def test_eval_schedule_in_cycles_and_in_simulated_seconds(quick_config):
  quick_config.eval_every = 3
  cycles = train.EvalSchedule.from_config(quick_config, [])
  assert [c for c in range(1, 10) if cycles.due(c, 0.0)] == [3, 6, 9]
  quick_config.eval_interval_s, quick_config.eval_growth = 1.0, 0.5
  sim = train.EvalSchedule.from_config(quick_config, [])
  due = []
  for t in (0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2, 3.6, 4.0, 4.4):
    if sim.due(0, t):
      due.append(t)
      sim.evaluated(t)
  # Next point after t: max(t + 1, 1.5 t): 1.2 -> 2.2, 2.4 -> 3.6, 3.6 -> 5.4.
  assert due == [1.2, 2.4, 3.6]
  # A resumed run continues the schedule from its last evaluation.
  resumed = train.EvalSchedule.from_config(quick_config, [{'sim_time_s': 2.4}])
  assert not resumed.due(0, 3.5) and resumed.due(0, 3.6)


@pytest.mark.parametrize('seconds,text', [(0, '0s'), (59.4, '59s'), (60, '1m00s'),
                                          (3599, '59m59s'), (3600, '1h00m'), (7322, '2h02m')])
def test_format_duration(seconds, text):
  assert train.format_duration(seconds) == text


def test_time_left_extrapolates_progress_towards_the_budget(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(train.time, 'perf_counter', lambda: clock[0])
  ledger = train.Ledger(2)
  ledger.cycles = 10  # Restored from a checkpoint: not counted in the rate.
  left = train.TimeLeft(num_cycles=50, max_sim_time=0.0, ledger=ledger)
  assert str(left) == 'eta ?'
  ledger.cycles, clock[0] = 20, 130.0  # 10 cycles in 30 s; 30 cycles to go.
  assert str(left) == 'eta 1m30s'
  # A simulated-time cap that comes first sets the fraction; a target makes it a bound.
  capped = train.TimeLeft(num_cycles=10**6, max_sim_time=4.0, ledger=ledger, bound=True)
  ledger.sim_time, clock[0] = 3.0, 190.0  # From sim 0 at cycle 20 to 3 of 4 s: 60 s.
  assert str(capped) == 'eta <=20s'
