"""Splitting a training set over N devices: IID, label skew and quantity skew.

Every kind first draws a device for each example (``assign_n``, vectorised numpy, one
``np.random.default_rng(seed)``), then :func:`_ensure_min_examples` moves examples from
the largest devices to those below ``min_examples``, deterministically and without
resampling, and one stable sort groups the examples by device. Nothing loops over
devices in Python, so N = 10,000 devices on 60,000 examples takes milliseconds (see
``benchmarks/partition_speed.py``); FL-bench's and many other Dirichlet partitioners
instead resample until every client is large enough, which gets slow with many clients.

Kinds (registered in :data:`PARTITIONS`; a partitioner of one's own is a function
``(labels, num_devices, rng, **options) -> device of every example`` registered there,
which gets the ``config.partition`` fields as options):

* ``iid``: a random permutation cut into N parts whose sizes differ by at most one.
* ``dirichlet``: label skew (Hsu, Qi and Brown 2019, "Measuring the effects of
  non-identical data distribution for federated visual classification"). For every
  class c, proportions p_c ~ Dirichlet(alpha * 1_N) over devices; the class's examples,
  shuffled, go to device i in the share p_c[i] (cumulative proportions rounded). Small
  alpha: each device sees few classes; large alpha: close to IID.
* ``shards``: the pathological non-IID split of McMahan et al. 2017 ("Communication-
  efficient learning of deep networks from decentralized data"): examples sorted by
  label are cut into N * k shards of (nearly) equal size, and every device is dealt k
  shards at random. Here a shard never straddles two classes (each class is cut into a
  number of shards proportional to its size), so a device holds at most k classes
  (unless the ``min_examples`` fix-up has to move examples, see below).
* ``quantity``: quantity skew: device sizes are ``n * q`` with q ~ Dirichlet(
  quantity_alpha * 1_N) (rounded), labels IID.

The fix-up for ``min_examples``: let d be the total number of examples missing on the
devices below ``min_examples``. The largest devices are cut down to a common level L
(the highest integer level that frees at least d examples, never below
``min_examples``), and the freed examples, chosen at random within each donor, fill up
the small devices in device order. Because ``n >= N * min_examples`` such a level exists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from hadfl_jax import typed_config as tc
from hadfl_jax.registry import Registry

Partitioner = Callable[..., np.ndarray]
PARTITIONS: Registry[Partitioner] = Registry('partitioner')


@dataclasses.dataclass(frozen=True)
class PartitionConfig(tc.Section):
  """How the training set is split over the devices (``config.partition``)."""

  SECTION = 'partition'

  kind: str = tc.choice('iid', PARTITIONS, doc='a partitioner of PARTITIONS')
  alpha: float = tc.number(0.5, low=0, low_open=True, doc='dirichlet: label skew')
  classes_per_device: int = tc.integer(2, low=1, doc='shards: classes per device')
  quantity_alpha: float = tc.number(1.0, low=0, low_open=True, doc='quantity: size skew')
  min_examples: int = tc.integer(1, low=1, doc='the fewest examples of a device')


def partition(
    labels: np.ndarray,
    num_devices: int,
    kind: str,
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_device: int = 2,
    quantity_alpha: float = 1.0,
    min_examples: int = 1,
    **options: Any,
) -> list[np.ndarray]:
  """Splits example indices over devices.

  Args:
    labels: int [n] class labels of the training set.
    num_devices: N, the number of devices.
    kind: a name registered in :data:`PARTITIONS`.
    seed: seed of the ``np.random.default_rng`` that makes every random choice.
    alpha: Dirichlet concentration of the label skew (``dirichlet``), > 0.
    classes_per_device: k, shards per device (``shards``), in [1, number of classes].
    quantity_alpha: Dirichlet concentration of the device sizes (``quantity``), > 0.
    min_examples: every device gets at least this many examples, >= 1.
    **options: more options for a partitioner of one's own.

  Returns:
    N sorted int64 index arrays, disjoint, whose union is ``range(n)``.

  Raises:
    ValueError: for an unknown kind, a parameter out of range, or
      ``num_devices * min_examples > n``.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be a 1-D integer array, got {labels.dtype} {labels.shape}')
  n = labels.shape[0]
  if kind not in PARTITIONS:
    raise ValueError(f'unknown partition kind {kind!r}: must be one of {PARTITIONS.names()}')
  _check_int('num_devices', num_devices, 1)
  _check_int('min_examples', min_examples, 1)
  _check_int('classes_per_device', classes_per_device, 1)
  _check_positive('alpha', alpha)
  _check_positive('quantity_alpha', quantity_alpha)
  if num_devices * min_examples > n:
    raise ValueError(
        f'{n} examples cannot give {num_devices} devices at least {min_examples} each '
        f'(num_devices * min_examples = {num_devices * min_examples} > {n})'
    )

  rng = np.random.default_rng(seed)
  assign_n = np.asarray(PARTITIONS.get(kind)(
      labels, num_devices, rng, alpha=alpha, classes_per_device=classes_per_device,
      quantity_alpha=quantity_alpha, **options), np.int64)
  if assign_n.shape != (n,) or (n and not 0 <= assign_n.min() <= assign_n.max() < num_devices):
    raise ValueError(f'partitioner {kind!r} must give a device in [0, {num_devices}) for each '
                     f'of the {n} examples')
  assign_n = _ensure_min_examples(assign_n, num_devices, min_examples, rng)
  return _group(assign_n, num_devices)


@PARTITIONS.register('iid')
def _iid(labels, num_devices, rng, **_):
  n = labels.shape[0]
  return _assign_by_size(rng.permutation(n), _equal_sizes(n, num_devices))


@PARTITIONS.register('dirichlet')
def _dirichlet_kind(labels, num_devices, rng, *, alpha, **_):
  return _dirichlet(labels, num_devices, float(alpha), rng)


@PARTITIONS.register('shards')
def _shards_kind(labels, num_devices, rng, *, classes_per_device, **_):
  return _shards(labels, num_devices, classes_per_device, rng)


@PARTITIONS.register('quantity')
def _quantity(labels, num_devices, rng, *, quantity_alpha, **_):
  n = labels.shape[0]
  q_N = rng.dirichlet(np.full(num_devices, float(quantity_alpha)))
  return _assign_by_size(rng.permutation(n), _round_shares(q_N, n))


def _check_int(name: str, value: Any, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')


def _check_positive(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
      math.isfinite(value) and value > 0):
    raise ValueError(f'{name} must be a finite number > 0, got {value!r}')


def _equal_sizes(n: int, num_devices: int) -> np.ndarray:
  """Sizes that differ by at most one, the larger ones first."""
  return n // num_devices + (np.arange(num_devices) < n % num_devices)


def _round_shares(p_N: np.ndarray, n: int) -> np.ndarray:
  """Integer sizes summing to n, from rounded cumulative shares (monotone, exact)."""
  bounds = np.rint(np.cumsum(p_N) * n).astype(np.int64)
  bounds[-1] = n
  return np.diff(bounds, prepend=0)


def _assign_by_size(order_n: np.ndarray, size_N: np.ndarray) -> np.ndarray:
  """Device of each example: ``order_n``'s first ``size_N[0]`` go to device 0, etc."""
  assign_n = np.empty(order_n.shape[0], np.int64)
  assign_n[order_n] = np.repeat(np.arange(size_N.shape[0]), size_N)
  return assign_n


def _class_sorted(labels: np.ndarray, rng: np.random.Generator):
  """Examples grouped by class, in random order within a class.

  Returns:
    ``(order_n, class_n, counts_C)``: example indices grouped by class, the class index
    (into the sorted distinct labels) at each position, and the size of every class.
  """
  _, class_of_example, counts_C = np.unique(labels, return_inverse=True, return_counts=True)
  perm = rng.permutation(labels.shape[0])
  order_n = perm[np.argsort(class_of_example[perm], kind='stable')]
  return order_n, class_of_example[order_n], counts_C


def _dirichlet(labels: np.ndarray, num_devices: int, alpha: float,
               rng: np.random.Generator) -> np.ndarray:
  """Label skew: class c's examples spread over devices by p_c ~ Dir(alpha)."""
  order_n, _, counts_C = _class_sorted(labels, rng)
  p_CxN = rng.dirichlet(np.full(num_devices, alpha), size=counts_C.shape[0])
  bounds_CxN = np.rint(np.cumsum(p_CxN, axis=1) * counts_C[:, None]).astype(np.int64)
  bounds_CxN[:, -1] = counts_C
  size_CxN = np.diff(bounds_CxN, axis=1, prepend=0)
  # Class blocks follow each other in order_n; within a block, devices 0..N-1 in turn.
  device_of_block = np.tile(np.arange(num_devices), counts_C.shape[0])
  assign_n = np.empty(labels.shape[0], np.int64)
  assign_n[order_n] = np.repeat(device_of_block, size_CxN.ravel())
  return assign_n


def _shards_per_class(counts_C: np.ndarray, num_shards: int) -> np.ndarray:
  """Shards per class: proportional to class size (largest remainder), each >= 1.

  Needs ``C <= num_shards <= n``; the result sums to ``num_shards`` and never exceeds a
  class's size. The loop runs over classes, at most C times.
  """
  quota_C = counts_C * (num_shards / counts_C.sum())
  shards_C = np.maximum(np.floor(quota_C).astype(np.int64), 1)
  remainder = num_shards - shards_C.sum()
  if remainder > 0:  # Largest fractional parts first, ties by class index.
    frac_C = np.where(shards_C < counts_C, quota_C - np.floor(quota_C), -1.0)
    shards_C[np.argsort(-frac_C, kind='stable')[:remainder]] += 1
  while shards_C.sum() > num_shards:  # Only after raising tiny classes to 1 shard.
    shards_C[np.argmax(shards_C)] -= 1
  return shards_C


def _shards(labels: np.ndarray, num_devices: int, k: int,
            rng: np.random.Generator) -> np.ndarray:
  """McMahan et al.'s shards: N * k single-class shards, k dealt to every device."""
  order_n, class_n, counts_C = _class_sorted(labels, rng)
  num_classes, n = counts_C.shape[0], labels.shape[0]
  num_shards = num_devices * k
  if k > num_classes:
    raise ValueError(
        f'classes_per_device={k} must be in [1, {num_classes}] (the number of classes)')
  if num_shards < num_classes:
    raise ValueError(
        f'shards: num_devices * classes_per_device = {num_shards} shards cannot cover '
        f'{num_classes} classes with at most {k} classes per device')
  if num_shards > n:
    raise ValueError(f'shards: {num_shards} shards need at least as many examples, got {n}')
  shards_C = _shards_per_class(counts_C, num_shards)
  # Position of every example within its class, then its shard: class c's n_c examples
  # are cut into shards_C[c] consecutive pieces of floor/ceil(n_c / shards_C[c]).
  class_start_C = np.cumsum(counts_C) - counts_C
  rank_n = np.arange(n) - class_start_C[class_n]
  shard_n = (np.cumsum(shards_C) - shards_C)[class_n] + rank_n * shards_C[class_n] // counts_C[class_n]
  device_of_shard = rng.permutation(np.repeat(np.arange(num_devices), k))
  assign_n = np.empty(n, np.int64)
  assign_n[order_n] = device_of_shard[shard_n]
  return assign_n


def _ensure_min_examples(assign_n: np.ndarray, num_devices: int, min_examples: int,
                         rng: np.random.Generator) -> np.ndarray:
  """Moves examples from the largest devices until every device has ``min_examples``."""
  count_N = np.bincount(assign_n, minlength=num_devices)
  need_N = np.maximum(min_examples - count_N, 0)
  deficit = int(need_N.sum())
  if deficit == 0:
    return assign_n
  # Highest level L >= min_examples with sum(max(count - L, 0)) >= deficit (bisection).
  lo, hi = min_examples, int(count_N.max())
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if np.maximum(count_N - mid, 0).sum() >= deficit:
      lo = mid
    else:
      hi = mid - 1
  take_N = np.maximum(count_N - lo, 0)
  # Cutting every donor to L frees `excess` more than needed: the first donors (in
  # device order) keep one more example each.
  excess = int(take_N.sum()) - deficit
  take_N[np.flatnonzero(take_N)[:excess]] -= 1
  # Within each device, a random order; a donor gives its last take_N[i] examples.
  order_n = np.lexsort((rng.random(assign_n.shape[0]), assign_n))
  device_sorted = assign_n[order_n]
  start_N = np.cumsum(count_N) - count_N
  rank_n = np.arange(assign_n.shape[0]) - start_N[device_sorted]
  moved = order_n[rank_n >= (count_N - take_N)[device_sorted]]
  assign_n = assign_n.copy()
  assign_n[moved] = np.repeat(np.arange(num_devices), need_N)
  return assign_n


def _group(assign_n: np.ndarray, num_devices: int) -> list[np.ndarray]:
  """Example indices of every device, ascending, from the device of each example."""
  order_n = np.argsort(assign_n, kind='stable')
  count_N = np.bincount(assign_n, minlength=num_devices)
  return np.split(order_n.astype(np.int64), np.cumsum(count_N)[:-1])


def partition_report(labels: np.ndarray, parts: list[np.ndarray],
                     num_classes: int) -> dict[str, Any]:
  """Examples and label histogram of every device, and a summary.

  Args:
    labels: int [n] labels of the partitioned set.
    parts: the index arrays from :func:`partition`.
    num_classes: the number of classes C.

  Returns:
    A JSON-serialisable dict:

    * ``devices``: one ``{'count': int, 'histogram': [C ints]}`` per device;
    * ``summary``: ``num_devices``, ``num_examples``, ``min``/``mean``/``max``/``std``
      examples per device, ``classes_min``/``classes_mean``/``classes_max`` (classes a
      device holds), and ``label_tv_mean``: the mean total-variation distance between a
      device's label distribution and the global one (0 for a perfectly IID split,
      up to 1 for disjoint label sets).
  """
  labels = np.asarray(labels)
  num_devices = len(parts)
  count_N = np.asarray([len(p) for p in parts], np.int64)
  device_n = np.repeat(np.arange(num_devices), count_N)
  all_idx = np.concatenate(parts) if num_devices else np.zeros((0,), np.int64)
  hist_NxC = np.bincount(
      device_n * num_classes + labels[all_idx], minlength=num_devices * num_classes
  ).reshape(num_devices, num_classes)
  global_C = hist_NxC.sum(0) / max(1, count_N.sum())
  local_NxC = hist_NxC / np.maximum(count_N, 1)[:, None]
  tv_N = 0.5 * np.abs(local_NxC - global_C).sum(1)
  classes_N = (hist_NxC > 0).sum(1)
  return {
      'devices': [
          {'count': int(c), 'histogram': h.tolist()} for c, h in zip(count_N, hist_NxC)
      ],
      'summary': {
          'num_devices': num_devices,
          'num_examples': int(count_N.sum()),
          'min': int(count_N.min()),
          'mean': float(count_N.mean()),
          'max': int(count_N.max()),
          'std': float(count_N.std()),
          'classes_min': int(classes_N.min()),
          'classes_mean': float(classes_N.mean()),
          'classes_max': int(classes_N.max()),
          'label_tv_mean': float(tv_N.mean()),
      },
  }


def partition_table(report: dict[str, Any], max_rows: int = 20) -> str:
  """Formats a :func:`partition_report` as a text table, one row per device.

  Args:
    report: from :func:`partition_report`.
    max_rows: with more devices than this, only the first and last ``max_rows // 2``
      are shown.

  Returns:
    The table, with the summary as its last line.
  """
  devices = report['devices']
  num_classes = len(devices[0]['histogram']) if devices else 0
  width = max([len(str(d['count'])) for d in devices] + [5])
  header = f'{"device":>6}  {"count":>{width}}  ' + ' '.join(
      f'{c:>{width}}' for c in range(num_classes))
  rows = [header, '-' * len(header)]
  shown = list(range(len(devices)))
  if len(devices) > max_rows:
    shown = shown[:max_rows // 2] + [-1] + shown[-(max_rows // 2):]
  for i in shown:
    if i < 0:
      rows.append(f'{"...":>6}')
      continue
    d = devices[i]
    rows.append(f'{i:>6}  {d["count"]:>{width}}  ' + ' '.join(
        f'{h:>{width}}' for h in d['histogram']))
  s = report['summary']
  rows.append(
      f'{s["num_devices"]} devices, {s["num_examples"]} examples; per device min '
      f'{s["min"]} mean {s["mean"]:.1f} max {s["max"]}; classes per device min '
      f'{s["classes_min"]} mean {s["classes_mean"]:.2f} max {s["classes_max"]}; '
      f'label TV distance mean {s["label_tv_mean"]:.3f}')
  return '\n'.join(rows)
