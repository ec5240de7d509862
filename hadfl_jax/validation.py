"""Validation of a run's config, before any work starts.

Every check names the field, the value and what is allowed, and raises
:class:`ConfigError`. ``validate`` looks only at the config (and at whether a
configured directory exists); it loads no data and builds no model.
"""

from __future__ import annotations

import math
import numbers
import os

from hadfl_jax import data as data_lib
from hadfl_jax import models as models_lib
from hadfl_jax import optim
from hadfl_jax.algorithms import hadfl as hadfl_lib
from hadfl_jax.core import faults
from hadfl_jax.core import mixing
from hadfl_jax.core import profiles
from hadfl_jax.core import selection

IDX_DATASETS = ('mnist_idx',)


class ConfigError(ValueError):
  """A config field has a value that the run cannot use."""


def is_known_dataset(name: str) -> bool:
  """A builder of the project's own, or a name in TFDS's catalog (e.g. 'emnist/digits')."""
  if name in data_lib.DATASETS:
    return True
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return name.split('/')[0].split(':')[0] in tfds.list_builders(with_community_datasets=False)


def _fail(field: str, value, allowed: str):
  raise ConfigError(f'config.{field}={value!r} is invalid: {allowed}')


def _number(config, field: str, *, low=None, high=None, low_open=False, high_open=False,
            integer=False):
  """Checks that ``config.<field>`` is a finite number within the given bounds."""
  value = config
  for part in field.split('.'):
    value = value[part]
  kind = 'an integer' if integer else 'a number'
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
      integer and not isinstance(value, numbers.Integral)):
    _fail(field, value, f'must be {kind}')
  if not math.isfinite(value):
    _fail(field, value, 'must be finite')
  lo = '(' if low_open else '['
  hi = ')' if high_open else ']'
  interval = f'{lo}{low if low is not None else "-inf"}, {high if high is not None else "inf"}{hi}'
  if low is not None and (value < low or (low_open and value == low)):
    _fail(field, value, f'must be in {interval}')
  if high is not None and (value > high or (high_open and value == high)):
    _fail(field, value, f'must be in {interval}')
  return value


def _choice(config, field: str, allowed):
  value = config
  for part in field.split('.'):
    value = value[part]
  if value not in allowed:
    _fail(field, value, f'must be one of {tuple(allowed)}')
  return value


def validate(config, *, algorithms=('hadfl',)) -> None:
  """Checks every field of a run config.

  Args:
    config: the run's ConfigDict (see ``configs/default.py`` for all fields).
    algorithms: the algorithm names that may be run.

  Raises:
    ConfigError: naming the first invalid field, its value and what is allowed.
  """
  _number(config, 'seed', low=0, high=2**31 - 1, integer=True)
  _choice(config, 'algorithm', algorithms)

  # Data.
  name = config.dataset.name
  if not isinstance(name, str) or not is_known_dataset(name):
    _fail('dataset.name', name, f'unknown dataset; known: {tuple(data_lib.DATASETS)} '
          'or any TFDS catalog name')
  if name in IDX_DATASETS:
    idx_dir = config.dataset.idx_dir
    if not idx_dir:
      _fail('dataset.idx_dir', idx_dir, f'{name} needs the directory of the four IDX files')
    if not os.path.isdir(os.path.expanduser(idx_dir)):
      _fail('dataset.idx_dir', idx_dir, 'directory does not exist')
  _choice(config, 'partition.kind', data_lib.PARTITION_KINDS)
  _number(config, 'partition.alpha', low=0, low_open=True)
  _number(config, 'partition.classes_per_device', low=1, integer=True)
  _number(config, 'partition.quantity_alpha', low=0, low_open=True)
  _number(config, 'partition.min_examples', low=1, integer=True)

  n = _number(config, 'num_devices', low=1, integer=True)
  if not isinstance(config.model, str) or config.model not in models_lib.MODELS:
    _fail('model', config.model, f'must be one of {tuple(models_lib.MODELS)}')
  _number(config, 'batch_size', low=1, integer=True)

  _choice(config, 'optimizer.name', optim.OPTIMIZERS)
  _number(config, 'optimizer.learning_rate', low=0, low_open=True)
  _number(config, 'optimizer.momentum', low=0, high=1, high_open=True)
  _number(config, 'optimizer.weight_decay', low=0)

  # Profile.
  kind = _choice(config, 'profile.kind', profiles.PROFILE_KINDS)
  speeds = list(config.profile.speeds or ())
  if kind == 'list' and len(speeds) != n:
    _fail('profile.speeds', speeds, f'profile.kind=list needs one speed per device '
          f'({n}), got {len(speeds)}')
  if kind == 'tiers' and not 1 <= len(speeds) <= n:
    _fail('profile.speeds', speeds, f'profile.kind=tiers needs 1 to {n} tier speeds')
  if kind in ('list', 'tiers') and not all(
      isinstance(s, numbers.Real) and math.isfinite(s) and s > 0 for s in speeds):
    _fail('profile.speeds', speeds, 'speeds must be positive finite numbers')
  _number(config, 'profile.ratio', low=1)
  _number(config, 'profile.sigma', low=0)
  _number(config, 'profile.seconds_per_step', low=0, low_open=True)
  _number(config, 'profile.jitter_sigma', low=0)
  _number(config, 'profile.speed_ema', low=0, high=1, high_open=True)
  _number(config, 'profile.bandwidth_mbps', low=0, low_open=True)
  _number(config, 'profile.latency_s', low=0)
  _number(config, 'profile.bytes_per_param', low=1, integer=True)

  # HADFL.
  rho = _number(config, 'hadfl.rho', low=0, high=1, low_open=True)
  k = selection.group_size(rho, n)
  if k > n:
    _fail('hadfl.rho', rho, f'gives K = max(2, round(rho * N)) = {k} > N = {n}: '
          'a sync needs at least two devices')
  _choice(config, 'hadfl.selection', selection.SELECTION_KINDS)
  _choice(config, 'hadfl.weights', mixing.WEIGHT_KINDS)
  _choice(config, 'hadfl.opt_state', hadfl_lib.OPT_STATE_KINDS)
  _number(config, 'hadfl.t_local', low=0, low_open=True)
  _number(config, 'hadfl.h_cap', low=1, integer=True)

  # Baselines (configs without the block use the defaults of BaselineOptions).
  if 'baselines' in config:
    from hadfl_jax.algorithms import baselines as baselines_lib  # pylint: disable=g-import-not-at-top
    from hadfl_jax.algorithms import graphs  # pylint: disable=g-import-not-at-top
    _number(config, 'baselines.local_steps', low=1, integer=True)
    _number(config, 'baselines.ddp_steps', low=1, integer=True)
    _number(config, 'baselines.fedavg_fraction', low=0, high=1, low_open=True)
    _choice(config, 'baselines.graph', graphs.GRAPH_KINDS)
    _choice(config, 'baselines.opt_state', baselines_lib.OPT_STATE_KINDS)

  # Faults.
  _number(config, 'faults.p_drop', low=0, high=1, high_open=True)
  _number(config, 'faults.p_sync_fail', low=0, high=1, high_open=True)
  try:
    faults.parse_down_trace(tuple(config.faults.down_trace), n)
  except (ValueError, TypeError) as e:
    _fail('faults.down_trace', config.faults.down_trace, str(e))

  # The run.
  _number(config, 'num_cycles', low=1, integer=True)
  _number(config, 'max_sim_time', low=0)
  _number(config, 'eval_every', low=1, integer=True)
  _number(config, 'eval_batch_size', low=1, integer=True)
  _number(config, 'device_eval_examples', low=1, integer=True)
  _number(config, 'target_accuracy', low=0, high=1, low_open=True)
  _number(config, 'checkpoint_every', low=0, integer=True)
