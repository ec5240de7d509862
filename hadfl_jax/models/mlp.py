"""Multi-layer perceptrons."""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn


class MLP(nn.Module):
  """Flatten, then ``Dense -> ReLU`` per hidden width, then a linear classifier.

  Attributes:
    hidden: widths of the hidden layers.
    num_classes: number of output logits.
  """

  hidden: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x_BxHxWxC: chex.Array) -> chex.Array:
    """Computes logits.

    Args:
      x_BxHxWxC: input images (any trailing shape; everything after the batch axis is
        flattened).

    Returns:
      Logits, shape (B, num_classes).
    """
    x_BxD = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    for width in self.hidden:
      x_BxD = nn.relu(nn.Dense(width)(x_BxD))
    return nn.Dense(self.num_classes)(x_BxD)
