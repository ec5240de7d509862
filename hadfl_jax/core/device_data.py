"""Device shards as stacked, padded arrays, and per-device minibatch sampling in jit.

:class:`DeviceData` holds every device's examples in one array with a leading device
axis, padded to the largest shard, plus each device's count, so that a jitted cycle
samples every device's minibatch from its own key without a round trip to the host.
Images stay in their stored dtype (uint8: a quarter of float32's memory);
:func:`sample_batch` normalises only the sampled batch. Memory: N * P * H * W * C bytes
for P = the largest shard (e.g. 8 devices of MNIST: 47 MB; skewed partitions pay for
their largest device).

:func:`sample_batch` is written for one device and lifted with ``jax.vmap``::

  sample_N = jax.vmap(sample_batch, in_axes=(0, 0, 0, 0, None))
  x_NxB, y_NxB = sample_N(data.images, data.labels, data.counts, keys_N, batch_size)
"""

from __future__ import annotations

from typing import Sequence

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class DeviceData:
  """Every device's shard, stacked and padded.

  Attributes:
    images: [N, P, H, W, C] in the stored dtype (uint8); rows >= counts[i] are zeros.
    labels: int32 [N, P]; rows >= counts[i] are zeros.
    counts: int32 [N], the number of examples of every device (>= 1 for sampling).
  """

  images: jax.Array
  labels: jax.Array
  counts: jax.Array

  @property
  def num_devices(self) -> int:
    return self.counts.shape[0]

  @classmethod
  def from_partition(
      cls, images: np.ndarray, labels: np.ndarray, parts: Sequence[np.ndarray]
  ) -> DeviceData:
    """Gathers every device's examples into padded arrays on the default JAX device.

    Args:
      images: [n, H, W, C] images of the whole set (numpy).
      labels: int [n] labels of the whole set.
      parts: N index arrays, e.g. from :func:`hadfl_jax.data.partition`; device i gets
        ``images[parts[i]]`` in that order.

    Returns:
      The stacked data, padded to P = the largest part.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    count_N = np.asarray([len(p) for p in parts], np.int64)
    num_devices, pad = len(parts), max(int(count_N.max(initial=0)), 1)
    idx_n = np.concatenate([np.asarray(p, np.int64) for p in parts]) if parts else (
        np.zeros((0,), np.int64))
    # Flat slot (device * P + rank within device) of every partitioned example.
    start_N = np.cumsum(count_N) - count_N
    device_n = np.repeat(np.arange(num_devices), count_N)
    slot_n = device_n * pad + np.arange(idx_n.shape[0]) - start_N[device_n]
    images_NP = np.zeros((num_devices * pad,) + images.shape[1:], images.dtype)
    labels_NP = np.zeros((num_devices * pad,), np.int32)
    images_NP[slot_n] = images[idx_n]
    labels_NP[slot_n] = labels[idx_n]
    return cls(
        images=jnp.asarray(images_NP.reshape((num_devices, pad) + images.shape[1:])),
        labels=jnp.asarray(labels_NP.reshape(num_devices, pad)),
        counts=jnp.asarray(count_N, jnp.int32),
    )


def normalize(images: jax.Array | np.ndarray) -> jax.Array:
  """Maps uint8 pixels to float32 in [0, 1] (``x / 255``); jit-safe.

  Args:
    images: uint8 pixels, any shape.

  Returns:
    float32 of the same shape.
  """
  return jnp.asarray(images).astype(jnp.float32) / 255.0


def sample_batch(
    images_P: jax.Array,
    labels_P: jax.Array,
    count: jax.Array,
    key: jax.Array,
    batch_size: int,
    preprocess=None,
) -> tuple[jax.Array, jax.Array]:
  """Samples one device's minibatch, uniformly with replacement from its first rows.

  One device's function (no device axis): vmap it over devices, with ``batch_size``
  static (``in_axes=(0, 0, 0, 0, None)``).

  Args:
    images_P: [P, H, W, C] the device's padded images.
    labels_P: int [P] the device's padded labels.
    count: int scalar, the number of valid rows (>= 1); rows >= count are never drawn.
    key: a PRNG key.
    batch_size: B, a Python int.
    preprocess: stored inputs -> model inputs (default :func:`normalize`).

  Returns:
    ``(x_B, y_B)``: float32 [B, H, W, C] normalised images and int32 [B] labels.
  """
  chex.assert_rank([labels_P, count], [1, 0])
  chex.assert_equal_shape_prefix([images_P, labels_P], 1)
  idx_B = jax.random.randint(key, (batch_size,), 0, count)
  x_B = (preprocess or normalize)(images_P[idx_B])
  y_B = labels_P[idx_B].astype(jnp.int32)
  chex.assert_shape(y_B, (batch_size,))
  return x_B, y_B
