"""Small convolutional classifiers, written to train fast inside a vmapped loop.

The architecture of the paper-like model (``docs/spec.md``, "Scenarios"): for each entry of
``features``, a 3x3 SAME convolution, 2x2 max-pooling and ReLU (the same function as ReLU then
pooling, cheaper to train); then a ReLU dense layer of
``hidden`` units and a linear classifier. With ``features=(32, 64)`` and ``hidden=128`` it
has 421,642 parameters on 28x28x1 inputs and 545,098 on 32x32x3.

Each block runs through :class:`hadfl_jax.models.layers.Conv2DMaxPool`. Its default
``impl``, ``'patches'`` (convolution and pooling as one matmul over window-grouped
patches), is the one that stays fast when all devices train in one ``jax.vmap`` inside
one ``lax.fori_loop`` on CPU; ``'lax'`` is the
standard ``nn.Conv`` computation, with the same parameter tree, for accelerators where
native convolutions may be faster (``benchmarks/conv_trap.py`` measures both). Switch
with ``module.clone(conv_impl='lax')``.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn

from hadfl_jax.models import layers


class CNN(nn.Module):
  """``[Conv3x3 -> MaxPool2x2 -> ReLU] * len(features) -> Dense -> ReLU -> Dense``.

  Attributes:
    features: output channels of each convolution block.
    hidden: width of the hidden dense layer.
    num_classes: number of output logits.
    conv_impl: ``'patches'`` (default, fast in a vmapped loop on CPU) or ``'lax'``.
  """

  features: Sequence[int]
  hidden: int
  num_classes: int
  conv_impl: layers.ConvImpl = 'patches'

  @nn.compact
  def __call__(self, x_BxHxWxC: chex.Array) -> chex.Array:
    """Computes logits.

    Args:
      x_BxHxWxC: input images, NHWC, float32. Each block halves H and W (rounding
        down), so they must be at least ``2 ** len(features)``.

    Returns:
      Logits, shape (B, num_classes).
    """
    chex.assert_rank(x_BxHxWxC, 4)
    x = x_BxHxWxC
    for i, width in enumerate(self.features):
      # Pooling before the ReLU: the same values (max and ReLU commute), and the ReLU and
      # its gradient touch a quarter of the elements.
      x = nn.relu(layers.Conv2DMaxPool(width, kernel_size=3, impl=self.conv_impl,
                                       name=f'conv{i}')(x))
    x_BxD = x.reshape(x.shape[0], -1)
    x_BxD = nn.relu(nn.Dense(self.hidden, name='dense0')(x_BxD))
    return nn.Dense(self.num_classes, name='dense1')(x_BxD)
