"""Algorithms: HADFL and the baselines it is compared with, behind one interface.

See :mod:`hadfl_jax.algorithms.base` for the interface the run loop drives.
"""

from __future__ import annotations

from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import hadfl

ALGORITHMS = ('hadfl',)


def make_algorithm(config, problem: base.Problem) -> base.Algorithm:
  """The algorithm named by ``config.algorithm``, with its options from the config."""
  if config.algorithm == 'hadfl':
    return hadfl.Hadfl(problem, hadfl.HadflOptions.from_config(config))
  raise ValueError(f'config.algorithm must be one of {ALGORITHMS}, got {config.algorithm!r}')
