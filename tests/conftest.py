"""Test configuration: strict rank promotion, shared fixtures."""

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import pytest  # pylint: disable=g-import-not-at-top

from tests import fixtures  # pylint: disable=g-import-not-at-top


@pytest.fixture
def tiny_problem():
  return fixtures.make_tiny_problem()
