"""What the asynchronous algorithms share (AD-PSGD, Prague, FedBuff; ``docs/spec.md``,
"Baselines" and "The event clock").

They run on the event clock (:mod:`hadfl_jax.core.events`): a reported cycle is
``cycle_s`` simulated seconds of ticks (:func:`run_cycle`), a tick processes the events
within ``window_s`` of the earliest one. Common rules, per event (documented choices):

* Faults: a device is down at an event with probability ``faults.p_drop``, or by
  ``faults.down_trace`` read at the reported cycle (:func:`event_draws`); whether it is
  down holds until its next event.
* Speed jitter: each computation's time is H / (s_i exp(sigma z)), z drawn per event
  (:func:`true_speeds`).
* Random draws are keyed by (device, its event count), so that grouping events into
  ticks does not change them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from hadfl_jax import typed_config as tc
from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import rounds
from hadfl_jax.core import events

# The grid's ``h`` is the algorithm's ``local_steps``.
apply_grid_point = rounds.apply_local_steps


@dataclasses.dataclass(frozen=True)
class EventConfig(tc.Section):
  """The event clock's options, shared by the asynchronous algorithms' configs (which
  declare ``local_steps``)."""

  window_s: float = tc.number(0.0, low=0, doc='tick width, simulated s; 0: half the '
                              "fastest device's H-step time")
  cycle_s: float = tc.number(0.05, low=0, low_open=True,
                             doc='simulated seconds per reported cycle')

  def window(self, problem: base.Problem) -> float:
    """The tick width: ``window_s``, or half the fastest device's H-step time."""
    if self.window_s > 0:
      return float(self.window_s)
    return 0.5 * self.local_steps / float(max(problem.profile.speed_N))


def event_draws(problem: base.Problem, state, due_N: jax.Array, num_keys: int
                ) -> tuple[jax.Array, jax.Array]:
  """This tick's per-event keys and who is down.

  Args:
    problem: the problem (faults).
    state: the algorithm's state (``clock``, ``key``, ``cycle``, ``down_N``).
    due_N: the devices whose event is in this tick.
    num_keys: how many keys each event needs besides the fault draw.

  Returns:
    ``(keys_NxK, down_N)``: ``num_keys`` keys per device, and the down flags (drawn for
    the due devices, kept for the others).
  """
  n = problem.num_devices
  keys = jax.vmap(lambda k: jax.random.split(k, num_keys + 1))(
      events.event_keys(state.key, state.clock))
  down_N = jax.vmap(lambda k: jax.random.bernoulli(k, problem.faults.p_drop))(keys[:, 0])
  trace = problem.faults.trace(n)
  if len(trace):
    tr = jnp.asarray(trace)
    active_D = (tr[:, 1] <= state.cycle) & (state.cycle < tr[:, 2])
    down_N = down_N | jnp.zeros((n,), bool).at[tr[:, 0]].max(active_D)
  return keys[:, 1:], jnp.where(due_N, down_N, state.down_N)


def failures(problem: base.Problem, key_N: jax.Array) -> jax.Array:
  """Which exchanges fail (``faults.p_sync_fail``), one draw per device key."""
  return jax.vmap(lambda k: jax.random.bernoulli(k, problem.faults.p_sync_fail))(key_N)


def true_speeds(problem: base.Problem, key_N: jax.Array) -> jax.Array:
  """Each event's true speed: the profile's, times exp(sigma z) under jitter."""
  speed_N = jnp.asarray(problem.profile.speed_N, jnp.float32)
  if problem.profile.jitter_sigma > 0:
    z_N = jax.vmap(lambda k: jax.random.normal(k))(key_N)
    speed_N = speed_N * jnp.exp(problem.profile.jitter_sigma * z_N)
  return speed_N


def empty_report(num_devices: int) -> dict[str, jax.Array]:
  """A cycle's running totals, before its first tick."""
  n = num_devices
  return dict(bytes_N=jnp.zeros((n,), jnp.float32), server_bytes=jnp.zeros((), jnp.float32),
              budgets_N=jnp.zeros((n,), jnp.int32), loss_sum_N=jnp.zeros((n,), jnp.float32),
              synced_N=jnp.zeros((n,), bool), up_N=jnp.ones((n,), bool))


def add_to_report(report: dict, *, sent_N, budgets_N, loss_N, synced_N, down_N,
                  server_bytes=0.0) -> dict[str, jax.Array]:
  """The running totals after one tick."""
  return dict(bytes_N=report['bytes_N'] + sent_N,
              server_bytes=report['server_bytes'] + server_bytes,
              budgets_N=report['budgets_N'] + budgets_N,
              loss_sum_N=report['loss_sum_N'] + loss_N * budgets_N,
              synced_N=report['synced_N'] | synced_N, up_N=~down_N)


def run_cycle(tick: Callable, state, data, num_devices: int, cycle_s: float
              ) -> tuple[object, base.CycleInfo]:
  """One reported cycle: ticks until the earliest pending event is ``cycle_s`` after the
  cycle's start; the cycle lasts from its start to that event (so cycles tile time)."""
  start = events.now(state.clock)
  state, report = jax.lax.while_loop(
      lambda carry: events.now(carry[0].clock) < start + cycle_s,
      lambda carry: tick(carry[0], data, carry[1]), (state, empty_report(num_devices)))
  info = base.CycleInfo.make(
      events.now(state.clock) - start, report['bytes_N'], report['budgets_N'],
      report['loss_sum_N'] / jnp.maximum(report['budgets_N'], 1), report['up_N'],
      report['synced_N'], server_bytes=report['server_bytes'])
  return state.replace(cycle=state.cycle + 1), info


def decentralized(name: str, problem: base.Problem, init, cycle) -> base.Algorithm:
  """An asynchronous decentralized algorithm: device models ``state.devices.params``,
  consensus = their data-weighted average."""
  return base.Algorithm(
      name=name, init=init, cycle=cycle, device_params=lambda state: state.devices.params,
      consensus_params=lambda state: base.weighted_average(state.devices.params,
                                                           problem.data_weights_N))
