"""Validation of a run's config, before any work starts.

Every check names the field, the value and what is allowed, and raises
:class:`ConfigError`. :func:`validate` looks only at the config (and at whether a
configured file or directory exists); it loads no data, builds no model and does not
start JAX. The few constraints that depend on the dataset (enough examples for the
devices, enough shards for the classes) are checked by :func:`validate_against_data`
once the training labels are loaded, before partitioning.

The typed sections check themselves (:mod:`hadfl_jax.typed_config`): the active
algorithm's (``config.<algorithm>``, its module's ``Config``), ``engine`` and ``faults``;
absent sections take their declared defaults, unknown fields are refused. This module
checks the rest of ``configs/default.py`` (``tests/validation_test.py`` mutates every
field) and what crosses sections: K <= N (the algorithm's ``check_devices``), the mesh
dividing N, a down trace naming existing devices, the examples per device. A config
without a field fails with "missing", except the optional blocks (``compare``,
``engine``) and the fields of the typed sections.
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Sequence

from hadfl_jax import algorithms as algorithms_lib
from hadfl_jax import data as data_lib
from hadfl_jax import models as models_lib
from hadfl_jax import optim
from hadfl_jax import typed_config as tc
from hadfl_jax.comparison import config as comparison_config
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import faults as faults_lib
from hadfl_jax.core import profiles
from hadfl_jax.core import task as task_lib

IDX_DATASETS = ('mnist_idx',)
_MISSING = object()
ConfigError = tc.ConfigError
_is_number = tc.is_number


def is_known_dataset(name: str) -> bool:
  """A builder of the project's own, or a name in TFDS's catalog (e.g. 'emnist/digits')."""
  if name in data_lib.DATASETS:
    return True
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return name.split('/')[0].split(':')[0] in tfds.list_builders(with_community_datasets=False)


_fail = tc.fail


def import_modules(config) -> None:
  """Imports ``config.imports`` (a researcher's modules, which register their additions).

  Raises:
    ConfigError: a module that cannot be imported, naming it and why.
  """
  modules = config.get('imports', ())
  modules = () if modules is None else modules  # Not `or ()`: 0 or '' is no tuple either.
  if not isinstance(modules, (tuple, list)) or not all(isinstance(m, str) and m for m in modules):
    _fail('imports', modules, 'must be a tuple of module names')
  for name in modules:
    try:
      importlib.import_module(name)
    except ImportError as e:
      _fail('imports', tuple(modules), f'module {name!r} cannot be imported ({e}); is it on '
            'PYTHONPATH or installed?')


def algorithm_config(config, name: str | None = None) -> tc.Section:
  """The typed config of algorithm ``name`` (default ``config.algorithm``) from its
  section ``config.<name>`` (absent: the defaults)."""
  name = name or config.algorithm
  return algorithms_lib.config_of(name, config.get(name))


def engine_config(config) -> engine_lib.EngineConfig:
  """The typed ``config.engine`` (absent: the defaults)."""
  return engine_lib.EngineConfig.from_config(config.get('engine'))


def faults_config(config) -> faults_lib.FaultsConfig:
  """The typed ``config.faults``."""
  return faults_lib.FaultsConfig.from_config(_get(config, 'faults'))


def profile_config(config) -> profiles.ProfileConfig:
  """The typed ``config.profile``."""
  return profiles.ProfileConfig.from_config(_get(config, 'profile'))


def partition_config(config) -> data_lib.PartitionConfig:
  """The typed ``config.partition``."""
  return data_lib.PartitionConfig.from_config(_get(config, 'partition'))


def optimizer_config(config) -> optim.OptimizerConfig:
  """The typed ``config.optimizer``."""
  return optim.OptimizerConfig.from_config(_get(config, 'optimizer'))


def compare_config(config) -> comparison_config.CompareConfig:
  """The typed ``config.compare`` (absent fields: the defaults)."""
  return comparison_config.CompareConfig.from_config(config.get('compare'))


# The common typed sections: (name, how to read it from a config).
COMMON_SECTIONS = (('partition', partition_config), ('optimizer', optimizer_config),
                   ('profile', profile_config), ('faults', faults_config),
                   ('engine', engine_config))


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


def _number(config, field: str, *, low=None, high=None, low_open=False, high_open=False,
            integer=False, optional=False):
  """``config.<field>``, a finite number (an integer if ``integer``) within the bounds."""
  spec = tc.Spec('integer' if integer else 'number', low, high, low_open, high_open, optional)
  value = _get(config, field)
  spec.coerce(field, value)
  return value


def _choice(config, field: str, allowed: Sequence[str]) -> str:
  return tc.Spec('choice', choices=tuple(allowed)).coerce(field, _get(config, field))


def _bool(config, field: str) -> bool:
  return tc.Spec('boolean').coerce(field, _get(config, field))


def _string(config, field: str, *, optional=False) -> str | None:
  return tc.Spec('string', optional=optional).coerce(field, _get(config, field))


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


def validate(config, *, algorithms: Sequence[str] | None = None) -> None:
  """Checks every field of a run config.

  Args:
    config: the run's ConfigDict (see ``configs/default.py`` for all fields).
    algorithms: the algorithm names that may be run (default: every registered one,
      after ``config.imports`` are imported).

  Raises:
    ConfigError: naming the first invalid field, its value and what is allowed.
  """
  if not hasattr(config, 'keys'):
    raise ConfigError(f'config must be a ConfigDict, got {type(config).__name__}')
  import_modules(config)
  if algorithms is None:
    algorithms = algorithms_lib.names()
  _number(config, 'seed', low=0, high=2**31 - 1, integer=True)
  name = _choice(config, 'algorithm', algorithms)
  _validate_data(config)

  n = _number(config, 'num_devices', low=1, integer=True)
  _choice(config, 'model', models_lib.MODELS.names())
  _choice(config, 'loss', task_lib.LOSSES.names())
  _number(config, 'batch_size', low=1, integer=True)

  # The typed sections check themselves; then what needs N.
  algorithm_config(config, name).check_devices(n, f'{name}.')
  for section, read in COMMON_SECTIONS:
    read(config).check_devices(n, f'{section}.')
  # Every algorithm section present is read, so a bad value in any is refused; what needs
  # N is checked for the active one (the comparison validates each algorithm it compares
  # as its own run, before any work).
  for other in algorithms_lib.names():
    if other in config:
      algorithm_config(config, other)

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
  _bool(config, 'refine_target')
  _number(config, 'checkpoint_every', low=0, integer=True)


def resolve(config):
  """A validated copy of ``config`` whose typed sections are complete: the active
  algorithm's, ``engine`` and ``faults`` with every field (absent ones at their declared
  defaults). What a run records (``config.json``) and what its resume check and run
  cache compare."""
  validate(config)
  resolved = copy.deepcopy(config)
  with resolved.unlocked():
    resolved[config.algorithm] = algorithm_config(config).to_config_dict()
    for section, read in COMMON_SECTIONS:
      resolved[section] = read(config).to_config_dict()
    if 'compare' in config:
      resolved.compare = compare_config(config).to_config_dict()
  return resolved


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
  partition = partition_config(config)
  if n * partition.min_examples > num_examples:
    _fail('partition.min_examples', partition.min_examples,
          f'num_devices={n} devices with at least this many examples each need '
          f'{n * partition.min_examples} examples; {name} has {num_examples}')
  if partition.kind == 'shards':
    k = partition.classes_per_device
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
