"""Validation of a run's config, before any work starts.

Every check names the field, the value and what is allowed, and raises
:class:`ConfigError`. :func:`validate` looks only at the config (and at whether a
configured file or directory exists); it loads no data, builds no model and does not
start JAX. The few constraints that depend on the dataset (enough examples for the
devices, enough shards for the classes) are checked by :func:`validate_against_data`
once the training labels are loaded, before partitioning.

Every field of ``configs/default.py`` is checked here (``tests/validation_test.py``
mutates each one); a config without one of them fails with "missing", except the
optional blocks (``baselines``, ``compare``, ``engine``: defaults apply) and the fields
of ``compare``, each checked when present.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Sequence

from hadfl_jax import data as data_lib
from hadfl_jax import models as models_lib
from hadfl_jax import optim
from hadfl_jax.algorithms import hadfl as hadfl_lib
from hadfl_jax.core import faults
from hadfl_jax.core import mixing
from hadfl_jax.core import profiles
from hadfl_jax.core import selection

IDX_DATASETS = ('mnist_idx',)
_MISSING = object()


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


def _get(config, field: str, default=_MISSING):
  """``config.<field>`` for a dotted field name; ConfigError if it is missing."""
  value = config
  for part in field.split('.'):
    try:
      value = value[part]
    except (KeyError, TypeError, AttributeError):
      if default is not _MISSING:
        return default
      raise ConfigError(f'config.{field} is missing (see configs/default.py for every '
                        'field)') from None
  return value


def _is_number(value, integer: bool = False) -> bool:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return False
  return isinstance(value, numbers.Integral) if integer else True


def _number(config, field: str, *, low=None, high=None, low_open=False, high_open=False,
            integer=False, optional=False):
  """Checks that ``config.<field>`` is a finite number within the given bounds.

  Args:
    config: the config.
    field: dotted field name.
    low, high: bounds (None: unbounded).
    low_open, high_open: whether the bound itself is excluded.
    integer: the value must be an integer.
    optional: None is allowed too.

  Returns:
    The value.
  """
  value = _get(config, field)
  if optional and value is None:
    return None
  kind = 'an integer' if integer else 'a number'
  if not _is_number(value, integer):
    _fail(field, value, f'must be {kind}{" or None" if optional else ""}')
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


def _choice(config, field: str, allowed: Sequence[str]) -> str:
  value = _get(config, field)
  if not isinstance(value, str) or value not in allowed:
    _fail(field, value, f'must be one of {tuple(allowed)}')
  return value


def _bool(config, field: str) -> bool:
  value = _get(config, field)
  if not isinstance(value, bool):
    _fail(field, value, 'must be True or False')
  return value


def _string(config, field: str, *, optional=False) -> str | None:
  value = _get(config, field)
  if optional and value is None:
    return None
  if not isinstance(value, str) or not value:
    _fail(field, value, f'must be a non-empty string{" or None" if optional else ""}')
  return value


def _sequence(config, field: str, *, integer=False, low=None, low_open=False,
              min_len=1) -> tuple:
  """A tuple or list of finite numbers, each >= low (> low if low_open)."""
  value = _get(config, field)
  kind = 'integers' if integer else 'numbers'
  bound = '' if low is None else f' {">" if low_open else ">="} {low}'
  what = f'must be a tuple of at least {min_len} {kind}{bound}'
  if not isinstance(value, (tuple, list)) or len(value) < min_len:
    _fail(field, value, what)
  for v in value:
    if not _is_number(v, integer) or not math.isfinite(v) or (
        low is not None and (v < low or (low_open and v == low))):
      _fail(field, value, what)
  return tuple(value)


def _validate_data(config) -> None:
  name = _get(config, 'dataset.name')
  if not isinstance(name, str) or not is_known_dataset(name):
    _fail('dataset.name', name, f'unknown dataset; known: {tuple(data_lib.DATASETS)} '
          'or any TFDS catalog name')
  _string(config, 'dataset.train_split')
  _string(config, 'dataset.test_split')
  _string(config, 'dataset.data_dir', optional=True)
  idx_dir = _string(config, 'dataset.idx_dir', optional=True)
  if name in IDX_DATASETS:
    if not idx_dir:
      _fail('dataset.idx_dir', idx_dir, f'{name} needs the directory of the four IDX files')
    if not os.path.isdir(os.path.expanduser(idx_dir)):
      _fail('dataset.idx_dir', idx_dir, 'directory does not exist')
  _choice(config, 'partition.kind', data_lib.PARTITION_KINDS)
  _number(config, 'partition.alpha', low=0, low_open=True)
  _number(config, 'partition.classes_per_device', low=1, integer=True)
  _number(config, 'partition.quantity_alpha', low=0, low_open=True)
  _number(config, 'partition.min_examples', low=1, integer=True)


def _validate_profile(config, n: int) -> None:
  kind = _choice(config, 'profile.kind', profiles.PROFILE_KINDS)
  speeds = _get(config, 'profile.speeds')
  if speeds is None:
    speeds = ()
  if not isinstance(speeds, (tuple, list)) or not all(
      _is_number(s) and math.isfinite(s) and s > 0 for s in speeds):
    _fail('profile.speeds', speeds, 'must be a tuple of positive finite numbers')
  if kind == 'list' and len(speeds) != n:
    _fail('profile.speeds', speeds, f'profile.kind=list needs one speed per device '
          f'(num_devices={n}), got {len(speeds)}')
  if kind == 'tiers' and not 1 <= len(speeds) <= n:
    _fail('profile.speeds', speeds, f'profile.kind=tiers needs 1 to num_devices={n} tier '
          f'speeds, got {len(speeds)}')
  _number(config, 'profile.ratio', low=1)
  _number(config, 'profile.sigma', low=0)
  _number(config, 'profile.seconds_per_step', low=0, low_open=True)
  _number(config, 'profile.jitter_sigma', low=0)
  _number(config, 'profile.speed_ema', low=0, high=1, high_open=True)
  _number(config, 'profile.bandwidth_mbps', low=0, low_open=True)
  _number(config, 'profile.latency_s', low=0)
  _number(config, 'profile.bytes_per_param', low=1, integer=True)


def _validate_faults(config, n: int) -> None:
  _number(config, 'faults.p_drop', low=0, high=1, high_open=True)
  _number(config, 'faults.p_sync_fail', low=0, high=1, high_open=True)
  trace = _get(config, 'faults.down_trace')
  rows_ok = isinstance(trace, (tuple, list)) and all(
      isinstance(row, (tuple, list)) and len(row) == 3 and all(_is_number(v, True) for v in row)
      for row in trace)
  if not rows_ok:
    _fail('faults.down_trace', trace,
          'must be a tuple of (device, first_cycle, end_cycle) rows of integers')
  try:
    faults.parse_down_trace(tuple(tuple(row) for row in trace), n)
  except ValueError as e:
    _fail('faults.down_trace', trace, str(e))


def _validate_engine(config, n: int) -> None:
  _number(config, 'engine.num_buckets', low=1, integer=True)
  _number(config, 'engine.bucket_mib', low=0, optional=True)  # 0: no limit
  shards = _number(config, 'engine.mesh_shards', low=0, integer=True)
  if shards and n % shards:
    divisors = [s for s in range(1, n + 1) if n % s == 0]
    _fail('engine.mesh_shards', shards, f'num_devices={n} must be a multiple of it: use a '
          f'divisor of {n} ({divisors}), or 0 for all accelerators')
  distributed = _bool(config, 'engine.distributed')
  _string(config, 'engine.coordinator_address', optional=True)
  processes = _number(config, 'engine.num_processes', low=1, integer=True, optional=True)
  process_id = _number(config, 'engine.process_id', low=0, integer=True, optional=True)
  if processes is not None and process_id is not None and process_id >= processes:
    _fail('engine.process_id', process_id, f'must be < engine.num_processes={processes}')
  if not distributed and (processes or 1) > 1:
    _fail('engine.num_processes', processes, 'needs engine.distributed=True')


_EXTRA_STEPS = re.compile(r'^\s*([\w/]+)\s*=\s*\d+(\s*,\s*\d+)*\s*,?\s*$')


def _validate_compare(config, algorithms: Sequence[str]) -> None:
  """The comparison's fields, each checked when present: ``hadfl_jax.compare`` grows new
  ones often, and a run must not fail on one that a config predates."""
  present = set(config.compare.keys())
  if 'algorithms' in present:
    names = config.compare.algorithms
    if (not isinstance(names, (tuple, list)) or not names or len(set(names)) != len(names)
        or not all(isinstance(a, str) and a in algorithms for a in names)):
      _fail('compare.algorithms', names,
            f'must be a tuple of distinct names from {tuple(algorithms)}')
  if 'learning_rates' in present:
    _sequence(config, 'compare.learning_rates', low=0, low_open=True)
  if 'local_steps' in present:
    _sequence(config, 'compare.local_steps', integer=True, low=1)
  if 'extra_local_steps' in present:
    extra = config.compare.extra_local_steps
    if not isinstance(extra, str):
      _fail('compare.extra_local_steps', extra,
            "must be a string such as 'dfedavg=20,10;dpsgd=5'")
    for part in filter(None, (p.strip() for p in extra.split(';'))):
      match = _EXTRA_STEPS.match(part)
      if not match or match.group(1) not in algorithms or not all(
          int(v) >= 1 for v in part.split('=')[1].split(',') if v.strip()):
        _fail('compare.extra_local_steps', extra, "must look like 'dfedavg=20,10;dpsgd=5': "
              f'algorithm names from {tuple(algorithms)}, steps >= 1; bad part {part!r}')
  for name in ('eval_interval_s', 'eval_growth'):
    if name in present:
      _number(config, f'compare.{name}', low=0)
  if 'winners_from' in present:
    winners = config.compare.winners_from
    if winners is not None and (not isinstance(winners, str) or (
        winners and not os.path.isfile(os.path.expanduser(winners)))):
      _fail('compare.winners_from', winners, 'must be None or the path of an existing '
            'results.json')
  if 'sweep_ratios' in present:
    _sequence(config, 'compare.sweep_ratios', low=1)
  for name in ('sweep', 'ablation', 'cached_only'):
    if name in present:
      _bool(config, f'compare.{name}')


def validate(config, *, algorithms: Sequence[str] = ('hadfl',)) -> None:
  """Checks every field of a run config.

  Args:
    config: the run's ConfigDict (see ``configs/default.py`` for all fields).
    algorithms: the algorithm names that may be run.

  Raises:
    ConfigError: naming the first invalid field, its value and what is allowed.
  """
  if not hasattr(config, 'keys'):
    raise ConfigError(f'config must be a ConfigDict, got {type(config).__name__}')
  _number(config, 'seed', low=0, high=2**31 - 1, integer=True)
  _choice(config, 'algorithm', algorithms)
  _validate_data(config)

  n = _number(config, 'num_devices', low=1, integer=True)
  _choice(config, 'model', models_lib.MODELS)
  _number(config, 'batch_size', low=1, integer=True)

  _choice(config, 'optimizer.name', optim.OPTIMIZERS)
  _number(config, 'optimizer.learning_rate', low=0, low_open=True)
  _number(config, 'optimizer.momentum', low=0, high=1, high_open=True)
  _number(config, 'optimizer.weight_decay', low=0)

  _validate_profile(config, n)

  # HADFL.
  rho = _number(config, 'hadfl.rho', low=0, high=1, low_open=True)
  k = selection.group_size(rho, n)
  if k > n:
    _fail('hadfl.rho', rho, f'gives K = max(2, round(rho * N)) = {k} > N = {n} '
          '(num_devices): a sync needs at least two devices')
  _choice(config, 'hadfl.selection', selection.SELECTION_KINDS)
  _choice(config, 'hadfl.weights', mixing.WEIGHT_KINDS)
  _choice(config, 'hadfl.opt_state', hadfl_lib.OPT_STATE_KINDS)
  _number(config, 'hadfl.t_local', low=0, low_open=True)
  _number(config, 'hadfl.h_cap', low=1, integer=True)

  # Baselines, the comparison and the engine (configs without a block use defaults).
  if 'baselines' in config:
    from hadfl_jax.algorithms import baselines as baselines_lib  # pylint: disable=g-import-not-at-top
    from hadfl_jax.algorithms import graphs  # pylint: disable=g-import-not-at-top
    _number(config, 'baselines.local_steps', low=1, integer=True)
    _number(config, 'baselines.ddp_steps', low=1, integer=True)
    _number(config, 'baselines.fedavg_fraction', low=0, high=1, low_open=True)
    _choice(config, 'baselines.graph', graphs.GRAPH_KINDS)
    _choice(config, 'baselines.opt_state', baselines_lib.OPT_STATE_KINDS)
  if 'compare' in config:
    _validate_compare(config, algorithms)
  if 'engine' in config:
    _validate_engine(config, n)

  _validate_faults(config, n)

  # The run.
  _number(config, 'num_cycles', low=1, integer=True)
  _number(config, 'max_sim_time', low=0)
  _number(config, 'eval_every', low=1, integer=True)
  _number(config, 'eval_interval_s', low=0)
  _number(config, 'eval_growth', low=0)
  _number(config, 'eval_batch_size', low=1, integer=True)
  _number(config, 'device_eval_examples', low=1, integer=True)
  _number(config, 'target_accuracy', low=0, high=1, low_open=True)
  _bool(config, 'stop_at_target')
  _number(config, 'checkpoint_every', low=0, integer=True)


def validate_against_data(config, num_examples: int, num_classes: int) -> None:
  """The constraints that need the training set: enough examples and classes to partition.

  Args:
    config: a config that passed :func:`validate`.
    num_examples: training examples in the dataset.
    num_classes: classes of the dataset.

  Raises:
    ConfigError: naming the field that asks for more than the dataset holds.
  """
  n = config.num_devices
  name = config.dataset.name
  if n * config.partition.min_examples > num_examples:
    _fail('partition.min_examples', config.partition.min_examples,
          f'num_devices={n} devices with at least this many examples each need '
          f'{n * config.partition.min_examples} examples; {name} has {num_examples}')
  if config.partition.kind == 'shards':
    k = config.partition.classes_per_device
    if k > num_classes:
      _fail('partition.classes_per_device', k, f'{name} has only {num_classes} classes')
    if n * k < num_classes:
      _fail('partition.classes_per_device', k,
            f'num_devices * classes_per_device = {n * k} shards cannot cover the '
            f'{num_classes} classes of {name}')
    if n * k > num_examples:
      _fail('partition.classes_per_device', k,
            f'num_devices * classes_per_device = {n * k} shards need at least as many '
            f'examples; {name} has {num_examples}')
