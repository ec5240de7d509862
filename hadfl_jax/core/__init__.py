"""The engine: pure, vmapped pieces every algorithm is built from (no data code).

* :mod:`~hadfl_jax.core.local`: stacked device states, the per-device step, the masked,
  bucketed local-training loop; :mod:`~hadfl_jax.core.engine`: the engine settings, the
  :class:`LocalTrainer`, faults and jitter (:func:`environment`), the shared
  train-then-mix cycle and the optimizer-state rules.
* :mod:`~hadfl_jax.core.selection` (selection rules, Gumbel-top-K draws),
  :mod:`~hadfl_jax.core.mixing` (sparse group and neighbour mixing, weight rules,
  stochasticity checks, spectral gaps), :mod:`~hadfl_jax.core.budgets`,
  :mod:`~hadfl_jax.core.clock`, :mod:`~hadfl_jax.core.faults`,
  :mod:`~hadfl_jax.core.profiles`.
* :mod:`~hadfl_jax.core.problem` (:class:`Problem`, :class:`CycleInfo`) and
  :mod:`~hadfl_jax.core.task` (:class:`Task`, the :data:`LOSSES` registry).
"""

from hadfl_jax.core.device_data import DeviceData
from hadfl_jax.core.engine import EngineConfig
from hadfl_jax.core.engine import environment
from hadfl_jax.core.engine import LocalTrainer
from hadfl_jax.core.engine import mix_devices
from hadfl_jax.core.engine import OPT_STATE_RULES
from hadfl_jax.core.engine import train_and_mix
from hadfl_jax.core.faults import FaultsConfig
from hadfl_jax.core.local import DeviceState
from hadfl_jax.core.local import init_devices
from hadfl_jax.core.local import masked_local_train
from hadfl_jax.core.mixing import apply as apply_mixing
from hadfl_jax.core.mixing import check_stochastic
from hadfl_jax.core.mixing import GroupMixing
from hadfl_jax.core.mixing import NeighbourMixing
from hadfl_jax.core.mixing import spectral_gap
from hadfl_jax.core.mixing import WEIGHTS as WEIGHT_RULES
from hadfl_jax.core.problem import CycleInfo
from hadfl_jax.core.problem import Problem
from hadfl_jax.core.selection import RULES as SELECTION_RULES
from hadfl_jax.core.task import LOSSES
from hadfl_jax.core.task import Task

__all__ = [
    'CycleInfo', 'DeviceData', 'DeviceState', 'EngineConfig', 'FaultsConfig', 'GroupMixing',
    'LOSSES', 'LocalTrainer', 'NeighbourMixing', 'OPT_STATE_RULES', 'Problem',
    'SELECTION_RULES', 'Task', 'WEIGHT_RULES', 'apply_mixing', 'check_stochastic',
    'environment', 'init_devices', 'masked_local_train', 'mix_devices', 'spectral_gap',
    'train_and_mix',
]
