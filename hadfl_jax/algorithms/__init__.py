"""Algorithms: HADFL and the baselines it is compared with, behind one interface.

See :mod:`hadfl_jax.algorithms.base` for the interface the run loop drives, and
:mod:`hadfl_jax.algorithms.baselines` for the baselines' exact definitions.
"""

from __future__ import annotations

from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import baselines
from hadfl_jax.algorithms import graphs
from hadfl_jax.algorithms import hadfl

ALGORITHMS = ('hadfl',) + baselines.BASELINES


def make_algorithm(config, problem: base.Problem) -> base.Algorithm:
  """The algorithm named by ``config.algorithm``, with its options from the config.

  ``hadfl`` reads ``config.hadfl``; the baselines (``ddp``, ``dfedavg``, ``fedavg``,
  ``dpsgd``) read ``config.baselines``; all read ``config.faults`` and ``config.profile``.
  """
  if config.algorithm == 'hadfl':
    return hadfl.Hadfl(problem, hadfl.HadflOptions.from_config(config))
  if config.algorithm in baselines.BASELINES:
    return baselines.make_baseline(config.algorithm, problem,
                                   baselines.BaselineOptions.from_config(config))
  raise ValueError(f'config.algorithm must be one of {ALGORITHMS}, got {config.algorithm!r}')
