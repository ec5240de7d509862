"""Synchronous data-parallel SGD ("PyTorch distributed"; ``docs/spec.md``, "Baselines").

Every step all up devices compute one minibatch gradient on their own shard, wait for
the slowest (max_i 1/s_i), ring all-reduce the gradients over the up devices (weights
n_i, so the update is the gradient of the global objective, as DDP over the union of the
data), and apply one identical update. ``steps_per_cycle`` steps run per jitted cycle;
the clock adds every step. Only the logging and evaluation granularity depend on it, not
the training; the comparison sets it so that a cycle lasts about one evaluation
interval. Common rules: :mod:`hadfl_jax.algorithms.rounds`.
"""

from __future__ import annotations

import dataclasses
import sys

import flax
import jax
import jax.numpy as jnp
import optax

from hadfl_jax import typed_config as tc
from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import rounds
from hadfl_jax.core import clock
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import local

GRID_KNOBS = ('lr',)


@dataclasses.dataclass(frozen=True)
class Config(tc.Section):
  SECTION = 'ddp'

  steps_per_cycle: int = tc.integer(10, low=1, doc='synchronous steps per jitted cycle '
                                    '(logging and evaluation granularity only)')


@flax.struct.dataclass
class State:
  """State of synchronous data-parallel SGD: one model, per-device data streams.

  Attributes:
    params: the common model (no device axis).
    opt_state: the common optimizer state.
    key_N: raw PRNG keys of the devices' minibatch streams, (N, 2).
    steps_N: int32 (N,), gradients each device has computed.
    cycle: index of the next cycle.
    key: raw PRNG key of the coordinator.
  """

  params: object
  opt_state: object
  key_N: jax.Array
  steps_N: jax.Array
  cycle: jax.Array
  key: jax.Array


def step_time(problem: base.Problem) -> float:
  """Simulated seconds of one synchronous step with every device up."""
  return float(1.0 / problem.profile.speed_N.min() + clock.ring_allreduce_time(
      problem.num_devices, problem.model_bytes, float(problem.profile.bandwidth_N.min()),
      problem.profile.latency))


def apply_grid_point(config: Config, point, context: base.GridContext) -> Config:
  """Cycles of about one evaluation interval, so DDP is evaluated as finely as the rest."""
  del point
  return config.replace(steps_per_cycle=max(1, int(round(
      context.eval_interval_s / step_time(context.problem)))))


def make(problem: base.Problem, config: Config,
         engine: engine_lib.EngineConfig | None = None) -> base.Algorithm:
  del engine  # One common model: no per-device local loop to schedule.
  n = problem.num_devices
  n_N = jnp.asarray(problem.num_examples_N, jnp.float32)
  device_grad = local.make_device_grad(problem.model.apply, problem.batch_size, problem.task)
  grad_N = jax.vmap(device_grad, in_axes=(None, 0, 0, 0, 0, 0))

  def init(key):
    device_key, coord_key = jax.random.split(key)
    params = jax.tree.map(jnp.array, problem.init_params)
    return State(params=params, opt_state=problem.optimizer.init(params),
                 key_N=jax.random.split(device_key, n), steps_N=jnp.zeros((n,), jnp.int32),
                 cycle=jnp.zeros((), jnp.int32), key=coord_key)

  def cycle(state: State, data):
    num_steps = config.steps_per_cycle
    up_N, speed_N, _ = rounds.draws(problem, state)
    w_N = jnp.where(up_N, n_N, 0.0)
    w_N = w_N / jnp.maximum(jnp.sum(w_N), 1e-30)
    any_up = jnp.any(up_N)

    def step(carry, _):
      params, opt_state, steps_N = carry
      loss_N, grads_N = grad_N(params, state.key_N, steps_N, data.images, data.labels,
                               data.counts)
      grads = base.weighted_average(grads_N, w_N)
      updates, new_opt = problem.optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(any_up, a, b), new, old)
      return (keep(new_params, params), keep(new_opt, opt_state),
              steps_N + up_N.astype(jnp.int32)), loss_N

    (params, opt_state, steps_N), loss_TxN = jax.lax.scan(
        step, (state.params, state.opt_state, state.steps_N), None, length=num_steps)
    num_up = jnp.sum(up_N)
    # With nobody up the coordinator still waits a step of the slowest device.
    t_step = (jnp.where(any_up, jnp.max(jnp.where(up_N, 1.0 / speed_N, 0.0)),
                        1.0 / jnp.min(speed_N))
              + clock.ring_allreduce_time(num_up, problem.model_bytes,
                                          rounds.min_bandwidth(problem, up_N),
                                          problem.profile.latency))
    budgets_N = jnp.where(up_N, num_steps, 0).astype(jnp.int32)
    bytes_N = jnp.where(up_N, num_steps * clock.ring_allreduce_bytes_per_peer(
        num_up, problem.model_bytes), 0.0)
    loss_N = jnp.where(up_N, jnp.mean(loss_TxN, axis=0), 0.0)
    new_state = state.replace(params=params, opt_state=opt_state, steps_N=steps_N,
                              cycle=state.cycle + 1)
    return new_state, base.CycleInfo.make(num_steps * t_step, bytes_N, budgets_N, loss_N, up_N,
                                          up_N & (num_up >= 2))

  return base.Algorithm(
      name='ddp', init=init, cycle=cycle,
      device_params=lambda state: jax.tree.map(
          lambda x: jnp.broadcast_to(x, (n,) + x.shape), state.params),
      consensus_params=lambda state: state.params)


base.register('ddp', sys.modules[__name__])
