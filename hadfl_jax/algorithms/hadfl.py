"""HADFL: heterogeneity-aware decentralized federated learning.

Cao, Lian, Liu, Zhu, Ji. "HADFL: Heterogeneity-aware Decentralized Federated Learning
Framework". DAC 2021. arXiv:2111.08274.

The paper's full text is not available to this project; this module implements the
reconstruction specified in ``docs/spec.md`` ("One cycle c"), every open choice being an
option of :class:`Config`. One cycle c, numbered as the spec numbers it:

1. Faults: who is down this cycle (:mod:`hadfl_jax.core.faults`).
2. Selection: K = max(2, round(rho N)) devices drawn without replacement, probability
   proportional to q_i (``selection``), among the devices that are up.
3. Step budgets: selected devices train ``t_local`` seconds, the others
   ``t_local + t_sync(S_c)``, at their profiled speeds (:mod:`hadfl_jax.core.budgets`);
   with ``outsiders='carried'`` the others train the cycle as it lasts, at their true
   speeds, keeping the time of a step begun for the next cycle.
4. Local training: all devices in one vmapped, masked loop (:mod:`hadfl_jax.core.local`).
5. Sync failures: a member that fails keeps its own state.
6. Aggregation: the selected devices that survive the sync average their models with
   weights a_j (``weights``) by a sparse gather / weighted sum / scatter
   (:mod:`hadfl_jax.core.mixing`); versions are averaged the same way; optimizer states
   per ``opt_state``.
7. Clock: T_c = max_{i in S_c} H_i / s_i + t_sync(S_c), ring all-reduce cost
   (:mod:`hadfl_jax.core.clock`).

The coordinator only schedules (who syncs, how many steps): model parameters move only
between the selected peers.
"""

from __future__ import annotations

import dataclasses
import sys

import flax
import jax
import jax.numpy as jnp

from hadfl_jax import typed_config as tc
from hadfl_jax.algorithms import base
from hadfl_jax.core import budgets as budgets_lib
from hadfl_jax.core import clock
from hadfl_jax.core import device_data
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import faults
from hadfl_jax.core import local
from hadfl_jax.core import mixing
from hadfl_jax.core import selection

GRID_KNOBS = ('lr', 'h')
OUTSIDER_CLOCKS = ('planned', 'carried')


@dataclasses.dataclass(frozen=True)
class Config(tc.Section):
  """HADFL's choices (``config.hadfl``); faults and jitter come with the problem."""

  SECTION = 'hadfl'

  rho: float = tc.number(0.5, low=0, high=1, low_open=True,
                         doc='fraction of devices that sync per cycle; K = max(2, round(rho N))')
  selection: str = tc.choice('version', selection.RULES,
                             doc='the rule of the selection weights q_i (selection.RULES)')
  weights: str = tc.choice('version', mixing.WEIGHTS,
                           doc="averaging weights a_j (mixing.WEIGHTS); the default 'version' "
                           "won a three-seed ablation, the five-seed one does not favour it "
                           "('data' was faster; docs/results.md); the studies pin 'data'")
  opt_state: str = tc.choice('average', engine_lib.OPT_STATE_RULES,
                             doc='what a sync does to optimizer states')
  t_local: float = tc.number(0.1, low=0, low_open=True,
                             doc='simulated seconds of local training between syncs')
  h_cap: int = tc.integer(1000, low=1, doc='the largest local step budget')
  outsiders: str = tc.choice('planned', OUTSIDER_CLOCKS,
                             doc="the steps of devices outside the group: 'planned' "
                             'floor(ŝ (t_local + t_sync)), at least 1 (docs/spec.md, step '
                             "3); 'carried' the whole steps their true speed fits into "
                             'the cycle as it lasts, the rest of the time carried over')
  speed_ema: float = tc.number(0.9, low=0, high=1, high_open=True,
                               doc="weight of the old estimate in the coordinator's EMA of "
                               'observed speeds (with speed jitter)')

  def check_devices(self, num_devices: int, prefix: str) -> None:
    k = selection.group_size(self.rho, num_devices)
    if k > num_devices:
      tc.fail(prefix + 'rho', self.rho, f'gives K = max(2, round(rho * N)) = {k} > N = '
              f'{num_devices} (num_devices): a sync needs at least two devices')


def apply_grid_point(config: Config, point, context: base.GridContext) -> Config:
  """The grid's ``h``: the fastest device runs H steps per cycle (t_local = H x its
  seconds per step)."""
  if 'h' in point:
    return config.replace(t_local=point['h'] * context.problem.seconds_per_step)
  return config


@flax.struct.dataclass
class State:
  """The whole simulation state of HADFL.

  Attributes:
    devices: stacked device states (models, optimizers, keys, versions).
    speed_est: the coordinator's profiled speeds, (N,).
    last_sync: cycle of each device's last sync, -1 if never, (N,).
    cycle: index of the next cycle.
    key: raw PRNG key of the coordinator (faults, selection, jitter).
    carry: seconds of a begun step each device carries into the next cycle, (N,)
      (``outsiders='carried'``; zeros otherwise).
  """

  devices: local.DeviceState
  speed_est: jax.Array
  last_sync: jax.Array
  cycle: jax.Array
  key: jax.Array
  carry: jax.Array


HadflState = State


def init(problem: base.Problem, key: jax.Array) -> State:
  device_key, coord_key = jax.random.split(key)
  n = problem.num_devices
  return State(
      devices=local.init_devices(device_key, problem.init_params, problem.optimizer, n),
      speed_est=jnp.asarray(problem.profile.speed_N, jnp.float32),
      last_sync=jnp.full((n,), -1, jnp.int32),
      cycle=jnp.zeros((), jnp.int32),
      key=coord_key,
      carry=jnp.zeros((n,), jnp.float32),
  )


def plan(problem: base.Problem, config: Config, state: State) -> dict[str, jax.Array]:
  """Steps 1, 2, 3, 5's draws and 7: who is up, who syncs, the budgets, who survives the
  sync, the cycle's length.

  A function of its own so that the reference implementation and tests can reuse the
  exact random draws.
  """
  n = problem.num_devices
  k = selection.group_size(config.rho, n)
  k_fault, k_select, k_jitter, k_sync = jax.random.split(
      jax.random.fold_in(state.key, state.cycle), 4)
  up_N, true_speed_N = engine_lib.environment(problem, k_fault, k_jitter, state.cycle)
  q_N = selection.selection_scores(config.selection, selection.SelectionInputs(
      version_N=state.devices.version, speed_N=state.speed_est, last_sync_N=state.last_sync,
      cycle=state.cycle, num_examples_N=jnp.asarray(problem.num_examples_N, jnp.float32)))
  idx_K, valid_K = selection.select(k_select, q_N, up_N, k)
  selected_N = selection.membership(idx_K, valid_K, n)
  bandwidth_N = jnp.asarray(problem.profile.bandwidth_N, jnp.float32)
  min_bandwidth = jnp.min(jnp.where(selected_N, bandwidth_N, jnp.inf))
  t_sync = clock.ring_allreduce_time(jnp.sum(valid_K), problem.model_bytes, min_bandwidth,
                                     problem.profile.latency)
  budgets_N = budgets_lib.step_budgets(state.speed_est, selected_N, up_N, config.t_local,
                                       t_sync, config.h_cap)
  # The clock: the slowest selected device's compute, then the sync.
  compute_N = clock.compute_time(budgets_N, true_speed_N)
  cycle_time = jnp.where(jnp.any(selected_N),
                         jnp.max(jnp.where(selected_N, compute_N, 0.0)) + t_sync,
                         config.t_local)
  carry_N = jnp.zeros_like(state.carry)
  if config.outsiders == 'carried':
    outsider_N = up_N & ~selected_N
    outsider_budgets_N, carry_N = budgets_lib.carried_budgets(
        true_speed_N, outsider_N, cycle_time, state.carry, config.h_cap)
    budgets_N = jnp.where(outsider_N, outsider_budgets_N, budgets_N)
  survive_K = faults.sync_survivors(k_sync, idx_K, valid_K, problem.faults.p_sync_fail)
  return dict(up_N=up_N, q_N=q_N, idx_K=idx_K, valid_K=valid_K, survive_K=survive_K,
              selected_N=selected_N, t_sync=t_sync, budgets_N=budgets_N,
              true_speed_N=true_speed_N, cycle_time=cycle_time, carry_N=carry_N)


def group_mixing(problem: base.Problem, config: Config, p: dict[str, jax.Array],
                 version_N: jax.Array) -> mixing.GroupMixing:
  """Step 4's group averaging in the cycle planned as ``p`` (:func:`plan`).

  Args:
    problem: the problem.
    config: HADFL's options (``weights``).
    p: the cycle's plan.
    version_N: the devices' versions after the cycle's local steps (the state's
      ``devices.version + p['budgets_N']``), which ``weights='version'`` uses.

  Returns:
    The sparse mixing (``mixing.group_to_dense`` gives its N x N matrix).
  """
  return mixing.GroupMixing(
      idx_K=p['idx_K'],
      weight_K=mixing.group_weights(
          config.weights, idx_K=p['idx_K'], valid_K=p['survive_K'],
          num_examples_N=jnp.asarray(problem.num_examples_N, jnp.float32),
          budgets_N=p['budgets_N'], version_N=version_N),
      valid_K=p['survive_K'])


def make(problem: base.Problem, config: Config,
         engine: engine_lib.EngineConfig | None = None) -> base.Algorithm:
  """HADFL on ``problem`` (see the module docstring)."""
  trainer = engine_lib.LocalTrainer(problem, engine)

  def cycle(state: State, data: device_data.DeviceData) -> tuple[State, base.CycleInfo]:
    p = plan(problem, config, state)
    budgets_N = p['budgets_N']

    devices, loss_N, synced_N = engine_lib.train_and_mix(
        trainer, state.devices, data, budgets_N,
        lambda trained: group_mixing(problem, config, p, trained.version),
        opt_state_rule=config.opt_state)

    bytes_N = jnp.where(synced_N, clock.ring_allreduce_bytes_per_peer(
        jnp.sum(p['survive_K']), problem.model_bytes), 0.0)

    speed_est = state.speed_est
    if problem.profile.jitter_sigma > 0:
      observed = config.speed_ema * speed_est + (1.0 - config.speed_ema) * p['true_speed_N']
      speed_est = jnp.where(p['up_N'] & (budgets_N > 0), observed, speed_est)

    new_state = state.replace(devices=devices, speed_est=speed_est,
                              last_sync=jnp.where(synced_N, state.cycle, state.last_sync),
                              cycle=state.cycle + 1, carry=p['carry_N'])
    return new_state, base.CycleInfo.make(p['cycle_time'], bytes_N, budgets_N, loss_N, p['up_N'],
                                          synced_N)

  return base.Algorithm(
      name='hadfl',
      init=lambda key: init(problem, key),
      cycle=cycle,
      device_params=lambda state: state.devices.params,
      consensus_params=lambda state: base.weighted_average(state.devices.params,
                                                           problem.data_weights_N),
  )


base.register('hadfl', sys.modules[__name__])
