"""The learning task: the loss that devices minimise and the accuracy that is reported.

A :class:`Task` belongs to the :class:`hadfl_jax.core.problem.Problem`, not to the
engine: local training minimises ``task.loss`` and evaluation reports its mean and the
task's accuracy. Losses are per-example functions registered in :data:`LOSSES`
(``config.loss``); a loss of one's own is one function::

  @task.LOSSES.register('label_smoothing')
  def smoothed(logits_BxC, labels_B):
    targets = optax.smooth_labels(jax.nn.one_hot(labels_B, logits_BxC.shape[-1]), 0.1)
    return optax.softmax_cross_entropy(logits_BxC, targets)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from hadfl_jax.core import device_data
from hadfl_jax.registry import Registry

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

LOSSES: Registry[LossFn] = Registry('loss')


@LOSSES.register('cross_entropy')
def cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Softmax cross-entropy with integer labels, per example (B,)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)


def argmax_correct(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
  """1.0 where the largest logit is the label, per example (B,)."""
  return (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Task:
  """What is learnt: a per-example loss and accuracy, and the input preprocessing.

  Attributes:
    loss: per-example loss ``(logits_B..., labels_B) -> (B,)``; devices minimise its mean.
    accuracy: per-example correctness in [0, 1], ``(logits, labels) -> (B,)``.
    preprocess: stored inputs (uint8 images) -> the model's float inputs.
    loss_name: the registered name of ``loss`` (recorded in a run's files).
  """

  loss: LossFn = cross_entropy
  accuracy: LossFn = argmax_correct
  preprocess: Callable[[jax.Array], jax.Array] = device_data.normalize
  loss_name: str = 'cross_entropy'

  @classmethod
  def from_loss(cls, name: str) -> 'Task':
    """The classification task with the loss registered as ``name``."""
    return cls(loss=LOSSES.get(name), loss_name=name)

  def mean_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(self.loss(logits, labels))
