"""Sparse mixing matrices: decentralized aggregation without an N x N product.

A decentralized aggregation step replaces the stacked device states ``x_N`` by ``W x_N``
for a row-stochastic mixing matrix W. At scale W is never materialised. Two sparse forms
cover every algorithm in the project:

* :class:`GroupMixing`, HADFL's cycle (``docs/spec.md``, "One cycle c", step 6): the K devices of S_c all
  receive the same weighted average ``sum_{j in S_c} a_j x_j``; everyone else keeps their
  model. W[i, j] = a_j for i, j in S_c, W[i, i] = 1 for i not in S_c, 0 elsewhere. It is
  applied by gather (K rows), one weighted sum and a scatter: O(K * M) work.
* :class:`NeighbourMixing`, gossip on a fixed graph (D-PSGD): row i averages the padded
  neighbour list ``cols_NxD[i]`` with weights ``w_NxD[i]``. O(N * D * M) work.

Both convert to dense matrices for tests and analysis; :func:`check_stochastic` and
:func:`spectral_gap` analyse any mixing matrix.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from hadfl_jax.registry import Registry

PyTree = Any

WEIGHTS: Registry = Registry('averaging weight rule')


@flax.struct.dataclass
class WeightInputs:
  """What an averaging-weight rule may look at (after this cycle's local training).

  Attributes:
    num_examples_N: n_i, examples held by each device.
    budgets_N: H_i, this cycle's local steps.
    version_N: v_i after this cycle's local training.
  """

  num_examples_N: jax.Array
  budgets_N: jax.Array
  version_N: jax.Array


WEIGHTS.register('data', lambda x: x.num_examples_N)
WEIGHTS.register('uniform', lambda x: jnp.ones_like(x.num_examples_N))
WEIGHTS.register('steps', lambda x: x.budgets_N)
WEIGHTS.register('version', lambda x: x.version_N)


@flax.struct.dataclass
class GroupMixing:
  """One group averaging step.

  Attributes:
    idx_K: int32 device indices of the group; slots that are not valid hold N.
    weight_K: float32 averaging weights a_j, summing to 1 over valid slots, 0 elsewhere.
    valid_K: bool, which slots hold a group member.
  """

  idx_K: jax.Array
  weight_K: jax.Array
  valid_K: jax.Array

  @property
  def active(self) -> jax.Array:
    """Whether the group has at least two members (otherwise the step is the identity)."""
    return jnp.sum(self.valid_K) >= 2


@flax.struct.dataclass
class NeighbourMixing:
  """Every device averages a padded list of neighbours (itself included).

  Attributes:
    cols_NxD: int32 neighbour indices of every row; padding slots may hold any index.
    weight_NxD: float32 weights; padding slots hold 0; each row sums to 1.
  """

  cols_NxD: jax.Array
  weight_NxD: jax.Array


def group_weights(kind: str, *, idx_K, valid_K, num_examples_N, budgets_N, version_N):
  """Averaging weights a_j of the group members (``docs/spec.md``, "One cycle c", step 6, ``weights``).

  Args:
    kind: a rule registered in :data:`WEIGHTS`: ``data`` (a_j proportional to n_j),
      ``uniform``, ``steps`` (H_j, this cycle's local steps), ``version`` (v_j), or one
      of one's own (a function of :class:`WeightInputs` giving raw weights (N,) >= 0).
    idx_K: group indices (invalid slots hold N).
    valid_K: bool mask of group members.
    num_examples_N: n_i, examples held by each device.
    budgets_N: H_i, this cycle's local steps.
    version_N: v_i after this cycle's local training.

  Returns:
    float32 weights, shape (K,), summing to 1 over the valid slots (0 elsewhere); if the
    chosen quantity is 0 for every member, uniform weights.
  """
  raw_N = WEIGHTS.get(kind)(WeightInputs(
      num_examples_N=jnp.asarray(num_examples_N, jnp.float32),
      budgets_N=jnp.asarray(budgets_N), version_N=jnp.asarray(version_N)))
  raw_N = jnp.asarray(raw_N, jnp.float32)
  raw_K = jnp.where(valid_K, raw_N[jnp.minimum(idx_K, raw_N.shape[0] - 1)], 0.0)
  raw_K = jnp.where(jnp.sum(raw_K) > 0, raw_K, valid_K.astype(jnp.float32))
  return raw_K / jnp.maximum(jnp.sum(raw_K), 1e-30)


def weighted_sum(weight_K: jax.Array, valid_K: jax.Array, x_KxM: jax.Array) -> jax.Array:
  """sum_k w_k x_k over the leading axis in float32, skipping invalid slots (so NaN
  there cannot leak)."""
  w_K = weight_K.reshape((-1,) + (1,) * (x_KxM.ndim - 1))
  v_K = valid_K.reshape(w_K.shape)
  terms = jnp.where(v_K, w_K * x_KxM.astype(jnp.float32), 0.0)
  return jnp.sum(terms, axis=0)


def cast_like(avg, x):
  """``avg`` in ``x``'s dtype; integer leaves (e.g. a step count) are rounded."""
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jnp.round(avg).astype(x.dtype)
  return avg.astype(x.dtype)


def apply_group(mixing: GroupMixing, tree_N: PyTree) -> PyTree:
  """Applies a :class:`GroupMixing` to every leaf of a stacked pytree.

  Gathers the K group rows, forms their weighted average once and scatters it back to
  the K rows. Integer leaves (e.g. an optimizer's step count) are averaged and rounded.
  With fewer than two members the tree is returned unchanged.
  """

  def mix_leaf(x_N):
    x_K = x_N[jnp.minimum(mixing.idx_K, x_N.shape[0] - 1)]
    avg = cast_like(weighted_sum(mixing.weight_K, mixing.valid_K, x_K), x_N)
    # Slots that are not valid (and every slot of an inactive group) scatter out of
    # range and are dropped.
    target_K = jnp.where(mixing.valid_K & mixing.active, mixing.idx_K, x_N.shape[0])
    return x_N.at[target_K].set(jnp.broadcast_to(avg, x_K.shape), mode='drop')

  return jax.tree.map(mix_leaf, tree_N)


def apply_neighbours(mixing: NeighbourMixing, tree_N: PyTree) -> PyTree:
  """Applies a :class:`NeighbourMixing`: x_i <- sum_d w[i, d] x[cols[i, d]]."""

  # A sum of D gathered rows, each scaled by its weight: one elementwise fusion. The same
  # sum written as a reduction over axis 1 of the gathered (N, D, ...) array ran 20 to 70x
  # slower on XLA:CPU (benchmarks/gossip.py), and it ran at every exchange of AD-PSGD and
  # Prague and every round of D-PSGD and decentralized FedAvg.
  num_slots = mixing.cols_NxD.shape[1]

  def mix_leaf(x_N):
    shape = (x_N.shape[0],) + (1,) * (x_N.ndim - 1)
    avg = mixing.weight_NxD[:, 0].reshape(shape) * x_N[mixing.cols_NxD[:, 0]].astype(
        jnp.float32)
    for d in range(1, num_slots):
      avg = avg + mixing.weight_NxD[:, d].reshape(shape) * x_N[mixing.cols_NxD[:, d]].astype(
          jnp.float32)
    return cast_like(avg, x_N)

  return jax.tree.map(mix_leaf, tree_N)


Mixing = GroupMixing | NeighbourMixing


def apply(mixing: Mixing, tree_N: PyTree) -> PyTree:
  """Applies either sparse form to every leaf of a stacked pytree."""
  if isinstance(mixing, GroupMixing):
    return apply_group(mixing, tree_N)
  if isinstance(mixing, NeighbourMixing):
    return apply_neighbours(mixing, tree_N)
  raise TypeError(f'expected a GroupMixing or NeighbourMixing, got {type(mixing).__name__}')


def synced(mixing: Mixing, num_devices: int) -> jax.Array:
  """bool (N,): the devices whose row of W is not the identity's (they aggregated)."""
  if isinstance(mixing, GroupMixing):
    member_N = jnp.zeros((num_devices,), bool).at[mixing.idx_K].set(mixing.valid_K, mode='drop')
    return member_N & mixing.active
  if isinstance(mixing, NeighbourMixing):
    other_NxD = mixing.cols_NxD != jnp.arange(num_devices)[:, None]
    return jnp.any(other_NxD & (mixing.weight_NxD > 0), axis=1)
  raise TypeError(f'expected a GroupMixing or NeighbourMixing, got {type(mixing).__name__}')


def group_to_dense(mixing: GroupMixing, num_devices: int) -> np.ndarray:
  """The N x N matrix of a :class:`GroupMixing` (for tests and analysis only)."""
  idx = np.asarray(mixing.idx_K)
  valid = np.asarray(mixing.valid_K)
  weight = np.asarray(mixing.weight_K, np.float64)
  w_NxN = np.eye(num_devices)
  if valid.sum() >= 2:
    members = idx[valid]
    w_NxN[members, :] = 0.0
    for i in members:
      w_NxN[i, members] = weight[valid]
  return w_NxN


def neighbours_to_dense(mixing: NeighbourMixing) -> np.ndarray:
  """The N x N matrix of a :class:`NeighbourMixing` (for tests and analysis only)."""
  cols = np.asarray(mixing.cols_NxD)
  weight = np.asarray(mixing.weight_NxD, np.float64)
  n = cols.shape[0]
  w_NxN = np.zeros((n, n))
  np.add.at(w_NxN, (np.repeat(np.arange(n), cols.shape[1]), cols.ravel()), weight.ravel())
  return w_NxN


def check_stochastic(w_NxN, *, doubly: bool = False, atol: float = 1e-5) -> None:
  """Raises ValueError unless ``w_NxN`` is row (or doubly) stochastic.

  Args:
    w_NxN: a square matrix.
    doubly: also require every column to sum to 1.
    atol: tolerance on the sums.

  Raises:
    ValueError: naming the first offending row or column, or a negative entry.
  """
  w = np.asarray(w_NxN, np.float64)
  if w.ndim != 2 or w.shape[0] != w.shape[1]:
    raise ValueError(f'mixing matrix must be square, got shape {w.shape}')
  if not np.all(np.isfinite(w)):
    raise ValueError('mixing matrix has non-finite entries')
  if np.min(w) < -atol:
    i, j = np.unravel_index(np.argmin(w), w.shape)
    raise ValueError(f'mixing matrix has a negative entry W[{i}, {j}] = {w[i, j]:.6g}')
  rows = w.sum(axis=1)
  bad = np.flatnonzero(np.abs(rows - 1.0) > atol)
  if bad.size:
    raise ValueError(
        f'mixing matrix is not row-stochastic: row {bad[0]} sums to {rows[bad[0]]:.6g}'
    )
  if doubly:
    cols = w.sum(axis=0)
    bad = np.flatnonzero(np.abs(cols - 1.0) > atol)
    if bad.size:
      raise ValueError(
          'mixing matrix is not doubly stochastic: column '
          f'{bad[0]} sums to {cols[bad[0]]:.6g}'
      )


def is_stochastic(w_NxN, *, doubly: bool = False, atol: float = 1e-5) -> bool:
  """Whether ``w_NxN`` is row (or doubly) stochastic; see :func:`check_stochastic`."""
  try:
    check_stochastic(w_NxN, doubly=doubly, atol=atol)
  except ValueError:
    return False
  return True


def spectral_gap(w_NxN) -> float:
  """1 - |lambda_2|, the mixing rate of a stochastic matrix.

  ``lambda_2`` is the eigenvalue of second largest modulus; a gap near 1 means fast
  consensus (complete averaging has gap 1), a gap of 0 means the graph is disconnected
  or periodic and repeated mixing never reaches consensus.
  """
  w = np.asarray(w_NxN, np.float64)
  check_stochastic(w)
  moduli = np.sort(np.abs(np.linalg.eigvals(w)))[::-1]
  if moduli.size < 2:
    return 1.0
  return float(1.0 - moduli[1])
