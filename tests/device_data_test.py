"""DeviceData padding and per-device minibatch sampling inside jit and vmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax import data

PAD_LABEL = 99


def _hand_made():
  """3 devices of 3, 1 and 4 examples; image i is filled with the value 10 * i."""
  images = (np.arange(10, dtype=np.uint8) * 10)[:, None, None, None] * np.ones(
      (1, 2, 2, 1), np.uint8)
  labels = np.arange(10, dtype=np.int32)
  parts = [np.array([0, 1, 2]), np.array([5]), np.array([9, 8, 7, 6])]
  return images, labels, parts


def test_from_partition_pads_and_keeps_dtype():
  images, labels, parts = _hand_made()
  d = data.DeviceData.from_partition(images, labels, parts)
  assert d.images.shape == (3, 4, 2, 2, 1) and d.images.dtype == jnp.uint8
  assert d.labels.dtype == jnp.int32 and d.counts.dtype == jnp.int32
  np.testing.assert_array_equal(d.counts, [3, 1, 4])
  np.testing.assert_array_equal(d.labels, [[0, 1, 2, 0], [5, 0, 0, 0], [9, 8, 7, 6]])
  np.testing.assert_array_equal(d.images[:, :, 0, 0, 0],
                                [[0, 10, 20, 0], [50, 0, 0, 0], [90, 80, 70, 60]])
  assert d.num_devices == 3


def test_normalize_inside_jit():
  x = jnp.array([0, 51, 255], jnp.uint8)
  y = jax.jit(data.normalize)(x)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, [0.0, 0.2, 1.0])


def _padded_device(count, pad=6):
  """Row r holds label r (image value r) for r < count; padding rows hold 99."""
  labels = np.where(np.arange(pad) < count, np.arange(pad), PAD_LABEL).astype(np.int32)
  images = labels.astype(np.uint8)[:, None, None, None] * np.ones((1, 3, 3, 1), np.uint8)
  return jnp.asarray(images), jnp.asarray(labels)


@pytest.mark.parametrize('count', [1, 3, 6])
def test_only_valid_rows_are_sampled_uniformly(count):
  images_P, labels_P = _padded_device(count)
  sample = jax.jit(data.sample_batch, static_argnums=4)
  x_B, y_B = sample(images_P, labels_P, jnp.int32(count), jax.random.PRNGKey(0), 6000)
  chex.assert_shape(x_B, (6000, 3, 3, 1))
  chex.assert_shape(y_B, (6000,))
  assert x_B.dtype == jnp.float32 and y_B.dtype == jnp.int32
  freq = np.bincount(np.asarray(y_B), minlength=PAD_LABEL + 1) / 6000
  np.testing.assert_allclose(freq[:count], 1 / count, atol=0.03)
  assert freq[count:].sum() == 0  # Never a padding row.
  np.testing.assert_allclose(x_B[:, 0, 0, 0], np.asarray(y_B) / 255, rtol=1e-6)


def test_same_key_same_batch_other_key_other_batch():
  images_P, labels_P = _padded_device(6)
  a = data.sample_batch(images_P, labels_P, jnp.int32(6), jax.random.PRNGKey(1), 32)
  b = data.sample_batch(images_P, labels_P, jnp.int32(6), jax.random.PRNGKey(1), 32)
  c = data.sample_batch(images_P, labels_P, jnp.int32(6), jax.random.PRNGKey(2), 32)
  np.testing.assert_array_equal(a[1], b[1])
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[1], c[1])


def test_vmapped_over_devices_matches_per_device_calls():
  images, labels, parts = _hand_made()
  d = data.DeviceData.from_partition(images, labels, parts)
  keys_N = jax.random.split(jax.random.PRNGKey(0), 3)
  sample_N = jax.jit(jax.vmap(data.sample_batch, in_axes=(0, 0, 0, 0, None)),
                     static_argnums=4)
  x_NxB, y_NxB = sample_N(d.images, d.labels, d.counts, keys_N, 64)
  chex.assert_shape(x_NxB, (3, 64, 2, 2, 1))
  for i, part in enumerate(parts):
    assert set(np.asarray(y_NxB[i]).tolist()) <= set(part.tolist())
    x_B, y_B = data.sample_batch(d.images[i], d.labels[i], d.counts[i], keys_N[i], 64)
    np.testing.assert_array_equal(y_NxB[i], y_B)
    np.testing.assert_allclose(x_NxB[i], x_B)
  # Device 1 has one example: every draw is it.
  np.testing.assert_array_equal(y_NxB[1], 5)


def test_typed_keys_work_too():
  images_P, labels_P = _padded_device(3)
  _, y_B = data.sample_batch(images_P, labels_P, jnp.int32(3), jax.random.key(0), 8)
  assert np.asarray(y_B).max() < 3


def test_shape_checks():
  images_P, labels_P = _padded_device(3)
  with pytest.raises(AssertionError):
    data.sample_batch(images_P, labels_P[None], jnp.int32(3), jax.random.PRNGKey(0), 4)
  with pytest.raises(AssertionError):
    data.sample_batch(images_P[:4], labels_P, jnp.int32(3), jax.random.PRNGKey(0), 4)
