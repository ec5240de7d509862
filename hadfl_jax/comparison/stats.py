"""Statistics over seeds: means with 95% confidence intervals, paired speedups.

A comparison runs every grid point on every seed of ``compare.seeds`` (each seed draws its
own data partition, initialisation, device profile and every random event). What it
reports of a point is a mean over those seeds with a two-sided 95% confidence interval
from Student's t distribution (``mean +- t_{0.975, n-1} * sd / sqrt(n)``, ``sd`` with
``n - 1`` degrees of freedom); one seed gives no interval.

Time to target: a seed whose run never reached the target counts as its run length (the
simulated time it ran), so the mean is then a lower bound and is marked so. HADFL's speedup
over a baseline is the mean of the per-seed ratios TTA(baseline, s) / TTA(HADFL, s) over
the seeds where HADFL reached the target (paired: both runs of a ratio share the seed's
partition, initialisation and profile); a ratio whose baseline never reached the target
is a lower bound (its run length over HADFL's time), and so is the mean.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
  """``{'mean', 'ci95': [low, high] or None, 'n'}`` of ``values`` (see the module doc).

  Raises:
    ValueError: ``values`` is empty or holds a NaN.
  """
  x = np.asarray(values, np.float64)
  if x.size == 0 or np.isnan(x).any():
    raise ValueError(f'a mean and confidence interval need finite values, got {list(values)}')
  mean = float(x.mean())
  if x.size < 2:
    return {'mean': mean, 'ci95': None, 'n': int(x.size)}
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1)
               / math.sqrt(x.size))
  return {'mean': mean, 'ci95': [mean - half, mean + half], 'n': int(x.size)}


def time_to_target(ttas: Sequence[float | None], run_lengths: Sequence[float]) -> dict:
  """Per-seed times to target (``None``: not reached) -> their summary.

  Returns ``mean`` and ``ci95`` (over every seed, an unreached one counting as its run
  length), ``reached`` (how many seeds reached the target), ``n``, ``lower_bound`` (some
  seed did not reach it) and ``per_seed``; ``mean`` is ``None`` when no seed reached it.
  """
  values = [t if t is not None else length for t, length in zip(ttas, run_lengths)]
  reached = sum(t is not None for t in ttas)
  out = mean_ci(values) if reached else {'mean': None, 'ci95': None, 'n': len(values)}
  return dict(out, reached=reached, lower_bound=reached < len(values), per_seed=list(ttas))


def ratio(hadfl_tta: float | None, other_tta: float | None, other_length: float) -> dict:
  """One seed's speedup TTA(other) / TTA(HADFL): ``{'value', 'lower_bound'}``.

  ``value`` is ``None`` when HADFL did not reach the target; a lower bound (the other's run
  length over HADFL's time) when only HADFL did.
  """
  if hadfl_tta is None:
    return {'value': None, 'lower_bound': False}
  if other_tta is None:
    return {'value': other_length / hadfl_tta, 'lower_bound': True}
  return {'value': other_tta / hadfl_tta, 'lower_bound': False}


def paired_speedup(hadfl_ttas: Sequence[float | None], other_ttas: Sequence[float | None],
                   other_lengths: Sequence[float]) -> dict:
  """HADFL's speedup over one baseline from seed-aligned times (see the module doc).

  Returns ``mean``, ``ci95`` and ``n`` over the seeds where HADFL reached the target
  (``mean`` ``None`` when it never did), ``lower_bound`` and ``per_seed`` (each seed's
  :func:`ratio`).
  """
  per_seed = [ratio(h, o, n) for h, o, n in zip(hadfl_ttas, other_ttas, other_lengths)]
  values = [r['value'] for r in per_seed if r['value'] is not None]
  out = mean_ci(values) if values else {'mean': None, 'ci95': None, 'n': 0}
  return dict(out, lower_bound=any(r['lower_bound'] for r in per_seed), per_seed=per_seed)


def fmt_estimate(est: dict, digits: int = 2, unit: str = '') -> str:
  """``'2.31 ± 0.40'`` (the CI's half width), ``'>= '`` for a lower bound; without a mean,
  ``'not reached'`` (a time to target that no seed reached) or ``'n/a'``."""
  if est.get('mean') is None:
    return 'not reached' if 'reached' in est else 'n/a'
  text = f'{">= " if est.get("lower_bound") else ""}{est["mean"]:.{digits}f}{unit}'
  if est.get('ci95'):
    text += f' ± {(est["ci95"][1] - est["ci95"][0]) / 2:.{digits}f}{unit}'
  return text
