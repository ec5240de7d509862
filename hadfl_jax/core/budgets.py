"""Heterogeneity-aware local step budgets (``docs/spec.md``, "One cycle c", step 3).

A selected device trains for ``t_local`` simulated seconds and then synchronises; a device
that is not selected does not stop for the sync, so it trains for ``t_local + t_sync``:

  H_i = clip(floor(s_i * t_local), 1, h_cap)            for i in S_c
  H_i = clip(floor(s_i * (t_local + t_sync)), 1, h_cap)  otherwise
  H_i = 0                                               for a device that is down

With ``hadfl.outsiders = 'carried'`` (:func:`carried_budgets`) a device that is not
selected instead runs the whole steps its true speed fits into the cycle as it lasts,
T_c, plus the time it carried over from earlier cycles, and carries the rest.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp


def whole_steps(speed_N: chex.Array, seconds_N: chex.Numeric) -> chex.Array:
  """floor(s * t), the steps completed in ``seconds`` (float). A small relative epsilon
  keeps floor() from losing a whole step to rounding when s * t is an exact integer
  (e.g. 12.5 steps/s * 0.4 s), in both float32 and float64."""
  return jnp.floor(speed_N * seconds_N * (1.0 + 1e-6))


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
  raw_N = whole_steps(speed_N, horizon_N)
  budgets_N = jnp.clip(raw_N, 1, h_cap).astype(jnp.int32)
  return jnp.where(up_N, budgets_N, 0)


def carried_budgets(
    true_speed_N: chex.Array,
    outsider_N: chex.Array,
    cycle_time: chex.Numeric,
    carry_N: chex.Array,
    h_cap: int,
) -> tuple[chex.Array, chex.Array]:
  """The steps of the devices outside the sync group when they keep their time.

  An outsider trains for the whole cycle, T_c, as it lasts (its true speed, jitter
  included) and for the time it carried in, ``carry``: the part of a step it had begun
  when the previous cycle ended. It completes H_i = floor(s_i (T_c + carry_i)) steps (at
  most ``h_cap``) and carries T_c + carry_i - H_i / s_i, less than one step, into the next
  cycle; a capped device carries nothing (it idles). Other devices get 0 steps here and
  carry nothing: a selected device abandons its partial step when it is told to sync, a
  down device loses its cycle.

  Args:
    true_speed_N: steps per simulated second this cycle, shape (N,).
    outsider_N: bool, up and not selected.
    cycle_time: T_c, simulated seconds (scalar).
    carry_N: seconds carried in, shape (N,).
    h_cap: the largest budget any device may get.

  Returns:
    ``(budgets, carry)``: int32 steps of the outsiders (0 elsewhere) and the seconds they
    carry out, shape (N,) each.
  """
  chex.assert_rank([true_speed_N, outsider_N, carry_N], 1)
  available_N = cycle_time + carry_N
  raw_N = whole_steps(true_speed_N, available_N)
  budgets_N = jnp.where(outsider_N, jnp.minimum(raw_N, h_cap), 0).astype(jnp.int32)
  left_N = jnp.maximum(available_N - budgets_N / true_speed_N, 0.0)
  carry_out_N = jnp.where(outsider_N & (raw_N <= h_cap), left_N, 0.0)
  return budgets_N, carry_out_N.astype(jnp.float32)
