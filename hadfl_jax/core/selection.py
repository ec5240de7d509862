"""Probabilistic selection of the devices that synchronise in a cycle.

``docs/spec.md``, "One cycle c", step 2: the coordinator draws K distinct devices without
replacement, with probability proportional to q_i, among the devices that are up. The
draw is the successive-sampling (Plackett-Luce) scheme: pick one device with probability
q_i / sum(q), remove it, repeat. It is implemented with the Gumbel-top-k trick, which
gives exactly that distribution in one ``top_k`` and has static shapes, so the jitted
cycle never retraces when the selected set changes.

The weights q_i come from a rule in :data:`RULES`; a rule of one's own is one function::

  @selection.RULES.register('fresh_first')
  def fresh_first(x: selection.SelectionInputs):
    return 1.0 / (1.0 + x.version_N)
"""

from __future__ import annotations

import math

import chex
import flax
import jax
import jax.numpy as jnp

from hadfl_jax.registry import Registry

RULES: Registry = Registry('selection rule')


@flax.struct.dataclass
class SelectionInputs:
  """What a selection rule may look at (traced arrays of the current cycle).

  Attributes:
    version_N: v_i, local steps folded into each model.
    speed_N: the coordinator's profiled speeds s_i.
    last_sync_N: cycle of each device's last sync, -1 if never.
    cycle: the current cycle index.
    num_examples_N: n_i, examples held by each device.
  """

  version_N: chex.Array
  speed_N: chex.Array
  last_sync_N: chex.Array
  cycle: chex.Numeric
  num_examples_N: chex.Array


@RULES.register('version')
def version_rule(x: SelectionInputs) -> chex.Array:
  """q = v + 1: devices whose models hold more training are drawn more often."""
  return x.version_N.astype(jnp.float32) + 1.0


@RULES.register('speed')
def speed_rule(x: SelectionInputs) -> chex.Array:
  """q = s: fast devices are drawn more often."""
  return x.speed_N.astype(jnp.float32)


@RULES.register('uniform')
def uniform_rule(x: SelectionInputs) -> chex.Array:
  """q = 1."""
  return jnp.ones_like(x.speed_N, jnp.float32)


@RULES.register('staleness')
def staleness_rule(x: SelectionInputs) -> chex.Array:
  """q = 1 + cycles since the device last synchronised (from cycle -1 if never)."""
  return 1.0 + (x.cycle - x.last_sync_N).astype(jnp.float32)


def group_size(rho: float, num_devices: int) -> int:
  """K = max(2, round(rho * N)), rounding halves up (not Python's banker's rounding).

  rho * N is rounded to 9 decimals first: in binary floating point 0.58 * 25 is
  14.499999999999998, a half that would otherwise round down."""
  return max(2, int(math.floor(round(rho * num_devices, 9) + 0.5)))


def selection_scores(kind: str, inputs: SelectionInputs) -> chex.Array:
  """Unnormalised selection weights q_i (N,) of every device, all > 0, by the rule
  registered as ``kind`` in :data:`RULES` (built-ins: ``version``, ``speed``,
  ``uniform``, ``staleness``).

  Raises:
    KeyError: an unregistered rule, naming the registered ones.
  """
  q_N = RULES.get(kind)(inputs)
  chex.assert_shape(q_N, inputs.speed_N.shape)
  return q_N.astype(jnp.float32)


def select(
    key: chex.PRNGKey, q_N: chex.Array, up_N: chex.Array, k: int
) -> tuple[chex.Array, chex.Array]:
  """Draws K distinct devices, probability proportional to q, among those that are up.

  If fewer than K devices are up, all that are up are selected; with fewer than two,
  nobody is (a group of one has nothing to average with).

  Args:
    key: PRNG key of this draw.
    q_N: positive weights, shape (N,).
    up_N: bool, devices that can be selected.
    k: K, the group size (static).

  Returns:
    ``(idx_K, valid_K)``: int32 device indices, and bool flags telling which slots hold
    a selected device. Slots that are not valid hold index N (out of range), so that a
    scatter with ``mode='drop'`` ignores them.
  """
  chex.assert_rank([q_N, up_N], 1)
  num_devices = q_N.shape[0]
  gumbel_N = jax.random.gumbel(key, q_N.shape)
  score_N = jnp.where(up_N, jnp.log(q_N) + gumbel_N, -jnp.inf)
  score_K, idx_K = jax.lax.top_k(score_N, k)
  valid_K = jnp.isfinite(score_K)
  valid_K = valid_K & (jnp.sum(valid_K) >= 2)
  # Ascending device order makes the weighted sums' order independent of the draw.
  idx_K = jnp.where(valid_K, idx_K, num_devices)
  idx_K = jnp.sort(idx_K)
  valid_K = idx_K < num_devices
  return idx_K.astype(jnp.int32), valid_K


def membership(idx_K: chex.Array, valid_K: chex.Array, num_devices: int) -> chex.Array:
  """Bool mask (N,) of the devices listed in the valid slots of ``idx_K``."""
  return jnp.zeros((num_devices,), bool).at[idx_K].set(valid_K, mode='drop')
