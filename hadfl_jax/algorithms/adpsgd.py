"""AD-PSGD (Lian, Zhang, Zhang, Liu, "Asynchronous Decentralized Parallel Stochastic
Gradient Descent", ICML 2018; ``docs/spec.md``, "Baselines", AD-PSGD).

No barrier: every device computes at its own speed on the event clock
(:mod:`hadfl_jax.core.events`). Device i repeats:

1. read its model: the snapshot x^_i = x_i;
2. compute H local steps from x^_i (H = ``local_steps``; the paper's algorithm is
   H = 1, one stochastic gradient), taking H / s_i simulated seconds; call the
   resulting change delta_i = x^_i' - x^_i;
3. at the end (its event), pick a neighbour j uniformly on the graph and average
   atomically: x_i, x_j <- (x_i + x_j) / 2, taking M / min(b_i, b_j) + l seconds
   (each sends M bytes);
4. apply its update to the averaged model: x_i <- x_i + delta_i; go to 1.

Meanwhile neighbours may have averaged into x_i, so delta_i was computed on a stale
model, as in the paper (for H = 1 and SGD, step 4 is x_i - gamma g(x^_i)). Optimizer
states stay with their device; versions are averaged with the models.

Faults, per event: a device is down at an event with probability ``faults.p_drop`` (or
by ``faults.down_trace``, read at the reported cycle): it skips the exchange and the new
computation, keeps its pending update and tries again H / s_i later; nobody exchanges
with a device that is down. An exchange fails with probability ``faults.p_sync_fail``
(the update is still applied). Speed jitter draws the compute time of every event.

A reported cycle is ``cycle_s`` simulated seconds of events (the run loop evaluates
between cycles); a tick processes the events within ``window_s`` of the earliest one.
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
from hadfl_jax.algorithms import graphs
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import events
from hadfl_jax.core import local
from hadfl_jax.core import mixing

GRID_KNOBS = ('lr', 'h')


@dataclasses.dataclass(frozen=True)
class Config(asynchronous.EventConfig):
  SECTION = 'adpsgd'

  local_steps: int = tc.integer(1, low=1, doc='H, local steps between exchanges (paper: 1)')
  graph: str = tc.choice('ring', graphs.GRAPHS, doc='who may exchange (graphs.GRAPHS)')


apply_grid_point = asynchronous.apply_grid_point


def describe(config: Config, problem: base.Problem) -> dict:
  """The graph and the tick width, for the comparison's report."""
  g = graphs.describe(graphs.make_graph(config.graph, problem.num_devices))
  g['window_s'] = config.window(problem)
  g['text'] = (f'{g["kind"]} graph on {g["num_devices"]} devices, degree {g["min_degree"]}..'
               f'{g["max_degree"]}, one uniformly drawn neighbour per exchange; event-clock '
               f'tick {g["window_s"]:.3g} s.')
  return g


@flax.struct.dataclass
class State:
  """AD-PSGD's state.

  Attributes:
    devices: the stacked device states; ``params`` are the shared models x_i.
    delta: each device's pending update delta_i (its H local steps, not yet applied).
    pending_N: bool, whether a device has a pending update.
    down_N: bool, whether a device was down at its last event.
    clock: the event clock.
    cycle: the next reported cycle.
    key: raw PRNG key of the draws (keyed per device event).
  """

  devices: local.DeviceState
  delta: base.PyTree
  pending_N: jax.Array
  down_N: jax.Array
  clock: events.Clock
  cycle: jax.Array
  key: jax.Array


def init(problem: base.Problem, key: jax.Array) -> State:
  device_key, event_key = jax.random.split(key)
  n = problem.num_devices
  devices = local.init_devices(device_key, problem.init_params, problem.optimizer, n)
  return State(devices=devices, delta=jax.tree.map(jnp.zeros_like, devices.params),
               pending_N=jnp.zeros((n,), bool), down_N=jnp.zeros((n,), bool),
               clock=events.Clock.start(n), cycle=jnp.zeros((), jnp.int32), key=event_key)


def random_neighbour(key_N: jax.Array, graph: graphs.Graph) -> jax.Array:
  """Each device's uniformly drawn neighbour (itself if it has none)."""
  cols = jnp.asarray(graph.cols_NxD)
  degree_N = jnp.asarray(graph.degree_N)
  u_N = jax.vmap(lambda k: jax.random.uniform(k))(key_N)
  slot_N = 1 + jnp.minimum(jnp.floor(u_N * degree_N).astype(jnp.int32),
                           jnp.maximum(degree_N - 1, 0))
  return jnp.where(degree_N > 0, cols[jnp.arange(cols.shape[0]), slot_N], jnp.arange(cols.shape[0]))


def pair_mixing(go_N: jax.Array, partner_N: jax.Array) -> mixing.NeighbourMixing:
  """The disjoint exchanges ``i <-> partner_N[i]`` of the devices in ``go_N``: each of
  the two models becomes their average."""
  n = go_N.shape[0]
  me_N = jnp.arange(n)
  mate_N = jnp.where(go_N, partner_N, me_N)
  mate_N = mate_N.at[jnp.where(go_N, partner_N, n)].set(me_N, mode='drop')
  half_N = jnp.where(mate_N != me_N, 0.5, 0.0)
  return mixing.NeighbourMixing(cols_NxD=jnp.stack([me_N, mate_N], axis=1).astype(jnp.int32),
                                weight_NxD=jnp.stack([1.0 - half_N, half_N], axis=1))


def make(problem: base.Problem, config: Config,
         engine: engine_lib.EngineConfig | None = None) -> base.Algorithm:
  trainer = engine_lib.LocalTrainer(problem, engine, bucket_widths=())
  graph = graphs.make_graph(config.graph, problem.num_devices)
  n, h, m = problem.num_devices, config.local_steps, problem.model_bytes
  width = config.window(problem)
  bandwidth_N = jnp.asarray(problem.profile.bandwidth_N, jnp.float32)

  def tick(state: State, data, report: dict) -> tuple[State, dict]:
    clock = state.clock
    due_N = events.due(clock, width)
    keys, down_N = asynchronous.event_draws(problem, state, due_N, 3)
    k_partner, k_fail, k_jitter = (keys[:, i] for i in range(3))
    up_due_N = due_N & ~down_N
    partner_N = random_neighbour(k_partner, graph)
    wants_N = up_due_N & state.pending_N & (partner_N != jnp.arange(n)) & ~down_N[partner_N]
    go_N = events.first_come(wants_N, partner_N, events.priority(clock))
    fired_N = due_N & ~(wants_N & ~go_N)  # Collisions wait for the next tick.
    go_N = go_N & ~asynchronous.failures(problem, k_fail)

    # 3. The atomic exchanges (disjoint pairs), then 4. the pending updates.
    devices, mates_N = engine_lib.mix_devices(state.devices, pair_mixing(go_N, partner_N),
                                        opt_state_rule='keep', optimizer=problem.optimizer)
    apply_N = fired_N & ~down_N & state.pending_N
    devices = devices.replace(
        params=jax.tree.map(lambda x, d: x + jnp.where(
            apply_N.reshape((n,) + (1,) * (x.ndim - 1)), d, 0).astype(x.dtype),
            devices.params, state.delta),
        version=devices.version + jnp.where(apply_N, float(h), 0.0))
    # 1-2. The next computation starts from the updated model.
    compute_N = fired_N & ~down_N
    budgets_N = jnp.where(compute_N, h, 0).astype(jnp.int32)
    trained, loss_N = trainer(devices, data, budgets_N)
    delta = jax.tree.map(lambda new, old, d: jnp.where(
        compute_N.reshape((n,) + (1,) * (old.ndim - 1)), new - old, d),
        trained.params, devices.params, state.delta)
    devices = trained.replace(params=devices.params, version=devices.version)

    true_speed_N = asynchronous.true_speeds(problem, k_jitter)
    link_N = jnp.minimum(bandwidth_N, bandwidth_N[partner_N])
    exchange_N = jnp.where(go_N, m / link_N + problem.profile.latency, 0.0)
    duration_N = exchange_N + h / true_speed_N
    sent_N = jnp.where(go_N, m, 0.0)
    sent_N = sent_N.at[jnp.where(go_N, partner_N, n)].add(m, mode='drop')
    report = asynchronous.add_to_report(report, sent_N=sent_N, budgets_N=budgets_N,
                                        loss_N=loss_N, synced_N=mates_N, down_N=down_N)
    state = state.replace(devices=devices, delta=delta,
                          pending_N=jnp.where(compute_N, True, state.pending_N),
                          down_N=down_N, clock=events.fire(clock, fired_N, duration_N))
    return state, report

  return asynchronous.decentralized(
      'adpsgd', problem, lambda key: init(problem, key),
      lambda state, data: asynchronous.run_cycle(tick, state, data, n, config.cycle_s))


base.register('adpsgd', sys.modules[__name__])
