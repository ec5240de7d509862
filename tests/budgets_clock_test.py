"""Step budgets and the simulated clock against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax.core import budgets
from hadfl_jax.core import clock


def test_budgets_by_hand():
  speed = jnp.array([12.5, 25.0, 50.0, 100.0])
  selected = jnp.array([True, False, True, False])
  up = jnp.array([True, True, True, False])
  h = budgets.step_budgets(speed, selected, up, t_local=0.4, t_sync=0.13, h_cap=1000)
  # Selected: floor(12.5 * 0.4) = 5, floor(50 * 0.4) = 20.
  # Not selected: floor(25 * 0.53) = 13; device 3 is down: 0.
  assert np.asarray(h).tolist() == [5, 13, 20, 0]


def test_budgets_clip_to_one_and_cap():
  h = budgets.step_budgets(jnp.array([0.1, 1000.0]), jnp.array([True, True]),
                           jnp.array([True, True]), t_local=1.0, t_sync=0.0, h_cap=64)
  assert np.asarray(h).tolist() == [1, 64]


def test_ring_allreduce_by_hand():
  # K = 4, M = 1.7 MB, 12.5 MB/s, 5 ms: 2*3/4*1.7/12.5 + 2*3*0.005 = 0.204 + 0.03.
  assert float(clock.ring_allreduce_time(4, 1.7e6, 12.5e6, 0.005)) == pytest.approx(0.234)
  assert float(clock.ring_allreduce_bytes_per_peer(4, 1.7e6)) == pytest.approx(2.55e6)
  # Two peers: each sends M / 2 twice.
  assert float(clock.ring_allreduce_bytes_per_peer(2, 1e6)) == pytest.approx(1e6)
  for k in (0, 1):
    assert float(clock.ring_allreduce_time(k, 1e6, 1e6, 0.1)) == 0.0
    assert float(clock.ring_allreduce_bytes_per_peer(k, 1e6)) == 0.0


def test_compute_time():
  assert float(clock.compute_time(5, 12.5)) == pytest.approx(0.4)
