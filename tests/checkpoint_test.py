"""Checkpoints and resuming in the same process: what is saved, what may change, what is refused."""

import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest

from hadfl_jax import algorithms
from hadfl_jax import checkpoint
from hadfl_jax import evaluation
from hadfl_jax import train
from hadfl_jax import validation
from tests import compile_cache

FILES = ('metrics.jsonl', 'summary.json')


def _config(data_dir, **overrides):
  from hadfl_jax.configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.dataset.data_dir = data_dir
  config.num_devices = 4
  config.profile.speeds = (1.0, 2.0, 3.0, 4.0)
  config.engine.num_buckets = 1
  config.device_eval_examples = 100
  # Faults and speed jitter, so that every part of the state moves.
  config.faults.p_drop = 0.2
  config.profile.jitter_sigma = 0.3
  config.num_cycles = 6
  config.eval_every = 3
  config.checkpoint_every = 3
  for field, value in overrides.items():
    section, _, name = field.rpartition('__')
    (config[section] if section else config)[name] = value
  return config


def _files(workdir) -> dict[str, bytes]:
  return {name: (workdir / name).read_bytes() for name in FILES}


def _timing(workdir) -> dict:
  return json.loads((workdir / 'timing.json').read_text())


@pytest.fixture(scope='module', autouse=True)
def _cache(tmp_path_factory):
  with compile_cache.persistent_compilation_cache(tmp_path_factory.mktemp('jax_cache')):
    yield


@pytest.fixture(scope='module')
def finished(digits_data_dir, tmp_path_factory):
  """A finished 9-cycle run with checkpoints after cycles 6 and 9 (3 was deleted)."""
  workdir = tmp_path_factory.mktemp('finished')
  train.train_and_evaluate(_config(digits_data_dir, num_cycles=9), str(workdir))
  return workdir


@pytest.fixture
def copy_of(tmp_path):
  def copy(workdir):
    return shutil.copytree(workdir, tmp_path / 'copy')
  return copy


def _fresh(config):
  """The finished run's setup, algorithm and a freshly initialised state to restore into."""
  setup = train.build_setup(config)
  algorithm = train.build_algorithm(config, setup.problem)
  return setup, algorithm, algorithm.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))


def test_checkpoint_holds_the_whole_state(finished, digits_data_dir):
  config = _config(digits_data_dir, num_cycles=9)
  setup, algorithm, fresh = _fresh(config)
  checkpoints = checkpoint.Checkpointer(str(finished))
  try:
    assert checkpoints.latest_step == 9
    restored, progress = checkpoints.restore(fresh)
  finally:
    checkpoints.close()
  chex.assert_trees_all_equal_shapes_and_dtypes(restored, fresh)
  # The data position: each device's step counter is what the ledger counted.
  np.testing.assert_array_equal(restored.devices.steps, progress['ledger']['steps_N'])
  assert min(progress['ledger']['steps_N']) > 0
  # The per-device and coordinator keys (fixed by the seed), the cycle index.
  np.testing.assert_array_equal(restored.devices.key, fresh.devices.key)
  np.testing.assert_array_equal(restored.key, fresh.key)
  assert int(restored.cycle) == 9
  assert -1 <= int(restored.last_sync.min()) <= int(restored.last_sync.max()) == 8
  # The profiled speeds moved off the profile (jitter): they are state, not config.
  assert not np.allclose(restored.speed_est, setup.problem.profile.speed_N)
  # The models: evaluated, they give the last row of metrics.jsonl.
  evaluator = evaluation.Evaluator(setup.problem.model.apply, setup.test,
                                   config.eval_batch_size, config.device_eval_examples)
  rows = [json.loads(line) for line in (finished / 'metrics.jsonl').read_text().splitlines()]
  evaluated = train.evaluate(evaluator, algorithm, restored)
  assert evaluated == pytest.approx({k: rows[-1][k] for k in evaluated}, rel=1e-6)
  # The host's bookkeeping: ledger, history and config are those of the finished run.
  summary = json.loads((finished / 'summary.json').read_text())
  assert progress['ledger']['sim_time'] == summary['sim_time_s']
  assert progress['ledger']['cycles'] == 9
  assert progress['history'] == rows
  assert progress['config'] == checkpoint.to_json_tree(config)


def test_a_checkpoint_written_before_the_state_had_carry_resumes(finished, copy_of,
                                                                   digits_data_dir):
  # Checkpoint 9 rewritten as a version before hadfl.outsiders wrote it: no `carry` in the
  # state, no `outsiders` in the config, the digest over the state it had.
  import dataclasses  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  workdir = copy_of(finished)
  config = _config(digits_data_dir, num_cycles=9)
  _, _, fresh = _fresh(config)
  checkpoints = checkpoint.Checkpointer(str(workdir))
  try:
    state, progress = checkpoints.restore(fresh, 9)
    old_progress = json.loads(json.dumps(progress))
    del old_progress['config']['hadfl']['outsiders']
    old_progress['state_digest'] = checkpoint.state_digest(state.replace(carry=None))
    old_state = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
                 if f.name != 'carry'}  # The fields, as the old State class had them.
    checkpoints._manager.delete(9)
    checkpoints._manager.save(9, args=ocp.args.Composite(
        state=ocp.args.StandardSave(old_state), progress=ocp.args.JsonSave(old_progress)))
    checkpoints._manager.wait_until_finished()
  finally:
    checkpoints.close()
  checkpoints = checkpoint.Checkpointer(str(workdir))  # As a new process opens it.
  try:
    step, restored, saved = checkpoints.restore_newest_good(fresh, check=lambda p: (
        checkpoint.check_same_run(p['config'], checkpoint.to_json_tree(config), 'w', 's')))
  finally:
    checkpoints.close()
  assert step == 9 and 'outsiders' not in saved['config']['hadfl']
  chex.assert_trees_all_equal(restored, state)  # carry: the initial zeros.
  # And the run goes on from it.
  train.train_and_evaluate(_config(digits_data_dir, num_cycles=9), str(workdir))
  assert _timing(workdir)['resumed_after_cycle'] == 9


def test_rerunning_a_finished_run_runs_no_cycle(finished, copy_of, digits_data_dir):
  workdir = copy_of(finished)
  train.train_and_evaluate(_config(digits_data_dir, num_cycles=9), str(workdir))
  assert _timing(workdir)['resumed_after_cycle'] == 9
  assert _files(workdir) == _files(finished)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['6', '9']


def test_resumes_from_the_latest_checkpoint_and_truncates_metrics(finished, copy_of,
                                                                 digits_data_dir):
  workdir = copy_of(finished)
  # As a run killed after cycle 9's evaluation, before its checkpoint was complete:
  # metrics.jsonl has the row of cycle 9, checkpoint 6 does not.
  shutil.rmtree(workdir / 'checkpoints' / '9')
  (workdir / 'summary.json').unlink()
  train.train_and_evaluate(_config(digits_data_dir, num_cycles=9), str(workdir))
  assert _timing(workdir)['resumed_after_cycle'] == 6
  assert _files(workdir) == _files(finished)


def test_extending_num_cycles_continues_the_run(finished, copy_of, digits_data_dir):
  workdir = copy_of(finished)
  shutil.rmtree(workdir / 'checkpoints' / '9')
  # A finished 6-cycle run (its checkpoint 6 is that of the 9-cycle run: eval_every
  # divides 6, and num_cycles may differ)...
  train.train_and_evaluate(_config(digits_data_dir, num_cycles=6), str(workdir))
  assert json.loads((workdir / 'summary.json').read_text())['cycles'] == 6
  # ...extended to 9 cycles gives the 9-cycle run.
  train.train_and_evaluate(_config(digits_data_dir, num_cycles=9), str(workdir))
  assert _timing(workdir)['resumed_after_cycle'] == 6
  assert _files(workdir) == _files(finished)


@pytest.mark.parametrize('change,message', [
    (dict(hadfl__rho=0.25), 'hadfl.rho: 0.5 in the workdir, 0.25 now'),
    (dict(seed=3), 'seed: 0 in the workdir, 3 now'),
    (dict(profile__speeds=(1.0, 1.0, 3.0, 4.0)),
     r'profile.speeds: \[1.0, 2.0, 3.0, 4.0\] in the workdir, \[1.0, 1.0, 3.0, 4.0\] now'),
])
def test_a_different_config_is_refused(finished, copy_of, digits_data_dir, change, message):
  workdir = copy_of(finished)
  before = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()}
  change = dict(num_cycles=9, **change)
  with pytest.raises(checkpoint.ResumeError, match=message):
    train.train_and_evaluate(_config(digits_data_dir, **change), str(workdir))
  # Refused before writing anything.
  assert {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()} == before
  # Without config.json, the checkpoint's own record of the config refuses it.
  (workdir / 'config.json').unlink()
  with pytest.raises(checkpoint.ResumeError, match='checkpoint 9 .*' + message):
    train.train_and_evaluate(_config(digits_data_dir, **change), str(workdir))


def test_a_run_of_an_earlier_algorithm_revision_is_not_continued(
    finished, copy_of, digits_data_dir, monkeypatch):
  # Its checkpoints record the algorithm's REVISION (none: 1); once the algorithm is
  # corrected (REVISION 2), the run is refused, its config.json notwithstanding.
  workdir = copy_of(finished)
  monkeypatch.setattr(algorithms.ALGORITHMS.get('hadfl'), 'REVISION', 2, raising=False)
  with pytest.raises(checkpoint.ResumeError,
                     match='checkpoint 9 .*algorithm_revision: absent in the workdir, 2 now'):
    train.train_and_evaluate(_config(digits_data_dir, num_cycles=12), str(workdir))


def test_a_workdir_without_checkpoints_refuses_a_different_config(digits_data_dir, tmp_path):
  config = _config(digits_data_dir, checkpoint_every=0)
  (tmp_path / 'config.json').write_text(json.dumps(config.to_dict()))
  config.optimizer.learning_rate = 0.01
  with pytest.raises(checkpoint.ResumeError, match='optimizer.learning_rate: 0.05 in the workdir'):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['.lock', 'config.json']  # The lock: empty, free.


def test_fewer_cycles_than_done_is_refused(finished, copy_of, digits_data_dir):
  workdir = copy_of(finished)
  with pytest.raises(checkpoint.ResumeError, match='num_cycles=7 is below .* at cycle 9'):
    train.train_and_evaluate(_config(digits_data_dir, num_cycles=7), str(workdir))


def test_a_run_stopped_at_target_stays_stopped(digits_data_dir, tmp_path):
  config = _config(digits_data_dir, target_accuracy=0.3, stop_at_target=True, eval_every=1,
                   checkpoint_every=4, num_cycles=30)
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['cycles'] < 30
  files = _files(tmp_path)
  train.train_and_evaluate(config, str(tmp_path))
  assert _timing(tmp_path)['resumed_after_cycle'] == summary['cycles']
  assert _files(tmp_path) == files


def test_config_differences_ignore_resumable_fields():
  saved = {'algorithm': 'hadfl', 'num_cycles': 6, 'checkpoint_every': 3,
           'engine': {'num_buckets': 8}, 'dataset': {'name': 'digits', 'data_dir': '/a'},
           'hadfl': {'rho': 0.5}, 'ddp': {'steps_per_cycle': 10}}
  current = {'algorithm': 'hadfl', 'num_cycles': 60, 'checkpoint_every': 0,
             'engine': {'num_buckets': 1, 'new': 1},
             'dataset': {'name': 'digits', 'data_dir': '/b'}, 'hadfl': {'rho': 0.5, 'extra': 2},
             'ddp': {'steps_per_cycle': 3}}
  # Only the active algorithm's section counts: ddp's change is not a difference.
  assert checkpoint.config_differences(saved, current) == [
      'hadfl.extra: absent in the workdir, 2 now']
  assert checkpoint.config_differences(current, current) == []
  # A field added since reads as the value earlier runs computed with.
  assert checkpoint.config_differences(saved, {**saved, 'hadfl': {
      'rho': 0.5, 'outsiders': 'planned'}}) == []
  assert checkpoint.config_differences(saved, {**saved, 'hadfl': {
      'rho': 0.5, 'outsiders': 'carried'}}) == [
          'hadfl.outsiders: "planned" in the workdir, "carried" now']
  as_ddp = lambda d: {**d, 'algorithm': 'ddp'}
  assert checkpoint.config_differences(as_ddp(saved), as_ddp(current)) == [
      'ddp.steps_per_cycle: 10 in the workdir, 3 now']
  assert issubclass(checkpoint.ResumeError, validation.ConfigError)
