"""Test-set evaluation of the consensus model and of every device's model.

``docs/spec.md``, "Evaluation": accuracy and loss of the consensus model
x_bar = sum_i n_i / n x_i on the test split, and the mean and minimum over devices of
each device model's accuracy. Device models are evaluated on the first
``device_examples`` test examples (all of them by default on small test sets), devices in
chunks so that 10,000 devices fit in memory.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hadfl_jax.core import task as task_lib

PyTree = Any


class Evaluation(NamedTuple):
  accuracy: jax.Array
  loss: jax.Array


def _batched(images, labels, batch_size: int):
  """Pads the test set to whole batches; returns (x_TxB..., y_TxB, mask_TxB)."""
  n = labels.shape[0]
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
  mask = np.arange(num_batches * batch_size) < n
  shape = (num_batches, batch_size)
  return (
      jnp.asarray(images.reshape(shape + images.shape[1:])),
      jnp.asarray(labels.reshape(shape)),
      jnp.asarray(mask.reshape(shape)),
  )


class Evaluator:
  """Jitted evaluation on one test split.

  Args:
    apply_fn: the model's ``apply``.
    test: the test split (``images``, ``labels``).
    batch_size: examples per forward pass.
    device_examples: test examples used for every device's accuracy.
    device_chunk: devices evaluated at once.
    task: the loss and accuracy (default: cross-entropy and argmax accuracy).
  """

  def __init__(
      self,
      apply_fn: Callable[..., jax.Array],
      test,
      batch_size: int = 1000,
      device_examples: int = 1000,
      device_chunk: int = 64,
      task: task_lib.Task | None = None,
  ):
    self._apply_fn = apply_fn
    self._task = task or task_lib.Task()
    batch_size = min(batch_size, len(test.labels))
    self._x, self._y, self._mask = _batched(test.images, test.labels, batch_size)
    m = min(device_examples, len(test.labels))
    self._device_x = jnp.asarray(test.images[:m])
    self._device_y = jnp.asarray(test.labels[:m])
    self._device_chunk = device_chunk
    self.model = jax.jit(self._evaluate_model)
    self.devices = jax.jit(self._evaluate_devices)

  def _evaluate_model(self, params: PyTree) -> Evaluation:
    def batch_stats(batch):
      x, y, mask = batch
      logits = self._apply_fn({'params': params}, self._task.preprocess(x))
      loss = self._task.loss(logits, y)
      correct = self._task.accuracy(logits, y)
      return jnp.sum(jnp.where(mask, correct, 0.0)), jnp.sum(jnp.where(mask, loss, 0.0))

    correct, loss = jax.lax.map(batch_stats, (self._x, self._y, self._mask))
    n = jnp.sum(self._mask)
    return Evaluation(accuracy=jnp.sum(correct) / n, loss=jnp.sum(loss) / n)

  def _evaluate_devices(self, params_N: PyTree) -> jax.Array:
    x = self._task.preprocess(self._device_x)

    def accuracy(params):
      logits = self._apply_fn({'params': params}, x)
      return jnp.mean(self._task.accuracy(logits, self._device_y))

    return jax.lax.map(accuracy, params_N, batch_size=self._device_chunk)
