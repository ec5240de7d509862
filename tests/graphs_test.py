"""Gossip graphs and their Metropolis-Hastings weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax.algorithms import graphs
from hadfl_jax.core import mixing


@pytest.mark.parametrize('kind', graphs.GRAPHS.names())
@pytest.mark.parametrize('n', [2, 3, 4, 8, 12, 16])
def test_mh_weights_symmetric_doubly_stochastic(kind, n):
  g = graphs.make_graph(kind, n)
  w = graphs.mh_matrix(g)
  mixing.check_stochastic(w, doubly=True)
  np.testing.assert_allclose(w, w.T, atol=1e-7)
  assert mixing.spectral_gap(w) > 0  # Connected and aperiodic (self-loops).


def test_degrees():
  assert set(graphs.make_graph('ring', 8).degree_N) == {2}
  assert set(graphs.make_graph('torus', 16).degree_N) == {4}  # 4 x 4 torus.
  assert set(graphs.make_graph('exponential', 8).degree_N) == {5}  # +-1, +-2, 4.
  assert graphs.make_graph('ring', 8).edges() == {(i, (i + 1) % 8) if i < 7 else (0, 7)
                                                  for i in range(8)}


def test_ring_spectral_gap_by_hand():
  # MH on a ring: weight 1/3 to each neighbour and self; eigenvalues
  # 1/3 + 2/3 cos(2 pi k / N), so the gap is 1 - (1/3 + 2/3 cos(2 pi / N)).
  w = graphs.mh_matrix(graphs.make_graph('ring', 8))
  np.testing.assert_allclose(w[0, [7, 0, 1]], [1 / 3] * 3)
  expected = 1 - (1 / 3 + 2 / 3 * np.cos(2 * np.pi / 8))
  assert graphs.describe(graphs.make_graph('ring', 8))['spectral_gap'] == pytest.approx(expected)
  # Better connected graphs mix faster.
  gaps = [graphs.describe(graphs.make_graph(k, 16))['spectral_gap'] for k in graphs.GRAPHS.names()]
  assert gaps[0] < gaps[1] < gaps[2]


def test_subgraph_of_up_devices_is_doubly_stochastic_and_jittable():
  g = graphs.make_graph('torus', 12)
  up = jnp.asarray([True, False, True, True, False, True, True, True, True, False, True, True])
  mix = jax.jit(lambda u: graphs.mh_mixing(g, u))(up)
  w = mixing.neighbours_to_dense(mix)
  mixing.check_stochastic(w, doubly=True)
  np.testing.assert_allclose(w, w.T, atol=1e-7)
  for i in np.flatnonzero(~np.asarray(up)):  # A down device keeps its model, nobody uses it.
    np.testing.assert_allclose(w[i], np.eye(12)[i])
    np.testing.assert_allclose(w[:, i], np.eye(12)[i])


def test_unknown_kind():
  with pytest.raises(ValueError, match='ring'):
    graphs.make_graph('star', 4)
