"""The notebooks run: every colab is executed on the quick config (nbclient)."""

import pathlib

import nbclient
import nbformat
import pytest

from tests import fixtures

COLABS = sorted((fixtures.REPO / 'colabs').glob('*.ipynb'))


@pytest.mark.parametrize('path', COLABS, ids=[p.name for p in COLABS])
def test_colab_is_stored_without_outputs(path: pathlib.Path):
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, f'{path.name}: clear outputs'


def test_compare_quick_colab_runs(digits_data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv('HADFL_DATA_DIR', digits_data_dir)
  monkeypatch.setenv('HADFL_WORKDIR', str(tmp_path))
  monkeypatch.setenv('PYTHONPATH', str(fixtures.REPO))
  nb = nbformat.read(fixtures.REPO / 'colabs' / 'compare_quick.ipynb', as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(fixtures.REPO)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 2
  assert (tmp_path / 'results.json').exists()
