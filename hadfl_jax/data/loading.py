"""Loading a dataset split into numpy arrays, through TFDS and without TensorFlow.

Every dataset is read with ``tfds.data_source`` (array_record files, random access, no
TensorFlow). Two kinds of names:

* the project's own builders (:mod:`hadfl_jax.data.builders`), ``digits`` and
  ``mnist_idx``, are prepared on first use into ``data_dir`` and reused afterwards;
* TFDS catalog names (``mnist``, ``fashion_mnist``, ``cifar10``, ``emnist/digits``, ...)
  go through ``tfds.data_source(..., download=True)``. Reading them needs no TensorFlow,
  but TFDS *prepares* them (downloads and encodes the images as PNG) with TensorFlow:
  on a machine without TF they must already be prepared, in array_record format, in
  ``data_dir`` (``tfds build NAME --file_format=array_record`` on a machine with TF).

``data_dir`` defaults to ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``, read when
:func:`load_split` is called.

Example::

  train = load_split('digits', 'train')        # 1,437 8x8 images, prepared on first use
  mnist = load_split('mnist_idx', 'train', idx_dir='/path/to/mnist')
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from hadfl_jax.data import builders  # pylint: disable=unused-import  # Registers ours with TFDS.
from hadfl_jax.data import idx
from hadfl_jax.data.errors import DatasetError

try:
  import fcntl  # pylint: disable=g-import-not-at-top
except ImportError:  # Not POSIX: no inter-process lock, TFDS's atomic rename only.
  fcntl = None

OWN_DATASETS = ('digits', 'mnist_idx')
EMNIST_CONFIGS = ('balanced', 'byclass', 'bymerge', 'digits', 'letters', 'mnist')
DATASETS = OWN_DATASETS + ('mnist', 'fashion_mnist', 'cifar10') + tuple(
    f'emnist/{config}' for config in EMNIST_CONFIGS
)
IMAGE_KEY = 'image'
LABEL_KEY = 'label'
# Where TFDS downloads catalog datasets (and its prepared copies) from; checked, with a
# short timeout, before a download is started.
DOWNLOAD_PROBE_HOST = 'storage.googleapis.com'
PROBE_TIMEOUT_S = 5.0
# Records decoded per data-source call: batched reads, bounded temporary memory.
_CHUNK = 8192


class Split(NamedTuple):
  """One split of a labelled image dataset, in host memory.

  Attributes:
    images: uint8 [n, H, W, C], as stored (see :func:`hadfl_jax.data.normalize`).
    labels: int32 [n], in ``range(num_classes)``.
    num_classes: the number of classes of the dataset (not only those in this split).
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int


def default_data_dir() -> str:
  """TFDS's data directory: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
  return os.environ.get('TFDS_DATA_DIR', os.path.join('~', 'tensorflow_datasets'))


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
) -> Split:
  """Loads one split of a dataset into numpy arrays.

  Args:
    name: one of :data:`DATASETS`, or any image classification dataset of TFDS's catalog
      with features ``image`` (fixed shape, uint8) and ``label`` (``ClassLabel``).
    split: a TFDS split, e.g. ``'train'``, ``'test'`` or ``'train[:10%]'``.
    data_dir: TFDS data directory (default: :func:`default_data_dir`).
    idx_dir: for ``mnist_idx``, the folder with the four MNIST IDX files; needed only
      the first time, when the dataset is prepared into ``data_dir``.

  Returns:
    The split, in the stored order.

  Raises:
    DatasetError: for an unknown dataset or split, missing or corrupt IDX files, a
      catalog dataset that cannot be prepared here, unsupported features, an empty split.
  """
  data_dir = os.path.expanduser(os.fspath(data_dir or default_data_dir()))
  if name in OWN_DATASETS:
    _prepare_own(name, data_dir, idx_dir)
    source = _data_source(
        name, split, data_dir, download=False,
        deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
    )
    decode = _decode_own_records
  else:
    if not _in_catalog(name):
      raise DatasetError(
          f'unknown dataset {name!r} (looked in TFDS\'s catalog and in {data_dir}): '
          f'known are {DATASETS} and the names of `tfds.list_builders()`'
      )
    with _prepare_lock(data_dir, name):
      if not _is_prepared(name, data_dir):
        _check_can_prepare(name, data_dir)
      source = _data_source(name, split, data_dir, download=True)
    decode = _decode_catalog_records
  features = source.dataset_info.features
  image_shape, num_classes = _check_features(name, features)
  n = len(source)
  if n == 0:
    raise DatasetError(f'{name}: split {split!r} is empty')
  images = np.empty((n,) + image_shape, np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, _CHUNK):
    stop = min(n, start + _CHUNK)
    images_chunk, labels_chunk = decode(source.__getitems__(list(range(start, stop))))
    images[start:stop] = images_chunk.reshape((-1,) + image_shape)
    labels[start:stop] = labels_chunk
  if labels.min() < 0 or labels.max() >= num_classes:
    raise DatasetError(f'{name}: split {split!r} has labels outside 0..{num_classes - 1}')
  return Split(images, labels, num_classes)


def _prepare_own(name: str, data_dir: str, idx_dir: str | os.PathLike | None) -> None:
  """Prepares one of the project's builders into ``data_dir``, unless it is there.

  ``mnist_idx``'s files are read and checked before anything is written, so a missing or
  corrupt file raises :class:`DatasetError` and leaves ``data_dir`` as it was.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return
  download_config = tfds.download.DownloadConfig()
  if name == 'mnist_idx':
    if idx_dir is None:
      raise DatasetError(
          f'mnist_idx is not prepared in {data_dir} yet: pass idx_dir, the folder with '
          'the four MNIST IDX files'
      )
    idx_dir = os.path.expanduser(os.fspath(idx_dir))
    idx.read_mnist_dir(idx_dir)  # Raises DatasetError naming a bad file.
    download_config = tfds.download.DownloadConfig(manual_dir=idx_dir)
  with _prepare_lock(data_dir, name):
    # A process that held the lock before us may have prepared it: then this is a no-op.
    builder.download_and_prepare(download_config=download_config)


@contextlib.contextmanager
def _prepare_lock(data_dir: str, name: str) -> Iterator[None]:
  """Serialises the preparation of ``name`` among processes sharing a local ``data_dir``.

  TFDS writes a dataset into ``incomplete.XXXXXX_<version>`` and renames it when done;
  of two processes preparing at once, the second would fail at that rename. With the
  lock, the second waits, then finds the dataset prepared and reuses it. Remote data
  dirs (``gs://...``) and non-POSIX systems get no lock.
  """
  if fcntl is None or '://' in data_dir:
    yield
    return
  os.makedirs(data_dir, exist_ok=True)
  lock_path = os.path.join(data_dir, '.' + name.replace('/', '__') + '.prepare.lock')
  with open(lock_path, 'a') as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)


def _is_prepared(name: str, data_dir: str) -> bool:
  """Whether ``name`` is prepared in ``data_dir`` (then nothing is downloaded)."""
  try:
    return tfds.builder(name, data_dir=data_dir).is_prepared()
  except Exception as e:  # pylint: disable=broad-except  # Bad config or version: say so.
    raise DatasetError(f'{name}: {e}') from e


def _has_tensorflow() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def _check_can_prepare(name: str, data_dir: str) -> None:
  """Fails at once, saying what to do, where preparing ``name`` here cannot work.

  Without these checks TFDS would retry its downloads for minutes on a machine with no
  internet, or download everything and then fail for want of TensorFlow.
  """
  remedies = (
      f'Either prepare it once where there is internet and TensorFlow (`pip install '
      f'tensorflow`, then `tfds build {name} --file_format=array_record --data_dir=DIR`) '
      f'and copy DIR/{name.split("/")[0]} into {data_dir}; or, for MNIST from the four '
      "IDX files, use config.dataset.name='mnist_idx' with config.dataset.idx_dir; or use "
      "the offline dataset 'digits'."
  )
  if not _has_tensorflow():
    raise DatasetError(
        f'{name} is not prepared in {data_dir}, and TFDS prepares catalog image datasets '
        f'with TensorFlow, which is not installed here. {remedies}'
    )
  try:
    socket.create_connection((DOWNLOAD_PROBE_HOST, 443), timeout=PROBE_TIMEOUT_S).close()
  except OSError as e:
    raise DatasetError(
        f'{name} is not prepared in {data_dir}, and it cannot be downloaded: '
        f'{DOWNLOAD_PROBE_HOST} is unreachable from here ({e}). {remedies}'
    ) from e


def _data_source(name: str, split: str, data_dir: str, download: bool, **kwargs: Any):
  """``tfds.data_source`` with array_record files, turning TFDS's errors into ours."""
  try:
    return tfds.data_source(
        name,
        split=split,
        data_dir=data_dir,
        download=download,
        # Without it, TFDS falls back to tfrecord whenever data_dir is given.
        builder_kwargs={'file_format': 'array_record'},
        **kwargs,
    )
  except ModuleNotFoundError as e:
    if e.name != 'tensorflow':
      raise
    raise DatasetError(
        f'{name} is not prepared in {data_dir}, and TFDS prepares it with TensorFlow, '
        'which is not installed. Prepare it once on a machine with TensorFlow '
        f'(tfds build {name} --file_format=array_record --data_dir=...) and copy it to '
        f'{data_dir}, or use an offline dataset: {OWN_DATASETS}'
    ) from e
  except ValueError as e:  # An unknown split or dataset, or an empty slice.
    if 'can not be of 0 length' in str(e):  # TFDS's words for a slice with no files.
      raise DatasetError(f'{name}: split {split!r} is empty') from e
    raise DatasetError(f'{name}: {e}') from e


def _in_catalog(name: str) -> bool:
  """Whether TFDS has a builder of that name (``'emnist/digits:3.1.0'`` -> ``emnist``)."""
  # with_community_datasets=False: the community index needs GCS, and its error
  # handling imports TensorFlow.
  return name.split('/')[0].split(':')[0] in tfds.list_builders(with_community_datasets=False)


def _check_features(name: str, features) -> tuple[tuple[int, ...], int]:
  """Returns the image shape and number of classes, or raises if they do not fit."""
  try:
    image, label = features[IMAGE_KEY], features[LABEL_KEY]
  except (KeyError, TypeError) as e:
    raise DatasetError(
        f'{name}: needs features {IMAGE_KEY!r} and {LABEL_KEY!r}, has {features}'
    ) from e
  shape = tuple(image.shape)
  if len(shape) != 3 or None in shape or np.dtype(image.np_dtype) != np.uint8:
    raise DatasetError(
        f'{name}: image feature must be uint8 of a fixed shape (H, W, C); it is '
        f'{image.np_dtype} {shape}'
    )
  num_classes = getattr(label, 'num_classes', None)
  if not num_classes:
    raise DatasetError(f'{name}: label feature must be a ClassLabel; it is {label}')
  return shape, int(num_classes)


def _decode_own_records(records: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """Decodes serialized records of our builders: images as one flat uint8 buffer.

  Our builders store the image as raw bytes (``Encoding.BYTES``) and the label as one
  int64 in a ``tf.train.Example``; parsing the protos directly is about 3x faster than
  TFDS's generic per-example decoding (which gives the same arrays; see the tests).
  """
  feature_maps = [tf_example_pb2.Example.FromString(r).features.feature for r in records]
  images = np.frombuffer(
      b''.join(f[IMAGE_KEY].bytes_list.value[0] for f in feature_maps), np.uint8
  )
  labels = np.fromiter(
      (f[LABEL_KEY].int64_list.value[0] for f in feature_maps), np.int64, len(feature_maps)
  )
  return images, labels


def _decode_catalog_records(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
  """Stacks examples that TFDS has decoded (PNG images are decoded with PIL or cv2)."""
  images = np.stack([np.asarray(r[IMAGE_KEY]) for r in records])
  labels = np.fromiter((r[LABEL_KEY] for r in records), np.int64, len(records))
  return images, labels


