"""Times :func:`hadfl_jax.data.partition` for many devices on 60,000 labels.

Run from the repository root::

  python -m benchmarks.partition_speed              # MNIST-sized synthetic labels
  python -m benchmarks.partition_speed --repeats 5 --num_devices 8 100 10000

Prints the best of ``--repeats`` wall times per kind and number of devices, and the
smallest and largest device. Synthetic labels with MNIST's class counts stand in for
MNIST's labels: a partition depends on the labels only through their classes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hadfl_jax import data

MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_devices', type=int, nargs='+', default=[8, 100, 1000, 10000])
  parser.add_argument('--kinds', nargs='+', default=list(data.PARTITIONS.names()))
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--alpha', type=float, default=0.5)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  labels = rng.permutation(np.repeat(np.arange(10), MNIST_TRAIN_COUNTS)).astype(np.int32)
  print(f'{len(labels)} labels, best of {args.repeats}')
  print(f'{"kind":>10} {"devices":>8} {"seconds":>9} {"min":>6} {"max":>6}')
  for kind in args.kinds:
    for num_devices in args.num_devices:
      best = float('inf')
      for seed in range(args.repeats):
        start = time.perf_counter()
        parts = data.partition(labels, num_devices, kind, seed=seed, alpha=args.alpha)
        best = min(best, time.perf_counter() - start)
      sizes = [len(p) for p in parts]
      print(f'{kind:>10} {num_devices:>8} {best:>9.4f} {min(sizes):>6} {max(sizes):>6}')


if __name__ == '__main__':
  main()
