"""What an installed copy holds: every package, the configs as ``hadfl_jax.configs``, and
``--config`` by name. (``tests/colab_test.py`` runs the notebooks from a built wheel.)"""

import os
import subprocess
import sys
import tomllib

import pytest

from hadfl_jax import config_files
from tests import fixtures

PACKAGED = ('default', 'many_devices', 'noniid_mnist', 'paper_mnist', 'quick_compare')


def test_pyproject_lists_every_package_and_maps_the_configs():
  with open(fixtures.REPO / 'pyproject.toml', 'rb') as f:
    setuptools = tomllib.load(f)['tool']['setuptools']
  on_disk = sorted(
      os.path.relpath(root, fixtures.REPO).replace(os.sep, '.')
      for root, _, files in os.walk(fixtures.REPO / 'hadfl_jax') if '__init__.py' in files)
  assert sorted(setuptools['packages']) == sorted(on_disk + ['hadfl_jax.configs'])
  assert setuptools['package-dir'] == {'hadfl_jax.configs': 'configs'}


def test_packaged_configs_are_the_projects_configs():
  assert config_files.packaged_names() == PACKAGED
  for name in PACKAGED:
    assert os.path.samefile(config_files.packaged_path(name),
                            fixtures.REPO / 'configs' / f'{name}.py')


@pytest.mark.parametrize('value', ['default', 'default.py', 'configs/default.py'])
def test_config_by_name_resolves_to_the_packaged_file(value, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Outside the clone: configs/default.py is not a file here.
  assert config_files.resolve(value) == config_files.packaged_path('default')
  assert config_files.resolve(value + ':x') == config_files.packaged_path('default') + ':x'


def test_an_existing_file_is_taken_as_it_is(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'default.py').write_text('')
  assert config_files.resolve('default.py') == 'default.py'
  assert config_files.resolve_argv(['prog', '--config', 'default.py', '--config.seed=1']) == [
      'prog', '--config', 'default.py', '--config.seed=1']
  assert config_files.resolve_argv(['prog', '--config=quick_compare'])[1] == (
      '--config=' + config_files.packaged_path('quick_compare'))


def test_unknown_config_names_the_packaged_ones(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match='no such file, and not a packaged config.*paper_mnist'):
    config_files.resolve('elsewhere/default.py')
  result = subprocess.run(
      [sys.executable, '-m', 'hadfl_jax.main', '--config', 'nope', '--workdir', 'w'],
      capture_output=True, text=True, env=fixtures.subprocess_env(), check=False)
  assert result.returncode != 0
  assert "error: --config nope: no such file, and not a packaged config" in result.stderr
