"""Sparse mixing against dense matrices and hand-computed weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax.core import mixing


def _group(idx, weight, valid):
  return mixing.GroupMixing(jnp.asarray(idx, jnp.int32), jnp.asarray(weight, jnp.float32),
                            jnp.asarray(valid))


def test_group_mixing_matches_dense_product():
  rng = np.random.default_rng(0)
  tree = {'w': rng.normal(size=(6, 3, 2)).astype(np.float32), 'b': rng.normal(size=(6,)).astype(np.float32)}
  g = _group([1, 3, 4, 6], [0.2, 0.5, 0.3, 0.0], [True, True, True, False])
  w_NxN = mixing.group_to_dense(g, 6)
  mixing.check_stochastic(w_NxN)
  out = mixing.apply_group(g, jax.tree.map(jnp.asarray, tree))
  for name, x in tree.items():
    expected = np.tensordot(w_NxN, x, axes=1)
    np.testing.assert_allclose(out[name], expected, rtol=1e-6, atol=1e-6)
  # Rows outside the group are untouched, exactly.
  np.testing.assert_array_equal(np.asarray(out['w'])[[0, 2, 5]], tree['w'][[0, 2, 5]])


def test_dense_matrix_by_hand():
  g = _group([0, 2], [0.25, 0.75], [True, True])
  expected = np.array([[0.25, 0, 0.75], [0, 1, 0], [0.25, 0, 0.75]])
  np.testing.assert_allclose(mixing.group_to_dense(g, 3), expected)


def test_uniform_group_is_symmetric_doubly_stochastic():
  idx = jnp.array([0, 2, 3, 5])
  valid = jnp.ones(4, bool)
  a = mixing.group_weights('uniform', idx_K=idx, valid_K=valid, num_examples_N=jnp.ones(6),
                           budgets_N=jnp.ones(6), version_N=jnp.ones(6))
  w = mixing.group_to_dense(_group(idx, a, valid), 6)
  np.testing.assert_allclose(w, w.T)
  mixing.check_stochastic(w, doubly=True)


def test_data_weights_are_row_but_not_doubly_stochastic():
  n = jnp.array([10.0, 30.0, 60.0])
  a = mixing.group_weights('data', idx_K=jnp.array([0, 1, 2]), valid_K=jnp.ones(3, bool),
                           num_examples_N=n, budgets_N=jnp.ones(3), version_N=jnp.ones(3))
  np.testing.assert_allclose(a, [0.1, 0.3, 0.6], rtol=1e-6)
  w = mixing.group_to_dense(_group([0, 1, 2], a, [True] * 3), 3)
  mixing.check_stochastic(w)
  with pytest.raises(ValueError, match='not doubly stochastic: column 0'):
    mixing.check_stochastic(w, doubly=True)


@pytest.mark.parametrize('kind,expected', [
    ('steps', [2 / 7, 0.0, 5 / 7]),
    ('version', [0.5, 0.0, 0.5]),
    ('uniform', [0.5, 0.0, 0.5]),
])
def test_weight_kinds_by_hand(kind, expected):
  a = mixing.group_weights(kind, idx_K=jnp.array([1, 3, 2]), valid_K=jnp.array([True, False, True]),
                           num_examples_N=jnp.ones(4), budgets_N=jnp.array([9, 2, 5, 7]),
                           version_N=jnp.array([0.0, 4.0, 4.0, 1.0]))
  np.testing.assert_allclose(a, expected, rtol=1e-6)


def test_zero_weights_fall_back_to_uniform():
  a = mixing.group_weights('version', idx_K=jnp.array([0, 1]), valid_K=jnp.ones(2, bool),
                           num_examples_N=jnp.ones(2), budgets_N=jnp.ones(2), version_N=jnp.zeros(2))
  np.testing.assert_allclose(a, [0.5, 0.5])


def test_consensus_after_everyone_syncs():
  x = jnp.arange(5.0)[:, None] * jnp.ones((5, 3))
  a = jnp.array([0.1, 0.2, 0.3, 0.2, 0.2])
  out = mixing.apply_group(_group(jnp.arange(5), a, jnp.ones(5, bool)), x)
  np.testing.assert_allclose(out, np.full((5, 3), float(jnp.dot(a, jnp.arange(5.0)))), rtol=1e-6)


def test_inactive_group_is_identity_and_nan_does_not_leak():
  x = jnp.array([1.0, jnp.nan, 3.0])
  out = mixing.apply_group(_group([0, 3, 3], [1.0, 0.0, 0.0], [True, False, False]), x)
  np.testing.assert_array_equal(np.isnan(out), [False, True, False])
  np.testing.assert_array_equal(np.asarray(out)[[0, 2]], [1.0, 3.0])
  # A member's NaN does not spread through a zero-weight empty slot either.
  out = mixing.apply_group(_group([0, 2, 1], [0.5, 0.5, 0.0], [True, True, False]), x)
  np.testing.assert_allclose(out, [2.0, np.nan, 2.0])


def test_integer_leaves_are_rounded():
  out = mixing.apply_group(_group([0, 1], [0.5, 0.5], [True, True]), jnp.array([3, 6, 1], jnp.int32))
  assert out.dtype == jnp.int32
  assert np.asarray(out).tolist() == [4, 4, 1]  # 4.5 rounds to even.


def ring_mixing(n):
  cols = np.stack([(np.arange(n) - 1) % n, np.arange(n), (np.arange(n) + 1) % n], 1)
  return mixing.NeighbourMixing(jnp.asarray(cols, jnp.int32), jnp.full((n, 3), 1 / 3, jnp.float32))


def test_neighbour_mixing_matches_dense_and_ring_spectral_gap():
  n = 6
  m = ring_mixing(n)
  w = mixing.neighbours_to_dense(m)
  mixing.check_stochastic(w, doubly=True)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(n, 4)), jnp.float32)
  np.testing.assert_allclose(mixing.apply_neighbours(m, x), w @ np.asarray(x), rtol=1e-5, atol=1e-6)
  # Eigenvalues of the 1/3-ring are (1 + 2 cos(2 pi k / n)) / 3; |lambda_2| = 2/3 for n = 6
  # (k = 1 gives 2/3, k = 3 gives -1/3).
  assert mixing.spectral_gap(w) == pytest.approx(1 - 2 / 3)


def test_neighbour_mixing_matches_a_loop_over_rows_and_slots():
  """Uneven weights, repeated and padding slots, a multi-leaf tree with an integer leaf,
  against x_i <- sum_d w[i, d] x[cols[i, d]] written out row by row."""
  rng = np.random.default_rng(2)
  n, d = 5, 4
  cols = rng.integers(0, n, (n, d))
  weight = rng.random((n, d))
  weight[:, -1] = 0.0  # A padding slot: any index, weight 0.
  weight /= weight.sum(axis=1, keepdims=True)
  m = mixing.NeighbourMixing(jnp.asarray(cols, jnp.int32), jnp.asarray(weight, jnp.float32))
  tree = {'w': rng.normal(size=(n, 3, 2)).astype(np.float32),
          'count': rng.integers(0, 100, (n,)).astype(np.int32)}
  out = mixing.apply_neighbours(m, jax.tree.map(jnp.asarray, tree))
  for name, x in tree.items():
    expected = np.zeros(x.shape, np.float64)
    for i in range(n):
      for slot in range(d):
        expected[i] += weight[i, slot] * x[cols[i, slot]]
    if name == 'count':
      expected = np.round(expected)
    assert out[name].dtype == x.dtype
    np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-5)


def test_spectral_gap_extremes():
  assert mixing.spectral_gap(np.full((4, 4), 0.25)) == pytest.approx(1.0)
  assert mixing.spectral_gap(np.eye(3)) == pytest.approx(0.0)  # Never mixes.


@pytest.mark.parametrize('w,message', [
    (np.array([[0.5, 0.6], [0.5, 0.5]]), 'row 0 sums to 1.1'),
    (np.array([[1.5, -0.5], [0.5, 0.5]]), 'negative entry W\\[0, 1\\]'),
    (np.ones((2, 3)) / 3, 'square'),
    (np.array([[np.nan, 1.0], [0.5, 0.5]]), 'non-finite'),
])
def test_check_stochastic_names_the_problem(w, message):
  with pytest.raises(ValueError, match=message):
    mixing.check_stochastic(w)
  assert not mixing.is_stochastic(w)
