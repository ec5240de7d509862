"""Reading and validating IDX files, the format of the original MNIST distribution.

An IDX file is a header followed by the raw array, row-major:

* 4 bytes of magic number: two zero bytes, a type code (``0x08`` for unsigned bytes,
  the only type MNIST uses) and the number of dimensions (3 for images, 1 for labels);
* one big-endian uint32 per dimension;
* ``prod(dims)`` values.

MNIST ships four such files, often gzipped. They are spelled two ways in the wild,
``train-images-idx3-ubyte`` (LeCun's site) and ``train-images.idx3-ubyte`` (some
mirrors); :func:`find_mnist_files` accepts both, gzipped or not.

Every check happens while reading, so :func:`read_mnist_dir` either returns the four
arrays or raises :class:`~hadfl_jax.data.errors.DatasetError` naming the file and the
problem: nothing is written before all four files have been read and checked.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib
from typing import NamedTuple

import numpy as np

from hadfl_jax.data.errors import DatasetError

UBYTE = 0x08
MNIST_SHAPE = (28, 28)
MNIST_NUM_CLASSES = 10
# (split, file stem, number of dimensions) of the four MNIST files.
MNIST_FILES = (
    ('train', 'train-images', 3),
    ('train', 'train-labels', 1),
    ('test', 't10k-images', 3),
    ('test', 't10k-labels', 1),
)


class IdxSplit(NamedTuple):
  """One MNIST split as read from its IDX files."""

  images: np.ndarray  # uint8 [n, 28, 28]
  labels: np.ndarray  # uint8 [n]


def candidate_names(stem: str, ndim: int) -> tuple[str, ...]:
  """File names accepted for one IDX file, in order of preference.

  Args:
    stem: e.g. ``'train-images'``.
    ndim: 3 for images, 1 for labels.

  Returns:
    e.g. ``('train-images-idx3-ubyte', 'train-images-idx3-ubyte.gz',
    'train-images.idx3-ubyte', 'train-images.idx3-ubyte.gz')``.
  """
  names = []
  for sep in ('-', '.'):
    base = f'{stem}{sep}idx{ndim}-ubyte'
    names += [base, base + '.gz']
  return tuple(names)


def find_mnist_files(directory: os.PathLike | str) -> dict[str, pathlib.Path]:
  """Locates the four MNIST IDX files in ``directory``.

  Args:
    directory: the folder that holds them.

  Returns:
    A mapping from file stem (``'train-images'``, ...) to its path.

  Raises:
    DatasetError: if the folder or one of the files is missing.
  """
  directory = pathlib.Path(directory).expanduser()
  if not directory.is_dir():
    raise DatasetError(f'MNIST IDX directory {directory} does not exist')
  found = {}
  for _, stem, ndim in MNIST_FILES:
    names = candidate_names(stem, ndim)
    paths = [directory / name for name in names if (directory / name).is_file()]
    if not paths:
      raise DatasetError(
          f'{directory / names[0]}: missing MNIST IDX file (looked for {", ".join(names)})'
      )
    found[stem] = paths[0]
  return found


def _read_bytes(path: pathlib.Path) -> bytes:
  """The file's contents, gunzipped if its name ends with ``.gz``."""
  try:
    if path.suffix == '.gz':
      with gzip.open(path, 'rb') as f:
        return f.read()
    return path.read_bytes()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    raise DatasetError(f'{path}: cannot read ({type(e).__name__}: {e})') from e


def read_idx(path: os.PathLike | str, ndim: int) -> np.ndarray:
  """Reads one unsigned-byte IDX file, checking its header against its size.

  Args:
    path: the file, gzipped if its name ends with ``.gz``.
    ndim: the number of dimensions the file must have.

  Returns:
    A uint8 array of the shape the header gives.

  Raises:
    DatasetError: naming the file, if it cannot be read, has a bad magic number, a type
      other than unsigned byte, the wrong number of dimensions, or a payload that is
      shorter (truncated) or longer than its header says.
  """
  path = pathlib.Path(path)
  data = _read_bytes(path)
  header_size = 4 + 4 * ndim
  if len(data) < 4:
    raise DatasetError(f'{path}: truncated: {len(data)} bytes, not even a magic number')
  zero0, zero1, type_code, file_ndim = data[:4]
  if zero0 or zero1:
    raise DatasetError(
        f'{path}: bad magic number 0x{data[:4].hex()}: not an IDX file '
        '(it must start with two zero bytes)'
    )
  if type_code != UBYTE:
    raise DatasetError(
        f'{path}: bad magic number 0x{data[:4].hex()}: type code 0x{type_code:02x}, '
        f'expected 0x{UBYTE:02x} (unsigned byte)'
    )
  if file_ndim != ndim:
    raise DatasetError(
        f'{path}: bad magic number 0x{data[:4].hex()}: {file_ndim} dimensions, expected {ndim}'
    )
  if len(data) < header_size:
    raise DatasetError(f'{path}: truncated header: {len(data)} bytes, expected {header_size}')
  shape = tuple(int(d) for d in np.frombuffer(data, '>u4', count=ndim, offset=4))
  expected = int(np.prod(shape, dtype=np.int64))
  payload = len(data) - header_size
  if payload < expected:
    raise DatasetError(
        f'{path}: truncated: header says shape {shape} ({expected} bytes of data), '
        f'file has {payload}'
    )
  if payload > expected:
    raise DatasetError(
        f'{path}: wrong size: header says shape {shape} ({expected} bytes of data), '
        f'file has {payload - expected} bytes more'
    )
  return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def read_mnist_dir(directory: os.PathLike | str) -> dict[str, IdxSplit]:
  """Reads and checks all four MNIST IDX files of a folder.

  Args:
    directory: the folder (see :func:`find_mnist_files` for the accepted names).

  Returns:
    ``{'train': IdxSplit, 'test': IdxSplit}``.

  Raises:
    DatasetError: naming the file, if a file is missing or corrupt, if images are not
      28x28, if a split has no images, if a split's image and label counts differ, or
      if a label is not in 0..9.
  """
  paths = find_mnist_files(directory)
  arrays = {stem: read_idx(paths[stem], ndim) for _, stem, ndim in MNIST_FILES}
  splits = {}
  for split, prefix in (('train', 'train'), ('test', 't10k')):
    images = arrays[f'{prefix}-images']
    labels = arrays[f'{prefix}-labels']
    if images.shape[1:] != MNIST_SHAPE:
      raise DatasetError(
          f'{paths[prefix + "-images"]}: images are {images.shape[1]}x{images.shape[2]}, '
          f'MNIST images are {MNIST_SHAPE[0]}x{MNIST_SHAPE[1]}'
      )
    if not len(images):
      raise DatasetError(f'{paths[prefix + "-images"]}: no images: the {split} split is empty')
    if len(images) != len(labels):
      raise DatasetError(
          f'{paths[prefix + "-labels"]}: {len(labels)} labels for {len(images)} images '
          f'in {paths[prefix + "-images"].name}'
      )
    if len(labels) and labels.max() >= MNIST_NUM_CLASSES:
      raise DatasetError(
          f'{paths[prefix + "-labels"]}: label {int(labels.max())} is not a digit 0..9'
      )
    splits[split] = IdxSplit(images, labels)
  return splits


def write_idx(path: os.PathLike | str, array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file, gzipped if the name ends with ``.gz``.

  The inverse of :func:`read_idx`; tests and tools use it to make small IDX files.

  Args:
    path: where to write.
    array: a uint8 array of 1 to 255 dimensions.
  """
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, '>u4').tobytes()
  data = header + array.tobytes()
  path = pathlib.Path(path)
  if path.suffix == '.gz':
    with gzip.open(path, 'wb') as f:
      f.write(data)
  else:
    path.write_bytes(data)
