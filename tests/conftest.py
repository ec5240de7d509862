"""Test configuration: strict rank promotion, shared fixtures."""

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import pytest  # pylint: disable=g-import-not-at-top

from tests import fixtures  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='session')
def compilation_cache_dir(tmp_path_factory):
  """The session's persistent JAX compilation cache, shared by the xdist workers (and by
  the command-line subprocesses that get it in their environment, see
  ``fixtures.subprocess_env``)."""
  directory = tmp_path_factory.getbasetemp().parent / 'jax_compilation_cache'
  directory.mkdir(exist_ok=True)
  return directory


@pytest.fixture(scope='session', autouse=True)
def _shared_compilation_cache(compilation_cache_dir):
  """The many runs of the same small programs compile once (modules that set their own
  cache restore this one afterwards)."""
  from tests import compile_cache  # pylint: disable=g-import-not-at-top

  with compile_cache.persistent_compilation_cache(compilation_cache_dir):
    yield


@pytest.fixture(scope='session', autouse=True)
def _autotune_cache(tmp_path_factory):
  """Implementation choices measured by the tests go to the session's directory (shared
  by the xdist workers, so each is measured once), not to the user's ~/.cache."""
  import os  # pylint: disable=g-import-not-at-top
  from hadfl_jax.core import autotune  # pylint: disable=g-import-not-at-top

  # Measurement is off for the suite (fixed defaults, and no minute of timing loops);
  # tests/autotune_test.py turns it on.
  saved = {name: os.environ.get(name) for name in (autotune.CACHE_ENV, autotune.ENABLED_ENV)}
  os.environ[autotune.CACHE_ENV] = str(
      tmp_path_factory.getbasetemp().parent / 'autotune_choices.json')
  os.environ[autotune.ENABLED_ENV] = '0'
  yield
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name)
    else:
      os.environ[name] = value


def _registries():
  import hadfl_jax  # pylint: disable=g-import-not-at-top

  return [hadfl_jax.ALGORITHMS, hadfl_jax.SELECTION_RULES, hadfl_jax.WEIGHT_RULES,
          hadfl_jax.OPT_STATE_RULES, hadfl_jax.LOSSES, hadfl_jax.MODELS, hadfl_jax.OPTIMIZERS,
          hadfl_jax.PARTITIONS,
          hadfl_jax.GRAPHS]


@pytest.fixture(autouse=True, scope='module')
def _registries_restored():
  """What a test module registers (a plugin, the docs' examples) is gone after it."""
  import sys  # pylint: disable=g-import-not-at-top

  before = [(r, r.snapshot()) for r in _registries()]
  plugins = set(sys.modules)
  yield
  for registry, snapshot in before:
    registry.restore(snapshot)
  for name in set(sys.modules) - plugins:
    if name.startswith('tests.plugin'):
      del sys.modules[name]  # Imported again, it registers again.


@pytest.fixture
def tiny_problem():
  return fixtures.make_tiny_problem()


@pytest.fixture(scope='session')
def digits_data_dir(tmp_path_factory):
  """A TFDS data_dir with the digits dataset prepared once per test session (worker)."""
  from hadfl_jax import data  # pylint: disable=g-import-not-at-top

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  data.load_split('digits', 'train', data_dir=data_dir)
  return data_dir


@pytest.fixture
def quick_config(digits_data_dir):
  """The quick digits config, shrunk to a few cycles, reading the session's data_dir."""
  from hadfl_jax.configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.dataset.data_dir = digits_data_dir
  config.num_cycles = 6
  config.eval_every = 3
  return config
