"""Algorithms: HADFL and the baselines it is measured against, one module each.

Each module exports ``Config``, ``make`` (and its ``State``) and registers itself in
:data:`ALGORITHMS` (see :mod:`hadfl_jax.algorithms.base`). Adding one is a module of
one's own with its ``register`` line; the built-ins are imported here, one line each.
"""

from hadfl_jax.algorithms import base
from hadfl_jax.algorithms.base import ALGORITHMS
from hadfl_jax.algorithms.base import Algorithm
from hadfl_jax.algorithms.base import apply_grid_point
from hadfl_jax.algorithms.base import build
from hadfl_jax.algorithms.base import config_of
from hadfl_jax.algorithms.base import GridContext
from hadfl_jax.algorithms.base import grid_knobs
from hadfl_jax.algorithms.base import names
from hadfl_jax.algorithms.base import register

# The built-ins (each registers itself).
from hadfl_jax.algorithms import hadfl  # isort: skip
from hadfl_jax.algorithms import ddp  # isort: skip
from hadfl_jax.algorithms import dfedavg  # isort: skip
from hadfl_jax.algorithms import fedavg  # isort: skip
from hadfl_jax.algorithms import dpsgd  # isort: skip
from hadfl_jax.algorithms import adpsgd  # isort: skip
from hadfl_jax.algorithms import prague  # isort: skip
from hadfl_jax.algorithms import fedbuff  # isort: skip

__all__ = ['ALGORITHMS', 'Algorithm', 'GridContext', 'apply_grid_point', 'base', 'build',
           'config_of', 'grid_knobs', 'names', 'register']
