"""Device faults (``docs/spec.md``, "One cycle c", steps 1 and 5).

A device is down in a cycle with probability ``p_drop``, or when a configured trace says
so. A down device does no local steps and cannot be selected. A selected device can also
fail during the sync (``p_sync_fail``); it is then dropped from the group and the others
still average among themselves. Faults never touch a device's own state: a device that
comes back resumes from its last model.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hadfl_jax import typed_config as tc


@dataclasses.dataclass(frozen=True)
class FaultsConfig(tc.Section):
  """The fault model every algorithm runs under (``config.faults``)."""

  SECTION = 'faults'

  p_drop: float = tc.number(0.0, low=0, high=1, high_open=True,
                            doc='probability that a device is down in a cycle')
  p_sync_fail: float = tc.number(0.0, low=0, high=1, high_open=True,
                                 doc='probability that a group member fails in a sync')
  down_trace: tuple = tc.rows((), width=3, doc='(device, first_cycle, end_cycle) rows')

  def check_devices(self, num_devices: int, prefix: str) -> None:
    try:
      parse_down_trace(self.down_trace, num_devices)
    except ValueError as e:
      tc.fail(prefix + 'down_trace', self.down_trace, str(e))

  def trace(self, num_devices: int) -> np.ndarray:
    """The down trace as an int32 (D, 3) array."""
    return parse_down_trace(self.down_trace, num_devices)


def parse_down_trace(trace: Sequence[Sequence[int]], num_devices: int) -> np.ndarray:
  """Validates a trace of down intervals and returns it as an int32 (D, 3) array.

  Args:
    trace: rows ``(device, first_cycle, end_cycle)``: the device is down for cycles
      ``first_cycle <= c < end_cycle``.
    num_devices: N.

  Raises:
    ValueError: naming the malformed row.
  """
  rows = np.asarray(list(trace), np.int64).reshape(-1, 3) if len(trace) else np.zeros((0, 3), np.int64)
  for r, (device, start, end) in enumerate(rows):
    if not 0 <= device < num_devices:
      raise ValueError(f'faults.down_trace row {r}: device {device} not in [0, {num_devices})')
    if start < 0 or end <= start:
      raise ValueError(
          f'faults.down_trace row {r}: need 0 <= first_cycle < end_cycle, got {start}, {end}'
      )
  return rows.astype(np.int32)


def up_mask(
    key: chex.PRNGKey,
    cycle: chex.Numeric,
    num_devices: int,
    p_drop: float,
    down_trace_Dx3: chex.Array | None = None,
) -> chex.Array:
  """Which devices are up in ``cycle``: bool (N,).

  Args:
    key: PRNG key of this cycle's fault draw.
    cycle: the cycle index.
    num_devices: N.
    p_drop: probability that a device is down in a cycle, independently.
    down_trace_Dx3: optional (device, first_cycle, end_cycle) rows of forced downtime.
  """
  down_N = jax.random.bernoulli(key, p_drop, (num_devices,)) if p_drop > 0 else jnp.zeros(
      (num_devices,), bool
  )
  if down_trace_Dx3 is not None and len(down_trace_Dx3):
    trace = jnp.asarray(down_trace_Dx3)
    active_D = (trace[:, 1] <= cycle) & (cycle < trace[:, 2])
    down_N = down_N | jnp.zeros((num_devices,), bool).at[trace[:, 0]].max(active_D)
  return ~down_N


def sync_survivors(
    key: chex.PRNGKey, idx_K: chex.Array, valid_K: chex.Array, p_sync_fail: float
) -> chex.Array:
  """Drops group members that fail during the sync; the rest still average.

  Returns:
    The new ``valid_K``; if fewer than two members survive, nobody syncs.
  """
  del idx_K  # Failures are independent of who the member is.
  if p_sync_fail <= 0:
    return valid_K
  fail_K = jax.random.bernoulli(key, p_sync_fail, valid_K.shape)
  survive_K = valid_K & ~fail_K
  return survive_K & (jnp.sum(survive_K) >= 2)
