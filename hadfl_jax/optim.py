"""The local optimizer of every device, built from ``config.optimizer``."""

from __future__ import annotations

import optax

OPTIMIZERS = ('sgd', 'momentum', 'adam')


def make_optimizer(optimizer_config) -> optax.GradientTransformation:
  """Builds the optax optimizer named by ``config.optimizer.name``.

  Args:
    optimizer_config: ConfigDict with ``name`` (sgd | momentum | adam),
      ``learning_rate``, ``momentum`` and ``weight_decay`` (decoupled, as AdamW; for SGD
      it is added to the gradient).

  Returns:
    An optax gradient transformation.

  Raises:
    ValueError: an unknown name or an invalid hyperparameter.
  """
  name = optimizer_config.name
  lr = optimizer_config.learning_rate
  wd = optimizer_config.weight_decay
  if not lr > 0:
    raise ValueError(f'optimizer.learning_rate must be > 0, got {lr}')
  if wd < 0:
    raise ValueError(f'optimizer.weight_decay must be >= 0, got {wd}')
  if name == 'sgd':
    tx = optax.sgd(lr)
  elif name == 'momentum':
    if not 0 <= optimizer_config.momentum < 1:
      raise ValueError(f'optimizer.momentum must be in [0, 1), got {optimizer_config.momentum}')
    tx = optax.sgd(lr, momentum=optimizer_config.momentum)
  elif name == 'adam':
    return optax.adamw(lr, weight_decay=wd)
  else:
    raise ValueError(f'optimizer.name must be one of {OPTIMIZERS}, got {name!r}')
  if wd > 0:
    tx = optax.chain(optax.add_decayed_weights(wd), tx)
  return tx
