"""A real run killed with SIGKILL at different moments and resumed, against one never killed.

One workdir is killed three times (before the first checkpoint, during a checkpoint
save, between two checkpoints), resumed each time by the same command, and finally run
to the end; its ``metrics.jsonl``, ``summary.json`` and ``config.json`` must be byte-for-byte
those of a run that was never killed. The subprocesses share a persistent JAX
compilation cache, so that only the first ones compile.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import fixtures

NUM_CYCLES = 16
CHECKPOINT_EVERY = 3
TMP_CHECKPOINT = re.compile(r'^(\d+)\.orbax-checkpoint-tmp')


def _command(workdir, data_dir):
  return [
      sys.executable, '-m', 'hadfl_jax.main', '--config', 'configs/default.py',
      f'--workdir={workdir}', f'--config.dataset.data_dir={data_dir}',
      f'--config.num_cycles={NUM_CYCLES}', '--config.eval_every=1',
      f'--config.checkpoint_every={CHECKPOINT_EVERY}', '--config.num_devices=4',
      '--config.profile.speeds=(1.0, 2.0, 3.0, 4.0)', '--config.engine.num_buckets=1',
      '--config.device_eval_examples=200',
  ]


def _environment(cache_dir):
  return dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      JAX_COMPILATION_CACHE_DIR=str(cache_dir),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1',
  )


def _rows(workdir: pathlib.Path) -> int:
  try:
    return (workdir / 'metrics.jsonl').read_text().count('\n')
  except FileNotFoundError:
    return 0


def _saving(workdir: pathlib.Path) -> list[int]:
  """Steps of checkpoints being written right now (orbax's temporary directories)."""
  try:
    names = os.listdir(workdir / 'checkpoints')
  except FileNotFoundError:
    return []
  return [int(m.group(1)) for m in map(TMP_CHECKPOINT.match, names) if m]


class Run:
  """A subprocess of the command line, its output in a file."""

  def __init__(self, cmd, env, log: pathlib.Path):
    self.log = log
    with open(log, 'w') as out:
      self.proc = subprocess.Popen(cmd, cwd=fixtures.REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)

  def kill_when(self, condition, timeout=120.0) -> None:
    """SIGKILLs the process as soon as ``condition()`` holds (polled every 2 ms)."""
    deadline = time.monotonic() + timeout
    while self.proc.poll() is None and time.monotonic() < deadline:
      if condition():
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return
      time.sleep(0.002)
    self.proc.kill()
    pytest.fail(f'the run ended (rc {self.proc.returncode}) before the kill condition '
                f'held:\n{self.output()[-2000:]}')

  def finish(self, timeout=300) -> str:
    assert self.proc.wait(timeout) == 0, self.output()[-3000:]
    return self.output()

  def output(self) -> str:
    return self.log.read_text()


def _resumed_after(output: str) -> int | None:
  match = re.search(r'resuming after cycle (\d+)', output)
  return int(match.group(1)) if match else None


@pytest.mark.slow
def test_killed_and_resumed_run_writes_the_same_files(digits_data_dir, tmp_path):
  env = _environment(tmp_path / 'jax_cache')
  reference_dir, killed_dir = tmp_path / 'reference', tmp_path / 'killed'
  # The run never killed, alongside the killed one.
  reference = Run(_command(reference_dir, digits_data_dir), env, tmp_path / 'reference.log')
  cmd = _command(killed_dir, digits_data_dir)

  # 1. Before the first checkpoint: two evaluations written, nothing saved yet.
  Run(cmd, env, tmp_path / 'run1.log').kill_when(lambda: _rows(killed_dir) >= 2)

  # 2. During a checkpoint save: as soon as a checkpoint's temporary directory appears.
  run = Run(cmd, env, tmp_path / 'run2.log')
  run.kill_when(lambda: any(s >= 2 * CHECKPOINT_EVERY for s in _saving(killed_dir)))
  interrupted_save = max(_saving(killed_dir))

  # 3. Between two checkpoints: rows written after the latest complete one.
  run = Run(cmd, env, tmp_path / 'run3.log')
  run.kill_when(lambda: _rows(killed_dir) >= 3 * CHECKPOINT_EVERY + 1)
  # The interrupted save was not used: the run resumed from the checkpoint before it.
  assert _resumed_after(run.output()) == interrupted_save - CHECKPOINT_EVERY
  rows_at_kill = _rows(killed_dir)

  final = Run(cmd, env, tmp_path / 'run4.log').finish()
  # metrics.jsonl held rows past the checkpoint the run resumed from: they were dropped
  # and computed again.
  assert _resumed_after(final) is not None and _resumed_after(final) < rows_at_kill
  reference.finish()

  for name in ('metrics.jsonl', 'summary.json', 'config.json'):
    assert (killed_dir / name).read_bytes() == (reference_dir / name).read_bytes(), name
  assert _rows(reference_dir) == NUM_CYCLES
  # Nothing of the interrupted save is left behind.
  assert not _saving(killed_dir)
