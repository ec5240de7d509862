"""Shared and preemptible machines: a busy workdir, damaged checkpoints, SIGTERM, big batches.

Each scenario is checked against a run that was never disturbed: after the fallback or
the resume, ``metrics.jsonl`` and ``summary.json`` must be exactly those of a straight run.
"""

import gc
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import orbax.checkpoint as ocp
import pytest

from hadfl_jax import train
from hadfl_jax import validation
from hadfl_jax import workdir as workdir_lib
from tests import fixtures


def _small_config(data_dir):
  from hadfl_jax.configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.dataset.data_dir = data_dir
  config.num_devices = 4
  config.profile.speeds = (1.0, 2.0, 3.0, 4.0)
  config.engine.num_buckets = 1
  config.device_eval_examples = 200
  config.eval_every = 1
  config.checkpoint_every = 2
  return config


@pytest.fixture
def small(digits_data_dir):
  return _small_config(digits_data_dir)


def _files(workdir) -> dict[str, str]:
  workdir = pathlib.Path(workdir)
  return {name: (workdir / name).read_text() for name in ('metrics.jsonl', 'summary.json')}


@pytest.fixture(scope='module')
def straight(digits_data_dir, tmp_path_factory):
  """The files of an undisturbed six-cycle run."""
  config = _small_config(digits_data_dir)
  config.num_cycles = 6
  workdir = tmp_path_factory.mktemp('straight')
  train.train_and_evaluate(config, str(workdir))
  return _files(workdir)


@pytest.fixture(scope='module')
def four_cycles(digits_data_dir, tmp_path_factory):
  """A workdir after four cycles, with checkpoints after cycles 2 and 4."""
  config = _small_config(digits_data_dir)
  config.num_cycles = 4
  workdir = tmp_path_factory.mktemp('four') / 'run'
  train.train_and_evaluate(config, str(workdir))
  return workdir


# --- one run per workdir -----------------------------------------------------------------


def test_a_second_run_on_a_busy_workdir_stops_at_once(small, tmp_path, capsys):
  workdir = tmp_path / 'busy'
  with workdir_lib.WorkdirLock(str(workdir)):
    start = time.perf_counter()
    with pytest.raises(workdir_lib.WorkdirBusyError) as error:
      train.train_and_evaluate(small, str(workdir))
    assert time.perf_counter() - start < 5  # Before any data or model is built.
  message = str(error.value)
  assert str(workdir) in message and f'pid {os.getpid()}' in message
  assert not (workdir / 'config.json').exists()
  # Released: the same run now goes ahead.
  small.num_cycles = 2
  train.train_and_evaluate(small, str(workdir))
  assert (workdir / 'summary.json').exists()
  capsys.readouterr()


def test_the_command_line_names_the_other_process(small, tmp_path):
  workdir = tmp_path / 'busy'
  with workdir_lib.WorkdirLock(str(workdir)):
    out = subprocess.run(
        [sys.executable, '-m', 'hadfl_jax.main', '--config', 'configs/default.py',
         f'--workdir={workdir}', f'--config.dataset.data_dir={small.dataset.data_dir}'],
        cwd=fixtures.REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: workdir {workdir} is in use by another run: pid {os.getpid()}')
  assert 'Traceback' not in out.stderr


def test_a_stale_lock_is_taken_over_with_a_message(small, tmp_path, capsys):
  workdir = tmp_path / 'stale'
  workdir.mkdir()
  # A lock file left by a process that is gone (no one holds the lock on it).
  (workdir / workdir_lib.LOCK_FILE).write_text(json.dumps(
      {'pid': 999999, 'host': 'gone', 'started': '2026-01-01 00:00:00 UTC'}))
  small.num_cycles = 2
  train.train_and_evaluate(small, str(workdir))
  out = capsys.readouterr().out
  assert 'taking over the lock of a run that ended without releasing it (pid 999999' in out
  assert (workdir / workdir_lib.LOCK_FILE).read_text() == ''  # Released at the end.


# --- damaged checkpoints -------------------------------------------------------------------

# One file of each kind a checkpoint holds, what is done to it, and what follows: the
# checkpoint is refused and the one before it restored ('fallback'), or it restores intact
# ('intact': orbax does not need that file, or rebuilds it; the state's digest, saved with
# it, proves the restored state is the one saved).
DAMAGE = [
    ('_CHECKPOINT_METADATA', 'garbage', 'intact'),
    ('progress/metadata', 'garbage', 'fallback'),
    ('state/_METADATA', 'truncate', 'fallback'),
    ('state/_sharding', 'garbage', 'intact'),
    ('state/manifest.ocdbt', 'delete', 'fallback'),
    ('state/array_metadatas/process_0', 'truncate', 'fallback'),
    ('state/ocdbt.process_0/d/*', 'garbage', 'fallback'),  # The arrays' bytes.
]


def _damage(path: pathlib.Path, how: str) -> None:
  if how == 'delete':
    path.unlink()
  elif how == 'truncate':
    path.write_bytes(path.read_bytes()[:max(1, path.stat().st_size // 2)])
  else:
    data = bytearray(path.read_bytes())
    noise = os.urandom(100)
    start = max(0, len(data) // 2 - 50)
    data[start:start + 100] = noise  # 100 random bytes in the middle (or appended).
    path.write_bytes(bytes(data))


# orbax's reads of a damaged array leave coroutines that are collected later, each an
# "exception ignored" warning: collected in the test (gc below) and not reported.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('pattern,how,outcome', DAMAGE, ids=[f'{p}-{h}' for p, h, _ in DAMAGE])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(
    small, straight, four_cycles, tmp_path, capsys, pattern, how, outcome):
  workdir = tmp_path / 'run'
  shutil.copytree(four_cycles, workdir)
  latest = workdir / 'checkpoints' / '4'
  targets = sorted(latest.glob(pattern))
  if not targets and pattern.startswith('state/array_metadatas'):
    pytest.skip(f'this orbax ({ocp.__version__}) writes no {pattern}')
  assert targets, sorted(str(p.relative_to(latest)) for p in latest.rglob('*'))
  # Of several files (content-named chunks), the largest: the parameters' bytes.
  _damage(max(targets, key=lambda p: p.stat().st_size), how)
  capsys.readouterr()
  small.num_cycles = 6
  train.train_and_evaluate(small, str(workdir))
  out = capsys.readouterr().out
  refused = f'checkpoint 4 in {workdir / "checkpoints"} cannot be restored'
  if outcome == 'fallback':
    assert refused in out and 'resuming after cycle 2' in out
  else:
    assert refused not in out and 'resuming after cycle 4' in out
  assert _files(workdir) == straight
  gc.collect()


def test_an_undetected_change_to_the_arrays_is_caught_by_the_digest(
    small, straight, four_cycles, tmp_path, capsys):
  # A corruption the storage format cannot see: the checkpoint's state is replaced by a
  # valid state of the same shapes (cycle 2's) under checkpoint 4's name.
  workdir = tmp_path / 'run'
  shutil.copytree(four_cycles, workdir)
  shutil.rmtree(workdir / 'checkpoints' / '4' / 'state')
  shutil.copytree(workdir / 'checkpoints' / '2' / 'state', workdir / 'checkpoints' / '4' / 'state')
  capsys.readouterr()
  small.num_cycles = 6
  train.train_and_evaluate(small, str(workdir))
  out = capsys.readouterr().out
  assert 'checkpoint 4' in out and 'digest mismatch' in out and 'resuming after cycle 2' in out
  assert _files(workdir) == straight


def test_no_checkpoint_that_restores_is_a_clear_error(small, four_cycles, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(four_cycles, workdir)
  for step in ('2', '4'):
    _damage(workdir / 'checkpoints' / step / 'progress' / 'metadata', 'garbage')
  small.num_cycles = 6
  with pytest.raises(validation.ConfigError, match=r'no checkpoint in .* can be restored: '
                     r'checkpoint 4 \(.*\); checkpoint 2 \('):
    train.train_and_evaluate(small, str(workdir))


# --- preemption ------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_saves_at_the_next_cycle_and_the_rerun_resumes(small, tmp_path,
                                                              compilation_cache_dir):
  # A run that checkpoints only every 50 cycles is sent SIGTERM in the middle.
  workdir, straight_dir = tmp_path / 'run', tmp_path / 'straight'
  cmd = [sys.executable, '-m', 'hadfl_jax.main', '--config', 'configs/default.py',
         f'--config.dataset.data_dir={small.dataset.data_dir}', '--config.num_devices=4',
         '--config.profile.speeds=(1.0, 2.0, 3.0, 4.0)', '--config.engine.num_buckets=1',
         '--config.device_eval_examples=200', '--config.eval_every=1',
         '--config.checkpoint_every=50', '--config.num_cycles=30']
  env = fixtures.subprocess_env(compilation_cache_dir)
  log = tmp_path / 'log.txt'
  with open(log, 'w') as out:
    proc = subprocess.Popen(cmd + [f'--workdir={workdir}'], cwd=fixtures.REPO, env=env,
                            stdout=out, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 120
  metrics = workdir / 'metrics.jsonl'
  while time.monotonic() < deadline and proc.poll() is None:
    if metrics.exists() and metrics.read_text().count('\n') >= 3:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.01)
  assert proc.wait(60) == 143, log.read_text()[-3000:]
  text = log.read_text()
  assert 'preempted: stopped after cycle' in text and 'Traceback' not in text
  stopped = int(text.split('preempted: stopped after cycle ')[1].split()[0])
  assert 3 <= stopped < 30
  assert sorted(os.listdir(workdir / 'checkpoints')) == [str(stopped)]
  again = subprocess.run(cmd + [f'--workdir={workdir}'], cwd=fixtures.REPO, env=env,
                         capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resuming after cycle {stopped}' in again.stdout
  small.num_cycles, small.checkpoint_every = 30, 50  # The same run, never stopped.
  train.train_and_evaluate(small, str(straight_dir))
  assert _files(workdir) == _files(straight_dir)


# --- multi-host and input checks -----------------------------------------------------------


def test_only_process_zero_writes_the_runs_files(small, tmp_path, monkeypatch):
  small.num_cycles, small.checkpoint_every = 2, 0
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  summary = train.train_and_evaluate(small, str(tmp_path / 'other'))
  assert summary['cycles'] == 2
  assert not any((tmp_path / 'other').glob('*.json*'))  # No config, metrics, summary.


def test_a_batch_larger_than_a_shard_is_said_and_recorded(quick_config, tmp_path, capsys):
  # Batches are drawn with replacement from a device's shard (of about 180 digits here).
  quick_config.batch_size, quick_config.num_cycles = 200, 1
  quick_config.device_eval_examples = 50
  train.train_and_evaluate(quick_config, str(tmp_path))
  out = capsys.readouterr().out
  assert 'warning: config.batch_size=200 is larger than the shards of 8 of 8 devices' in out
  with open(tmp_path / 'partition.json') as f:
    report = json.load(f)
  assert report['batch_size'] == 200
  assert report['devices_with_fewer_examples_than_a_batch'] == 8


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason='signal handlers can only be installed in the main thread')
def test_a_sigterm_the_run_could_not_act_on_is_raised_again():
  got = []
  previous = signal.signal(signal.SIGTERM, lambda *_: got.append('previous handler'))
  try:
    # SIGTERM during a run's last cycle: the run ends normally, then the process's own
    # handler (by default: stop) gets the signal, so a comparison does not go on.
    with workdir_lib.PreemptionWatch() as watch:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.01)
    assert watch.signalled and got == ['previous handler']
    # Acted on at a cycle boundary (checkpoint, stop): not raised again.
    with workdir_lib.PreemptionWatch() as watch:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.01)
      assert watch.should_stop(3)
    assert got == ['previous handler']
  finally:
    signal.signal(signal.SIGTERM, previous)
