"""FedBuff (Nguyen, Malik, Zhao, Rabbat, Huba, Sanjabi, Esmaeili, Joshi, "Federated
Learning with Buffered Asynchronous Aggregation", AISTATS 2022; ``docs/spec.md``,
"Baselines", FedBuff).

The standard asynchronous server method, on the event clock
(:mod:`hadfl_jax.core.events`). Every client (device) repeats, at its own speed: pull
the server's model x (version tau_i), run H = ``local_steps`` local steps from it
(H / s_i seconds), upload the change delta_i (M / b_i + l seconds), and pull again
(M / b_i + l). The server adds each arriving delta, weighted by its staleness
s = version - tau_i as w(s) = (1 + s)^(-``staleness_exponent``) (the paper's
1 / sqrt(1 + s) for 0.5; 0 turns it off), to a buffer; once the buffer holds
K = ``buffer_size`` deltas it updates

  x <- x + eta_g * (1 / K) * sum_k w(s_k) delta_k,   version <- version + 1

(eta_g = ``server_lr``) and empties the buffer. The server's link carries every upload
and every download (``server_bytes``, 2 M per client round trip); each client sends M.

An event is the arrival of a client's upload at the server; the client then pulls the
current model (after the update its delta may have triggered) and starts again. The
uploads grouped in one tick are served one at a time in event order (earliest first,
ties by index), exactly as a plain event loop serves them: every K-th updates the
server, each is weighted by its staleness at its own arrival, and each client pulls the
model of its own event. (Devices of equal speeds upload at the same instant, so even
the exact clock groups them.) Faults, per event:
a client down when its upload is due (``faults.p_drop``, ``faults.down_trace`` at the
reported cycle) keeps its delta and tries again H / s_i later; an upload that fails
(``faults.p_sync_fail``) is lost and the client starts over from the current model.
Device models are the clients' own (pulled model plus their steps); the consensus model
is the server's.
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
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import events
from hadfl_jax.core import local

GRID_KNOBS = ('lr', 'h')
# 2: the uploads of one tick are served one at a time (before, one update divided the sum
# of all of them by K, a larger step than the event loop's whenever a tick held more
# than one upload: always for devices of equal speed). Cached runs of 1 are not reused.
REVISION = 2


@dataclasses.dataclass(frozen=True)
class Config(asynchronous.EventConfig):
  SECTION = 'fedbuff'

  local_steps: int = tc.integer(10, low=1, doc='H, local steps per client round trip')
  buffer_size: int = tc.integer(3, low=1, doc='K, deltas per server update')
  server_lr: float = tc.number(1.0, low=0, low_open=True, doc='eta_g, the server step')
  staleness_exponent: float = tc.number(0.5, low=0, doc='w(s) = (1 + s)^-a; 0: unweighted')


apply_grid_point = asynchronous.apply_grid_point


@flax.struct.dataclass
class State:
  """FedBuff's state.

  Attributes:
    devices: the clients' stacked states; ``params`` are their current local models.
    delta: each client's pending change (its local model minus the model it pulled).
    pulled_N: int32, the server version each client pulled.
    server: the server's model x.
    version: int32, the server's version.
    buffer: the weighted sum of the buffered deltas.
    buffered: int32, how many deltas are buffered.
    down_N: bool, whether a client was down at its last event.
    clock: the event clock.
    cycle: the next reported cycle.
    key: raw PRNG key of the draws.
  """

  devices: local.DeviceState
  delta: base.PyTree
  pulled_N: jax.Array
  server: base.PyTree
  version: jax.Array
  buffer: base.PyTree
  buffered: jax.Array
  down_N: jax.Array
  clock: events.Clock
  cycle: jax.Array
  key: jax.Array


def init(problem: base.Problem, key: jax.Array) -> State:
  device_key, event_key = jax.random.split(key)
  n = problem.num_devices
  devices = local.init_devices(device_key, problem.init_params, problem.optimizer, n)
  zeros = jax.tree.map(jnp.zeros_like, problem.init_params)
  return State(devices=devices, delta=jax.tree.map(jnp.zeros_like, devices.params),
               pulled_N=jnp.zeros((n,), jnp.int32),
               server=jax.tree.map(jnp.array, problem.init_params),  # A copy: donated.
               version=jnp.zeros((), jnp.int32), buffer=zeros,
               buffered=jnp.zeros((), jnp.int32), down_N=jnp.zeros((n,), bool),
               clock=events.Clock.start(n), cycle=jnp.zeros((), jnp.int32), key=event_key)


def make(problem: base.Problem, config: Config,
         engine: engine_lib.EngineConfig | None = None) -> base.Algorithm:
  trainer = engine_lib.LocalTrainer(problem, engine, bucket_widths=())
  n, h, k, m = problem.num_devices, config.local_steps, config.buffer_size, problem.model_bytes
  width = config.window(problem)
  num_groups = (n + k - 2) // k + 1  # The K-groups a tick's uploads can fall in.
  bandwidth_N = jnp.asarray(problem.profile.bandwidth_N, jnp.float32)
  link_N = m / bandwidth_N + problem.profile.latency  # One upload or one download.

  def tick(state: State, data, report: dict) -> tuple[State, dict]:
    clock = state.clock
    due_N = events.due(clock, width)
    keys, down_N = asynchronous.event_draws(problem, state, due_N, 2)
    k_fail, k_jitter = keys[:, 0], keys[:, 1]
    start_N = due_N & (clock.events_N == 0)  # Time 0: every client has the initial model.
    arrive_N = due_N & ~start_N & ~down_N
    upload_N = arrive_N & ~asynchronous.failures(problem, k_fail)

    # The server takes this tick's uploads one at a time in event order (earliest first,
    # ties by index), as a plain event loop does: an upload that finds b deltas buffered
    # before it joins group (b // K) of the tick, is weighted by its staleness at its
    # arrival (version + its group - the version it pulled), and every K-th upload
    # updates the server. before_N: the uploads this tick ahead of each event.
    rank_N = events.priority(clock)
    ahead_R = upload_N[jnp.argsort(rank_N)].astype(jnp.int32)
    before_N = (jnp.cumsum(ahead_R, dtype=jnp.int32) - ahead_R)[rank_N]
    group_N = (state.buffered + before_N) // k
    fired_N = (state.buffered + before_N + upload_N.astype(jnp.int32)) // k  # Updates by then.
    updates = (state.buffered + jnp.sum(upload_N, dtype=jnp.int32)) // k
    staleness_N = (state.version + group_N - state.pulled_N).astype(jnp.float32)
    w_N = jnp.where(upload_N, (1.0 + staleness_N) ** (-config.staleness_exponent), 0.0)
    # sum_G[g]: group g's weighted deltas (the buffer carried in joins group 0);
    # partial[j] = sum_G[0] + ... + sum_G[j - 1], what the tick's first j updates add up:
    # server_j = server + eta_g partial[j] / K. Linear in N (a segment sum, then a cumsum
    # over the groups).
    rest_N = jnp.where(group_N == updates, w_N, 0.0)  # What stays in the buffer.
    combine = lambda c, d: jnp.tensordot(c, d.astype(jnp.float32), axes=1)

    def prefix(b, d):
      weighted = w_N.reshape((n,) + (1,) * b.ndim) * d.astype(jnp.float32)
      sum_G = jax.ops.segment_sum(weighted, jnp.where(upload_N, group_N, num_groups),
                                  num_segments=num_groups).at[0].add(b)
      return jnp.concatenate([jnp.zeros_like(b)[None], jnp.cumsum(sum_G, axis=0)])

    partial = jax.tree.map(prefix, state.buffer, state.delta)
    model_at = lambda count: jax.tree.map(  # The server after `count` of the updates.
        lambda x, p: (jnp.expand_dims(x, tuple(range(jnp.ndim(count))))
                      + config.server_lr * p[count] / k).astype(x.dtype), state.server,
        partial)
    server = model_at(updates)
    version = state.version + updates
    buffer = jax.tree.map(lambda b, d: (combine(rest_N, d) + jnp.where(updates == 0, b, 0.0)
                                        ).astype(b.dtype), state.buffer, state.delta)
    buffered = state.buffered + jnp.sum(upload_N, dtype=jnp.int32) - updates * k

    # Clients that started or arrived pull the model of their own event (after the
    # updates up to theirs) and run H steps from it.
    pull_N = start_N | arrive_N
    params = jax.tree.map(
        lambda p, x: jnp.where(pull_N.reshape((n,) + (1,) * (x.ndim - 1)), x, p),
        state.devices.params, model_at(fired_N))
    budgets_N = jnp.where(pull_N, h, 0).astype(jnp.int32)
    trained, loss_N = trainer(state.devices.replace(params=params), data, budgets_N)
    delta = jax.tree.map(lambda new, old, d: jnp.where(
        pull_N.reshape((n,) + (1,) * (old.ndim - 1)), new - old, d),
        trained.params, params, state.delta)
    true_speed_N = asynchronous.true_speeds(problem, k_jitter)
    busy_N = h / true_speed_N
    duration_N = jnp.where(start_N, busy_N + link_N,  # Compute, upload.
                           jnp.where(arrive_N, 2 * link_N + busy_N, busy_N))  # (Down: retry.)
    sent_N = jnp.where(upload_N, m, 0.0)
    report = asynchronous.add_to_report(
        report, sent_N=sent_N, budgets_N=budgets_N, loss_N=loss_N, synced_N=upload_N,
        down_N=down_N, server_bytes=m * (jnp.sum(upload_N) + jnp.sum(arrive_N)))
    state = state.replace(
        devices=trained, delta=delta,
        pulled_N=jnp.where(pull_N, state.version + fired_N, state.pulled_N), server=server,
        version=version,
        buffer=buffer, buffered=buffered, down_N=down_N,
        clock=events.fire(clock, due_N, duration_N))
    return state, report

  return base.Algorithm(
      name='fedbuff', init=lambda key: init(problem, key),
      cycle=lambda state, data: asynchronous.run_cycle(tick, state, data, n, config.cycle_s),
      device_params=lambda state: state.devices.params,
      consensus_params=lambda state: state.server)


base.register('fedbuff', sys.modules[__name__])
