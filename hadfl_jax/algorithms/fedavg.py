"""Server FedAvg with partial participation (McMahan et al. 2017, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS; ``docs/spec.md``,
"Baselines").

K = max(1, round(C N)) clients drawn uniformly among the up devices start from the
server's model, run H local steps, and the server averages them with weights n_j. The
server's link carries 2 K M bytes per round (K downloads, K uploads):
t_comm = 2 K M / b_server + 2 l. Local training runs on the engine's budget-sorted
buckets (:func:`bucket_widths`: the clients, then the idle rest), so the N - K idle
devices cost no masked work. Common rules:
:mod:`hadfl_jax.algorithms.rounds`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import jax.numpy as jnp

from hadfl_jax import sharding
from hadfl_jax import typed_config as tc
from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import rounds
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import local
from hadfl_jax.core import mixing
from hadfl_jax.core import selection

GRID_KNOBS = ('lr', 'h')
apply_grid_point = rounds.apply_local_steps
State = rounds.State


@dataclasses.dataclass(frozen=True)
class Config(tc.Section):
  SECTION = 'fedavg'

  local_steps: int = tc.integer(10, low=1, doc='H, local steps per round')
  fraction: float = tc.number(0.5, low=0, high=1, low_open=True,
                              doc='C: clients per round, K = max(1, round(C N))')
  opt_state: str = tc.choice('average', engine_lib.OPT_STATE_RULES,
                             doc="the server's optimizer state: averaged from the clients', "
                             "clients' own kept, or reset every round")


def num_clients(config: Config, num_devices: int) -> int:
  return max(1, int(round(config.fraction * num_devices)))


def bucket_widths(num_clients_: int, num_devices: int, num_shards: int = 1) -> tuple[int, ...]:
  """Two buckets per shard: the clients (sorted first, by their budget H) and the idle
  rest (budget 0, which costs nothing). Clients are spread over the shards at random, so
  a shard's first bucket holds its expected share, rounded up."""
  per_shard = num_devices // num_shards
  first = min(per_shard, -(-num_clients_ // num_shards))
  return (first, per_shard - first)


def make(problem: base.Problem, config: Config,
         engine: engine_lib.EngineConfig | None = None) -> base.Algorithm:
  n = problem.num_devices
  k = num_clients(config, n)
  engine = engine or engine_lib.EngineConfig()
  trainer = engine_lib.LocalTrainer(
      problem, engine, bucket_widths=bucket_widths(k, n, sharding.mesh_size(engine)))
  n_N = jnp.asarray(problem.num_examples_N, jnp.float32)
  m = problem.model_bytes
  b_server = float(problem.profile.bandwidth_N.min())

  def init(key):
    state = rounds.init(problem, key)
    params = problem.init_params
    return state.replace(server=(jax.tree.map(jnp.array, params),
                                 problem.optimizer.init(params)))

  def cycle(state: State, data):
    up_N, speed_N, k_select = rounds.draws(problem, state)
    # K clients, uniformly among the up devices (Gumbel top-k of equal scores).
    score_N = jnp.where(up_N, jax.random.gumbel(k_select, (n,)), -jnp.inf)
    score_K, idx_K = jax.lax.top_k(score_N, k)
    valid_K = jnp.isfinite(score_K)
    idx_K = jnp.where(valid_K, idx_K, n).astype(jnp.int32)
    chosen_N = selection.membership(idx_K, valid_K, n)
    server_params, server_opt = state.server
    bcast = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)
    if config.opt_state == 'reset':
      server_opt = problem.optimizer.init(server_params)
    devices = state.devices
    start_opt = bcast(server_opt) if config.opt_state != 'keep' else devices.opt_state
    devices = devices.replace(
        params=local.select_tree(chosen_N, bcast(server_params), devices.params),
        opt_state=local.select_tree(chosen_N, start_opt, devices.opt_state))
    budgets_N = jnp.where(chosen_N, config.local_steps, 0).astype(jnp.int32)
    devices, loss_N = trainer(devices, data, budgets_N)
    weight_K = mixing.group_weights('data', idx_K=idx_K, valid_K=valid_K, num_examples_N=n_N,
                                    budgets_N=budgets_N, version_N=devices.version)
    any_chosen = jnp.any(valid_K)

    def server_average(tree_N: Any, old: Any) -> Any:
      x_K = jax.tree.map(lambda x: x[jnp.minimum(idx_K, n - 1)], tree_N)
      return jax.tree.map(lambda x, o: jnp.where(
          any_chosen, mixing.cast_like(mixing.weighted_sum(weight_K, valid_K, x), o), o),
                          x_K, old)

    server = (server_average(devices.params, server_params),
              server_average(devices.opt_state, server_opt))
    k_eff = jnp.sum(valid_K).astype(jnp.float32)
    t_comm = jnp.where(k_eff > 0, 2.0 * k_eff * m / b_server + 2.0 * problem.profile.latency,
                       0.0)
    cycle_time = rounds.barrier(budgets_N, speed_N, chosen_N, config.local_steps) + t_comm
    bytes_N = jnp.where(chosen_N, m, 0.0)
    return (state.replace(devices=devices, cycle=state.cycle + 1, server=server),
            base.CycleInfo.make(cycle_time, bytes_N, budgets_N, loss_N, up_N, chosen_N,
                                server_bytes=2.0 * k_eff * m))

  return base.Algorithm(
      name='fedavg', init=init, cycle=cycle,
      device_params=lambda state: state.devices.params,
      consensus_params=lambda state: state.server[0])


base.register('fedavg', sys.modules[__name__])
