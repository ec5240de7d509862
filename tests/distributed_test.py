"""Past one machine: two processes under ``jax.distributed`` (one CPU device each, CPU
collectives) give the same ``metrics.jsonl`` as one process with two host devices.

This is the multi-host path of a GPU cluster or a TPU pod (README, "Many hosts") run on
one machine: every process runs the same command with its process id, the device axis is
sharded over the global mesh, only process 0 writes the run's files, and every process
takes part in orbax's checkpoint saves.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests import fixtures

RUN = ['--config', 'default', '--config.num_cycles=6', '--config.eval_every=3',
       '--config.checkpoint_every=3', '--quiet']
# What the error of a machine without CPU collectives says (the test is then skipped,
# naming it); any other failure fails the test.
NO_COLLECTIVES = ('collective', 'gloo', 'unimplemented')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _main(workdir, *flags):
  return [sys.executable, '-m', 'hadfl_jax.main', '--workdir', str(workdir), *RUN, *flags]


def test_two_processes_match_one_process_with_two_devices(tmp_path, compilation_cache_dir):
  env = fixtures.subprocess_env(compilation_cache_dir)
  env.pop('XLA_FLAGS', None)  # One CPU device per process.
  address = f'localhost:{_free_port()}'
  procs = [subprocess.Popen(
      _main(tmp_path / 'two', '--config.engine.distributed=True',
            f'--config.engine.coordinator_address={address}',
            '--config.engine.num_processes=2', f'--config.engine.process_id={i}'),
      cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail('the two processes did not finish in 240 s')
  if any(p.returncode for p in procs):
    text = '\n'.join(outputs)
    error = [line for line in text.strip().splitlines() if line.strip()][-1]
    if any(k in error.lower() for k in NO_COLLECTIVES):
      pytest.skip(f'CPU collectives are unavailable here: {error}')
    pytest.fail(f'a process failed:\n{text[-4000:]}')

  one_env = dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  subprocess.run(_main(tmp_path / 'one'), cwd=tmp_path, env=one_env, check=True,
                 capture_output=True)
  two, one = tmp_path / 'two', tmp_path / 'one'
  with open(one / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [r['cycle'] for r in rows] == [3, 6]
  assert (two / 'metrics.jsonl').read_text() == (one / 'metrics.jsonl').read_text()
  assert (two / 'summary.json').read_text() == (one / 'summary.json').read_text()
  with open(two / 'config.json') as f:
    assert json.load(f)['engine']['num_processes'] == 2
  # Orbax's multi-host save: one checkpoint directory, written by both processes.
  assert sorted(os.listdir(two / 'checkpoints')) == sorted(os.listdir(one / 'checkpoints'))
