"""Statistics over seeds: hand-computed intervals, plain-loop references, paired speedups,
ranking by the mean and the mean curves of the plots."""

import math

import numpy as np
import pytest

from hadfl_jax import compare
from hadfl_jax.comparison import report
from hadfl_jax.comparison import stats

# Student's t quantiles t_{0.975, df} from a printed table, df = 1..4.
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764}


def _loop_mean_ci(values):
  """A plain-loop reference: mean, sample standard deviation, table t quantile."""
  n = len(values)
  mean = 0.0
  for v in values:
    mean += v
  mean /= n
  ss = 0.0
  for v in values:
    ss += (v - mean) ** 2
  half = T_975[n - 1] * math.sqrt(ss / (n - 1)) / math.sqrt(n)
  return mean, half


def test_mean_ci_by_hand():
  # 1..5: mean 3, sd sqrt(2.5) = 1.5811, t_{0.975,4} = 2.7764: half width 1.9632.
  est = stats.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
  assert est['mean'] == 3.0 and est['n'] == 5
  assert est['ci95'] == pytest.approx([3.0 - 1.9632, 3.0 + 1.9632], abs=1e-3)
  # One value: no interval. Two equal values: a zero-width one.
  assert stats.mean_ci([2.5]) == {'mean': 2.5, 'ci95': None, 'n': 1}
  assert stats.mean_ci([2.0, 2.0])['ci95'] == [2.0, 2.0]


@pytest.mark.parametrize('values', [[0.3, 1.7], [5.0, 1.0, 2.5], [1.1, 0.9, 1.3, 4.2],
                                    [2.0, 2.2, 1.9, 2.4, 2.05]])
def test_mean_ci_matches_the_loop_reference(values):
  mean, half = _loop_mean_ci(values)
  est = stats.mean_ci(values)
  assert est['mean'] == pytest.approx(mean)
  assert est['ci95'] == pytest.approx([mean - half, mean + half], rel=1e-4)


@pytest.mark.parametrize('bad', [[], [1.0, float('nan')]])
def test_mean_ci_refuses_empty_or_nan(bad):
  with pytest.raises(ValueError, match='finite values'):
    stats.mean_ci(bad)


def test_time_to_target_counts_a_miss_as_its_run_length():
  est = stats.time_to_target([2.0, None, 4.0], [2.0, 10.0, 4.0])
  assert est['mean'] == pytest.approx(16.0 / 3)  # (2 + 10 + 4) / 3: a lower bound.
  assert (est['reached'], est['n'], est['lower_bound']) == (2, 3, True)
  assert est['per_seed'] == [2.0, None, 4.0]
  assert stats.fmt_estimate(est).startswith('>= 5.33 ± ')
  none = stats.time_to_target([None, None], [10.0, 10.0])
  assert none['mean'] is None and none['reached'] == 0
  assert stats.fmt_estimate(none) == 'not reached'
  full = stats.time_to_target([1.0, 3.0], [1.0, 3.0])
  assert not full['lower_bound']
  assert stats.fmt_estimate(full) == f'2.00 ± {T_975[1] * math.sqrt(2) / math.sqrt(2):.2f}'


def test_paired_speedup_is_the_mean_of_per_seed_ratios():
  # Seed 0: 3 / 1. Seed 1: the baseline missed: its 30 s over HADFL's 2 s, a lower bound.
  # Seed 2: HADFL missed: no ratio.
  sp = stats.paired_speedup([1.0, 2.0, None], [3.0, None, 5.0], [3.0, 30.0, 5.0])
  assert [r['value'] for r in sp['per_seed']] == [3.0, 15.0, None]
  assert [r['lower_bound'] for r in sp['per_seed']] == [False, True, False]
  assert sp['mean'] == 9.0 and sp['n'] == 2 and sp['lower_bound']
  # Not the ratio of the means (4 / 1.5): pairs share a seed's partition and profile.
  sp = stats.paired_speedup([1.0, 2.0], [3.0, 5.0], [3.0, 5.0])
  assert sp['mean'] == pytest.approx((3.0 + 2.5) / 2) and not sp['lower_bound']
  assert stats.paired_speedup([None], [1.0], [1.0])['mean'] is None


def _record(tta, acc, sim):
  return compare.RunRecord(summary={'time_to_target_s': tta, 'final_consensus_accuracy': acc,
                                    'sim_time_s': sim}, history=(), wall_time_s=0.0)


def _point(lr, *records):
  return compare.PointRuns(point={'lr': lr}, seeds=tuple(range(len(records))),
                           records=tuple(records))


def test_points_are_ranked_by_their_mean_over_seeds_not_their_best_seed():
  # A's best seed (1.0) beats every seed of B, but B's mean is smaller.
  a = _point(0.1, _record(1.0, 0.95, 1.0), _record(9.0, 0.95, 9.0))
  b = _point(0.2, _record(3.0, 0.95, 3.0), _record(4.0, 0.95, 4.0))
  # C misses on one seed: it ranks after every point that reached on all seeds.
  c = _point(0.3, _record(0.5, 0.95, 0.5), _record(None, 0.9, 60.0))
  # D never reaches: by its mean final accuracy after C.
  d = _point(0.4, _record(None, 0.93, 60.0), _record(None, 0.92, 60.0))
  assert sorted([d, c, a, b], key=compare.rank_key) == [b, a, c, d]


def _loop_mean_curve(histories, grid):
  """Plain loops: each seed's last evaluation at or before x, then the mean over seeds."""
  means = []
  for x in grid:
    vals = []
    for h in histories:
      last = None
      for row in h:
        if row['sim_time_s'] <= x:
          last = row['consensus_accuracy']
      if last is not None:
        vals.append(last)
    means.append(sum(vals) / len(vals) if vals else float('nan'))
  return np.asarray(means)


def test_mean_curve_matches_the_loop_reference():
  rows = lambda pts: tuple({'sim_time_s': t, 'consensus_accuracy': a} for t, a in pts)
  histories = [rows([(1.0, 0.5), (2.0, 0.8), (3.0, 0.9)]),
               rows([(1.5, 0.6), (2.5, 0.95)])]  # Stopped at its target: carried on.
  grid = np.asarray([0.5, 1.0, 1.2, 1.5, 2.0, 2.7, 3.5])
  mean, half = report.mean_curve(histories, 'sim_time_s', grid)
  np.testing.assert_allclose(mean, _loop_mean_curve(histories, grid))
  # By hand at x = 2.7: seeds at 0.8 and 0.95, mean 0.875, half width t_1 * sd / sqrt 2.
  assert mean[5] == pytest.approx(0.875)
  assert half[5] == pytest.approx(T_975[1] * np.std([0.8, 0.95], ddof=1) / math.sqrt(2),
                                  rel=1e-4)
  assert np.isnan(mean[0]) and np.isnan(half[1])  # Before any / with one seed's value.
