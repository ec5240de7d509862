"""Model registry: stateless Flax classifiers for HADFL devices.

A model of one's own is a factory registered in :data:`MODELS`::

  models.MODELS.register('wide_mlp', lambda n: models.MLP(hidden=(512,), num_classes=n))

Every model maps NHWC float32 images to logits, ``module.apply({'params': params}, x)``
with ``x`` of shape (B, H, W, C) giving (B, num_classes). Models have no batch norm, no
dropout and no mutable collections: device models are averaged parameter by parameter,
so the parameters are the whole state.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = get_model('cnn', num_classes=10)
  >>> params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))['params']
  >>> count_params(params)
  421642
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import numpy as np

from hadfl_jax.registry import Registry

from hadfl_jax.models.cnn import CNN
from hadfl_jax.models.layers import (CONV_IMPLS, Conv2D, Conv2DMaxPool, conv2d_lax,
                                     conv2d_max_pool_patches, conv2d_patches, max_pool_2x2)
from hadfl_jax.models.mlp import MLP

MODELS: Registry[Callable[[int], nn.Module]] = Registry('model')
# 784-200-200-10 on MNIST: 199,210 parameters.
MODELS.register('mlp', lambda n: MLP(hidden=(200, 200), num_classes=n))
# 784-64-64-10 on MNIST: 55,050 parameters (for 10,000-device scale runs).
MODELS.register('small_mlp', lambda n: MLP(hidden=(64, 64), num_classes=n))
# 64-64-10 on 8x8 UCI digits: 4,810 parameters.
MODELS.register('digits_mlp', lambda n: MLP(hidden=(64,), num_classes=n))
# 8x8x1 -> conv16 -> 4x4 -> conv32 -> 2x2 -> 64 -> 10: 13,706 parameters.
MODELS.register('digits_cnn', lambda n: CNN(features=(16, 32), hidden=64, num_classes=n))
# The paper-like CNN: 421,642 parameters on 28x28x1, 545,098 on 32x32x3.
MODELS.register('cnn', lambda n: CNN(features=(32, 64), hidden=128, num_classes=n))


def get_model(name: str, num_classes: int) -> nn.Module:
  """Builds a registered model.

  Convolutional models use the ``'patches'`` convolution, the fast one inside HADFL's
  vmapped training loop on CPU. For the standard convolution (e.g. to compare on an
  accelerator) use ``get_model('cnn', 10).clone(conv_impl='lax')``: same parameters.

  Args:
    name: a name registered in :data:`MODELS` (a factory ``num_classes -> Module``).
    num_classes: number of output logits.

  Returns:
    An uninitialised ``flax.linen.Module``.

  Raises:
    ValueError: if ``name`` is not registered (naming the registered ones).
  """
  return MODELS.get(name)(num_classes)


def count_params(params: chex.ArrayTree) -> int:
  """Total number of scalars in a parameter tree.

  Args:
    params: a pytree of arrays (or shape-dtype structs), e.g. ``init(...)['params']``.

  Returns:
    The sum of the leaves' sizes (for stacked device parameters, N times one model's).
  """
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


__all__ = [
    'CNN',
    'CONV_IMPLS',
    'Conv2D',
    'Conv2DMaxPool',
    'MLP',
    'MODELS',
    'conv2d_lax',
    'conv2d_max_pool_patches',
    'conv2d_patches',
    'count_params',
    'get_model',
    'max_pool_2x2',
]
