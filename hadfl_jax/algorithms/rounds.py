"""What the round-based baselines share (``docs/spec.md``, "Baselines").

Common rules (documented choices):

* Faults: a device is down in a round with probability ``faults.p_drop`` (or by the
  trace), as in HADFL (:func:`hadfl_jax.core.engine.environment`). A down device does no
  steps; aggregations run over the up devices (D-PSGD: Metropolis-Hastings weights of the
  subgraph of up devices). A down device resumes from its own model (DDP: from the
  common model).
* Speed jitter: true speeds s_i exp(sigma z_i) per round, as in HADFL; a barrier waits
  for the slowest true speed. A round in which nobody trains (every device down) lasts
  its nominal compute time, H at the slowest speed (DDP: one step per step), so that
  simulated time always advances.
* Optimizer state (``opt_state``, :data:`hadfl_jax.core.engine.OPT_STATE_RULES`):
  ``average`` mixes optimizer states with the same weights as the models (the default,
  as HADFL's), ``keep`` keeps each device's own, ``reset`` starts a fresh one after every
  aggregation. Bytes count the models only, as HADFL's clock does.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from hadfl_jax.algorithms import base
from hadfl_jax.core import clock
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import local


@flax.struct.dataclass
class State:
  """State of a round-based baseline.

  Attributes:
    devices: stacked device states.
    cycle: index of the next round.
    key: raw PRNG key of the coordinator (faults, jitter, client sampling).
    server: a server's model and optimizer state ``(params, opt_state)`` (FedAvg);
      ``()`` for decentralized baselines.
  """

  devices: local.DeviceState
  cycle: jax.Array
  key: jax.Array
  server: Any = ()


def init(problem: base.Problem, key: jax.Array) -> State:
  device_key, coord_key = jax.random.split(key)
  return State(devices=local.init_devices(device_key, problem.init_params, problem.optimizer,
                                          problem.num_devices),
               cycle=jnp.zeros((), jnp.int32), key=coord_key)


def draws(problem: base.Problem, state) -> tuple[jax.Array, jax.Array, jax.Array]:
  """This round's up mask, true speeds and a key for the algorithm's own draws."""
  k_fault, k_jitter, k_own = jax.random.split(jax.random.fold_in(state.key, state.cycle), 3)
  up_N, speed_N = engine_lib.environment(problem, k_fault, k_jitter, state.cycle)
  return up_N, speed_N, k_own


def barrier(budgets_N, speed_N, member_N, idle_steps=None) -> jax.Array:
  """The slowest member's compute time.

  A round with no member (every device down) still lasts: ``idle_steps`` at the slowest
  device's speed, the round's nominal length, so that simulated time always advances
  (0 if ``idle_steps`` is None).
  """
  busy = jnp.max(jnp.where(member_N, clock.compute_time(budgets_N, speed_N), 0.0))
  if idle_steps is None:
    return busy
  return jnp.where(jnp.any(member_N), busy, clock.compute_time(idle_steps, jnp.min(speed_N)))


def min_bandwidth(problem: base.Problem, member_N) -> jax.Array:
  """The slowest link among the members."""
  return jnp.min(jnp.where(member_N, jnp.asarray(problem.profile.bandwidth_N, jnp.float32),
                           jnp.inf))


def apply_local_steps(config, point, context: base.GridContext):
  """The grid's ``h`` is the baseline's ``local_steps``."""
  del context
  return config.replace(local_steps=int(point['h'])) if 'h' in point else config


def decentralized(name: str, problem: base.Problem, cycle) -> base.Algorithm:
  """A decentralized round-based algorithm: consensus = data-weighted average."""
  return base.Algorithm(
      name=name, init=lambda key: init(problem, key), cycle=cycle,
      device_params=lambda state: state.devices.params,
      consensus_params=lambda state: base.weighted_average(state.devices.params,
                                                           problem.data_weights_N))
