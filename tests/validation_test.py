"""Bad input stops a run before any work with an error naming field, value and what is allowed.

Property-based (hypothesis): one field of a valid config is set to a random invalid value
(or removed), and the run must fail in the validator with a :class:`ConfigError` that
names that field. Random valid small configs must run end to end. The invalid values of
the plain fields are written here per field, by hand, independently of the validator;
those of the typed sections (every algorithm's, ``engine``, ``faults``) are drawn from the
bounds their classes declare (:func:`hadfl_jax.typed_config.specs`), plus the
cross-field cases (a mesh that does not divide N, a trace naming a device beyond N).
"""

import gzip
import math
import os
import re
import subprocess
import sys

import hypothesis
from hypothesis import strategies as st
import ml_collections
import numpy as np
import pytest

from hadfl_jax import algorithms
from hadfl_jax import data as data_lib
from hadfl_jax import models
from hadfl_jax import optim
from hadfl_jax import train
from hadfl_jax import typed_config
from hadfl_jax import validation
from hadfl_jax.comparison import config as comparison_config
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import faults as faults_lib
from hadfl_jax.core import profiles
from hadfl_jax.core import task as task_lib
from hadfl_jax.data import idx
from tests import compile_cache
from tests import fixtures

N = 8  # num_devices of the default config the invalid values are made for.


def _default():
  from hadfl_jax.configs import default  # pylint: disable=g-import-not-at-top

  return default.get_config()


def _leaves(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


# --- invalid values, field by field -----------------------------------------------------

_NOT_NUMBERS = st.one_of(st.text(max_size=4), st.none(), st.booleans(),
                         st.lists(st.integers(), max_size=2))
_NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
_NON_INTEGERS = st.floats(-1e6, 1e6).filter(lambda x: not x.is_integer())


def _numbers(low=None, high=None, low_open=False, high_open=False, integer=False):
  """Invalid values for a number that must lie in the given interval."""
  options = [_NOT_NUMBERS, _NON_FINITE]
  make = st.integers if integer else st.floats
  if low is not None:  # Below the interval (or at an open bound).
    options.append(make(max_value=low) if low_open else make(max_value=low - 1) if integer
                   else st.floats(max_value=low, exclude_max=True, allow_nan=False,
                                  allow_infinity=False))
  if high is not None:
    options.append(make(min_value=high) if high_open else make(min_value=high + 1) if integer
                   else st.floats(min_value=high, exclude_min=True, allow_nan=False,
                                  allow_infinity=False))
  if integer:
    options.append(_NON_INTEGERS)
  return st.one_of(*options)


def _names(allowed):
  """Invalid values for a field that must be one of ``allowed``."""
  return st.one_of(st.text(max_size=12).filter(lambda s: s not in allowed),
                   st.integers(), st.none())


_NOT_BOOLS = st.one_of(st.integers(0, 1), st.text(max_size=3), st.none())
_NOT_STRINGS = st.one_of(st.just(''), st.integers(), st.lists(st.text(max_size=2), max_size=2))
_NOT_OPTIONAL_STRINGS = st.one_of(st.just(''), st.integers(), st.floats(allow_nan=False))

_NOT_ROWS = st.one_of(st.integers(), st.text(min_size=1, max_size=3), st.just(((0, 1.5, 3),)),
                      st.tuples(st.tuples(st.integers(0, N - 1), st.integers(0, 5))))


def _from_spec(spec: typed_config.Spec):
  """Invalid values for a field of a typed section, from its declared spec."""
  if spec.kind in ('number', 'integer'):
    values = _numbers(spec.low, spec.high, spec.low_open, spec.high_open,
                      integer=spec.kind == 'integer')
    return values.filter(lambda v: v is not None) if spec.optional else values
  if spec.kind == 'choice':
    return _names(spec.allowed_choices())
  if spec.kind == 'boolean':
    return _NOT_BOOLS
  if spec.kind == 'string':
    return _NOT_OPTIONAL_STRINGS if spec.optional else _NOT_STRINGS
  if spec.kind == 'rows':
    return _NOT_ROWS
  if spec.kind == 'text':
    return st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=2), max_size=2))
  if spec.kind == 'names':
    allowed = spec.allowed_choices()
    return st.one_of(st.just(()), st.just((allowed[0], allowed[0])), st.none(),
                     st.text(max_size=5), st.lists(st.text(max_size=5).filter(
                         lambda v: v not in allowed), min_size=1, max_size=3))
  if spec.kind == 'integers':
    return st.one_of(st.just(()), st.lists(st.integers(max_value=int(spec.low) - 1),
                                           min_size=1, max_size=3),
                     st.just((5, 2.5)), st.none(), st.integers(1, 5))
  if spec.kind == 'numbers':
    below = (st.floats(max_value=spec.low, allow_nan=False) if spec.low_open
             else st.floats(max_value=spec.low, exclude_max=True, allow_nan=False))
    return st.one_of(st.lists(below, min_size=1, max_size=3), st.integers(),
                     st.text(min_size=1, max_size=3),
                     st.lists(st.sampled_from([math.nan, math.inf, 'x']), min_size=1,
                              max_size=3),
                     *([st.just(())] if spec.min_len >= 1 else []),
                     *([] if spec.optional else [st.none()]))
  raise AssertionError(f'no invalid values for {spec}')


TYPED_SECTIONS = [(name, algorithms.ALGORITHMS.get(name).Config) for name in algorithms.names()
                  ] + [('engine', engine_lib.EngineConfig), ('faults', faults_lib.FaultsConfig),
                       ('partition', data_lib.PartitionConfig), ('optimizer', optim.OptimizerConfig),
                       ('profile', profiles.ProfileConfig),
                       ('compare', comparison_config.CompareConfig)]
# Values each field allows alone that the config's other fields refuse.
CROSS_FIELD = {
    'compare.extra_local_steps': st.sampled_from(
        ['nope=3', 'dfedavg=0', 'dfedavg', 'dfedavg=a', 'dfedavg=5;x=2']),
    'compare.winners_from': st.just('/no/such/results.json'),
    'compare.options': st.sampled_from(
        ['nope.x=1', 'prague.group_sz=2', 'prague.group_size=0', 'prague.group_size',
         'fedbuff.server_lr=-1', 'hadfl.selection=no_such_rule', '=3', 'fedbuff.=1']),
    'compare.seeds': st.lists(st.integers(0, 3), min_size=2, max_size=5).filter(
        lambda s: len(set(s)) < len(s)).map(tuple),
    'compare.sweep_ratios': st.lists(st.sampled_from([1, 1.0, 2.0, 16]), min_size=2,
                                     max_size=5).filter(
        lambda s: len({float(r) for r in s}) < len(s)).map(tuple),
    'profile.speeds': st.one_of(  # The default kind is 'list': one speed per device.
        st.lists(st.floats(0.1, 10), max_size=12).filter(lambda s: len(s) != N),
        st.lists(st.floats(max_value=0), min_size=N, max_size=N),
        st.lists(st.sampled_from([math.nan, math.inf]), min_size=N, max_size=N),
        st.lists(st.text(max_size=2), min_size=N, max_size=N),
        st.integers(1, 8), st.text(min_size=1, max_size=4)),
    'engine.mesh_shards': st.integers(1, 64).filter(lambda s: N % s),
    'engine.num_processes': st.integers(2, 9),  # Needs engine.distributed.
    'faults.down_trace': st.one_of(
        st.tuples(st.tuples(st.integers(N, 100), st.integers(0, 5), st.integers(6, 9))),
        st.tuples(st.tuples(st.integers(-5, -1), st.integers(0, 5), st.integers(6, 9))),
        st.tuples(st.tuples(st.integers(0, N - 1), st.integers(-5, -1), st.integers(0, 9))),
        st.tuples(st.tuples(st.integers(0, N - 1), st.integers(3, 9), st.integers(0, 3)))),
}
TYPED = {field: st.one_of(_from_spec(spec), *([CROSS_FIELD[field]] if field in CROSS_FIELD else []))
         for field, spec in typed_config.iter_specs(TYPED_SECTIONS)}

INVALID = {
    'seed': _numbers(low=0, high=2**31 - 1, integer=True),
    'algorithm': _names(algorithms.names()),
    'imports': st.one_of(st.just(('no_such_module_for_hadfl',)), st.integers(),
                         st.just(0), st.just(''), st.just(('',))),
    'loss': _names(task_lib.LOSSES.names()),
    'dataset.name': st.one_of(st.sampled_from(['no_such_dataset', 'mnist_idxx', 'digit']),
                              st.integers(), st.none()),
    'dataset.train_split': _NOT_STRINGS,
    'dataset.test_split': _NOT_STRINGS,
    'dataset.data_dir': _NOT_OPTIONAL_STRINGS,
    'dataset.idx_dir': _NOT_OPTIONAL_STRINGS,
    'num_devices': _numbers(low=1, integer=True),
    'model': _names(models.MODELS.names()),
    'batch_size': _numbers(low=1, integer=True),
    'num_cycles': _numbers(low=1, integer=True),
    'max_sim_time': _numbers(low=0),
    'eval_every': _numbers(low=1, integer=True),
    'eval_interval_s': _numbers(low=0),
    'eval_growth': _numbers(low=0),
    'eval_batch_size': _numbers(low=1, integer=True),
    'device_eval_examples': _numbers(low=1, integer=True),
    'target_accuracy': _numbers(low=0, high=1, low_open=True),
    'stop_at_target': _NOT_BOOLS,
    'refine_target': _NOT_BOOLS,
    'checkpoint_every': _numbers(low=0, integer=True),
    **TYPED,
}


def _with(field, value, *, remove=False) -> ml_collections.ConfigDict:
  """The default config (as a user's config file could write it) with one field changed."""
  tree = _default().to_dict()
  section = tree
  *parents, name = field.split('.')
  for part in parents:
    section = section[part]
  if remove:
    del section[name]
  else:
    section[name] = value
  return ml_collections.ConfigDict(tree)


def test_every_config_field_has_invalid_values_here():
  # A new field of configs/default.py needs its invalid values here, and validation.
  assert sorted(_leaves(_default().to_dict())) == sorted(INVALID)


def test_the_default_configs_are_valid():
  from hadfl_jax.configs import quick_compare  # pylint: disable=g-import-not-at-top

  validation.validate(_default())
  validation.validate(quick_compare.get_config())


def _assert_refused_in_validator(config, field, workdir):
  with pytest.raises(validation.ConfigError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert f'config.{field}' in message, message
  # Raised by the validator or a typed section, not from deep inside JAX or the data layer.
  assert error.traceback[-1].path.name in ('validation.py', 'typed_config.py')
  assert not workdir.exists()
  return message


@hypothesis.settings(max_examples=300, deadline=None, database=None)
@hypothesis.given(st.data())
def test_an_invalid_field_is_named_before_any_work(tmp_path_factory, data):
  field = data.draw(st.sampled_from(sorted(INVALID)), label='field')
  value = data.draw(INVALID[field], label='value')
  workdir = tmp_path_factory.getbasetemp() / 'never_created'
  message = _assert_refused_in_validator(_with(field, value), field, workdir)
  assert 'is invalid' in message


@pytest.mark.parametrize('field', sorted(f for f in INVALID if f not in TYPED and f != 'imports'))
def test_a_missing_field_is_named(tmp_path, field):
  message = _assert_refused_in_validator(_with(field, None, remove=True), field,
                                         tmp_path / 'run')
  assert 'is missing' in message


def test_typed_sections_default_absent_fields_and_refuse_unknown_ones(tmp_path):
  config = _with('hadfl.rho', None, remove=True)
  validation.validate(config)
  assert validation.algorithm_config(config).rho == algorithms.hadfl.Config().rho
  message = _assert_refused_in_validator(_with('hadfl.rhoo', 0.5), 'hadfl.rhoo', tmp_path / 'r')
  assert 'is not a field of hadfl_jax.algorithms.hadfl.Config' in message


def test_python_misuse_gets_the_command_lines_message():
  # The same typed Config from Python refuses what the command line refuses, in its words.
  for kwargs, field in [(dict(rho=-1), 'rho'), (dict(t_local=-5), 't_local'),
                        (dict(h_cap=0), 'h_cap'), (dict(selection='fastest'), 'selection')]:
    with pytest.raises(typed_config.ConfigError) as from_python:
      algorithms.hadfl.Config(**kwargs)
    with pytest.raises(typed_config.ConfigError) as from_config:
      validation.validate(_with(f'hadfl.{field}', kwargs[field]))
    assert str(from_python.value) == str(from_config.value)
    assert str(from_python.value).startswith(f'config.hadfl.{field}=')


@pytest.mark.parametrize('field,value,allowed', [
    ('profile.speeds', (1.0, 2.0), r'needs one speed per device \(num_devices=8\), got 2'),
    ('hadfl.rho', 1.5, r'must be in \(0, 1\]'),
    ('dpsgd.graph', 'star', "must be one of \\('ring', 'torus', 'exponential', 'complete'\\)"),
    ('optimizer.learning_rate', -0.1, r'must be in \(0, inf\]'),
    ('partition.alpha', 0.0, r'must be in \(0, inf\]'),
    ('model', 'resnet', "must be one of \\('mlp'"),
    ('dataset.name', 'no_such_dataset', 'unknown dataset; known:'),
    ('checkpoint_every', -1, r'must be in \[0, inf\]'),
    ('engine.mesh_shards', 3, r'must be a multiple of it: use a divisor of 8 \(\[1, 2, 4, 8\]\)'),
    ('faults.down_trace', ((8, 0, 2),), r'row 0: device 8 not in \[0, 8\)'),
])
def test_the_message_says_what_is_allowed(tmp_path, field, value, allowed):
  message = _assert_refused_in_validator(_with(field, value), field, tmp_path / 'run')
  assert f'config.{field}={value!r} is invalid: ' in message
  assert re.search(allowed, message), message


def test_k_greater_than_n_names_rho_and_n(tmp_path):
  config = _with('num_devices', 1)
  config.profile.speeds = (1.0,)
  message = _assert_refused_in_validator(config, 'hadfl.rho', tmp_path / 'run')
  assert 'K = max(2, round(rho * N)) = 2 > N = 1 (num_devices)' in message


def test_missing_idx_directory_is_named(tmp_path):
  config = _with('dataset.name', 'mnist_idx')
  config.dataset.idx_dir = str(tmp_path / 'nowhere')
  message = _assert_refused_in_validator(config, 'dataset.idx_dir', tmp_path / 'run')
  assert 'directory does not exist' in message


@pytest.mark.parametrize('field,value,message', [
    ('partition.min_examples', 200, 'need 1600 examples; digits has 1437'),
    ('partition.classes_per_device', 11, 'digits has only 10 classes'),
])
def test_what_the_dataset_cannot_give_is_named(quick_config, tmp_path, field, value, message):
  section, name = field.split('.')
  if name == 'classes_per_device':
    quick_config.partition.kind = 'shards'
  quick_config[section][name] = value
  with pytest.raises(validation.ConfigError, match=f'config.{field}={value}.*{message}'):
    train.build_setup(quick_config)


# --- corrupt data ---------------------------------------------------------------------


def _truncated_mnist(directory):
  """Synthetic MNIST IDX files (6 train, 3 test 28x28 images), the train images truncated."""
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True)
  for prefix, count in (('train', 6), ('t10k', 3)):
    idx.write_idx(directory / f'{prefix}-images-idx3-ubyte.gz',
                  rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
    idx.write_idx(directory / f'{prefix}-labels-idx1-ubyte.gz',
                  rng.integers(0, 10, (count,), dtype=np.uint8))
  bad = directory / 'train-images-idx3-ubyte.gz'
  bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-300]))
  return bad


def test_truncated_idx_files_stop_the_run_naming_the_file(tmp_path):
  bad = _truncated_mnist(tmp_path / 'idx')
  config = _with('dataset.name', 'mnist_idx')
  config.dataset.idx_dir = str(tmp_path / 'idx')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(data_lib.DatasetError, match='truncated') as error:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert str(bad) in str(error.value)
  assert not (tmp_path / 'run' / 'metrics.jsonl').exists()
  assert not (tmp_path / 'tfds' / 'mnist_idx').exists()  # Nothing half-prepared.


@pytest.mark.slow
def test_command_line_errors_are_clean(tmp_path):
  bad = _truncated_mnist(tmp_path / 'idx')
  base = [sys.executable, '-m', 'hadfl_jax.main', '--config', 'configs/default.py',
          f'--workdir={tmp_path / "run"}', f'--config.dataset.data_dir={tmp_path / "tfds"}',
          '--config.dataset.name=mnist_idx', f'--config.dataset.idx_dir={tmp_path / "idx"}']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run(base, cwd=fixtures.REPO, capture_output=True, text=True, timeout=300,
                       env=env)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith(f'error: {bad}: truncated')
  assert 'Traceback' not in out.stderr


# --- random valid configs run -----------------------------------------------------------


@st.composite
def valid_configs(draw, data_dir):
  """Small valid configs on digits (1,437 training examples, 10 classes)."""
  config = _default()
  config.dataset.data_dir = data_dir
  n = draw(st.integers(2, 6), label='num_devices')
  config.num_devices = n
  config.algorithm = draw(st.sampled_from(algorithms.names()))
  # MLPs only: a CNN's compilation would dominate the test (models_test covers them).
  config.model = draw(st.sampled_from(['digits_mlp', 'small_mlp', 'mlp']))
  config.batch_size = draw(st.integers(1, 64))
  kind = draw(st.sampled_from(data_lib.PARTITIONS.names()))
  config.partition.kind = kind
  config.partition.alpha = draw(st.floats(0.05, 10))
  # Shards must cover the 10 classes: n * classes_per_device >= 10.
  config.partition.classes_per_device = draw(st.integers(-(-10 // n), 10))
  config.partition.quantity_alpha = draw(st.floats(0.1, 10))
  config.partition.min_examples = draw(st.integers(1, 20))
  config.optimizer.name = draw(st.sampled_from(['sgd', 'momentum', 'adam']))
  config.optimizer.learning_rate = draw(st.floats(1e-3, 0.1))
  config.optimizer.momentum = draw(st.floats(0, 0.95))
  config.optimizer.weight_decay = draw(st.sampled_from([0.0, 1e-4]))
  profile = draw(st.sampled_from(['list', 'tiers', 'geometric', 'lognormal']))
  config.profile.kind = profile
  size = n if profile == 'list' else draw(st.integers(1, n))
  config.profile.speeds = tuple(draw(st.lists(st.floats(0.1, 10), min_size=size,
                                              max_size=size)))
  config.profile.ratio = draw(st.floats(1, 16))
  config.profile.jitter_sigma = draw(st.sampled_from([0.0, 0.3]))
  config.hadfl.rho = draw(st.floats(0.01, 1))
  config.hadfl.selection = draw(st.sampled_from(['version', 'speed', 'uniform', 'staleness']))
  config.hadfl.weights = draw(st.sampled_from(['data', 'uniform', 'steps', 'version']))
  config.hadfl.opt_state = draw(st.sampled_from(['average', 'keep', 'reset']))
  config.hadfl.t_local = draw(st.floats(0.005, 0.1))
  config.hadfl.h_cap = draw(st.integers(1, 20))
  for name in ('dfedavg', 'fedavg', 'dpsgd'):
    config[name].local_steps = draw(st.integers(1, 5))
  config.ddp.steps_per_cycle = draw(st.integers(1, 5))
  config.fedavg.fraction = draw(st.floats(0.01, 1))
  config.dpsgd.graph = draw(st.sampled_from(['ring', 'torus', 'exponential', 'complete']))
  for name in ('adpsgd', 'prague'):
    config[name].local_steps = draw(st.integers(1, 3))
    config[name].window_s = draw(st.sampled_from([0.0, 0.01]))
  config.adpsgd.graph = draw(st.sampled_from(['ring', 'complete']))
  config.prague.group_size = draw(st.integers(2, n))
  config.fedbuff.local_steps = draw(st.integers(1, 3))
  config.fedbuff.buffer_size = draw(st.integers(1, 4))
  config.fedbuff.server_lr = draw(st.sampled_from([0.5, 1.0]))
  config.faults.p_drop = draw(st.sampled_from([0.0, 0.3]))
  config.faults.p_sync_fail = draw(st.sampled_from([0.0, 0.3]))
  config.faults.down_trace = tuple(draw(st.lists(
      st.tuples(st.integers(0, n - 1), st.integers(0, 1), st.integers(2, 3)), max_size=2)))
  config.engine.num_buckets = draw(st.integers(1, 2))
  config.num_cycles = draw(st.integers(1, 2))
  config.eval_every = draw(st.integers(1, 2))
  config.checkpoint_every = draw(st.integers(0, 1))
  config.device_eval_examples = draw(st.integers(1, 50))
  config.eval_batch_size = draw(st.integers(1, 400))
  return config


@pytest.fixture(scope='module')
def _cache(tmp_path_factory):
  with compile_cache.persistent_compilation_cache(tmp_path_factory.mktemp('jax_cache')):
    yield


@pytest.mark.slow
@pytest.mark.usefixtures('_cache')
@hypothesis.settings(max_examples=4, deadline=None, database=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(st.data())
def test_a_valid_small_config_runs_end_to_end(digits_data_dir, tmp_path_factory, data):
  config = data.draw(valid_configs(digits_data_dir), label='config')
  validation.validate(config)
  workdir = tmp_path_factory.mktemp('valid')
  summary = train.train_and_evaluate(config, str(workdir))
  assert summary['cycles'] == config.num_cycles
  assert 0 <= summary['final_consensus_accuracy'] <= 1
  assert np.isfinite(summary['final_loss']) and summary['sim_time_s'] > 0
