"""Heterogeneity-aware local step budgets (``docs/spec.md``, "One cycle c", step 3).

A selected device trains for ``t_local`` simulated seconds and then synchronises; a device
that is not selected does not stop for the sync, so it trains for ``t_local + t_sync``:

  H_i = clip(floor(s_i * t_local), 1, h_cap)            for i in S_c
  H_i = clip(floor(s_i * (t_local + t_sync)), 1, h_cap)  otherwise
  H_i = 0                                               for a device that is down
"""

from __future__ import annotations

import chex
import jax.numpy as jnp


def step_budgets(
    speed_N: chex.Array,
    selected_N: chex.Array,
    up_N: chex.Array,
    t_local: float,
    t_sync: chex.Numeric,
    h_cap: int,
) -> chex.Array:
  """Number of local steps of every device in one cycle.

  Args:
    speed_N: profiled speeds, local steps per simulated second, shape (N,).
    selected_N: bool, whether each device is in this cycle's sync group S_c.
    up_N: bool, whether each device is up this cycle; down devices get 0 steps.
    t_local: seconds of local training before a sync.
    t_sync: duration of this cycle's sync, seconds (scalar).
    h_cap: the largest budget any device may get.

  Returns:
    int32 budgets H, shape (N,).
  """
  chex.assert_rank([speed_N, selected_N, up_N], 1)
  chex.assert_equal_shape([speed_N, selected_N, up_N])
  horizon_N = jnp.where(selected_N, t_local, t_local + t_sync)
  # A small relative epsilon keeps floor() from losing a whole step to rounding when
  # s * t is an exact integer (e.g. 12.5 steps/s * 0.4 s), in both float32 and float64.
  raw_N = jnp.floor(speed_N * horizon_N * (1.0 + 1e-6))
  budgets_N = jnp.clip(raw_N, 1, h_cap).astype(jnp.int32)
  return jnp.where(up_N, budgets_N, 0)
