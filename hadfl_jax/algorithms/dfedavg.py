"""Decentralized FedAvg (the paper's baseline; ``docs/spec.md``, "Baselines").

All up devices run the same H local steps, wait for the slowest (a barrier at
H / min_i s_i), then all-reduce their models over all up devices with weights n_i (ring
all-reduce, no server). Common rules: :mod:`hadfl_jax.algorithms.rounds`.
"""

from __future__ import annotations

import dataclasses
import sys

import jax.numpy as jnp

from hadfl_jax import typed_config as tc
from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import rounds
from hadfl_jax.core import clock
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import mixing

GRID_KNOBS = ('lr', 'h')
apply_grid_point = rounds.apply_local_steps
State = rounds.State


@dataclasses.dataclass(frozen=True)
class Config(tc.Section):
  SECTION = 'dfedavg'

  local_steps: int = tc.integer(10, low=1, doc='H, local steps per round')
  opt_state: str = tc.choice('average', engine_lib.OPT_STATE_RULES,
                             doc='what an aggregation does to optimizer states')


def make(problem: base.Problem, config: Config,
         engine: engine_lib.EngineConfig | None = None) -> base.Algorithm:
  # Equal budgets: one masked loop (no bucket would save work).
  trainer = engine_lib.LocalTrainer(problem, engine, bucket_widths=())
  n = problem.num_devices
  n_N = jnp.asarray(problem.num_examples_N, jnp.float32)

  def cycle(state: State, data):
    up_N, speed_N, _ = rounds.draws(problem, state)
    budgets_N = jnp.where(up_N, config.local_steps, 0).astype(jnp.int32)
    idx_K = jnp.where(up_N, jnp.arange(n), n).astype(jnp.int32)

    def everyone(devices):
      return mixing.GroupMixing(
          idx_K=idx_K, valid_K=up_N,
          weight_K=mixing.group_weights('data', idx_K=idx_K, valid_K=up_N, num_examples_N=n_N,
                                        budgets_N=budgets_N, version_N=devices.version))

    devices, loss_N, synced_N = engine_lib.train_and_mix(
        trainer, state.devices, data, budgets_N, everyone, opt_state_rule=config.opt_state)
    num_up = jnp.sum(synced_N)
    t_sync = clock.ring_allreduce_time(num_up, problem.model_bytes,
                                       rounds.min_bandwidth(problem, synced_N),
                                       problem.profile.latency)
    cycle_time = rounds.barrier(budgets_N, speed_N, up_N, config.local_steps) + t_sync
    bytes_N = jnp.where(synced_N, clock.ring_allreduce_bytes_per_peer(
        num_up, problem.model_bytes), 0.0)
    return (state.replace(devices=devices, cycle=state.cycle + 1),
            base.CycleInfo.make(cycle_time, bytes_N, budgets_N, loss_N, up_N, synced_N))

  return rounds.decentralized('dfedavg', problem, cycle)


base.register('dfedavg', sys.modules[__name__])
