"""Prague (Luo, He, Zhuo, Qian, "Prague: High-Performance Heterogeneity-Aware Asynchronous
Decentralized Training", ASPLOS 2020; ``docs/spec.md``, "Baselines", Prague).

Partial all-reduce on the event clock (:mod:`hadfl_jax.core.events`), HADFL's closest
prior art: every device runs H = ``local_steps`` local steps at its own speed (H / s_i
simulated seconds; the same H for every device, not heterogeneity-aware) and then is
*ready*. Whenever at least G = ``group_size`` devices are ready, a group generator draws
random disjoint groups of G among the ready devices (a uniformly random order, cut into
consecutive groups; the rest stay ready), each group averages its models with a ring
all-reduce (``2 (G - 1) / G * M / min b + 2 (G - 1) l`` seconds, ``2 (G - 1) / G * M``
bytes per member) and its members start their next H steps. Nobody waits for a device
outside its group; a ready device waits only until G - 1 others are ready.

A group forms at the time its last member became ready. Faults, per event: a device down
at the end of its steps (``faults.p_drop``, or ``faults.down_trace`` at the reported
cycle) does not become ready and tries again H / s_i later; a group member failing
during the all-reduce (``faults.p_sync_fail``) keeps its model and is left out of the
average (a group needs two survivors to average). Jitter draws each computation's time.
Optimizer states stay with their device; versions are averaged with the models.
"""

from __future__ import annotations

import dataclasses
import sys

import flax
import jax
import jax.numpy as jnp

from hadfl_jax import typed_config as tc
from hadfl_jax.algorithms import asynchronous
from hadfl_jax.algorithms import base
from hadfl_jax.core import clock as clock_lib
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import events
from hadfl_jax.core import local
from hadfl_jax.core import mixing

GRID_KNOBS = ('lr', 'h')


@dataclasses.dataclass(frozen=True)
class Config(asynchronous.EventConfig):
  SECTION = 'prague'

  local_steps: int = tc.integer(10, low=1, doc='H, local steps between partial all-reduces')
  group_size: int = tc.integer(3, low=2, doc='G, devices per partial all-reduce')

  def check_devices(self, num_devices: int, prefix: str) -> None:
    if self.group_size > num_devices:
      tc.fail(prefix + 'group_size', self.group_size,
              f'must be at most num_devices={num_devices} (a group of G devices)')


apply_grid_point = asynchronous.apply_grid_point


@flax.struct.dataclass
class State:
  """Prague's state.

  Attributes:
    devices: the stacked device states (each model trained in place).
    ready_N: bool, whether a device has finished its steps and waits for a group.
    ready_at_N: float32, when it became ready.
    down_N: bool, whether a device was down at its last event.
    clock: the event clock (a waiting device's next event is at infinity).
    formations: int32, how many times groups were formed (keys the group draws).
    cycle: the next reported cycle.
    key: raw PRNG key of the draws.
  """

  devices: local.DeviceState
  ready_N: jax.Array
  ready_at_N: jax.Array
  down_N: jax.Array
  clock: events.Clock
  formations: jax.Array
  cycle: jax.Array
  key: jax.Array


def init(problem: base.Problem, key: jax.Array) -> State:
  device_key, event_key = jax.random.split(key)
  n = problem.num_devices
  return State(
      devices=local.init_devices(device_key, problem.init_params, problem.optimizer, n),
      ready_N=jnp.zeros((n,), bool), ready_at_N=jnp.zeros((n,), jnp.float32),
      down_N=jnp.zeros((n,), bool), clock=events.Clock.start(n),
      formations=jnp.zeros((), jnp.int32), cycle=jnp.zeros((), jnp.int32), key=event_key)


def group_order(key: jax.Array, ready_N: jax.Array) -> jax.Array:
  """The group generator's random order: the ready devices first, uniformly shuffled."""
  score_N = jnp.where(ready_N, jax.random.uniform(key, ready_N.shape), 2.0)
  return jnp.argsort(score_N).astype(jnp.int32)


def groups(key: jax.Array, ready_N: jax.Array, g: int) -> tuple[jax.Array, jax.Array]:
  """Random disjoint groups of ``g`` among the ready devices.

  Returns:
    ``(cols_NxG, member_N)``: each member's group (its members, in draw order; a
    non-member's row is itself), and who is in a group.
  """
  n = ready_N.shape[0]
  order_N = group_order(key, ready_N)
  num_groups = jnp.sum(ready_N) // g
  rank_N = jnp.zeros((n,), jnp.int32).at[order_N].set(jnp.arange(n, dtype=jnp.int32))
  member_N = ready_N & (rank_N < num_groups * g)
  first_N = (rank_N // g) * g
  cols = order_N[jnp.minimum(first_N[:, None] + jnp.arange(g)[None, :], n - 1)]
  cols = jnp.where(member_N[:, None], cols, jnp.arange(n)[:, None])
  return cols, member_N


def make(problem: base.Problem, config: Config,
         engine: engine_lib.EngineConfig | None = None) -> base.Algorithm:
  trainer = engine_lib.LocalTrainer(problem, engine, bucket_widths=())
  n, h, g, m = problem.num_devices, config.local_steps, config.group_size, problem.model_bytes
  width = config.window(problem)
  bandwidth_N = jnp.asarray(problem.profile.bandwidth_N, jnp.float32)

  def tick(state: State, data, report: dict) -> tuple[State, dict]:
    clock = state.clock
    due_N = events.due(clock, width)
    t_N = clock.next_N
    keys, down_N = asynchronous.event_draws(problem, state, due_N, 2)
    k_fail, k_jitter = keys[:, 0], keys[:, 1]
    start_N = due_N & (clock.events_N == 0)  # Time 0: every device starts its steps.
    arrive_N = due_N & ~start_N & ~down_N
    ready_N = state.ready_N | arrive_N
    ready_at_N = jnp.where(arrive_N, t_N, state.ready_at_N)

    # The group generator, then each group's ring all-reduce among its survivors.
    cols_NxG, member_N = groups(jax.random.fold_in(state.key, state.formations), ready_N, g)
    formed = jnp.any(member_N)
    fail_N = asynchronous.failures(problem, jax.vmap(
        lambda k: jax.random.fold_in(k, state.formations))(k_fail))
    survive_N = member_N & ~fail_N
    alive_NxG = survive_N[cols_NxG]
    count_N = jnp.sum(alive_NxG, axis=1)
    averages_N = survive_N & (count_N >= 2)
    weight_NxG = jnp.where(averages_N[:, None] & alive_NxG, 1.0 / jnp.maximum(count_N, 1)[:, None], 0.0)
    weight_NxG = jnp.where(averages_N[:, None], weight_NxG,
                           (jnp.arange(g) == 0)[None, :].astype(jnp.float32))
    own_cols = jnp.where(averages_N[:, None], cols_NxG, jnp.arange(n)[:, None])
    devices, _ = engine_lib.mix_devices(
        state.devices, mixing.NeighbourMixing(cols_NxD=own_cols, weight_NxD=weight_NxG),
        opt_state_rule='keep', optimizer=problem.optimizer)
    min_bw_N = jnp.min(jnp.where(alive_NxG, bandwidth_N[cols_NxG], jnp.inf), axis=1)
    t_sync_N = jnp.where(averages_N, clock_lib.ring_allreduce_time(
        count_N, m, min_bw_N, problem.profile.latency), 0.0)
    t_form_N = jnp.max(jnp.where(member_N[cols_NxG], ready_at_N[cols_NxG], -jnp.inf), axis=1)

    # Who starts H steps now: the devices at time 0 and every group member.
    compute_N = start_N | member_N
    budgets_N = jnp.where(compute_N, h, 0).astype(jnp.int32)
    devices, loss_N = trainer(devices, data, budgets_N)
    true_speed_N = asynchronous.true_speeds(problem, k_jitter)
    busy_N = h / true_speed_N
    next_N = jnp.where(start_N, t_N + busy_N, clock.next_N)
    next_N = jnp.where(due_N & ~start_N & down_N, t_N + busy_N, next_N)  # Retry later.
    next_N = jnp.where(arrive_N, events.NEVER, next_N)  # Waits for a group...
    next_N = jnp.where(member_N, t_form_N + t_sync_N + busy_N, next_N)  # ... and goes on.
    new_clock = events.Clock(next_N=next_N, events_N=clock.events_N + due_N.astype(jnp.int32))
    sent_N = jnp.where(averages_N, clock_lib.ring_allreduce_bytes_per_peer(count_N, m), 0.0)
    report = asynchronous.add_to_report(report, sent_N=sent_N, budgets_N=budgets_N,
                                        loss_N=loss_N, synced_N=averages_N, down_N=down_N)
    state = state.replace(devices=devices, ready_N=ready_N & ~member_N, ready_at_N=ready_at_N,
                          down_N=down_N, clock=new_clock,
                          formations=state.formations + formed.astype(jnp.int32))
    return state, report

  return asynchronous.decentralized(
      'prague', problem, lambda key: init(problem, key),
      lambda state, data: asynchronous.run_cycle(tick, state, data, n, config.cycle_s))


base.register('prague', sys.modules[__name__])
