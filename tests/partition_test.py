"""Partitions: coverage, determinism, skew, minimum sizes, hand-checkable cases, scale."""

import json
import time

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from hadfl_jax import data
from hadfl_jax.data import partitioning


def _labels(n=2000, num_classes=10, seed=0):
  return np.random.default_rng(seed).integers(0, num_classes, n).astype(np.int32)


def _check_cover(parts, n):
  """Every example on exactly one device; indices sorted within a device."""
  all_idx = np.concatenate(parts)
  assert all_idx.shape == (n,)
  np.testing.assert_array_equal(np.sort(all_idx), np.arange(n))
  for p in parts:
    assert p.dtype == np.int64
    assert np.all(np.diff(p) > 0)


@pytest.mark.parametrize('kind', data.PARTITIONS.names())
def test_cover_determinism_and_seed(kind):
  labels = _labels()
  parts = data.partition(labels, 20, kind, seed=3)
  assert len(parts) == 20
  _check_cover(parts, len(labels))
  again = data.partition(labels, 20, kind, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(parts, again))
  other = data.partition(labels, 20, kind, seed=4)
  assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_by_hand():
  parts = data.partition(np.zeros(10, np.int32), 3, 'iid', seed=0)
  assert [len(p) for p in parts] == [4, 3, 3]
  _check_cover(parts, 10)


def test_shards_by_hand():
  """Two classes, two devices, one shard each: each device holds exactly one class."""
  labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
  parts = data.partition(labels, 2, 'shards', seed=0, classes_per_device=1)
  assert sorted(p.tolist() for p in parts) == [[0, 2, 4, 6], [1, 3, 5, 7]]


@pytest.mark.parametrize('k', [1, 2, 3])
def test_shards_give_at_most_k_classes(k):
  labels = _labels(6000)
  parts = data.partition(labels, 100, 'shards', seed=0, classes_per_device=k)
  _check_cover(parts, len(labels))
  assert max(len(np.unique(labels[p])) for p in parts) <= k
  # Shards have equal sizes up to rounding: 6000 / 100k examples each, within a class.
  sizes = np.array([len(p) for p in parts])
  assert sizes.min() >= k * (6000 // (100 * k)) * 0.9


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_not():
  labels = _labels(6000)

  def tv(kind, **kw):
    parts = data.partition(labels, 10, kind, seed=0, **kw)
    return data.partition_report(labels, parts, 10)['summary']['label_tv_mean']

  assert tv('dirichlet', alpha=0.05) > 0.6
  assert tv('dirichlet', alpha=1000.0) < 0.05
  assert tv('iid') < 0.05
  assert tv('shards', classes_per_device=2) > 0.75  # Exactly 0.8 for 2 of 10 equal classes.


def test_quantity_skews_sizes_not_labels():
  labels = _labels(6000)
  parts = data.partition(labels, 10, 'quantity', seed=0, quantity_alpha=0.3)
  summary = data.partition_report(labels, parts, 10)['summary']
  assert summary['max'] > 5 * summary['min']
  big = max(parts, key=len)
  hist = np.bincount(labels[big], minlength=10) / len(big)
  assert np.abs(hist - 0.1).max() < 0.05


@pytest.mark.parametrize('kind', data.PARTITIONS.names())
def test_min_examples_respected(kind):
  labels = _labels(1000)
  parts = data.partition(labels, 50, kind, seed=1, alpha=0.01, quantity_alpha=0.01,
                         classes_per_device=1, min_examples=15)
  _check_cover(parts, 1000)
  assert min(len(p) for p in parts) >= 15


def test_min_examples_fix_up_by_hand():
  """Counts [5, 4, 0, 1], min 2: 3 missing; the two largest are cut to level 3."""
  assign = np.array([0] * 5 + [1] * 4 + [3])
  fixed = partitioning._ensure_min_examples(assign, 4, 2, np.random.default_rng(0))
  assert np.bincount(fixed, minlength=4).tolist() == [3, 3, 2, 2]
  # Only donors' examples moved, and only as many as needed.
  assert np.sum(fixed != assign) == 3
  assert set(np.flatnonzero(fixed != assign)) <= set(range(9))


def test_min_examples_fix_up_frees_exactly_what_is_needed():
  """Counts [6, 0, 0], min 2: device 0 keeps 2, the others get 2 each."""
  fixed = partitioning._ensure_min_examples(np.zeros(6, np.int64), 3, 2,
                                            np.random.default_rng(0))
  assert np.bincount(fixed, minlength=3).tolist() == [2, 2, 2]


@pytest.mark.parametrize('kwargs,message', [
    (dict(kind='nope'), 'unknown partition kind'),
    (dict(num_devices=0), 'num_devices must be an integer >= 1'),
    (dict(num_devices=11, min_examples=1), 'num_devices \\* min_examples = 11 > 10'),
    (dict(min_examples=0), 'min_examples must be an integer >= 1'),
    (dict(alpha=0.0), 'alpha must be a finite number > 0'),
    (dict(alpha=float('nan')), 'alpha must be a finite number > 0'),
    (dict(quantity_alpha=-1.0), 'quantity_alpha must be a finite number > 0'),
    (dict(kind='shards', classes_per_device=0), 'classes_per_device must be an integer >= 1'),
    (dict(kind='shards', classes_per_device=3), 'classes_per_device=3 must be in \\[1, 2\\]'),
    (dict(kind='shards', num_devices=1, classes_per_device=1), '1 shards cannot cover 2'),
])
def test_invalid_arguments(kwargs, message):
  args = dict(labels=np.array([0, 1] * 5), num_devices=2, kind='iid', seed=0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    data.partition(**args)


def test_labels_must_be_integers():
  with pytest.raises(ValueError, match='1-D integer'):
    data.partition(np.zeros(10, np.float32), 2, 'iid', seed=0)


@pytest.mark.parametrize('kind', data.PARTITIONS.names())
def test_ten_thousand_devices(kind):
  labels = _labels(60000)
  start = time.perf_counter()
  parts = data.partition(labels, 10000, kind, seed=0, alpha=0.5)
  elapsed = time.perf_counter() - start
  _check_cover(parts, 60000)
  assert min(len(p) for p in parts) >= 1
  assert elapsed < 5.0  # About 30 ms here; a loop over devices would take seconds.


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    num_classes=st.integers(1, 6),
    num_devices=st.integers(1, 40),
    kind=st.sampled_from(data.PARTITIONS.names()),
    min_examples=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_cover_and_minimum(n, num_classes, num_devices, kind, min_examples, seed):
  labels = np.random.default_rng(seed).integers(0, num_classes, n)
  k = min(2, len(np.unique(labels)))
  try:
    parts = data.partition(labels, num_devices, kind, seed=seed, alpha=0.1,
                           classes_per_device=k, quantity_alpha=0.1,
                           min_examples=min_examples)
  except ValueError:
    # Only the documented impossibilities.
    assert num_devices * min_examples > n or (
        kind == 'shards' and not len(np.unique(labels)) <= num_devices * k <= n)
    return
  assert len(parts) == num_devices
  _check_cover(parts, n)
  assert min(len(p) for p in parts) >= min_examples


def test_report_by_hand():
  labels = np.array([0, 0, 1, 2, 2, 2])
  parts = [np.array([0, 1]), np.array([2, 3, 4, 5])]
  report = data.partition_report(labels, parts, 3)
  assert report['devices'] == [{'count': 2, 'histogram': [2, 0, 0]},
                               {'count': 4, 'histogram': [0, 1, 3]}]
  summary = report['summary']
  assert (summary['min'], summary['mean'], summary['max']) == (2, 3.0, 4)
  assert (summary['classes_min'], summary['classes_max']) == (1, 2)
  # Global (2, 1, 3) / 6; device 0 (1, 0, 0): TV = 2/3; device 1 (0, 1/4, 3/4): TV = 1/3.
  assert summary['label_tv_mean'] == pytest.approx(0.5)
  json.dumps(report)
  table = data.partition_table(report)
  assert table.splitlines()[2].split() == ['0', '2', '2', '0', '0']
  assert '2 devices, 6 examples' in table


def test_table_elides_many_devices():
  labels = _labels(1000)
  table = data.partition_table(data.partition_report(
      labels, data.partition(labels, 100, 'iid', seed=0), 10), max_rows=6)
  assert len(table.splitlines()) == 2 + 3 + 1 + 3 + 1
