"""hadfl_jax: heterogeneity-aware decentralized asynchronous federated learning in JAX.

The public API. The engine and the algorithms import no data code (no TensorFlow
Datasets); the run loop, the comparison and the data layer load on first use.

* Problems and algorithms: :class:`Problem`, :data:`ALGORITHMS`, :func:`build`,
  :class:`Algorithm`; the engine's pure pieces in :mod:`hadfl_jax.core`.
* Registries of everything a researcher may add (``docs/extending.md``):
  :data:`ALGORITHMS`, :data:`SELECTION_RULES`, :data:`WEIGHT_RULES`,
  :data:`OPT_STATE_RULES`, :data:`LOSSES`, :data:`MODELS`, :data:`OPTIMIZERS`,
  :data:`PARTITIONS`, :data:`GRAPHS`.
* Running: :func:`run` (any algorithm, any state), :func:`train_and_evaluate` (a config
  and a workdir), :mod:`compare` (``compare.compare``: every algorithm on one scenario),
  :class:`Evaluator`.
"""

from __future__ import annotations

import importlib
from typing import Any

from hadfl_jax import typed_config
from hadfl_jax.algorithms import ALGORITHMS
from hadfl_jax.algorithms import Algorithm
from hadfl_jax.algorithms import build
from hadfl_jax.algorithms.graphs import GRAPHS
from hadfl_jax.core import CycleInfo
from hadfl_jax.core import DeviceData
from hadfl_jax.core import EngineConfig
from hadfl_jax.core import FaultsConfig
from hadfl_jax.core import LocalTrainer
from hadfl_jax.core import LOSSES
from hadfl_jax.core import OPT_STATE_RULES
from hadfl_jax.core import Problem
from hadfl_jax.core import SELECTION_RULES
from hadfl_jax.core import Task
from hadfl_jax.core import WEIGHT_RULES
from hadfl_jax.evaluation import Evaluator
from hadfl_jax.models import MODELS
from hadfl_jax.optim import OPTIMIZERS
from hadfl_jax.registry import Registry
from hadfl_jax.typed_config import ConfigError

__version__ = '0.2.0'

# Loaded on first use: they import the data layer (TensorFlow Datasets).
_LAZY = {
    'run': ('hadfl_jax.train', 'run'),
    'train_and_evaluate': ('hadfl_jax.train', 'train_and_evaluate'),
    'build_setup': ('hadfl_jax.train', 'build_setup'),
    'PARTITIONS': ('hadfl_jax.data', 'PARTITIONS'),
}


def __getattr__(name: str) -> Any:
  if name == 'compare':  # The module: compare.compare(config, workdir), its report helpers.
    return importlib.import_module('hadfl_jax.compare')
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'ALGORITHMS', 'Algorithm', 'ConfigError', 'CycleInfo', 'DeviceData', 'EngineConfig',
    'Evaluator', 'FaultsConfig', 'GRAPHS', 'LOSSES', 'LocalTrainer', 'MODELS',
    'OPTIMIZERS', 'OPT_STATE_RULES', 'PARTITIONS', 'Problem', 'Registry', 'SELECTION_RULES', 'Task',
    'WEIGHT_RULES', '__version__', 'build', 'build_setup', 'compare', 'run',
    'train_and_evaluate', 'typed_config',
]
