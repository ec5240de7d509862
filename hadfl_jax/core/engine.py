"""The engine every algorithm runs on: settings, the local trainer, the shared cycle.

* :class:`EngineConfig` (``config.engine``): how the simulation is executed (buckets,
  sub-buckets, the mesh, multi-host), never what it computes.
* :class:`LocalTrainer`: local training of all devices (one vmap, masked loops in
  budget-sorted buckets; :mod:`hadfl_jax.core.local`), built once from the problem and
  the engine settings and used by every algorithm.
* The shared decentralized cycle: :func:`environment` draws who is up and the true
  speeds, the algorithm plans budgets and a mixing, :func:`train_and_mix` trains, mixes
  models and versions and applies the optimizer-state rule (:data:`OPT_STATE_RULES`),
  and :meth:`hadfl_jax.core.problem.CycleInfo.make` reports. An algorithm supplies only
  its plan and its clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from hadfl_jax import sharding
from hadfl_jax import typed_config as tc
from hadfl_jax.core import autotune
from hadfl_jax.core import device_data
from hadfl_jax.core import faults as faults_lib
from hadfl_jax.core import local
from hadfl_jax.core import mixing as mixing_lib
from hadfl_jax.core import problem as problem_lib
from hadfl_jax.registry import Registry

PyTree = Any


@dataclasses.dataclass(frozen=True)
class EngineConfig(tc.Section):
  """How the simulation runs (``config.engine``; README, "Performance")."""

  SECTION = 'engine'

  num_buckets: int = tc.integer(8, low=1, doc='local training in at most this many '
                                'budget-sorted buckets; 1 runs one masked loop')
  bucket_mib: float | None = tc.number(
      None, low=0, optional=True, doc='MiB of device working sets per sub-bucket (cache '
      'blocking, vmapped); None: the width, and vmapped or as step copies, measured fastest '
      'on CPU (core/autotune.py), no limit on GPU/TPU; 0: no limit')
  mesh_shards: int = tc.integer(0, low=0, doc='accelerators the device axis is sharded '
                                'over; 0 = all')
  conv_impl: str = tc.choice('auto', autotune.CHOICES,
                             doc="convolution of models that offer a choice; 'auto': the "
                             'faster for training and for evaluation, each measured on this '
                             'machine (hadfl_jax/core/autotune.py)')
  distributed: bool = tc.boolean(False, doc='multi-host: jax.distributed.initialize() first')
  coordinator_address: str | None = tc.string(None, optional=True)
  num_processes: int | None = tc.integer(None, low=1, optional=True)
  process_id: int | None = tc.integer(None, low=0, optional=True)

  def check(self, prefix: str) -> None:
    if (self.num_processes is not None and self.process_id is not None
        and self.process_id >= self.num_processes):
      tc.fail(prefix + 'process_id', self.process_id,
              f'must be < {prefix}num_processes={self.num_processes}')
    if not self.distributed and (self.num_processes or 1) > 1:
      tc.fail(prefix + 'num_processes', self.num_processes, f'needs {prefix}distributed=True')

  def check_devices(self, num_devices: int, prefix: str) -> None:
    if self.mesh_shards and num_devices % self.mesh_shards:
      divisors = [s for s in range(1, num_devices + 1) if num_devices % s == 0]
      tc.fail(prefix + 'mesh_shards', self.mesh_shards,
              f'num_devices={num_devices} must be a multiple of it: use a divisor of '
              f'{num_devices} ({divisors}), or 0 for all accelerators')

  def resolved_bucket_mib(self) -> float:
    return local.default_bucket_mib() if self.bucket_mib is None else self.bucket_mib

  def loop_width(self, apply_fn, params: PyTree, opt_state: PyTree, batch_size: int,
                 input_shape: tuple[int, ...], num_devices: int) -> int:
    """How many devices one masked loop vmaps at most: a shard's, cut to the sub-bucket
    that fits ``bucket_mib`` (:meth:`LocalTrainer.schedule_for`)."""
    width = max(1, num_devices // sharding.mesh_size(self))
    mib = self.resolved_bucket_mib()
    if mib > 0:
      x_B = jax.ShapeDtypeStruct((batch_size,) + tuple(input_shape), jnp.float32)
      bytes_per_device = local.device_working_set_bytes(apply_fn, params, opt_state, x_B)
      width = min(width, local.max_width_for_bytes(bytes_per_device, mib * 2**20))
    return width


def sub_buckets(model, params, optimizer, task, batch_size: int,
                input_shape: tuple[int, ...], shard_width: int, bucket_mib: float | None,
                num_shards: int = 1) -> autotune.SubBuckets:
  """How a sub-bucket of the local loop runs, as ``engine.bucket_mib`` says: ``None`` on CPU
  measures its width and whether its devices run as one vmapped step or as separate step
  copies (:func:`hadfl_jax.core.autotune.training_sub_buckets`; copies only on one shard;
  with several processes, or measurement off, the backend's budget: every process must
  run the same program), a number sizes a vmapped sub-bucket by that budget of MiB
  (:func:`hadfl_jax.core.local.max_width_for_bytes`), 0 is no limit.
  """
  if (bucket_mib is None and jax.default_backend() == 'cpu'
      and jax.process_count() == 1 and autotune.enabled()):
    return autotune.training_sub_buckets(model, params, optimizer, task, batch_size,
                                         tuple(input_shape), shard_width=shard_width,
                                         unroll=num_shards == 1)
  mib = local.default_bucket_mib() if bucket_mib is None else bucket_mib
  if mib <= 0:
    return autotune.SubBuckets(0)
  x_B = jax.ShapeDtypeStruct((batch_size,) + tuple(input_shape), jnp.float32)
  opt_state = jax.eval_shape(optimizer.init, params)
  return autotune.SubBuckets(local.max_width_for_bytes(
      local.device_working_set_bytes(model.apply, params, opt_state, x_B), mib * 2**20))


def problem_sub_buckets(problem: problem_lib.Problem, engine: EngineConfig,
                        input_shape: tuple[int, ...]) -> autotune.SubBuckets:
  """:func:`sub_buckets` for ``problem``'s local training under ``engine``: what
  :class:`LocalTrainer` runs, and what a run records."""
  num_shards = sharding.mesh_size(engine)
  return sub_buckets(problem.model, problem.init_params, problem.optimizer, problem.task,
                     problem.batch_size, tuple(input_shape), problem.num_devices // num_shards,
                     engine.bucket_mib, num_shards)


class LocalTrainer:
  """``trainer(devices, data, budgets_N) -> (devices, loss_N)`` for one problem.

  Built once per algorithm from the problem and the engine settings: the per-device step
  (the problem's model, optimizer and task), the bucket widths fitted to the speed
  profile, the sub-buckets (:func:`sub_buckets`: measured on CPU, else sized by
  ``engine.bucket_mib``), the shard count. Every
  schedule gives every device the same result up to float rounding.

  Args:
    problem: the problem.
    engine: the engine settings (default :class:`EngineConfig`).
    bucket_widths: the algorithm's own bucket widths per shard, when it knows its budgets'
      shape better than the speed profile does: ``()`` for equal budgets (one loop: no
      masked work, the widest vmap), e.g. ``(K, N - K)`` for K of N devices training.
      None fits ``engine.num_buckets`` widths to the profiled speeds (budgets about
      proportional to speed, as HADFL's). With ``engine.num_buckets = 1`` there is always
      one loop.
  """

  def __init__(self, problem: problem_lib.Problem, engine: EngineConfig | None = None,
               bucket_widths: tuple[int, ...] | None = None):
    self.problem = problem
    self.engine = engine or EngineConfig()
    self.num_shards = sharding.mesh_size(self.engine)
    n = problem.num_devices
    sharding.check_divisible(n, self.num_shards)
    self.device_step = local.make_device_step(
        problem.model.apply, problem.optimizer, problem.batch_size, problem.task)
    if self.engine.num_buckets == 1:
      bucket_widths = ()
    elif bucket_widths is None:
      bucket_widths = local.fit_bucket_widths(
          problem.profile.speed_N, self.engine.num_buckets, self.num_shards)
    self._bucket_widths = tuple(w for w in bucket_widths if w > 0)
    self._schedules: dict[tuple, local.LocalSchedule] = {}
    if problem.input_shape:  # Measured now, not while a cycle is traced.
      self.schedule_for(problem.input_shape)

  def schedule_for(self, input_shape: tuple[int, ...]) -> local.LocalSchedule:
    """The static schedule for inputs of one example's ``input_shape``."""
    key = tuple(input_shape)
    if key not in self._schedules:
      plan = problem_sub_buckets(self.problem, self.engine, key)
      schedule = local.LocalSchedule(bucket_widths=self._bucket_widths, max_width=plan.width,
                                     num_shards=self.num_shards, unroll=plan.unroll)
      schedule.check(self.problem.num_devices)
      self._schedules[key] = schedule
    return self._schedules[key]

  def __call__(self, devices: local.DeviceState, data: device_data.DeviceData,
               budgets_N: jax.Array) -> tuple[local.DeviceState, jax.Array]:
    return local.masked_local_train(self.device_step, devices, data, budgets_N,
                                    self.schedule_for(data.images.shape[2:]))


# What an aggregation does to the optimizer states of the devices that took part:
# rule(mix, own_N, params_N, synced_N, optimizer) -> opt_state_N, where ``mix(tree)``
# applies this cycle's mixing to a stacked tree.
OptStateRule = Callable[..., PyTree]
OPT_STATE_RULES: Registry[OptStateRule] = Registry('optimizer-state rule')
OPT_STATE_RULES.register('average', lambda mix, own, params, synced_N, optimizer: mix(own))
OPT_STATE_RULES.register('keep', lambda mix, own, params, synced_N, optimizer: own)
OPT_STATE_RULES.register(
    'reset', lambda mix, own, params, synced_N, optimizer: local.select_tree(
        synced_N, jax.vmap(optimizer.init)(params), own))


def environment(problem: problem_lib.Problem, key_fault: jax.Array, key_jitter: jax.Array,
                cycle: jax.Array) -> tuple[jax.Array, jax.Array]:
  """This cycle's ``(up_N, true_speed_N)``: faults (``problem.faults``) and speed jitter
  (``problem.profile.jitter_sigma``), the same for every algorithm."""
  n = problem.num_devices
  up_N = faults_lib.up_mask(key_fault, cycle, n, problem.faults.p_drop,
                            problem.faults.trace(n))
  speed_N = jnp.asarray(problem.profile.speed_N, jnp.float32)
  if problem.profile.jitter_sigma > 0:
    speed_N = speed_N * jnp.exp(problem.profile.jitter_sigma * jax.random.normal(key_jitter, (n,)))
  return up_N, speed_N


def mix_devices(devices: local.DeviceState, mix: mixing_lib.Mixing, *, opt_state_rule: str,
                optimizer) -> tuple[local.DeviceState, jax.Array]:
  """Applies a mixing to models and versions, and the optimizer-state rule.

  Returns:
    The devices, and ``synced_N``: who took part in an aggregation.
  """
  synced_N = mixing_lib.synced(mix, devices.num_devices)
  apply = lambda tree: mixing_lib.apply(mix, tree)
  params = apply(devices.params)
  opt_state = OPT_STATE_RULES.get(opt_state_rule)(apply, devices.opt_state, params, synced_N,
                                                  optimizer)
  return devices.replace(params=params, opt_state=opt_state,
                         version=apply(devices.version)), synced_N


def train_and_mix(trainer: LocalTrainer, devices: local.DeviceState,
                  data: device_data.DeviceData, budgets_N: jax.Array,
                  make_mixing: Callable[[local.DeviceState], mixing_lib.Mixing], *,
                  opt_state_rule: str) -> tuple[local.DeviceState, jax.Array, jax.Array]:
  """The shared decentralized cycle: local training, then the mixing that
  ``make_mixing(trained_devices)`` plans (weights may depend on the new versions).

  Returns:
    ``(devices, loss_N, synced_N)``.
  """
  devices, loss_N = trainer(devices, data, budgets_N)
  devices, synced_N = mix_devices(devices, make_mixing(devices), opt_state_rule=opt_state_rule,
                                  optimizer=trainer.problem.optimizer)
  return devices, loss_N, synced_N
