"""The notebooks run top to bottom from an installed wheel, outside the repository.

A module fixture builds the project's wheel (from a copy of the files the build reads,
so the clone is left as it is), makes a fresh virtual environment and installs the wheel
in it. The packages it depends on come from the test environment, through a ``.pth`` file
naming its site-packages (so no network is needed, and no editable install of the
project is visible). Every notebook then runs with that environment's Python (nbclient,
a ``python3`` kernel) in a temporary working directory: anything the wheel lacks, a
config or a module, fails here, as it would on Colab after ``pip install``.
"""

import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import nbformat
import pytest

from tests import fixtures

COLABS = sorted((fixtures.REPO / 'colabs').glob('*.ipynb'))
# Figures each notebook shows (a notebook that silently stops plotting fails).
FIGURES = {'compare_quick.ipynb': 2, 'heterogeneity.ipynb': 2, 'mixing.ipynb': 3,
           'own_algorithm.ipynb': 1}
BUILD_INPUTS = ('pyproject.toml', 'README.md', 'requirements.txt', 'hadfl_jax', 'configs')

_RUNNER = '''
import sys
import nbclient
import nbformat

nb = nbformat.read(sys.argv[1], as_version=4)
try:
  nbclient.NotebookClient(nb, timeout=900, kernel_name='python3').execute()
finally:
  nbformat.write(nb, sys.argv[2])
'''


def _repository_url() -> str:
  with open(fixtures.REPO / 'pyproject.toml', 'rb') as f:
    return tomllib.load(f)['project']['urls']['Repository']


@pytest.fixture(scope='module')
def wheel_env(tmp_path_factory, compilation_cache_dir):
  """A fresh venv with the project installed from its wheel: ``(python, env)``."""
  root = tmp_path_factory.mktemp('wheel')
  source = root / 'source'
  source.mkdir()
  for name in BUILD_INPUTS:
    copy = shutil.copytree if (fixtures.REPO / name).is_dir() else shutil.copy
    copy(fixtures.REPO / name, source / name,
         **({'ignore': shutil.ignore_patterns('__pycache__')} if copy is shutil.copytree else {}))
  pip = [sys.executable, '-m', 'pip']
  subprocess.run(pip + ['wheel', '-q', '--no-deps', '--no-build-isolation', '-w',
                        str(root / 'dist'), str(source)], check=True)
  (wheel,) = (root / 'dist').glob('hadfl_jax-*.whl')
  venv = root / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  python = venv / 'bin' / 'python'
  subprocess.run(pip + ['--python', str(python), 'install', '-q', '--no-deps', '--no-index',
                        str(wheel)], check=True)
  site = subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                        capture_output=True, text=True, check=True).stdout.strip()
  ours = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
  pathlib.Path(site, 'test_dependencies.pth').write_text('\n'.join(sorted(ours)) + '\n')
  env = fixtures.subprocess_env(compilation_cache_dir)
  env.pop('PYTHONPATH', None)
  return python, env, venv


def test_notebooks_are_stored_clean_and_open_with_badge_install_and_devices():
  url = _repository_url().replace('https://github.com/',
                                  'https://colab.research.google.com/github/')
  assert sorted(FIGURES) == [p.name for p in COLABS]
  for path in COLABS:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
      if cell.cell_type == 'code':
        assert not cell.outputs and cell.execution_count is None, f'{path.name}: clear outputs'
    first, install, devices = nb.cells[:3]
    assert f'({url}/blob/main/colabs/{path.name})' in first.source, path.name
    assert "find_spec('hadfl_jax') is None" in install.source
    assert f'git+{_repository_url()}' in install.source
    assert 'print(jax.devices())' in devices.source
    # One line switches to TFDS's catalog MNIST on Colab.
    assert "config.dataset.name = 'digits'  # Offline, built in. On Colab: 'mnist'" in (
        ''.join(c.source for c in nb.cells)), path.name


def test_the_wheel_is_what_runs_and_its_cli_takes_a_packaged_config(
    wheel_env, digits_data_dir, tmp_path):
  python, env, venv = wheel_env
  where = subprocess.run([str(python), '-c', 'import hadfl_jax; print(hadfl_jax.__file__, '
                          'hadfl_jax.__version__)'], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
  assert pathlib.Path(where[0]).is_relative_to(venv), where
  subprocess.run(
      [str(python), '-m', 'hadfl_jax.main', '--config', 'default', '--workdir', 'run',
       f'--config.dataset.data_dir={digits_data_dir}', '--config.num_cycles=4',
       '--config.eval_every=2', '--quiet'],
      cwd=tmp_path, env=env, check=True)
  for name in ('config.json', 'metrics.jsonl', 'summary.json'):
    assert (tmp_path / 'run' / name).exists()
  assert list((tmp_path / 'run' / 'tensorboard').glob('events.out.tfevents.*'))


@pytest.mark.parametrize('path', COLABS, ids=[p.name for p in COLABS])
def test_notebook_runs_from_the_wheel(path, wheel_env, digits_data_dir, tmp_path):
  python, env, _ = wheel_env
  env = dict(env, HADFL_DATA_DIR=digits_data_dir, HADFL_WORKDIR=str(tmp_path / 'work'),
             HADFL_NUM_SEEDS='1')  # Comparisons on one seed (CPU time).
  executed = tmp_path / path.name
  result = subprocess.run([str(python), '-c', _RUNNER, str(path), str(executed)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
  nb = nbformat.read(executed, as_version=4)
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if o.output_type == 'error']
  assert result.returncode == 0 and not errors, (
      result.stderr[-3000:], [e.get('evalue') for e in errors])
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert sum('image/png' in o.get('data', {}) for o in outputs) == FIGURES[path.name]
  devices = nb.cells[2].outputs[0]['text']
  assert 'Device' in devices  # jax.devices() printed, e.g. [CpuDevice(id=0)].
