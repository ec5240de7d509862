"""The simulated clock: communication and cycle times.

All times are in simulated seconds and all sizes in bytes. Nothing here depends on how
fast the machine running the simulation is (see ``docs/spec.md``, "The simulated clock").

Every function works on Python/NumPy scalars and on traced JAX arrays alike, so the same
formulas serve the jitted engine, the baselines and the plain-Python reference.
"""

from __future__ import annotations

import jax.numpy as jnp


def ring_allreduce_time(group_size, payload_bytes, min_bandwidth, latency):
  """Time of a ring all-reduce among ``group_size`` peers.

  ``t = 2 (K - 1) / K * M / min_j b_j + 2 (K - 1) * l``: a reduce-scatter and an
  all-gather, each of ``K - 1`` rounds moving ``M / K`` bytes over the slowest link.

  Args:
    group_size: K, the number of peers (0 or 1 means no communication, time 0).
    payload_bytes: M, the size of what is reduced.
    min_bandwidth: the smallest link bandwidth in the group, bytes per second.
    latency: per-message latency l, seconds.

  Returns:
    The all-reduce time in seconds (0 when ``group_size < 2``).
  """
  k = jnp.asarray(group_size, jnp.float32)
  safe_k = jnp.maximum(k, 1.0)
  t = 2.0 * (safe_k - 1.0) / safe_k * payload_bytes / min_bandwidth
  t = t + 2.0 * (safe_k - 1.0) * latency
  return jnp.where(k >= 2, t, 0.0)


def ring_allreduce_bytes_per_peer(group_size, payload_bytes):
  """Bytes each peer sends in a ring all-reduce: ``2 (K - 1) / K * M`` (0 if K < 2)."""
  k = jnp.asarray(group_size, jnp.float32)
  safe_k = jnp.maximum(k, 1.0)
  return jnp.where(k >= 2, 2.0 * (safe_k - 1.0) / safe_k * payload_bytes, 0.0)


def compute_time(num_steps, speed):
  """Seconds a device with ``speed`` steps/s needs for ``num_steps`` local steps."""
  return jnp.asarray(num_steps, jnp.float32) / speed
