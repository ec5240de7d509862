"""Who computes, syncs and waits: a per-device timeline of simulated cycles.

Any algorithm's :class:`~hadfl_jax.core.CycleInfo` reports say, per cycle, how long it
lasted, how many local steps each device ran, who was up and who took part in an
aggregation. With the devices' profiled speeds (local steps per simulated second), that
is a timeline. Within one cycle of length T, device i

* computes for ``c_i = H_i / s_i`` (its H_i steps at its speed s_i; 0 when it is down);
* syncs, if it took part in an aggregation, for the cycle's last ``T - max_j c_j``
  seconds, the maximum over the devices that synced (they start exchanging models once
  the last of them has finished its steps: the barrier baselines' all-reduce, HADFL's
  group all-reduce after ``t_local``);
* waits for the rest of the cycle: idle at a barrier, or for a model exchange to start.

Speed jitter (``profile.jitter_sigma``) is ignored: the timeline uses the nominal speeds.
A cycle of several synchronous steps (DDP's: every step ends in an all-reduce) is drawn
with each kind's total time in one block, not interleaved step by step.
Rounding the last step aside, HADFL's devices compute for the whole cycle except their
sync, while a barrier makes the fast devices wait for the slowest one
(:func:`utilization`). ``colabs/heterogeneity.ipynb`` draws it for every algorithm.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

KINDS = ('compute', 'wait', 'sync', 'down')
COLOURS = {'compute': '#4C72B0', 'wait': '#DDDDDD', 'sync': '#DD8452', 'down': '#C44E52'}


@dataclasses.dataclass(frozen=True)
class Segment:
  """One device's activity over an interval of simulated time."""

  device: int
  start: float
  duration: float
  kind: str  # One of KINDS.


def segments(speed_N, infos: Sequence) -> list[Segment]:
  """The timeline of consecutive cycles, from their reports.

  Args:
    speed_N: each device's speed, local steps per simulated second (the profile's).
    infos: the cycles' reports (``CycleInfo``, on the host or not), in order.

  Returns:
    Segments of positive duration, cycle by cycle, device by device.
  """
  speed_N = np.asarray(speed_N, np.float64)
  out, start = [], 0.0
  for info in infos:
    length = float(info.cycle_time)
    up_N = np.asarray(info.up_N, bool)
    synced_N = np.asarray(info.synced_N, bool) & up_N
    compute_N = np.minimum(np.asarray(info.budgets_N, np.float64) / speed_N, length)
    compute_N = np.where(up_N, compute_N, 0.0)
    sync = length - compute_N[synced_N].max() if synced_N.any() else 0.0
    for i in range(speed_N.shape[0]):
      if not up_N[i]:
        parts = [('down', length)]
      else:
        s = sync if synced_N[i] else 0.0
        parts = [('compute', compute_N[i]), ('wait', max(0.0, length - compute_N[i] - s)),
                 ('sync', s)]
      t = start
      for kind, duration in parts:
        if duration > 0:
          out.append(Segment(i, t, duration, kind))
          t += duration
    start += length
  return out


def utilization(segs: Sequence[Segment], num_devices: int) -> dict[str, np.ndarray]:
  """Per device, the fraction of the simulated time spent in each kind of activity."""
  totals = {kind: np.zeros(num_devices) for kind in KINDS}
  for s in segs:
    totals[s.kind][s.device] += s.duration
  horizon = sum(totals.values())
  return {kind: np.divide(t, horizon, out=np.zeros_like(t), where=horizon > 0)
          for kind, t in totals.items()}


def plot(ax, segs: Sequence[Segment], title: str = '') -> None:
  """Draws the segments on a matplotlib axis: one row per device, time on x."""
  for kind in KINDS:
    bars = [(s.start, s.duration) for s in segs if s.kind == kind]
    rows = [s.device for s in segs if s.kind == kind]
    for row in sorted(set(rows)):
      ax.broken_barh([b for b, r in zip(bars, rows) if r == row], (row - 0.4, 0.8),
                     facecolors=COLOURS[kind], label=kind if row == min(rows) else None)
  ax.set_xlabel('simulated time (s)')
  ax.set_ylabel('device')
  ax.invert_yaxis()
  if title:
    ax.set_title(title)
