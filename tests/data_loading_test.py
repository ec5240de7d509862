"""Loading through TFDS without TensorFlow: our builders, IDX files, the catalog path.

Every test uses a temporary TFDS data_dir, never the user's.
"""

import gzip
import os
import pathlib
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hadfl_jax import data
from hadfl_jax.data import builders
from hadfl_jax.data import idx
from hadfl_jax.data import loading

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_MNIST = pathlib.Path(
    os.environ.get('HADFL_MNIST_DIR', REPO / '..' / 'shared' / 'data' / 'mnist'))

# Class counts of the fixed stratified digits split (test_size=360, random_state=0).
DIGITS_TRAIN_COUNTS = [142, 146, 142, 146, 145, 145, 145, 143, 139, 144]
DIGITS_TEST_COUNTS = [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


# --- digits --------------------------------------------------------------------------


def test_digits_splits_sizes_and_stratified_counts(data_dir):
  train = data.load_split('digits', 'train', data_dir=data_dir)
  test = data.load_split('digits', 'test', data_dir=data_dir)
  assert (len(train.labels), len(test.labels)) == (1437, 360)
  assert len(train.labels) + len(test.labels) == 1797
  assert train.num_classes == test.num_classes == 10
  assert np.bincount(train.labels).tolist() == DIGITS_TRAIN_COUNTS
  assert np.bincount(test.labels).tolist() == DIGITS_TEST_COUNTS
  for split in (train, test):
    assert split.images.shape[1:] == (8, 8, 1)
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    assert split.images.min() == 0 and split.images.max() == 255


def test_digits_pixels_are_sklearn_values_scaled(data_dir):
  from sklearn import datasets as sk_datasets
  from sklearn import model_selection

  digits = sk_datasets.load_digits()
  _, test_idx = model_selection.train_test_split(
      np.arange(1797), test_size=360, stratify=digits.target, random_state=0)
  test_idx = np.sort(test_idx)
  test = data.load_split('digits', 'test', data_dir=data_dir)
  np.testing.assert_array_equal(
      test.images[..., 0], np.rint(digits.images[test_idx] * 255 / 16).astype(np.uint8))
  np.testing.assert_array_equal(test.labels, digits.target[test_idx])


def test_prepared_dataset_is_reused(data_dir, monkeypatch):
  data.load_split('digits', 'test', data_dir=data_dir)

  def fail(*args, **kwargs):
    raise AssertionError('prepared again')

  monkeypatch.setattr(builders.Digits, '_split_generators', fail)
  assert len(data.load_split('digits', 'test', data_dir=data_dir).labels) == 360


def test_fast_decoding_matches_tfds_decoding(data_dir):
  train = data.load_split('digits', 'train', data_dir=data_dir)
  source = tfds.data_source('digits', split='train', data_dir=data_dir, download=False)
  examples = source.__getitems__(list(range(len(source))))
  np.testing.assert_array_equal(train.images, np.stack([e['image'] for e in examples]))
  np.testing.assert_array_equal(train.labels, [e['label'] for e in examples])


def test_split_slicing(data_dir):
  head = data.load_split('digits', 'train[:10]', data_dir=data_dir)
  full = data.load_split('digits', 'train', data_dir=data_dir)
  np.testing.assert_array_equal(head.images, full.images[:10])


def test_default_data_dir_is_tfds_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  assert data.default_data_dir() == str(tmp_path)
  assert len(data.load_split('digits', 'test').labels) == 360
  assert (tmp_path / 'digits' / '1.0.0' / 'dataset_info.json').is_file()


def test_unknown_dataset_and_split(data_dir):
  with pytest.raises(data.DatasetError, match="unknown dataset 'no_such_set'"):
    data.load_split('no_such_set', 'train', data_dir=data_dir)
  with pytest.raises(data.DatasetError, match="Unknown split 'validation'"):
    data.load_split('digits', 'validation', data_dir=data_dir)


def test_empty_split(data_dir):
  with pytest.raises(data.DatasetError, match='empty'):
    data.load_split('digits', 'train[:0]', data_dir=data_dir)


def test_concurrent_preparation(tmp_path):
  """Two processes prepare the same dataset into the same data_dir at once."""
  code = ('import sys; from hadfl_jax import data; '
          'print(len(data.load_split("digits", "test", data_dir=sys.argv[1]).labels))')
  procs = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  for p in procs:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    assert out.split()[-1] == '360'
  assert not list((tmp_path / 'digits').glob('incomplete*'))


# --- mnist_idx on small synthetic IDX files ------------------------------------------


def _synthetic_mnist(rng):
  """5 train and 3 test images with random pixels, labels chosen by hand."""
  return {
      'train': (rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
                np.array([5, 0, 4, 1, 9], np.uint8)),
      'test': (rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
               np.array([7, 2, 1], np.uint8)),
  }


def _write_mnist(directory, arrays, sep='-', gz=True):
  directory.mkdir(parents=True, exist_ok=True)
  suffix = '.gz' if gz else ''
  for split, prefix in (('train', 'train'), ('test', 't10k')):
    images, labels = arrays[split]
    idx.write_idx(directory / f'{prefix}-images{sep}idx3-ubyte{suffix}', images)
    idx.write_idx(directory / f'{prefix}-labels{sep}idx1-ubyte{suffix}', labels)


@pytest.mark.parametrize('sep,gz', [('-', True), ('.', True), ('-', False), ('.', False)])
def test_mnist_idx_round_trip(tmp_path, sep, gz):
  arrays = _synthetic_mnist(np.random.default_rng(0))
  _write_mnist(tmp_path / 'idx', arrays, sep=sep, gz=gz)
  for split in ('train', 'test'):
    loaded = data.load_split('mnist_idx', split, data_dir=str(tmp_path / 'tfds'),
                             idx_dir=str(tmp_path / 'idx'))
    images, labels = arrays[split]
    np.testing.assert_array_equal(loaded.images, images[..., None])
    np.testing.assert_array_equal(loaded.labels, labels)
    assert loaded.num_classes == 10 and loaded.labels.dtype == np.int32


def test_mnist_idx_needs_idx_dir_until_prepared(tmp_path):
  with pytest.raises(data.DatasetError, match='pass idx_dir'):
    data.load_split('mnist_idx', 'train', data_dir=str(tmp_path / 'tfds'))
  _write_mnist(tmp_path / 'idx', _synthetic_mnist(np.random.default_rng(1)))
  data.load_split('mnist_idx', 'train', data_dir=str(tmp_path / 'tfds'),
                  idx_dir=str(tmp_path / 'idx'))
  # Prepared: the IDX files are no longer needed.
  assert len(data.load_split('mnist_idx', 'test', data_dir=str(tmp_path / 'tfds')).labels) == 3


def _corrupt(path: pathlib.Path, how: str) -> None:
  raw = gzip.decompress(path.read_bytes())
  if how == 'bad_magic':
    raw = b'\x08\x03\x00\x00' + raw[4:]
  elif how == 'wrong_type':
    raw = raw[:2] + b'\x0d' + raw[3:]
  elif how == 'truncated':
    raw = raw[:-100]
  elif how == 'too_long':
    raw = raw + b'\x00'
  if how == 'truncated_gzip':
    path.write_bytes(path.read_bytes()[:-20])
  else:
    path.write_bytes(gzip.compress(raw))


@pytest.mark.parametrize('how,message', [
    ('bad_magic', 'bad magic number'),
    ('wrong_type', 'type code 0x0d'),
    ('truncated', 'truncated'),
    ('too_long', 'wrong size'),
    ('truncated_gzip', 'cannot read'),
])
def test_corrupt_idx_file_is_named_and_nothing_is_written(tmp_path, how, message):
  _write_mnist(tmp_path / 'idx', _synthetic_mnist(np.random.default_rng(2)))
  bad = tmp_path / 'idx' / 't10k-images-idx3-ubyte.gz'
  _corrupt(bad, how)
  with pytest.raises(data.DatasetError, match=message) as error:
    data.load_split('mnist_idx', 'train', data_dir=str(tmp_path / 'tfds'),
                    idx_dir=str(tmp_path / 'idx'))
  assert str(bad) in str(error.value)
  assert not (tmp_path / 'tfds' / 'mnist_idx').exists()


def test_missing_and_inconsistent_idx_files(tmp_path):
  arrays = _synthetic_mnist(np.random.default_rng(3))
  _write_mnist(tmp_path / 'idx', arrays)
  (tmp_path / 'idx' / 'train-labels-idx1-ubyte.gz').unlink()
  with pytest.raises(data.DatasetError, match='train-labels-idx1-ubyte: missing'):
    data.load_split('mnist_idx', 'train', data_dir=str(tmp_path / 'tfds'),
                    idx_dir=str(tmp_path / 'idx'))
  idx.write_idx(tmp_path / 'idx' / 'train-labels-idx1-ubyte.gz', np.array([1, 2], np.uint8))
  with pytest.raises(data.DatasetError, match='2 labels for 5 images'):
    data.load_split('mnist_idx', 'train', data_dir=str(tmp_path / 'tfds'),
                    idx_dir=str(tmp_path / 'idx'))
  idx.write_idx(tmp_path / 'idx' / 'train-labels-idx1-ubyte.gz',
                np.array([1, 2, 3, 4, 10], np.uint8))
  with pytest.raises(data.DatasetError, match='label 10 is not a digit'):
    data.load_split('mnist_idx', 'train', data_dir=str(tmp_path / 'tfds'),
                    idx_dir=str(tmp_path / 'idx'))
  with pytest.raises(data.DatasetError, match='does not exist'):
    data.load_split('mnist_idx', 'train', data_dir=str(tmp_path / 'tfds'),
                    idx_dir=str(tmp_path / 'nowhere'))
  assert not (tmp_path / 'tfds' / 'mnist_idx').exists()


# --- real MNIST ----------------------------------------------------------------------


@pytest.fixture(scope='module')
def real_mnist(tmp_path_factory):
  if not SHARED_MNIST.is_dir():
    pytest.skip(f'real MNIST IDX files not found at {SHARED_MNIST} (set HADFL_MNIST_DIR)')
  data_dir = str(tmp_path_factory.mktemp('tfds_mnist'))
  return {split: data.load_split('mnist_idx', split, data_dir=data_dir, idx_dir=SHARED_MNIST)
          for split in ('train', 'test')}


def test_real_mnist_matches_readme_facts(real_mnist):
  train, test = real_mnist['train'], real_mnist['test']
  assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
  assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
  assert np.bincount(train.labels).tolist() == [
      5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  assert abs(train.images.mean() / 255 - 0.1307) < 5e-5


# --- TFDS catalog datasets, mocked (no internet) -------------------------------------


class _FakeSource:
  """A data source whose example i is an image filled with i % 256 and label i % C."""

  def __init__(self, dataset_info, num_examples):
    self.dataset_info = dataset_info
    self._n = num_examples
    self.batch_sizes = []

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    image = self.dataset_info.features['image']
    num_classes = self.dataset_info.features['label'].num_classes
    return {'image': np.full(image.shape, i % 256, np.uint8), 'label': i % num_classes}

  def __getitems__(self, keys):
    self.batch_sizes.append(len(keys))
    return [self[i] for i in keys]


@pytest.mark.parametrize('name,shape,num_classes', [
    ('mnist', (28, 28, 1), 10),
    ('fashion_mnist', (28, 28, 1), 10),
    ('cifar10', (32, 32, 3), 10),
    ('emnist/letters', (28, 28, 1), 37),
])
def test_catalog_dataset_through_data_source(tmp_path, name, shape, num_classes):
  sources = []

  def as_data_source(builder, split, decoders=None, deserialize_method=None):
    del split, decoders, deserialize_method
    sources.append(_FakeSource(builder.info, 9000))
    return sources[-1]

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=as_data_source), \
       mock.patch.object(tfds.core.DatasetBuilder, 'is_prepared', lambda self: True):
    split = data.load_split(name, 'train', data_dir=str(tmp_path))
  assert split.images.shape == (9000,) + shape and split.images.dtype == np.uint8
  assert split.num_classes == num_classes
  np.testing.assert_array_equal(split.labels, np.arange(9000) % num_classes)
  np.testing.assert_array_equal(split.images[:, 0, 0, 0], np.arange(9000) % 256)
  assert sources[0].batch_sizes == [8192, 808]  # Batched reads, not one call per record.


def test_catalog_preparation_without_tensorflow_is_explained(tmp_path, monkeypatch):
  def needs_tf(*args, **kwargs):
    raise ModuleNotFoundError("No module named 'tensorflow'", name='tensorflow')

  monkeypatch.setattr(tfds, 'data_source', needs_tf)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'is_prepared', lambda self: True)
  with pytest.raises(data.DatasetError, match='prepares it with TensorFlow'):
    data.load_split('mnist', 'train', data_dir=str(tmp_path))


def _fail_on_download(*args, **kwargs):
  raise AssertionError('a download was started')


@pytest.mark.parametrize('has_tensorflow,match', [
    (False, 'with TensorFlow, which is not installed here'),
    (True, 'cannot be downloaded: 127.0.0.1 is unreachable from here'),
])
def test_unprepared_catalog_dataset_fails_at_once_saying_what_to_do(
    tmp_path, monkeypatch, has_tensorflow, match):
  # Offline, TFDS alone retries its downloads for minutes; this fails before any download.
  monkeypatch.setattr(loading, '_has_tensorflow', lambda: has_tensorflow)
  monkeypatch.setattr(loading, 'DOWNLOAD_PROBE_HOST', '127.0.0.1')  # Port 443 is closed.
  monkeypatch.setattr(tfds, 'data_source', _fail_on_download)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', _fail_on_download)
  with pytest.raises(data.DatasetError, match=match) as error:
    data.load_split('mnist', 'train', data_dir=str(tmp_path / 'tfds'))
  message = str(error.value)
  assert f'mnist is not prepared in {tmp_path / "tfds"}' in message
  assert 'tfds build mnist --file_format=array_record' in message
  assert "'mnist_idx'" in message and "'digits'" in message


def test_unknown_dataset_names_where_it_looked(tmp_path):
  with pytest.raises(data.DatasetError, match=f"unknown dataset 'no_such_set'.*{tmp_path}"):
    data.load_split('no_such_set', 'train', data_dir=str(tmp_path))


def test_empty_idx_split_is_refused_before_writing(tmp_path):
  arrays = _synthetic_mnist(np.random.default_rng(4))
  arrays['test'] = (np.zeros((0, 28, 28), np.uint8), np.zeros((0,), np.uint8))
  _write_mnist(tmp_path / 'idx', arrays)
  with pytest.raises(data.DatasetError, match='t10k-images-idx3-ubyte.gz: no images'):
    data.load_split('mnist_idx', 'train', data_dir=str(tmp_path / 'tfds'),
                    idx_dir=str(tmp_path / 'idx'))
