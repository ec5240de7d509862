"""The algorithm interface and registry.

An algorithm is a module (HADFL's own, a baseline, or a researcher's) that exports

* ``Config``: a frozen :class:`hadfl_jax.typed_config.Section` of its options, the only
  place their defaults live; it checks itself with the same messages from Python and
  from the command line (``config.<name>`` is its section of a run config);
* ``make(problem, config, engine) -> Algorithm``: the pure functions of
  :class:`Algorithm` for one :class:`~hadfl_jax.core.problem.Problem`;
* optionally ``GRID_KNOBS`` and ``apply_grid_point(config, point, context)``: how the
  comparison's shared grid (``lr``, ``h``) maps onto its config (the learning rate is the
  problem's optimizer's and needs nothing; algorithms without local steps leave ``h``
  out of ``GRID_KNOBS``).

and registers itself in :data:`ALGORITHMS`, exactly as a researcher's module does::

  ALGORITHMS.register('gossip', sys.modules[__name__])

The run loop (:func:`hadfl_jax.train.run`) and the comparison drive any registered
algorithm through :func:`build` and :func:`apply_grid_point` alone, with no branch on its
name. Nothing in an algorithm depends on wall-clock time: a cycle reports simulated
seconds and bytes in a :class:`~hadfl_jax.core.problem.CycleInfo`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax

from hadfl_jax import typed_config as tc
from hadfl_jax.core import device_data
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import problem as problem_lib
from hadfl_jax.registry import Registry

PyTree = Any
# Kept importable from here: what every algorithm shares.
CycleInfo = problem_lib.CycleInfo
Problem = problem_lib.Problem
weighted_average = problem_lib.weighted_average


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """An algorithm built for one problem: four pure functions (as optax's
  ``GradientTransformation`` or fedjax's ``FederatedAlgorithm``).

  Attributes:
    name: the registered name.
    init: ``init(key) -> state``, a pytree whose device-indexed leaves have a leading N
      axis.
    cycle: ``cycle(state, data) -> (state, CycleInfo)``: one aggregation cycle (one round
      for round-based algorithms); pure, jitted once by the run loop, never retraced.
    device_params: ``device_params(state)``: the stacked per-device models (N, ...).
    consensus_params: ``consensus_params(state)``: the model that is evaluated
      (x_bar = sum_i n_i/n x_i for decentralized algorithms, the server's model for
      server algorithms).
    config: the typed config it was built with.
  """

  name: str
  init: Callable[[jax.Array], PyTree]
  cycle: Callable[[PyTree, device_data.DeviceData], tuple[PyTree, CycleInfo]]
  device_params: Callable[[PyTree], PyTree]
  consensus_params: Callable[[PyTree], PyTree]
  config: Any = None


@dataclasses.dataclass(frozen=True)
class GridContext:
  """What a grid point may depend on besides the point itself.

  Attributes:
    problem: the problem the comparison runs on.
    eval_interval_s: the comparison's evaluation interval in simulated seconds (an
      algorithm with long jitted cycles, like DDP, cuts them to about this length).
  """

  problem: Problem
  eval_interval_s: float


def _check_module(name: str, module) -> None:
  for attr in ('Config', 'make'):
    if not hasattr(module, attr):
      raise TypeError(f'algorithm {name!r}: {module!r} has no {attr!r}; an algorithm module '
                      'exports Config (a typed_config.Section) and make(problem, config, '
                      'engine)')
  if not (isinstance(module.Config, type) and issubclass(module.Config, tc.Section)):
    raise TypeError(f'algorithm {name!r}: Config must subclass typed_config.Section')


ALGORITHMS: Registry[types.ModuleType] = Registry('algorithm', _check_module)


def register(name: str, module) -> Any:
  """Registers an algorithm module (or any object with ``Config`` and ``make``)."""
  return ALGORITHMS.register(name, module)


def names() -> tuple[str, ...]:
  return ALGORITHMS.names()


def config_of(name: str, values: Mapping | None = None) -> tc.Section:
  """The typed config of algorithm ``name`` from its config section (None: defaults)."""
  return ALGORITHMS.get(name).Config.from_config(values, section=name)


def build(name: str, problem: Problem, config: tc.Section | Mapping | None = None,
          engine: engine_lib.EngineConfig | None = None) -> Algorithm:
  """Builds algorithm ``name`` on ``problem``.

  Args:
    name: a registered algorithm.
    problem: the problem.
    config: its typed ``Config``, or its section of a run config (None: defaults).
    engine: the engine settings (default: :class:`~hadfl_jax.core.engine.EngineConfig`).

  Raises:
    KeyError: an unregistered name.
    ConfigError: an invalid option, or one that does not fit N devices (e.g. K > N).
  """
  module = ALGORITHMS.get(name)
  if not isinstance(config, tc.Section):
    config = config_of(name, config)
  config.check_devices(problem.num_devices, f'{name}.')
  algorithm = module.make(problem, config, engine or engine_lib.EngineConfig())
  return dataclasses.replace(algorithm, name=name, config=config)


def grid_knobs(name: str) -> tuple[str, ...]:
  """The comparison's grid dimensions algorithm ``name`` uses (``lr`` always)."""
  return tuple(getattr(ALGORITHMS.get(name), 'GRID_KNOBS', ('lr',)))


def apply_grid_point(name: str, config: tc.Section, point: Mapping,
                     context: GridContext) -> tc.Section:
  """``config`` with the grid point's values other than ``lr`` (which sets the
  problem's optimizer): the algorithm's own ``apply_grid_point`` for ``h`` and the like,
  then any ``'<name>.<field>'`` overrides (an ablation's)."""
  module = ALGORITHMS.get(name)
  if hasattr(module, 'apply_grid_point'):
    config = module.apply_grid_point(config, point, context)
  overrides = {k.split('.', 1)[1]: v for k, v in point.items() if k.startswith(f'{name}.')}
  return config.replace(**overrides) if overrides else config
