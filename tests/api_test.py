"""The public API: what ``import hadfl_jax`` gives, and what the pure core does not import."""

import subprocess
import sys

import hadfl_jax
from tests import fixtures


def _python(code: str) -> str:
  out = subprocess.run([sys.executable, '-c', code], cwd=fixtures.REPO, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.strip()


def test_the_engine_and_algorithms_import_no_data_code():
  loaded = _python('import sys, hadfl_jax, hadfl_jax.core, hadfl_jax.algorithms; '
                   'print(sorted(m for m in sys.modules if m.split(".")[0] in '
                   '("tensorflow_datasets", "tensorflow", "hadfl_jax")))')
  assert 'tensorflow_datasets' not in loaded and "'hadfl_jax.data'" not in loaded
  assert "'hadfl_jax.core.engine'" in loaded


def test_command_line_modules_import_together():
  # Flags are defined only by the module that is the program.
  assert _python('import hadfl_jax.main, hadfl_jax.compare; print("ok")') == 'ok'


def test_public_names():
  assert hadfl_jax.__version__.count('.') == 2
  for name in hadfl_jax.__all__:
    assert getattr(hadfl_jax, name) is not None, name
  assert set(hadfl_jax.ALGORITHMS.names()) >= {'hadfl', 'ddp', 'dfedavg', 'fedavg', 'dpsgd'}
  assert hadfl_jax.run.__module__ == 'hadfl_jax.train'
  assert hadfl_jax.compare.compare.__module__ == 'hadfl_jax.compare'
