"""Stateless layers whose forward and backward passes stay fast inside a vmapped loop.

HADFL trains every simulated device at once: one ``jax.vmap`` over the device axis inside
one ``lax.fori_loop``/``lax.while_loop``. Two standard ops are slow there on CPU
(``docs/spec.md``, "A known trap"; ``benchmarks/conv_trap.py`` measures them; the figures
below are training examples/s of the ``cnn`` model, N = 8 devices, batch 32, 2 cores):

* ``flax.linen.Conv`` (``lax.conv_general_dilated``): vmapped over per-device kernels it
  becomes a grouped convolution (one jitted vmapped step: ~600 ex/s against ~3,000 for a
  single device), and inside a loop XLA:CPU runs its gradient slowly (jax-ml/jax#12868;
  one device in a ``fori_loop``: ~270 ex/s). Both at once: ~70 ex/s.
* ``flax.linen.max_pool`` (``lax.reduce_window``): its gradient is a
  ``select_and_scatter``, slow on XLA:CPU even outside a loop (the vmapped loop with
  the patches convolution: ~1,600 ex/s with it, ~2,800 with :func:`max_pool_2x2`).

This module writes both with ops that XLA compiles well everywhere:

* :func:`conv2d_patches`: im2col, i.e. the ``k * k`` shifted slices of the padded input
  concatenated along channels and contracted with the ``(k * k * C, F)`` kernel in one
  matmul. Vmapped over devices this is a batched matmul; its weight gradient is a matmul.
* :func:`max_pool_2x2`: a reshape to ``(B, H/2, 2, W/2, 2, C)`` and a max over the two
  window axes. Its gradient is an elementwise select.

:class:`Conv2D` holds the same parameters as ``flax.linen.Conv`` (``kernel`` shaped
``(k, k, C, F)``, ``bias`` shaped ``(F,)``, the same initialisers), so one parameter tree
works with either implementation and they can be compared weight for weight.
"""

from __future__ import annotations

from typing import Literal

import chex
import flax.linen as nn
import jax.numpy as jnp
from jax import lax

ConvImpl = Literal['patches', 'lax']
CONV_IMPLS: tuple[str, ...] = ('patches', 'lax')
Padding = Literal['SAME', 'VALID']


def _same_pads(kernel_size: int) -> tuple[int, int]:
  """Low and high padding of a stride-1 SAME convolution, as ``lax`` computes them."""
  total = kernel_size - 1
  return total // 2, total - total // 2


def conv2d_patches(
    x_BxHxWxC: chex.Array, kernel_KxKxCxF: chex.Array, padding: Padding = 'SAME'
) -> chex.Array:
  """A stride-1 2D convolution written as shifted slices and one matmul (im2col).

  Computes the same function as ``lax.conv_general_dilated(x, kernel, (1, 1), padding,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`` (a cross-correlation, like every deep
  learning "convolution").

  Args:
    x_BxHxWxC: input images, NHWC.
    kernel_KxKxCxF: the kernel, HWIO (the layout of ``flax.linen.Conv``).
    padding: ``'SAME'`` (output H x W) or ``'VALID'`` (output (H-K+1) x (W-K+1)).

  Returns:
    The output, shape (B, H', W', F).
  """
  chex.assert_rank([x_BxHxWxC, kernel_KxKxCxF], 4)
  kh, kw, c, f = kernel_KxKxCxF.shape
  chex.assert_axis_dimension(x_BxHxWxC, 3, c)
  if padding == 'SAME':
    x_BxHxWxC = jnp.pad(
        x_BxHxWxC, ((0, 0), _same_pads(kh), _same_pads(kw), (0, 0)))
  elif padding != 'VALID':
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  _, hp, wp, _ = x_BxHxWxC.shape
  ho, wo = hp - kh + 1, wp - kw + 1
  # Channel index of the patch is (di * kw + dj) * C + c, the row-major flattening of
  # the kernel's leading (K, K, C) axes.
  patches_BxHoxWoxKKC = jnp.concatenate(
      [x_BxHxWxC[:, di:di + ho, dj:dj + wo, :]
       for di in range(kh) for dj in range(kw)],
      axis=-1)
  return jnp.dot(patches_BxHoxWoxKKC, kernel_KxKxCxF.reshape(kh * kw * c, f))


def conv2d_lax(
    x_BxHxWxC: chex.Array, kernel_KxKxCxF: chex.Array, padding: Padding = 'SAME'
) -> chex.Array:
  """The same convolution through ``lax.conv_general_dilated`` (what ``nn.Conv`` runs).

  Args:
    x_BxHxWxC: input images, NHWC.
    kernel_KxKxCxF: the kernel, HWIO.
    padding: ``'SAME'`` or ``'VALID'``.

  Returns:
    The output, shape (B, H', W', F).
  """
  chex.assert_rank([x_BxHxWxC, kernel_KxKxCxF], 4)
  return lax.conv_general_dilated(
      x_BxHxWxC, kernel_KxKxCxF, window_strides=(1, 1), padding=padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def max_pool_2x2(x_BxHxWxC: chex.Array) -> chex.Array:
  """2x2 max-pooling with stride 2 and VALID padding, by reshape and max.

  Equal in value to ``nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')``: an odd
  trailing row or column is dropped. Gradients are equal too unless a window holds tied
  maxima: ``lax.reduce_window``'s gradient gives the whole cotangent to one of them, this
  one splits it evenly among them (behind a ReLU the usual tie is at 0, where the ReLU's
  own gradient is 0 either way).

  Args:
    x_BxHxWxC: input, NHWC.

  Returns:
    The pooled input, shape (B, H // 2, W // 2, C).
  """
  chex.assert_rank(x_BxHxWxC, 4)
  b, h, w, c = x_BxHxWxC.shape
  ho, wo = h // 2, w // 2
  x_BxHxWxC = x_BxHxWxC[:, :2 * ho, :2 * wo, :]
  return jnp.max(x_BxHxWxC.reshape(b, ho, 2, wo, 2, c), axis=(2, 4))


class Conv2D(nn.Module):
  """Stride-1 2D convolution with a selectable implementation, parameters as ``nn.Conv``.

  Attributes:
    features: number of output channels F.
    kernel_size: spatial size K of the square kernel.
    padding: ``'SAME'`` or ``'VALID'``.
    impl: ``'patches'`` (:func:`conv2d_patches`, fast in a vmapped loop on CPU) or
      ``'lax'`` (:func:`conv2d_lax`, the standard ``nn.Conv`` computation).
    kernel_init: initialiser of the (K, K, C, F) kernel (``nn.Conv``'s default).
    bias_init: initialiser of the (F,) bias (``nn.Conv``'s default).
  """

  features: int
  kernel_size: int = 3
  padding: Padding = 'SAME'
  impl: ConvImpl = 'patches'
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x_BxHxWxC: chex.Array) -> chex.Array:
    """Applies the convolution and adds the bias.

    Args:
      x_BxHxWxC: input images, NHWC, float32.

    Returns:
      The output, shape (B, H', W', features).
    """
    k, c = self.kernel_size, x_BxHxWxC.shape[-1]
    kernel_KxKxCxF = self.param(
        'kernel', self.kernel_init, (k, k, c, self.features), jnp.float32)
    bias_F = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    if self.impl == 'patches':
      y_BxHxWxF = conv2d_patches(x_BxHxWxC, kernel_KxKxCxF, self.padding)
    elif self.impl == 'lax':
      y_BxHxWxF = conv2d_lax(x_BxHxWxC, kernel_KxKxCxF, self.padding)
    else:
      raise ValueError(f'conv impl must be one of {CONV_IMPLS}, got {self.impl!r}')
    return y_BxHxWxF + bias_F.reshape(1, 1, 1, -1)
