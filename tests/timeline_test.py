"""The per-device timeline: hand-computed segments, and real runs that tile the time."""

import types

import jax
import numpy as np
import pytest

from hadfl_jax import algorithms
from hadfl_jax import timeline
from tests import fixtures


def _info(cycle_time, budgets, up, synced):
  return types.SimpleNamespace(cycle_time=cycle_time, budgets_N=np.asarray(budgets),
                               up_N=np.asarray(up), synced_N=np.asarray(synced))


def test_hand_computed_timeline():
  speeds = [1.0, 2.0]
  infos = [
      _info(3.0, [2, 4], [True, True], [True, True]),    # Both compute 2 s, sync 1 s.
      _info(5.0, [1, 8], [True, True], [True, False]),   # 0 syncs after 1 s; 1 computes 4 s.
      _info(2.0, [2, 0], [True, False], [False, False]),  # 1 is down.
  ]
  got = [(s.device, s.start, s.duration, s.kind) for s in timeline.segments(speeds, infos)]
  assert got == [
      (0, 0.0, 2.0, 'compute'), (0, 2.0, 1.0, 'sync'),
      (1, 0.0, 2.0, 'compute'), (1, 2.0, 1.0, 'sync'),
      (0, 3.0, 1.0, 'compute'), (0, 4.0, 4.0, 'sync'),
      (1, 3.0, 4.0, 'compute'), (1, 7.0, 1.0, 'wait'),
      (0, 8.0, 2.0, 'compute'),
      (1, 8.0, 2.0, 'down'),
  ]
  use = timeline.utilization(timeline.segments(speeds, infos), 2)
  np.testing.assert_allclose(use['compute'], [5 / 10, 6 / 10])
  np.testing.assert_allclose(use['sync'], [5 / 10, 1 / 10])
  np.testing.assert_allclose(use['down'], [0, 2 / 10])


def _timeline_of(algorithm, problem, data, cycles=6):
  state = algorithm.init(jax.random.PRNGKey(0))
  step = jax.jit(algorithm.cycle)
  infos = []
  for _ in range(cycles):
    state, info = step(state, data)
    infos.append(jax.device_get(info))
  return timeline.segments(problem.profile.speed_N, infos), sum(
      float(i.cycle_time) for i in infos)


@pytest.mark.parametrize('name', ['hadfl', 'ddp'])
def test_a_run_tiles_every_devices_time(name):
  problem, data = fixtures.make_tiny_problem()
  algorithm = (fixtures.make_hadfl(problem)[0] if name == 'hadfl'
               else algorithms.build(name, problem))
  segs, total = _timeline_of(algorithm, problem, data)
  for device in range(problem.num_devices):
    mine = [s for s in segs if s.device == device]
    assert sum(s.duration for s in mine) == pytest.approx(total, rel=1e-5)
    for a, b in zip(mine, mine[1:]):
      assert b.start == pytest.approx(a.start + a.duration, rel=1e-6, abs=1e-9)
  use = timeline.utilization(segs, problem.num_devices)
  if name == 'ddp':  # A barrier: the fastest device waits for the slowest (speeds 1..4).
    assert use['wait'][0] < 1e-6 and use['wait'][3] > 0.4
    assert use['compute'][3] == pytest.approx(use['compute'][0] / 4, rel=1e-5)
  else:  # HADFL: everybody computes most of the time, whatever its speed.
    assert use['compute'].min() > 0.5
