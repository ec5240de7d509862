"""The data layer: TFDS datasets without TensorFlow, partitions, device shards.

* :func:`load_split` reads a split into numpy through ``tfds.data_source``: the
  project's own builders ``digits`` (offline, from scikit-learn) and ``mnist_idx``
  (real MNIST from IDX files), or TFDS catalog datasets.
* :func:`partition` splits the training set over devices (IID, Dirichlet label skew,
  McMahan shards, quantity skew); :func:`partition_report` and :func:`partition_table`
  describe the result.
* :class:`DeviceData` stacks the shards for jit; :func:`sample_batch` draws one device's
  minibatch inside jit (vmap it over devices).
"""

from hadfl_jax.core.device_data import DeviceData
from hadfl_jax.core.device_data import normalize
from hadfl_jax.core.device_data import sample_batch
from hadfl_jax.data.errors import DatasetError
from hadfl_jax.data.loading import DATASETS
from hadfl_jax.data.loading import default_data_dir
from hadfl_jax.data.loading import load_split
from hadfl_jax.data.loading import Split
from hadfl_jax.data.partitioning import partition
from hadfl_jax.data.partitioning import PARTITIONS
from hadfl_jax.data.partitioning import PartitionConfig
from hadfl_jax.data.partitioning import partition_report
from hadfl_jax.data.partitioning import partition_table

__all__ = [
    'DATASETS',
    'DatasetError',
    'DeviceData',
    'PARTITIONS',
    'PartitionConfig',
    'Split',
    'default_data_dir',
    'load_split',
    'normalize',
    'partition',
    'partition_report',
    'partition_table',
    'sample_batch',
]
