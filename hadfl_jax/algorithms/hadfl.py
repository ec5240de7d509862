"""HADFL: heterogeneity-aware decentralized federated learning.

Cao, Lian, Liu, Zhu, Ji. "HADFL: Heterogeneity-aware Decentralized Federated Learning
Framework". DAC 2021. arXiv:2111.08274.

The paper's full text is not available to this project; this module implements the
reconstruction specified in ``HADFL.md`` ("One HADFL cycle"), every open choice being an
option below. One cycle c:

1. Selection: K = max(2, round(rho N)) devices drawn without replacement, probability
   proportional to q_i (``selection``), among the devices that are up.
2. Step budgets: selected devices train ``t_local`` seconds, the others
   ``t_local + t_sync(S_c)``, at their profiled speeds (:mod:`hadfl_jax.core.budgets`).
3. Local training: all devices in one vmapped, masked loop (:mod:`hadfl_jax.core.local`).
4. Aggregation: the selected devices that survive the sync average their models with
   weights a_j (``weights``) by a sparse gather / weighted sum / scatter
   (:mod:`hadfl_jax.core.mixing`); versions are averaged the same way; optimizer states
   per ``opt_state``.
5. Clock: T_c = max_{i in S_c} H_i / s_i + t_sync(S_c), ring all-reduce cost
   (:mod:`hadfl_jax.core.clock`).

The coordinator only schedules (who syncs, how many steps): model parameters move only
between the selected peers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp

from hadfl_jax import data as data_lib
from hadfl_jax import sharding
from hadfl_jax.algorithms import base
from hadfl_jax.core import budgets as budgets_lib
from hadfl_jax.core import clock
from hadfl_jax.core import faults
from hadfl_jax.core import local
from hadfl_jax.core import mixing
from hadfl_jax.core import selection

OPT_STATE_KINDS = ('average', 'keep', 'reset')


@dataclasses.dataclass(frozen=True)
class HadflOptions:
  """HADFL's choices (``config.hadfl``, ``config.faults``, ``config.profile``).

  Attributes:
    rho: fraction of devices that synchronise per cycle; K = max(2, round(rho N)).
    selection: q_i rule, one of :data:`selection.SELECTION_KINDS`.
    weights: averaging weights, one of :data:`mixing.WEIGHT_KINDS`.
    opt_state: what a sync does to optimizer states, one of :data:`OPT_STATE_KINDS`.
    t_local: simulated seconds of local training between syncs.
    h_cap: the largest local step budget.
    p_drop: probability that a device is down in a cycle.
    p_sync_fail: probability that a selected device fails during the sync.
    down_trace: (device, first_cycle, end_cycle) rows of forced downtime.
    jitter_sigma: per-cycle speed jitter, true speed = s_i exp(sigma * normal).
    speed_ema: weight of the old estimate in the coordinator's EMA of observed speeds.
    num_buckets: local training runs in up to this many buckets of devices sorted by
      budget, each for its own largest budget (``config.engine.num_buckets``; see
      :class:`local.LocalSchedule`); 1 runs one masked loop over all devices.
    bucket_mib: the most MiB of device working sets (state, gradients, activations)
      in one sub-bucket of local training (``config.engine.bucket_mib``; cache blocking
      on CPU, see :func:`local.max_width_for_bytes`); 0 means no limit.
    num_shards: accelerators the device axis is sharded over (buckets are formed
      within each shard); N must be a multiple of it.
  """

  rho: float = 0.5
  selection: str = 'version'
  weights: str = 'data'  # The spec's default; configs/default.py picks 'version'.
  opt_state: str = 'average'
  t_local: float = 0.5
  h_cap: int = 1000
  p_drop: float = 0.0
  p_sync_fail: float = 0.0
  down_trace: tuple[tuple[int, int, int], ...] = ()
  jitter_sigma: float = 0.0
  speed_ema: float = 0.9
  num_buckets: int = 1
  bucket_mib: float = 0.0
  num_shards: int = 1

  @classmethod
  def from_config(cls, config) -> 'HadflOptions':
    return cls(
        rho=config.hadfl.rho,
        selection=config.hadfl.selection,
        weights=config.hadfl.weights,
        opt_state=config.hadfl.opt_state,
        t_local=config.hadfl.t_local,
        h_cap=config.hadfl.h_cap,
        p_drop=config.faults.p_drop,
        p_sync_fail=config.faults.p_sync_fail,
        down_trace=tuple(tuple(int(v) for v in row) for row in config.faults.down_trace),
        jitter_sigma=config.profile.jitter_sigma,
        speed_ema=config.profile.speed_ema,
        num_buckets=config.engine.num_buckets if 'engine' in config else 1,
        bucket_mib=(local.default_bucket_mib() if config.engine.get('bucket_mib') is None
                    else config.engine.bucket_mib) if 'engine' in config else 0.0,
        num_shards=sharding.mesh_size(config.engine) if 'engine' in config else 1,
    )


@flax.struct.dataclass
class HadflState:
  """The whole simulation state of HADFL.

  Attributes:
    devices: stacked device states (models, optimizers, keys, versions).
    speed_est: the coordinator's profiled speeds, (N,).
    last_sync: cycle of each device's last sync, -1 if never, (N,).
    cycle: index of the next cycle.
    key: raw PRNG key of the coordinator (faults, selection, jitter).
  """

  devices: local.DeviceState
  speed_est: jax.Array
  last_sync: jax.Array
  cycle: jax.Array
  key: jax.Array


class Hadfl:
  """The HADFL algorithm over a :class:`base.Problem` (see the module docstring)."""

  name = 'hadfl'

  def __init__(self, problem: base.Problem, options: HadflOptions):
    self.problem = problem
    self.options = options
    self.num_devices = problem.num_devices
    self.k = selection.group_size(options.rho, self.num_devices)
    if self.k > self.num_devices:
      raise ValueError(
          f'hadfl.rho={options.rho} gives K={self.k} > N={self.num_devices}: K = '
          'max(2, round(rho * N)) needs at least two devices'
      )
    self._trace = faults.parse_down_trace(options.down_trace, self.num_devices)
    self._device_step = local.make_device_step(
        problem.model.apply, problem.optimizer, problem.batch_size
    )
    sharding.check_divisible(self.num_devices, options.num_shards)
    self._bucket_widths = local.fit_bucket_widths(
        problem.profile.speed_N, options.num_buckets, options.num_shards)
    self._schedules = {}

  def schedule_for(self, data: data_lib.DeviceData) -> local.LocalSchedule:
    """The local-training schedule (static; sub-bucket width from the input shape)."""
    key = (data.images.shape[2:], self.problem.batch_size)
    if key not in self._schedules:
      max_width = 0
      if self.options.bucket_mib > 0:
        x_B = jax.ShapeDtypeStruct((self.problem.batch_size,) + data.images.shape[2:],
                                   jnp.float32)
        opt_state = jax.eval_shape(self.problem.optimizer.init, self.problem.init_params)
        max_width = local.max_width_for_bytes(
            local.device_working_set_bytes(self.problem.model.apply, self.problem.init_params,
                                           opt_state, x_B),
            self.options.bucket_mib * 2**20)
      self._schedules[key] = local.LocalSchedule(
          bucket_widths=self._bucket_widths, max_width=max_width,
          num_shards=self.options.num_shards)
      self._schedules[key].check(self.num_devices)
    return self._schedules[key]

  def init(self, key: jax.Array) -> HadflState:
    device_key, coord_key = jax.random.split(key)
    return HadflState(
        devices=local.init_devices(
            device_key, self.problem.init_params, self.problem.optimizer, self.num_devices
        ),
        speed_est=jnp.asarray(self.problem.profile.speed_N, jnp.float32),
        last_sync=jnp.full((self.num_devices,), -1, jnp.int32),
        cycle=jnp.zeros((), jnp.int32),
        key=coord_key,
    )

  def device_params(self, state: HadflState) -> Any:
    return state.devices.params

  def consensus_params(self, state: HadflState) -> Any:
    return base.weighted_average(state.devices.params, self.problem.data_weights_N)

  def plan(self, state: HadflState) -> dict[str, jax.Array]:
    """Steps 1, 2 and the fault draws: who is up, who syncs, the budgets.

    Split out of :meth:`cycle` so that the reference implementation and tests can
    reuse the exact random draws.
    """
    opts = self.options
    n = self.num_devices
    k_fault, k_select, k_jitter, k_sync = jax.random.split(
        jax.random.fold_in(state.key, state.cycle), 4
    )
    up_N = faults.up_mask(k_fault, state.cycle, n, opts.p_drop, self._trace)
    q_N = selection.selection_scores(
        opts.selection,
        version_N=state.devices.version,
        speed_N=state.speed_est,
        last_sync_N=state.last_sync,
        cycle=state.cycle,
    )
    idx_K, valid_K = selection.select(k_select, q_N, up_N, self.k)
    selected_N = selection.membership(idx_K, valid_K, n)
    bandwidth_N = jnp.asarray(self.problem.profile.bandwidth_N, jnp.float32)
    min_bandwidth = jnp.min(jnp.where(selected_N, bandwidth_N, jnp.inf))
    t_sync = clock.ring_allreduce_time(
        jnp.sum(valid_K), self.problem.model_bytes, min_bandwidth, self.problem.profile.latency
    )
    budgets_N = budgets_lib.step_budgets(
        state.speed_est, selected_N, up_N, opts.t_local, t_sync, opts.h_cap
    )
    true_speed_N = jnp.asarray(self.problem.profile.speed_N, jnp.float32)
    if opts.jitter_sigma > 0:
      true_speed_N = true_speed_N * jnp.exp(opts.jitter_sigma * jax.random.normal(k_jitter, (n,)))
    survive_K = faults.sync_survivors(k_sync, idx_K, valid_K, opts.p_sync_fail)
    return dict(
        up_N=up_N,
        q_N=q_N,
        idx_K=idx_K,
        valid_K=valid_K,
        survive_K=survive_K,
        selected_N=selected_N,
        t_sync=t_sync,
        budgets_N=budgets_N,
        true_speed_N=true_speed_N,
    )

  def cycle(
      self, state: HadflState, data: data_lib.DeviceData
  ) -> tuple[HadflState, base.CycleInfo]:
    """One HADFL cycle (pure; jit it once, it never retraces)."""
    opts = self.options
    n = self.num_devices
    plan = self.plan(state)
    budgets_N = plan['budgets_N']

    devices, loss_N = local.masked_local_train(
        self._device_step, state.devices, data, budgets_N, self.schedule_for(data))

    group = mixing.GroupMixing(
        idx_K=plan['idx_K'],
        weight_K=mixing.group_weights(
            opts.weights,
            idx_K=plan['idx_K'],
            valid_K=plan['survive_K'],
            num_examples_N=jnp.asarray(self.problem.num_examples_N, jnp.float32),
            budgets_N=budgets_N,
            version_N=devices.version,
        ),
        valid_K=plan['survive_K'],
    )
    synced_N = selection.membership(plan['idx_K'], plan['survive_K'], n) & group.active
    params = mixing.apply_group(group, devices.params)
    if opts.opt_state == 'average':
      opt_state = mixing.apply_group(group, devices.opt_state)
    elif opts.opt_state == 'reset':
      opt_state = local.select_tree(
          synced_N, jax.vmap(self.problem.optimizer.init)(params), devices.opt_state
      )
    elif opts.opt_state == 'keep':
      opt_state = devices.opt_state
    else:
      raise ValueError(f'hadfl.opt_state must be one of {OPT_STATE_KINDS}, got {opts.opt_state!r}')
    devices = devices.replace(
        params=params, opt_state=opt_state, version=mixing.apply_group(group, devices.version)
    )

    # The clock: the slowest selected device's compute, then the sync.
    compute_N = clock.compute_time(budgets_N, plan['true_speed_N'])
    any_selected = jnp.any(plan['selected_N'])
    cycle_time = jnp.where(
        any_selected,
        jnp.max(jnp.where(plan['selected_N'], compute_N, 0.0)) + plan['t_sync'],
        opts.t_local,
    )
    bytes_N = jnp.where(
        synced_N,
        clock.ring_allreduce_bytes_per_peer(jnp.sum(plan['survive_K']), self.problem.model_bytes),
        0.0,
    )

    speed_est = state.speed_est
    if opts.jitter_sigma > 0:
      observed = opts.speed_ema * speed_est + (1.0 - opts.speed_ema) * plan['true_speed_N']
      speed_est = jnp.where(plan['up_N'] & (budgets_N > 0), observed, speed_est)

    new_state = state.replace(
        devices=devices,
        speed_est=speed_est,
        last_sync=jnp.where(synced_N, state.cycle, state.last_sync),
        cycle=state.cycle + 1,
    )
    info = base.CycleInfo(
        cycle_time=cycle_time.astype(jnp.float32),
        bytes_sent_N=bytes_N.astype(jnp.float32),
        server_bytes=jnp.zeros((), jnp.float32),
        budgets_N=budgets_N,
        train_loss_N=loss_N,
        up_N=plan['up_N'],
        synced_N=synced_N,
    )
    return new_state, info

