"""Local training of all devices at once: one vmap inside one masked loop.

``HADFL.md``, "One HADFL cycle", step 3: every device that is up runs its own number of
minibatch steps H_i. All devices run together, one ``jax.vmap`` over the stacked device
axis inside a single ``lax.while_loop`` of ``max_i H_i`` iterations; device i's update
is masked off with ``jnp.where`` once ``t >= H_i``. The trip count is a traced value, so
new budgets never retrace the loop.

The per-device functions (:func:`make_device_grad`, :func:`make_device_step`) are written
for one device, with no device axis, and lifted with ``jax.vmap`` in one place
(:func:`masked_local_train`), as rlax and optax write theirs.

Minibatch randomness: device i's t-th local step overall (its counter ``steps_i``) draws
its batch from ``fold_in(key_i, steps_i)``. A device's data stream therefore depends only
on its own key and its own progress, not on how the loop is scheduled, which keeps the
vmapped engine, the reference loop and resumed runs bit-compatible.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax
import jax
import jax.numpy as jnp
import optax

from hadfl_jax import data as data_lib

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
  """All devices start from the same parameters (a common initialisation), fresh optimizers."""
  params_N = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_devices,) + x.shape), init_params)
  params_N = jax.tree.map(jnp.array, params_N)
  return DeviceState(
      params=params_N,
      opt_state=jax.vmap(optimizer.init)(params_N),
      key=jax.random.split(key, num_devices),
      steps=jnp.zeros((num_devices,), jnp.int32),
      version=jnp.zeros((num_devices,), jnp.float32),
  )


def cross_entropy_loss(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  chex.assert_rank([logits_BxC, labels_B], [2, 1])
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B).mean()


def make_device_grad(apply_fn: ApplyFn, batch_size: int):
  """Returns ``grad(params, key, step, images_P, labels_P, count) -> (loss, grads)``.

  One device's minibatch gradient: the batch is sampled from the device's own shard
  with the key ``fold_in(key, step)``.
  """

  def device_grad(params, key, step, images_P, labels_P, count):
    x_B, y_B = data_lib.sample_batch(
        images_P, labels_P, count, jax.random.fold_in(key, step), batch_size
    )

    def loss_fn(p):
      return cross_entropy_loss(apply_fn({'params': p}, x_B), y_B)

    return jax.value_and_grad(loss_fn)(params)

  return device_grad


def make_device_step(apply_fn: ApplyFn, optimizer: optax.GradientTransformation, batch_size: int):
  """Returns one device's local SGD step.

  ``step(params, opt_state, key, step, images_P, labels_P, count)
  -> (params, opt_state, loss)``.
  """
  device_grad = make_device_grad(apply_fn, batch_size)

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


def masked_local_train(
    device_step,
    devices: DeviceState,
    data: data_lib.DeviceData,
    budgets_N: jax.Array,
) -> tuple[DeviceState, jax.Array]:
  """Runs ``budgets_N[i]`` local steps on every device i, all devices in one vmap.

  Args:
    device_step: a function from :func:`make_device_step`.
    devices: the stacked device states.
    data: the stacked device shards.
    budgets_N: int32 local step budgets H_i (0 for devices that do not train).

  Returns:
    The new device states (``steps`` and ``version`` advanced by H_i) and the mean
    training loss of each device over its steps this cycle (0 where H_i = 0).
  """
  chex.assert_shape(budgets_N, (devices.num_devices,))
  step_N = jax.vmap(device_step)

  def cond(carry):
    t = carry[0]
    return t < jnp.max(budgets_N)

  def body(carry):
    t, params, opt_state, steps, loss_sum = carry
    new_params, new_opt, loss_N = step_N(
        params, opt_state, devices.key, steps, data.images, data.labels, data.counts
    )
    active_N = t < budgets_N
    params = select_tree(active_N, new_params, params)
    opt_state = select_tree(active_N, new_opt, opt_state)
    steps = steps + active_N.astype(steps.dtype)
    loss_sum = loss_sum + jnp.where(active_N, loss_N, 0.0)
    return t + 1, params, opt_state, steps, loss_sum

  init = (
      jnp.zeros((), jnp.int32),
      devices.params,
      devices.opt_state,
      devices.steps,
      jnp.zeros(budgets_N.shape, jnp.float32),
  )
  _, params, opt_state, steps, loss_sum = jax.lax.while_loop(cond, body, init)
  devices = devices.replace(
      params=params,
      opt_state=opt_state,
      steps=steps,
      version=devices.version + budgets_N.astype(jnp.float32),
  )
  return devices, loss_sum / jnp.maximum(budgets_N, 1).astype(jnp.float32)
