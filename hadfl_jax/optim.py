"""The local optimizer of every device (``config.optimizer``).

Optimizers are factories registered in :data:`OPTIMIZERS`, from the typed
:class:`OptimizerConfig` to an optax ``GradientTransformation``; one of one's own is one
registration::

  @optim.OPTIMIZERS.register('lamb')
  def lamb(config):
    return optax.lamb(config.learning_rate, weight_decay=config.weight_decay)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optax

from hadfl_jax import typed_config as tc
from hadfl_jax.registry import Registry

OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry('optimizer')


def _with_weight_decay(tx: optax.GradientTransformation, wd: float):
  return optax.chain(optax.add_decayed_weights(wd), tx) if wd > 0 else tx


OPTIMIZERS.register('sgd', lambda c: _with_weight_decay(optax.sgd(c.learning_rate),
                                                        c.weight_decay))
OPTIMIZERS.register('momentum', lambda c: _with_weight_decay(
    optax.sgd(c.learning_rate, momentum=c.momentum), c.weight_decay))
OPTIMIZERS.register('adam', lambda c: optax.adamw(c.learning_rate, weight_decay=c.weight_decay))


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(tc.Section):
  """Each device's local optimizer (``config.optimizer``)."""

  SECTION = 'optimizer'

  name: str = tc.choice('momentum', OPTIMIZERS, doc='an optimizer of OPTIMIZERS')
  learning_rate: float = tc.number(0.05, low=0, low_open=True)
  momentum: float = tc.number(0.9, low=0, high=1, high_open=True, doc='sgd with momentum')
  weight_decay: float = tc.number(0.0, low=0, doc='decoupled (AdamW); for SGD added to the '
                                  'gradient')


def make_optimizer(optimizer_config) -> optax.GradientTransformation:
  """The optax optimizer that ``config.optimizer`` names (a section or a typed config).

  Raises:
    ConfigError: an unknown name or an invalid hyperparameter, naming the field.
  """
  if not isinstance(optimizer_config, OptimizerConfig):
    optimizer_config = OptimizerConfig.from_config(optimizer_config)
  return OPTIMIZERS.get(optimizer_config.name)(optimizer_config)
