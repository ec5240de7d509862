"""D-PSGD (Lian et al. 2017, "Can Decentralized Algorithms Outperform Centralized
Algorithms?", NeurIPS; ``docs/spec.md``, "Baselines").

Every H local steps, each device averages with its neighbours on a fixed graph
(:mod:`hadfl_jax.algorithms.graphs`, :data:`~hadfl_jax.algorithms.graphs.GRAPHS`) with
Metropolis-Hastings weights, after a global barrier (H / min_i s_i). Each device sends
its model to each neighbour: t_gossip = max_i d_i M / b_i + l, d_i M bytes per device.
Common rules: :mod:`hadfl_jax.algorithms.rounds`.
"""

from __future__ import annotations

import dataclasses
import sys

import jax.numpy as jnp

from hadfl_jax import typed_config as tc
from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import graphs
from hadfl_jax.algorithms import rounds
from hadfl_jax.core import engine as engine_lib

GRID_KNOBS = ('lr', 'h')
apply_grid_point = rounds.apply_local_steps
State = rounds.State


@dataclasses.dataclass(frozen=True)
class Config(tc.Section):
  SECTION = 'dpsgd'

  local_steps: int = tc.integer(10, low=1, doc='H, local steps between gossip rounds')
  graph: str = tc.choice('ring', graphs.GRAPHS, doc='the gossip graph (graphs.GRAPHS)')
  opt_state: str = tc.choice('average', engine_lib.OPT_STATE_RULES,
                             doc='what an aggregation does to optimizer states')


def describe(config: Config, problem: base.Problem) -> dict:
  """The graph's degree range and spectral gap, for the comparison's report."""
  g = graphs.describe(graphs.make_graph(config.graph, problem.num_devices))
  g['text'] = (f'{g["kind"]} graph on {g["num_devices"]} devices, degree {g["min_degree"]}..'
               f'{g["max_degree"]}, Metropolis-Hastings weights (symmetric, doubly '
               f'stochastic), spectral gap {g["spectral_gap"]:.4f}.')
  return g


def make(problem: base.Problem, config: Config,
         engine: engine_lib.EngineConfig | None = None) -> base.Algorithm:
  # Equal budgets: one masked loop (no bucket would save work).
  trainer = engine_lib.LocalTrainer(problem, engine, bucket_widths=())
  graph = graphs.make_graph(config.graph, problem.num_devices)
  bandwidth_N = jnp.asarray(problem.profile.bandwidth_N, jnp.float32)
  m = problem.model_bytes

  def cycle(state: State, data):
    up_N, speed_N, _ = rounds.draws(problem, state)
    budgets_N = jnp.where(up_N, config.local_steps, 0).astype(jnp.int32)
    mix = graphs.mh_mixing(graph, up_N)
    devices, loss_N, synced_N = engine_lib.train_and_mix(
        trainer, state.devices, data, budgets_N, lambda _: mix, opt_state_rule=config.opt_state)
    deg_N = jnp.sum(mix.weight_NxD[:, 1:] > 0, axis=1).astype(jnp.float32)
    t_gossip = jnp.where(jnp.any(synced_N),
                         jnp.max(deg_N * m / bandwidth_N) + problem.profile.latency, 0.0)
    cycle_time = rounds.barrier(budgets_N, speed_N, up_N, config.local_steps) + t_gossip
    return (state.replace(devices=devices, cycle=state.cycle + 1),
            base.CycleInfo.make(cycle_time, deg_N * m, budgets_N, loss_N, up_N, synced_N))

  return rounds.decentralized('dpsgd', problem, cycle)


base.register('dpsgd', sys.modules[__name__])
