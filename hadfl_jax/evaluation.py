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

from hadfl_jax.core import autotune
from hadfl_jax.core import task as task_lib

PyTree = Any


def inference_plan(model, input_shape: tuple[int, ...], batch_size: int = 1000,
                   conv_impl: str = 'auto'):
  """How evaluation runs ``model``: ``(module, batch size)``, the same parameters with the
  convolution, and the batch size up to ``batch_size``, that are fastest for one model on
  test batches on this machine (:func:`hadfl_jax.core.autotune.inference_plan`, for
  ``conv_impl='auto'``; ``conv_impl`` names a convolution otherwise), where the model has
  a choice.

  Training's convolution is chosen for the vmapped loop of small per-device batches; one
  model on batches of test images is the opposite case (on CPU the native convolution was
  several times faster there, ``benchmarks/flops.py``). The parameter tree is the same,
  so the choice changes results only by float rounding.
  """
  if not autotune.conv_impls(model):
    return model, batch_size
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x)['params'] if conv_impl == 'auto' else None
  impl, batch_size = autotune.inference_plan(model, params, input_shape, batch_size, conv_impl)
  return autotune.with_conv_impl(model, impl), batch_size


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
    device_apply_fn: the ``apply`` used for the device models, which are evaluated
      vmapped over their parameters (default: ``apply_fn``).
    device_batch_size: examples per forward pass of a device model (default: all of
      ``device_examples`` at once).
  """

  def __init__(
      self,
      apply_fn: Callable[..., jax.Array],
      test,
      batch_size: int = 1000,
      device_examples: int = 1000,
      device_chunk: int = 64,
      task: task_lib.Task | None = None,
      device_apply_fn: Callable[..., jax.Array] | None = None,
      device_batch_size: int | None = None,
  ):
    self._apply_fn = apply_fn
    self._device_apply_fn = device_apply_fn or apply_fn
    self._task = task or task_lib.Task()
    batch_size = min(batch_size, len(test.labels))
    self._x, self._y, self._mask = _batched(test.images, test.labels, batch_size)
    m = min(device_examples, len(test.labels))
    self._device_x, self._device_y, self._device_mask = _batched(
        test.images[:m], test.labels[:m], min(device_batch_size or m, m))
    self._device_chunk = device_chunk
    self.model = jax.jit(self._evaluate_model)
    self.devices = jax.jit(self._evaluate_devices)
    self.conv_impl: str | None = None  # The convolution it runs, where there is a choice.
    self.batch_size = batch_size

  @classmethod
  def for_model(cls, model, test, batch_size: int = 1000, device_examples: int = 1000,
                device_chunk: int = 64, task: task_lib.Task | None = None,
                conv_impl: str = 'auto') -> 'Evaluator':
    """The evaluator of a flax model, fast on every model.

    The consensus model runs through :func:`inference_plan` (one model, large batches:
    the convolution and batch size measured fastest there, for ``conv_impl='auto'``;
    ``conv_impl`` names the convolution otherwise). Device models of a model with a convolution choice run one at a time
    the same way (``device_chunk`` 1): vmapped over per-device weights a native
    convolution becomes a grouped one, and the patches convolution's activations for many
    devices x 1,000 images fall out of cache (``benchmarks/flops.py`` measured both at
    under half the single-model rate on CPU). Dense models keep ``device_chunk`` devices
    per step: there, vmapping turns small matmuls into batched ones.
    """
    if not autotune.conv_impls(model):
      return cls(model.apply, test, batch_size, device_examples, device_chunk, task)
    batch_size = min(batch_size, len(test.labels))
    module, batch_size = inference_plan(model, test.images.shape[1:], batch_size, conv_impl)
    evaluator = cls(module.apply, test, batch_size, device_examples, 1, task,
                    device_batch_size=batch_size)
    evaluator.conv_impl = module.conv_impl
    return evaluator

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
    def accuracy(params):
      def batch_correct(batch):
        x, y, mask = batch
        logits = self._device_apply_fn({'params': params}, self._task.preprocess(x))
        return jnp.sum(jnp.where(mask, self._task.accuracy(logits, y), 0.0))

      batches = (self._device_x, self._device_y, self._device_mask)
      if self._device_x.shape[0] == 1:  # One batch: no loop.
        correct = batch_correct(jax.tree.map(lambda a: a[0], batches))
      else:
        correct = jnp.sum(jax.lax.map(batch_correct, batches))
      return correct / jnp.sum(self._device_mask)

    return jax.lax.map(accuracy, params_N, batch_size=self._device_chunk)
