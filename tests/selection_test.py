"""Selection: group size, q_i rules, and the without-replacement draw's probabilities."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax.core import selection


@pytest.mark.parametrize('rho,n,k', [(0.5, 8, 4), (0.1, 8, 2), (0.25, 10, 3), (1.0, 5, 5),
                                     (0.3, 64, 19), (0.05, 4, 2), (0.58, 25, 15),
                                     (0.7, 45, 32)])
def test_group_size(rho, n, k):
  # round(2.5) = 3 (halves round up, also 14.5 from 0.58 * 25 = 14.499999999999998 in
  # floating point), max(2, .) keeps a pair.
  assert selection.group_size(rho, n) == k


def test_scores_by_hand():
  x = selection.SelectionInputs(
      version_N=jnp.array([0.0, 3.0, 9.0]), speed_N=jnp.array([2.0, 4.0, 8.0]),
      last_sync_N=jnp.array([-1, 4, 2]), cycle=5, num_examples_N=jnp.array([5.0, 6.0, 7.0]))
  np.testing.assert_allclose(selection.selection_scores('version', x), [1, 4, 10])
  np.testing.assert_allclose(selection.selection_scores('speed', x), [2, 4, 8])
  np.testing.assert_allclose(selection.selection_scores('uniform', x), [1, 1, 1])
  np.testing.assert_allclose(selection.selection_scores('staleness', x), [7, 2, 4])
  with pytest.raises(KeyError, match=r"unknown selection rule 'fastest'; registered: "
                     r"\('version', 'speed', 'uniform', 'staleness'"):
    selection.selection_scores('fastest', x)


def exact_inclusion(q, k):
  """P(i in S) for successive sampling without replacement, by enumerating orders."""
  n = len(q)
  p = np.zeros(n)
  for order in itertools.permutations(range(n), k):
    prob, left = 1.0, sum(q)
    for i in order:
      prob *= q[i] / left
      left -= q[i]
    p[list(order)] += prob
  return p


def test_inclusion_probabilities_match_successive_sampling():
  q = np.array([1.0, 2.0, 3.0, 6.0])
  up = jnp.ones(4, bool)
  keys = jax.random.split(jax.random.PRNGKey(0), 40_000)
  idx, valid = jax.vmap(lambda key: selection.select(key, jnp.asarray(q), up, 2))(keys)
  assert bool(jnp.all(valid))
  freq = np.bincount(np.asarray(idx).ravel(), minlength=4) / len(keys)
  # Standard error < 0.0025 here; 0.01 is four of them.
  np.testing.assert_allclose(freq, exact_inclusion(q, 2), atol=0.01)
  # With K = 1 the probability is exactly q_i / sum(q) (the first draw).
  np.testing.assert_allclose(exact_inclusion(q, 1), q / q.sum())


def test_select_only_up_devices_distinct_sorted():
  q = jnp.arange(1.0, 9.0)
  up = jnp.array([True, False, True, True, False, True, True, False])
  for seed in range(20):
    idx, valid = selection.select(jax.random.PRNGKey(seed), q, up, 4)
    chosen = np.asarray(idx)[np.asarray(valid)]
    assert len(chosen) == 4 and len(set(chosen)) == 4
    assert all(bool(up[i]) for i in chosen)
    assert list(chosen) == sorted(chosen)


def test_fewer_up_than_k_selects_all_up():
  up = jnp.array([False, True, False, True, True, False])
  idx, valid = selection.select(jax.random.PRNGKey(3), jnp.ones(6), up, 5)
  assert sorted(np.asarray(idx)[np.asarray(valid)].tolist()) == [1, 3, 4]
  # Invalid slots point out of range so that scatters drop them.
  assert np.all(np.asarray(idx)[~np.asarray(valid)] == 6)


def test_fewer_than_two_up_selects_nobody():
  idx, valid = selection.select(jax.random.PRNGKey(0), jnp.ones(4),
                                jnp.array([False, False, True, False]), 2)
  assert not np.any(np.asarray(valid))
  mask = selection.membership(idx, valid, 4)
  assert not np.any(np.asarray(mask))


def test_membership():
  mask = selection.membership(jnp.array([0, 2, 5]), jnp.array([True, True, False]), 5)
  assert np.asarray(mask).tolist() == [True, False, True, False, False]
