"""Local training of all devices at once: one vmap inside one masked loop.

``docs/spec.md``, "One cycle c", step 4: every device that is up runs its own number of
minibatch steps H_i. All devices run together, one ``jax.vmap`` over the stacked device
axis inside a single ``lax.while_loop`` of ``max_i H_i`` iterations; device i's update
is masked off with ``jnp.where`` once ``t >= H_i``. The trip count is a traced value, so
new budgets never retrace the loop. :class:`LocalSchedule` optionally cuts the masked
work: devices sorted by budget run in buckets, each bucket for its own maximum budget.

The per-device functions (:func:`make_device_grad`, :func:`make_device_step`) are written
for one device, with no device axis, and lifted with ``jax.vmap`` in one place
(:func:`masked_local_train`), as rlax and optax write theirs.

Minibatch randomness: device i's t-th local step overall (its counter ``steps_i``) draws
its batch from ``fold_in(key_i, steps_i)``. A device's data stream therefore depends only
on its own key and its own progress, not on how the loop is scheduled, which keeps the
vmapped engine, the reference loop and resumed runs bit-compatible.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hadfl_jax.core import device_data as data_lib
from hadfl_jax.core import task as task_lib

PyTree = Any
ApplyFn = Callable[..., jax.Array]


@flax.struct.dataclass
class DeviceState:
  """Stacked state of the N devices; every leaf has a leading device axis.

  Attributes:
    params: model parameters x_i.
    opt_state: optimizer states o_i.
    key: raw uint32 PRNG keys, (N, 2); each device's minibatch stream.
    steps: int32 (N,), local steps the device has run in total (drives its stream).
    version: float32 (N,), v_i: local steps folded into x_i (averaged at a sync).
  """

  params: PyTree
  opt_state: PyTree
  key: jax.Array
  steps: jax.Array
  version: jax.Array

  @property
  def num_devices(self) -> int:
    return self.steps.shape[0]


def init_devices(
    key: chex.PRNGKey, init_params: PyTree, optimizer: optax.GradientTransformation, num_devices: int
) -> DeviceState:
  """All devices start from the same parameters (a common initialisation), fresh optimizers.

  Built in one jitted call, so the stacked state is materialised once (no transient
  copies: 10,000 devices of a 55k-parameter model are 2 GiB).
  """

  @jax.jit
  def build(key, init_params):
    params_N = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_devices,) + x.shape),
                            init_params)
    return DeviceState(
        params=params_N,
        opt_state=jax.vmap(optimizer.init)(params_N),
        key=jax.random.split(key, num_devices),
        steps=jnp.zeros((num_devices,), jnp.int32),
        version=jnp.zeros((num_devices,), jnp.float32),
    )

  return build(key, init_params)


def make_device_grad(apply_fn: ApplyFn, batch_size: int, task: task_lib.Task | None = None):
  """Returns ``grad(params, key, step, images_P, labels_P, count) -> (loss, grads)``.

  One device's minibatch gradient of the task's mean loss (default: softmax
  cross-entropy): the batch is sampled from the device's own shard with the key
  ``fold_in(key, step)``.
  """
  task = task or task_lib.Task()

  def device_grad(params, key, step, images_P, labels_P, count):
    x_B, y_B = data_lib.sample_batch(
        images_P, labels_P, count, jax.random.fold_in(key, step), batch_size, task.preprocess
    )

    def loss_fn(p):
      return task.mean_loss(apply_fn({'params': p}, x_B), y_B)

    return jax.value_and_grad(loss_fn)(params)

  return device_grad


def make_device_step(apply_fn: ApplyFn, optimizer: optax.GradientTransformation, batch_size: int,
                     task: task_lib.Task | None = None):
  """Returns one device's local SGD step.

  ``step(params, opt_state, key, step, images_P, labels_P, count)
  -> (params, opt_state, loss)``.
  """
  device_grad = make_device_grad(apply_fn, batch_size, task)

  def device_step(params, opt_state, key, step, images_P, labels_P, count):
    loss, grads = device_grad(params, key, step, images_P, labels_P, count)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return device_step


def select_tree(mask_N: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """Per device, ``new`` where ``mask_N`` else ``old`` (leaves with a leading N axis)."""

  def pick(n, o):
    return jnp.where(mask_N.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)

  return jax.tree.map(pick, new, old)


# The widest sub-bucket LocalSchedule(unroll=True) traces as separate step copies.
UNROLL_MAX_WIDTH = 4


@dataclasses.dataclass(frozen=True)
class LocalSchedule:
  """How :func:`masked_local_train` schedules the devices' masked steps (static).

  A single masked loop computes ``max_i H_i`` steps for every device, so with
  heterogeneous budgets much of its work is masked off (59% for the paper-like speeds
  1..8). With buckets, each cycle the devices of every shard are sorted by this cycle's
  budget (descending) and cut into consecutive buckets of the static widths
  ``bucket_widths``; the buckets run one after another, each in its own masked loop of
  ``max_{i in bucket} H_i`` iterations. Only the widths are static (see
  :func:`fit_bucket_widths`); which device lands in which bucket follows the traced
  budgets, so buckets adapt to selection, jitter and faults (a bucket of down devices
  costs nothing) and nothing retraces.

  ``max_width`` further splits every bucket into sub-buckets of at most that many
  devices per shard, which one ``lax.fori_loop`` runs one after another (one compiled
  body per bucket, whatever the number of sub-buckets), each for its own largest budget.
  On a CPU this is cache blocking: a sub-bucket's parameters, gradients and optimizer
  states stay in cache for all its steps instead of streaming N models through memory
  every step (:func:`max_width_for_bytes`).

  Buckets are gathered from and scattered back into the stacked state in place, so the
  temporaries (gradients, activations) are those of one (sub-)bucket, not of N devices.

  ``unroll`` runs a sub-bucket's devices as separate copies of the device step in one
  loop body instead of one vmapped step, with the same results. XLA:CPU runs independent
  ops at the same time on different cores, so one device's data movement (patches,
  pooling gradients, the optimizer's update) overlaps another's matmuls, where a vmapped
  step runs them one op after another; compile time grows with the width (at most
  :data:`UNROLL_MAX_WIDTH`). :func:`hadfl_jax.core.autotune.training_sub_buckets` times
  it against the vmapped step.

  Attributes:
    bucket_widths: devices per bucket in each shard, summing to N / num_shards; empty
      means one bucket of all the shard's devices.
    max_width: the most devices per shard in one sub-bucket; 0 means no limit. A bucket
      of width w runs as ceil(w / max_width) sub-buckets of equal width (the last padded
      with idle slots).
    num_shards: S, how many equal blocks the device axis is sharded into (see
      :mod:`hadfl_jax.sharding`); devices are sorted within their block, so bucketing
      never moves a device's state between accelerators.
    unroll: each sub-bucket's devices as separate step copies (one shard, ``max_width``
      from 1 to :data:`UNROLL_MAX_WIDTH`) instead of one vmapped step.
  """

  bucket_widths: tuple[int, ...] = ()
  max_width: int = 0
  num_shards: int = 1
  unroll: bool = False

  def __post_init__(self):
    if self.num_shards < 1 or self.max_width < 0 or any(w < 1 for w in self.bucket_widths):
      raise ValueError('LocalSchedule needs num_shards >= 1, max_width >= 0 and widths '
                       f'>= 1, got {self}')
    if self.unroll and not (self.num_shards == 1 and 1 <= self.max_width <= UNROLL_MAX_WIDTH):
      raise ValueError('LocalSchedule(unroll=True) needs one shard and max_width from 1 to '
                       f'{UNROLL_MAX_WIDTH} (the step is traced once per device of a '
                       f'sub-bucket), got {self}')

  def check(self, num_devices: int) -> None:
    """Raises ValueError unless the schedule fits ``num_devices`` devices."""
    if num_devices % self.num_shards:
      raise ValueError(f'{num_devices} devices cannot be split into {self.num_shards} '
                       'equal shards: use a number of devices divisible by the shard count')
    per_shard = num_devices // self.num_shards
    if self.bucket_widths and sum(self.bucket_widths) != per_shard:
      raise ValueError(f'bucket widths {self.bucket_widths} must sum to the {per_shard} '
                       'devices of a shard')

  def layout(self, num_devices: int) -> tuple[tuple[int, int, int], ...]:
    """``(span, count, width)`` per bucket: ``span`` sorted devices run as ``count``
    sub-buckets of ``width`` slots (``count * width >= span``)."""
    per_shard = num_devices // self.num_shards
    out = []
    for span in self.bucket_widths or (per_shard,):
      count = -(-span // self.max_width) if self.max_width else 1
      out.append((span, count, -(-span // count)))
    return tuple(out)

  def is_single_loop(self, num_devices: int) -> bool:
    return self.layout(num_devices) == ((num_devices // self.num_shards, 1,
                                         num_devices // self.num_shards),)

  def computed_steps(self, budgets_N) -> int:
    """Device-steps the schedule computes, masked or not, for these budgets (numpy).

    ``sum(budgets_N) / computed_steps`` is the useful fraction of the work; the single
    loop computes ``N * max(H)``.
    """
    budgets_N = np.asarray(budgets_N)
    h_SxL = -np.sort(-budgets_N.reshape(self.num_shards, -1), axis=1)
    total, start = 0, 0
    for span, count, width in self.layout(budgets_N.size):
      h_SxCW = np.zeros((self.num_shards, count * width), h_SxL.dtype)
      h_SxCW[:, :span] = h_SxL[:, start:start + span]
      start += span
      total += self.num_shards * width * int(h_SxCW.reshape(
          self.num_shards, count, width).max(axis=(0, 2)).sum())
    return total


CPU_BUCKET_MIB = 8.0  # Measured on a 2-core EPYC (32 MiB L3): see the README, Performance.


def default_bucket_mib() -> float:
  """Sub-bucket state budget when the config leaves it unset: cache blocking on CPU
  (:data:`CPU_BUCKET_MIB`); none on GPUs and TPUs, where the widest vmap is fastest."""
  return CPU_BUCKET_MIB if jax.default_backend() == 'cpu' else 0.0


def device_working_set_bytes(apply_fn: ApplyFn, params: PyTree, opt_state: PyTree,
                             x_B: jax.ShapeDtypeStruct) -> int:
  """An estimate of the memory one device's local step touches.

  Three copies of the device's state (parameters and optimizer state: the old, the
  gradient or update, the new) plus every intermediate value of the forward pass on one
  batch (what the backward pass reads back), from the forward pass's jaxpr; no
  compilation. Leaves may be arrays or ``jax.ShapeDtypeStruct``.

  Args:
    apply_fn: the model's ``apply``.
    params: one device's parameters.
    opt_state: one device's optimizer state.
    x_B: the shape and dtype of one batch of inputs.

  Returns:
    Bytes.
  """
  nbytes = lambda x: int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
  state = sum(nbytes(x) for x in jax.tree.leaves((params, opt_state)))
  jaxpr = jax.make_jaxpr(lambda p, x: apply_fn({'params': p}, x))(params, x_B)
  activations = sum(nbytes(v.aval) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars)
  return 3 * state + activations


def max_width_for_bytes(bytes_per_device: int, max_bytes: float) -> int:
  """The widest sub-bucket whose devices' working sets
  (:func:`device_working_set_bytes`) fit in ``max_bytes``; at least 1.
  ``max_bytes <= 0`` means no limit (0)."""
  if max_bytes <= 0:
    return 0
  return max(1, int(max_bytes // max(bytes_per_device, 1)))


def fit_bucket_widths(speed_N, num_buckets: int, num_shards: int = 1,
                      max_points: int = 512) -> tuple[int, ...]:
  """Static bucket widths for :class:`LocalSchedule`, fitted to the speed profile.

  Budgets are about proportional to the profiled speeds, so the widths minimise the
  computed device-steps ``sum_b width_b * max_{i in b} s_i`` over the speeds sorted in
  descending order (dynamic programming over at most ``max_points`` blocks of devices),
  ties broken towards equal widths. Devices of equal speed still get different budgets
  (selected devices train ``t_local``, the others ``t_local + t_sync``; faults), which the
  per-cycle sort puts in different buckets.

  Args:
    speed_N: the profiled speeds, (N,).
    num_buckets: G, the most buckets per shard.
    num_shards: S; the widths are per shard (N / S devices), fitted to the speed quantiles.
    max_points: resolution of the fit for large N.

  Returns:
    min(G, N / S) widths summing to N / S, or ``()`` (a single loop) for G = 1.
  """
  speed_N = np.asarray(speed_N, np.float64)
  n = speed_N.shape[0] // num_shards
  if num_buckets <= 1 or n <= 1:
    return ()
  sorted_n = np.interp(np.linspace(0, speed_N.size - 1, n), np.arange(speed_N.size),
                       -np.sort(-speed_N))
  m = min(n, max_points)
  edges_M = np.linspace(0, n, m + 1).round().astype(np.int64)
  speed_M = sorted_n[edges_M[:-1]]  # The fastest of each block.
  g = min(num_buckets, m)
  # A tiny tie-break towards equal widths: with equal speeds (where budgets still differ,
  # e.g. between selected and unselected devices) the buckets stay balanced.
  tie = 1e-9 * speed_M[0] / n
  cost_GxM = np.full((g + 1, m + 1), np.inf)
  arg_GxM = np.zeros((g + 1, m + 1), np.int64)
  cost_GxM[0, 0] = 0.0
  for k in range(1, g + 1):
    for j in range(1, m + 1):
      i = np.arange(j)
      w = edges_M[j] - edges_M[i]
      c = cost_GxM[k - 1, i] + w * speed_M[i] + tie * w * w
      arg_GxM[k, j] = int(np.argmin(c))
      cost_GxM[k, j] = c[arg_GxM[k, j]]
  bounds, j = [m], m
  for k in range(g, 0, -1):
    j = int(arg_GxM[k, j])
    bounds.append(j)
  widths = np.diff(edges_M[bounds[::-1]])
  return () if len(widths) == 1 else tuple(int(w) for w in widths)


def lift(device_step, unroll: bool = False):
  """``device_step`` over a leading device axis: ``jax.vmap``, or with ``unroll`` one
  plain call per device, results stacked (:class:`LocalSchedule`, ``unroll``). An axis of
  one device is always a plain call: XLA:CPU splits a loop fusion over threads along its
  outer dimension; a vmap of one device puts a dimension of size 1 there, and the step's
  largest copies (the convolution's patches) ran single-threaded
  (``benchmarks/step_profile.py``)."""
  vmapped = jax.vmap(device_step)

  def step_N(*args):
    n = jax.tree.leaves(args)[0].shape[0]
    if n != 1 and not unroll:
      return vmapped(*args)
    outs = [device_step(*jax.tree.map(lambda x, i=i: x[i], args)) for i in range(n)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return step_N


def _masked_loop(step_N, params, opt_state, steps_N, inputs, budgets_N):
  """The masked while loop over devices ``(params, opt_state, steps_N)`` (leading axis n).

  Args:
    step_N: the device step over a leading device axis (:func:`lift`).
    params: stacked parameters.
    opt_state: stacked optimizer states.
    steps_N: int32 (n,), each device's step counter.
    inputs: ``(key, images, labels, counts)`` with a leading axis n.
    budgets_N: int32 (n,), the local steps of each device.

  Returns:
    ``(params, opt_state, steps_N, loss_sum_N)`` after ``max(budgets_N)`` iterations,
    device i updated only while ``t < budgets_N[i]``.
  """
  key, images, labels, counts = inputs
  trip_count = jnp.max(budgets_N)

  def cond(carry):
    return carry[0] < trip_count

  def body(carry):
    t, params, opt_state, steps, loss_sum = carry
    new_params, new_opt, loss_N = step_N(params, opt_state, key, steps, images, labels, counts)
    if budgets_N.shape[0] == 1:
      # One device: the loop runs exactly its budget, so every step is active and there
      # is nothing to mask (a sub-bucket of width 1, what autotune picks on some CPUs).
      return t + 1, new_params, new_opt, steps + 1, loss_sum + loss_N
    active_N = t < budgets_N
    params = select_tree(active_N, new_params, params)
    opt_state = select_tree(active_N, new_opt, opt_state)
    steps = steps + active_N.astype(steps.dtype)
    loss_sum = loss_sum + jnp.where(active_N, loss_N, 0.0)
    return t + 1, params, opt_state, steps, loss_sum

  init = (jnp.zeros((), jnp.int32), params, opt_state, steps_N,
          jnp.zeros(budgets_N.shape, jnp.float32))
  _, params, opt_state, steps_N, loss_sum = jax.lax.while_loop(cond, body, init)
  return params, opt_state, steps_N, loss_sum


def _bucketed_loop(step_N, params, opt_state, steps_N, inputs, budgets_N,
                   schedule: LocalSchedule):
  """:func:`_masked_loop` run bucket by bucket (see :class:`LocalSchedule`)."""
  num_devices = budgets_N.shape[0]
  s = schedule.num_shards
  per_shard = num_devices // s

  def blocks(x):  # (N, ...) -> (S, L, ...): a free reshape, each shard keeps its rows.
    return x.reshape((s, per_shard) + x.shape[1:])

  def gather(x_SxL, idx_SxW):  # -> (S * W, ...); idle slots (index L) read row L - 1.
    x_SxW = jax.vmap(lambda x, i: x.at[i].get(mode='clip'))(x_SxL, idx_SxW)
    return x_SxW.reshape((-1,) + x_SxW.shape[2:])

  def scatter(x_SxL, idx_SxW, v):  # Idle slots are dropped.
    v_SxW = v.reshape(idx_SxW.shape + v.shape[1:])
    return jax.vmap(lambda x, i, u: x.at[i].set(u, mode='drop'))(x_SxL, idx_SxW, v_SxW)

  def run_bucket(carry, idx_SxW):
    take = lambda tree: jax.tree.map(lambda x: gather(x, idx_SxW), tree)
    out = _masked_loop(step_N, *take(carry[:3]), take(inputs_SxL), gather(h_SxL1, idx_SxW))
    return tuple(jax.tree.map(lambda x, v: scatter(x, idx_SxW, v), old, new)
                 for old, new in zip(carry, out))

  budgets_SxL = blocks(budgets_N)
  h_SxL1 = jnp.pad(budgets_SxL, ((0, 0), (0, 1)))  # Idle slot index L: budget 0.
  # Descending budgets within each shard; stable, so equal budgets keep device order.
  order_SxL = jnp.argsort(-budgets_SxL, axis=1, stable=True).astype(jnp.int32)
  inputs_SxL = jax.tree.map(blocks, inputs)
  carry = jax.tree.map(blocks, (params, opt_state, steps_N,
                                jnp.zeros(budgets_N.shape, jnp.float32)))
  start = 0
  for span, count, width in schedule.layout(num_devices):
    idx_SxCxW = jnp.pad(order_SxL[:, start:start + span],
                        ((0, 0), (0, count * width - span)),
                        constant_values=per_shard).reshape(s, count, width)
    start += span
    if count == 1:
      carry = run_bucket(carry, idx_SxCxW[:, 0])
    else:
      carry = jax.lax.fori_loop(
          0, count, lambda c, carry, idx=idx_SxCxW: run_bucket(carry, idx[:, c]), carry)
  return jax.tree.map(lambda x: x.reshape((num_devices,) + x.shape[2:]), carry)


def masked_local_train(
    device_step,
    devices: DeviceState,
    data: data_lib.DeviceData,
    budgets_N: jax.Array,
    schedule: LocalSchedule | None = None,
) -> tuple[DeviceState, jax.Array]:
  """Runs ``budgets_N[i]`` local steps on every device i, in the masked loops of
  ``schedule`` (by default one loop, all devices in one vmap).

  Args:
    device_step: a function from :func:`make_device_step`.
    devices: the stacked device states.
    data: the stacked device shards.
    budgets_N: int32 local step budgets H_i (0 for devices that do not train).
    schedule: how the masked steps are scheduled (default: one masked loop over all
      devices); every schedule gives every device the same result up to float rounding.

  Returns:
    The new device states (``steps`` and ``version`` advanced by H_i) and the mean
    training loss of each device over its steps this cycle (0 where H_i = 0).

  Raises:
    ValueError: the schedule does not fit N devices (:meth:`LocalSchedule.check`).
  """
  schedule = schedule or LocalSchedule()
  num_devices = devices.num_devices
  chex.assert_shape(budgets_N, (num_devices,))
  schedule.check(num_devices)
  step_N = lift(device_step, schedule.unroll)
  inputs = (devices.key, data.images, data.labels, data.counts)
  args = (step_N, devices.params, devices.opt_state, devices.steps, inputs, budgets_N)
  if schedule.is_single_loop(num_devices):
    params, opt_state, steps, loss_sum = _masked_loop(*args)
  else:
    params, opt_state, steps, loss_sum = _bucketed_loop(*args, schedule)
  devices = devices.replace(
      params=params,
      opt_state=opt_state,
      steps=steps,
      version=devices.version + budgets_N.astype(jnp.float32),
  )
  return devices, loss_sum / jnp.maximum(budgets_N, 1).astype(jnp.float32)
