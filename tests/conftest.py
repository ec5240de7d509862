"""Test configuration: strict rank promotion, shared fixtures."""

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import pytest  # pylint: disable=g-import-not-at-top

from tests import fixtures  # pylint: disable=g-import-not-at-top


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
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.dataset.data_dir = digits_data_dir
  config.num_cycles = 6
  config.eval_every = 3
  return config
