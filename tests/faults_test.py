"""Device faults: random drops, traces of down intervals, failures during a sync."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax.core import faults


def test_trace_intervals():
  trace = faults.parse_down_trace([(1, 2, 4), (3, 0, 1)], 5)
  key = jax.random.PRNGKey(0)
  up = lambda c: np.asarray(faults.up_mask(key, c, 5, 0.0, trace)).tolist()
  assert up(0) == [True, True, True, False, True]
  assert up(1) == [True, True, True, True, True]
  assert up(2) == [True, False, True, True, True]
  assert up(3) == [True, False, True, True, True]
  assert up(4) == [True] * 5


@pytest.mark.parametrize('row', [(5, 0, 1), (0, 2, 2), (0, -1, 3)])
def test_bad_trace_rows(row):
  with pytest.raises(ValueError, match='row 0'):
    faults.parse_down_trace([row], 5)


def test_drop_rate():
  keys = jax.random.split(jax.random.PRNGKey(1), 2000)
  up = jax.vmap(lambda k: faults.up_mask(k, 0, 50, 0.3))(keys)
  assert float(jnp.mean(up)) == pytest.approx(0.7, abs=0.01)


def test_sync_survivors():
  valid = jnp.array([True, True, True, False])
  assert faults.sync_survivors(jax.random.PRNGKey(0), None, valid, 0.0) is valid
  keys = jax.random.split(jax.random.PRNGKey(2), 500)
  survive = jax.vmap(lambda k: faults.sync_survivors(k, None, valid, 0.5))(keys)
  survive = np.asarray(survive)
  assert not survive[:, 3].any()  # An empty slot never survives.
  # A lone survivor does not sync: either nobody or at least two.
  assert set(survive.sum(axis=1).tolist()) <= {0, 2, 3}
