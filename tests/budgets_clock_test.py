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


def test_carried_budgets_by_hand():
  # Cycles of 0.052 s. The quick scenario's slow outsider (12.5 steps/s) needs 0.08 s per
  # step: it finishes one in the second cycle, none in the first and third.
  speed = jnp.array([12.5, 100.0, 50.0, 30.0])
  outsider = jnp.array([True, True, False, True])  # Device 2 is selected: 0 here.
  carry = jnp.zeros(4)
  done = []
  for _ in range(3):
    h, carry = budgets.carried_budgets(speed, outsider, 0.052, carry, h_cap=4)
    done.append(np.asarray(h).tolist())
  # Device 0: 12.5 * 0.052 = 0.65 -> 0 (carry 0.052); 12.5 * 0.104 = 1.3 -> 1 (carry
  # 0.104 - 0.08 = 0.024); 12.5 * 0.076 = 0.95 -> 0 (carry 0.076).
  # Device 1: 100 * 0.052 = 5.2 -> the cap, 4, and nothing carried, every cycle.
  # Device 3: 30 * 0.052 = 1.56 -> 1 (carry 0.052 - 1/30 = 0.01867); 30 * 0.07067 = 2.12
  # -> 2 (carry 0.004); 30 * 0.056 = 1.68 -> 1 (carry 0.056 - 1/30 = 0.02267).
  assert done == [[0, 4, 0, 1], [1, 4, 0, 2], [0, 4, 0, 1]]
  np.testing.assert_allclose(carry, [0.076, 0.0, 0.0, 0.056 - 1 / 30], atol=1e-5)


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
