"""Fixed communication graphs for gossip (D-PSGD) with Metropolis-Hastings weights.

Lian et al. 2017 ("Can Decentralized Algorithms Outperform Centralized Algorithms?",
NeurIPS) average with neighbours on a fixed graph using a symmetric, doubly stochastic
mixing matrix. This module builds the graphs of ``docs/spec.md`` ("Baselines", D-PSGD) as
padded neighbour lists and weights them by Metropolis-Hastings:

  W[i, j] = 1 / (1 + max(d_i, d_j))  for each edge {i, j},
  W[i, i] = 1 - sum_{j != i} W[i, j],

which is symmetric and doubly stochastic for any undirected graph. Graphs:

* ``ring``: i ~ i +- 1 (mod N);
* ``torus``: a 2-D torus on the most square R x C factorisation of N (R <= C), each
  device linked to its four grid neighbours (wrapping; duplicates removed when R or C
  is at most 2);
* ``exponential``: i ~ i +- 2^k (mod N) for 2^k < N, made undirected (Assran et al.
  2019 use the directed one-peer variant; we keep the undirected graph so that MH
  weights apply);
* ``complete``: every pair (AD-PSGD's neighbour is then any other device; D-PSGD's
  Metropolis-Hastings average is the plain average, 1 / N each).

The padded form (:class:`Graph`) stores each device's own index in slot 0 and its
neighbours after it, padding with the device itself and a False mask. :func:`mh_mixing`
turns it into a :class:`hadfl_jax.core.mixing.NeighbourMixing`, optionally restricted to
the devices that are up (the MH weights of the subgraph of up devices; a down device
keeps its model), traceable under ``jit``.

Example::

  g = graphs.make_graph('ring', 8)
  w = mixing.neighbours_to_dense(graphs.mh_mixing(g))
  mixing.check_stochastic(w, doubly=True)
  mixing.spectral_gap(w)  # 1 - cos(2 pi / 8) ... for the ring
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from hadfl_jax.core import mixing
from hadfl_jax.registry import Registry



@dataclasses.dataclass(frozen=True)
class Graph:
  """An undirected graph on N devices as padded neighbour lists (static, numpy).

  Attributes:
    kind: how it was built.
    cols_NxD: int32 (N, D); slot 0 is the device itself, then its neighbours; padding
      slots hold the device itself.
    mask_NxD: bool (N, D); True for slot 0 and for real neighbours.
  """

  kind: str
  cols_NxD: np.ndarray
  mask_NxD: np.ndarray

  @property
  def num_devices(self) -> int:
    return self.cols_NxD.shape[0]

  @property
  def degree_N(self) -> np.ndarray:
    """d_i, the number of neighbours (self excluded)."""
    return self.mask_NxD.sum(axis=1) - 1

  def edges(self) -> set[tuple[int, int]]:
    """The undirected edges as (i, j) with i < j."""
    out = set()
    for i in range(self.num_devices):
      for c, m in zip(self.cols_NxD[i, 1:], self.mask_NxD[i, 1:]):
        if m:
          out.add((min(i, int(c)), max(i, int(c))))
    return out


def _torus_shape(n: int) -> tuple[int, int]:
  rows = int(np.floor(np.sqrt(n)))
  while n % rows:
    rows -= 1
  return rows, n // rows


GRAPHS: Registry = Registry('gossip graph')


@GRAPHS.register('ring')
def ring(n: int) -> list[set[int]]:
  return [{(i - 1) % n, (i + 1) % n} for i in range(n)]


@GRAPHS.register('torus')
def torus(n: int) -> list[set[int]]:
  rows, cols = _torus_shape(n)
  out = []
  for i in range(n):
    r, c = divmod(i, cols)
    out.append({((r - 1) % rows) * cols + c, ((r + 1) % rows) * cols + c,
                r * cols + (c - 1) % cols, r * cols + (c + 1) % cols})
  return out


@GRAPHS.register('exponential')
def exponential(n: int) -> list[set[int]]:
  out = [set() for _ in range(n)]
  hop = 1
  while hop < n:
    for i in range(n):
      out[i].update({(i + hop) % n, (i - hop) % n})
    hop *= 2
  return out


@GRAPHS.register('complete')
def complete(n: int) -> list[set[int]]:
  return [set(range(n)) - {i} for i in range(n)]


def neighbour_sets(kind: str, num_devices: int) -> list[set[int]]:
  """The neighbours of every device (self excluded) of a graph registered in
  :data:`GRAPHS` (a builder ``n -> list of N neighbour sets``; made undirected here).

  Raises:
    ValueError: fewer than one device, or a builder's neighbour out of range.
    KeyError: an unregistered kind.
  """
  n = num_devices
  if n < 1:
    raise ValueError(f'a graph needs at least one device, got {n}')
  nbrs = [set(int(j) for j in s) for s in GRAPHS.get(kind)(n)]
  if len(nbrs) != n or any(not 0 <= j < n for s in nbrs for j in s):
    raise ValueError(f'graph {kind!r} must give {n} neighbour sets of indices in [0, {n})')
  for i in range(n):
    for j in list(nbrs[i]):
      nbrs[j].add(i)
  for i in range(n):
    nbrs[i].discard(i)
  return nbrs


def make_graph(kind: str, num_devices: int) -> Graph:
  """Builds the padded neighbour lists of a graph (see the module docstring)."""
  nbrs = neighbour_sets(kind, num_devices)
  width = 1 + max((len(s) for s in nbrs), default=0)
  cols = np.tile(np.arange(num_devices, dtype=np.int32)[:, None], (1, width))
  mask = np.zeros((num_devices, width), bool)
  mask[:, 0] = True
  for i, s in enumerate(nbrs):
    row = sorted(s)
    cols[i, 1:1 + len(row)] = row
    mask[i, 1:1 + len(row)] = True
  return Graph(kind, cols, mask)


def mh_mixing(graph: Graph, up_N=None) -> mixing.NeighbourMixing:
  """Metropolis-Hastings weights on the graph (or on its subgraph of up devices).

  Args:
    graph: the padded graph.
    up_N: optional bool (N,), which devices take part (traced values are fine). A down
      device's row is the identity and no one averages with it; degrees count up
      neighbours only, so the matrix stays symmetric and doubly stochastic.

  Returns:
    A NeighbourMixing with the graph's columns; weights of padding slots are 0.
  """
  cols = jnp.asarray(graph.cols_NxD)
  nbr_mask = jnp.asarray(graph.mask_NxD).at[:, 0].set(False)
  if up_N is None:
    up_N = jnp.ones((graph.num_devices,), bool)
  up_N = jnp.asarray(up_N, bool)
  link_NxD = nbr_mask & up_N[:, None] & up_N[cols]
  deg_N = jnp.sum(link_NxD, axis=1)
  w_NxD = jnp.where(link_NxD, 1.0 / (1.0 + jnp.maximum(deg_N[:, None], deg_N[cols])), 0.0)
  self_N = 1.0 - jnp.sum(w_NxD, axis=1)
  w_NxD = w_NxD.at[:, 0].set(self_N)
  return mixing.NeighbourMixing(cols_NxD=cols.astype(jnp.int32),
                                weight_NxD=w_NxD.astype(jnp.float32))


def mh_matrix(graph: Graph) -> np.ndarray:
  """The dense N x N Metropolis-Hastings matrix (analysis and tests)."""
  return mixing.neighbours_to_dense(mh_mixing(graph))


def describe(graph: Graph) -> dict:
  """Degree range and spectral gap of the graph's MH matrix (for reports)."""
  w = mh_matrix(graph)
  mixing.check_stochastic(w, doubly=True)
  return {
      'kind': graph.kind,
      'num_devices': graph.num_devices,
      'min_degree': int(graph.degree_N.min()),
      'max_degree': int(graph.degree_N.max()),
      'spectral_gap': mixing.spectral_gap(w),
  }
