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
* :func:`conv2d_max_pool_patches`: a convolution followed by 2x2 max-pooling, the block
  of the CNN, as one matmul whose rows come out grouped by pooling window (so the pool
  is an elementwise max of four contiguous slabs, not a strided reduction), with a
  custom VJP for the pool and for the matmul (below). ``benchmarks/step_profile.py``
  times the CNN's training step with it against :func:`conv2d_patches`, bias, then
  :func:`max_pool_2x2`.

:class:`Conv2D` holds the same parameters as ``flax.linen.Conv`` (``kernel`` shaped
``(k, k, C, F)``, ``bias`` shaped ``(F,)``, the same initialisers), so one parameter tree
works with either implementation and they can be compared weight for weight.
"""

from __future__ import annotations

from typing import Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ConvImpl = Literal['patches', 'lax']
CONV_IMPLS: tuple[str, ...] = ('patches', 'lax')
Padding = Literal['SAME', 'VALID']
PoolForm = Literal['auto', 'pooled', 'window']
POOL_FORMS: tuple[str, ...] = ('auto', 'pooled', 'window')
# conv2d_max_pool_patches(form='auto') uses the window form below this contraction length
# (kernel_size**2 * C): the CNN's first layer (9) ran faster that way, its second (288)
# 1.78x the FLOP slower.
WINDOW_FORM_MAX_CONTRACTION = 32


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


@jax.custom_vjp
def _matmul(a_SxK: chex.Array, b_KxN: chex.Array) -> chex.Array:
  """``a @ b`` whose backward pass materialises the cotangent before using it.

  The barrier keeps XLA:CPU from fusing the cotangent's producer (the pool's gradient)
  into the transpose that feeds the weight gradient's matmul, a fusion that ran 10x
  slower than the two ops apart. A second barrier keeps ``b``'s transpose a (small)
  array of its own for the input gradient's matmul.
  """
  return a_SxK @ b_KxN


def _matmul_fwd(a_SxK, b_KxN):
  return a_SxK @ b_KxN, (a_SxK, b_KxN)


def _matmul_bwd(residuals, g_SxN):
  a_SxK, b_KxN = residuals
  g_SxN = lax.optimization_barrier(g_SxN)
  grad_b = a_SxK.reshape(-1, a_SxK.shape[-1]).T @ g_SxN.reshape(-1, g_SxN.shape[-1])
  # The small kernel transposed in memory: YNNPACK ran the (S, N) x (N, K) product 2x
  # faster than with the transpose folded into the dot (per-op profile; the step 2 to 4%
  # faster in an interleaved A/B of the engine's loop).
  return g_SxN @ lax.optimization_barrier(b_KxN.T), grad_b


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _max4(y_Sx4xF: chex.Array) -> chex.Array:
  first = jnp.maximum(y_Sx4xF[..., 0, :], y_Sx4xF[..., 1, :])
  return jnp.maximum(first, jnp.maximum(y_Sx4xF[..., 2, :], y_Sx4xF[..., 3, :]))


@jax.custom_vjp
def max_over_window(y_Sx4xF: chex.Array) -> chex.Array:
  """The max over axis -2 (the four positions of a 2x2 pooling window), elementwise.

  Its gradient splits the cotangent evenly among tied maxima, like ``jnp.max``'s (ties
  are common: a conv's output over blank background is constant). The forward pass keeps
  which positions hold the maximum as one byte per output (bit ``i`` for position ``i``),
  not the four input slabs, so the backward pass reads a quarter of a float per output
  instead of four, and writes the four slabs in one elementwise pass.

  Args:
    y_Sx4xF: values, the window position on axis -2 (size 4).

  Returns:
    The maxima, shape ``y.shape[:-2] + y.shape[-1:]``.
  """
  return _max4(y_Sx4xF)


def _max_over_window_fwd(y_Sx4xF):
  m_SxF = _max4(y_Sx4xF)
  where_max_SxF = sum((y_Sx4xF[..., i, :] == m_SxF).astype(jnp.uint8) << i
                      for i in range(4))
  return m_SxF, where_max_SxF


def _max_over_window_bwd(where_max_SxF, g_SxF):
  is_max = [(where_max_SxF >> i) & 1 for i in range(4)]
  share_SxF = g_SxF / sum(bit.astype(g_SxF.dtype) for bit in is_max)
  return (jnp.stack([jnp.where(bit == 1, share_SxF, 0) for bit in is_max], axis=-2),)


max_over_window.defvjp(_max_over_window_fwd, _max_over_window_bwd)


def _strided_slices(xp_BxHxWxC, offsets, ho: int, wo: int) -> list[chex.Array]:
  """``xp[:, u::2, v::2][:, :ho, :wo]`` for each ``(u, v)`` in ``offsets``.

  Cut as unit-stride slices of ``xp``'s four stride-2 phases (a reshape, no copy):
  XLA:CPU builds the patches from them faster than from stride-2 slices (one A/B run
  of the training step).
  """
  b, h, w, c = xp_BxHxWxC.shape
  h2 = max(u for u, _ in offsets) // 2 + ho
  w2 = max(v for _, v in offsets) // 2 + wo
  xp_BxHxWxC = jnp.pad(
      xp_BxHxWxC, ((0, 0), (0, max(0, 2 * h2 - h)), (0, max(0, 2 * w2 - w)), (0, 0)))
  phases = xp_BxHxWxC[:, :2 * h2, :2 * w2].reshape(b, h2, 2, w2, 2, c)
  return [phases[:, u // 2:u // 2 + ho, u % 2, v // 2:v // 2 + wo, v % 2, :]
          for u, v in offsets]


def _window_selection(kernel_size: int) -> np.ndarray:
  """0/1 array S of shape ((K+1)^2, 4, K^2): S[(u, v), (a, c), (i, j)] = 1 where pixel
  (u, v) of a (K+1)x(K+1) input window is tap (i, j) of the output at (a, c) of its 2x2
  pooling window, i.e. (u, v) = (a + i, c + j)."""
  k = kernel_size
  s = np.zeros((k + 1, k + 1, 2, 2, k, k), np.float32)
  for a in range(2):
    for c in range(2):
      for i in range(k):
        for j in range(k):
          s[a + i, c + j, a, c, i, j] = 1
  return s.reshape((k + 1) ** 2, 4, k * k)


def conv2d_max_pool_patches(
    x_BxHxWxC: chex.Array, kernel_KxKxCxF: chex.Array, bias_F: chex.Array,
    form: PoolForm = 'auto') -> chex.Array:
  """A stride-1 SAME convolution plus bias, then 2x2 max-pooling, as one matmul.

  Computes the same function as ``max_pool_2x2(conv2d_lax(x, kernel) + bias)``, with the
  same gradients (ties in a pooling window share the cotangent evenly). Pooling before
  the bias is added is the same (a per-channel constant commutes with a max) and touches
  a quarter of the elements. The matmul's rows are grouped by pooling window, in one of
  two forms:

  * ``'pooled'``: the im2col patches of the four positions of every window, stacked:
    ``(B, H/2, W/2, 4, K*K*C)`` times the ``(K*K*C, F)`` kernel; the convolution's
    FLOP exactly.
  * ``'window'``: the ``(K+1) x (K+1)`` input window under each pooling window,
    ``(B, H/2, W/2, (K+1)^2*C)``, times a ``((K+1)^2*C, 4*F)`` matrix holding the kernel
    once per window position (zeros elsewhere): (K+1)^2/K^2 the FLOP (1.78x for K = 3),
    in a matmul whose contraction is not too short to run fast. For few input channels.

  ``'auto'`` picks the window form when ``K*K*C`` is below
  ``WINDOW_FORM_MAX_CONTRACTION``.

  Args:
    x_BxHxWxC: input images, NHWC. An odd trailing row or column is dropped by the pool.
    kernel_KxKxCxF: the kernel, HWIO (the layout of ``flax.linen.Conv``).
    bias_F: the bias.
    form: ``'auto'``, ``'pooled'`` or ``'window'``.

  Returns:
    The pooled output, shape (B, H // 2, W // 2, F).
  """
  chex.assert_rank([x_BxHxWxC, kernel_KxKxCxF, bias_F], [4, 4, 1])
  k, _, c, f = kernel_KxKxCxF.shape
  chex.assert_axis_dimension(x_BxHxWxC, 3, c)
  if form == 'auto':
    form = 'window' if k * k * c < WINDOW_FORM_MAX_CONTRACTION else 'pooled'
  if form not in ('pooled', 'window'):
    raise ValueError(f'form must be one of {POOL_FORMS}, got {form!r}')
  b, h, w, _ = x_BxHxWxC.shape
  ho, wo = h // 2, w // 2
  if ho == 0 or wo == 0:
    raise ValueError(f'2x2 pooling needs images at least 2x2, got {h}x{w}')
  xp_BxHxWxC = jnp.pad(x_BxHxWxC, ((0, 0), _same_pads(k), _same_pads(k), (0, 0)))
  if form == 'pooled':
    # Window position (a, c) outermost, then the taps (i, j) and channels in the
    # kernel's row-major (K, K, C) order.
    offsets = [(a + i, cc + j) for a in (0, 1) for cc in (0, 1)
               for i in range(k) for j in range(k)]
    patches = jnp.concatenate(_strided_slices(xp_BxHxWxC, offsets, ho, wo), axis=-1)
    y_Sx4xF = _matmul(patches.reshape(b, ho, wo, 4, k * k * c),
                      kernel_KxKxCxF.reshape(k * k * c, f))
  else:
    offsets = [(u, v) for u in range(k + 1) for v in range(k + 1)]
    windows = jnp.concatenate(_strided_slices(xp_BxHxWxC, offsets, ho, wo), axis=-1)
    kernel_PxCx4xF = jnp.einsum('pak,kcf->pcaf', _window_selection(k),
                                kernel_KxKxCxF.reshape(k * k, c, f))
    y_Sx4xF = _matmul(windows, kernel_PxCx4xF.reshape(-1, 4 * f)).reshape(b, ho, wo, 4, f)
  return max_over_window(y_Sx4xF) + bias_F.reshape(1, 1, 1, -1)


class _ConvParams(nn.Module):
  """Fields and parameters shared by :class:`Conv2D` and :class:`Conv2DMaxPool`: a
  ``kernel`` (K, K, C, F) and a ``bias`` (F,), as ``nn.Conv`` makes them.

  Attributes:
    features: number of output channels F.
    kernel_size: spatial size K of the square kernel.
    impl: ``'patches'`` (fast in a vmapped loop on CPU) or ``'lax'`` (the standard
      ``nn.Conv`` computation).
    kernel_init: initialiser of the (K, K, C, F) kernel (``nn.Conv``'s default).
    bias_init: initialiser of the (F,) bias (``nn.Conv``'s default).
  """

  features: int
  kernel_size: int = 3
  impl: ConvImpl = 'patches'
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  def _params(self, in_features: int) -> tuple[chex.Array, chex.Array]:
    k = self.kernel_size
    kernel_KxKxCxF = self.param(
        'kernel', self.kernel_init, (k, k, in_features, self.features), jnp.float32)
    bias_F = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    return kernel_KxKxCxF, bias_F

  def _unknown_impl(self) -> ValueError:
    return ValueError(f'conv impl must be one of {CONV_IMPLS}, got {self.impl!r}')


class Conv2D(_ConvParams):
  """Stride-1 2D convolution with a selectable implementation, parameters as ``nn.Conv``.

  Attributes (besides :class:`_ConvParams`'s, where ``impl='patches'`` is
  :func:`conv2d_patches` and ``'lax'`` :func:`conv2d_lax`):
    padding: ``'SAME'`` or ``'VALID'``.
  """

  padding: Padding = 'SAME'

  @nn.compact
  def __call__(self, x_BxHxWxC: chex.Array) -> chex.Array:
    """Applies the convolution and adds the bias.

    Args:
      x_BxHxWxC: input images, NHWC, float32.

    Returns:
      The output, shape (B, H', W', features).
    """
    kernel_KxKxCxF, bias_F = self._params(x_BxHxWxC.shape[-1])
    if self.impl == 'patches':
      y_BxHxWxF = conv2d_patches(x_BxHxWxC, kernel_KxKxCxF, self.padding)
    elif self.impl == 'lax':
      y_BxHxWxF = conv2d_lax(x_BxHxWxC, kernel_KxKxCxF, self.padding)
    else:
      raise self._unknown_impl()
    return y_BxHxWxF + bias_F.reshape(1, 1, 1, -1)


class Conv2DMaxPool(_ConvParams):
  """A stride-1 SAME convolution, then 2x2 max-pooling; parameters as ``nn.Conv``'s.

  The same function as :class:`Conv2D` followed by :func:`max_pool_2x2`, with the same
  parameter tree, so the CNN's checkpoints do not depend on which runs. Attributes:
  :class:`_ConvParams`'s, where ``impl='patches'`` is :func:`conv2d_max_pool_patches`
  (one matmul per block) and ``'lax'`` :func:`conv2d_lax` then :func:`max_pool_2x2`.
  """

  @nn.compact
  def __call__(self, x_BxHxWxC: chex.Array) -> chex.Array:
    """Applies the convolution, adds the bias and pools.

    Args:
      x_BxHxWxC: input images, NHWC, float32, at least 2x2.

    Returns:
      The pooled output, shape (B, H // 2, W // 2, features).
    """
    kernel_KxKxCxF, bias_F = self._params(x_BxHxWxC.shape[-1])
    if self.impl == 'patches':
      return conv2d_max_pool_patches(x_BxHxWxC, kernel_KxKxCxF, bias_F)
    if self.impl == 'lax':
      return max_pool_2x2(
          conv2d_lax(x_BxHxWxC, kernel_KxKxCxF, 'SAME') + bias_F.reshape(1, 1, 1, -1))
    raise self._unknown_impl()
