"""The baselines by hand: one round equals a plain computation; clock and bytes."""

import functools

import chex
import jax
import numpy as np
import optax
import pytest

from hadfl_jax import algorithms
from hadfl_jax import train
from hadfl_jax import typed_config
from hadfl_jax.algorithms import graphs
from hadfl_jax.core import faults
from hadfl_jax.core import local
from tests import fixtures

# The tiny problem: speeds 10, 20, 30, 40 steps/s, links 1e5 B/s, latency 0.01 s.
N = 4


BASELINES = ('ddp', 'dfedavg', 'fedavg', 'dpsgd', 'adpsgd', 'prague', 'fedbuff')


def setup(name, optimizer=None, p_drop=0.0, down_trace=(), jitter_sigma=0.0, **kw):
  problem, data = fixtures.make_tiny_problem(optimizer=optimizer or optax.sgd(0.1))
  problem = problem.replace(faults=faults.FaultsConfig(p_drop=p_drop, down_trace=down_trace),
                            profile=problem.profile._replace(jitter_sigma=jitter_sigma))
  algo = algorithms.build(name, problem, kw)
  return problem, data, algo, algo.init(jax.random.PRNGKey(3))


def ring_time(k, m):
  return 2 * (k - 1) / k * m / 1e5 + 2 * (k - 1) * 0.01


def local_steps_by_hand(problem, data, devices, i, params, opt_state, first_step, h):
  """Device i's h local steps, one jitted-free step at a time."""
  step = local.make_device_step(problem.model.apply, problem.optimizer, problem.batch_size)
  for t in range(first_step, first_step + h):
    params, opt_state, _ = step(params, opt_state, devices.key[i], t, data.images[i],
                                data.labels[i], data.counts[i])
  return params, opt_state


def row(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def test_dfedavg_round_by_hand():
  problem, data, algo, state = setup('dfedavg', local_steps=3)
  new, info = jax.jit(algo.cycle)(state, data)
  trained = [local_steps_by_hand(problem, data, state.devices, i, row(state.devices.params, i),
                                 row(state.devices.opt_state, i), 0, 3)[0] for i in range(N)]
  w = problem.data_weights_N
  avg = jax.tree.map(lambda *xs: sum(wi * x for wi, x in zip(w, xs)), *trained)
  for i in range(N):
    chex.assert_trees_all_close(row(new.devices.params, i), avg, rtol=1e-5, atol=1e-6)
  m = problem.model_bytes
  # Barrier: 3 steps on the slowest device (10 steps/s), then a ring all-reduce over 4.
  assert float(info.cycle_time) == pytest.approx(3 / 10 + ring_time(4, m), rel=1e-5)
  np.testing.assert_allclose(info.bytes_sent_N, [2 * 3 / 4 * m] * N, rtol=1e-6)
  assert float(info.server_bytes) == 0
  np.testing.assert_array_equal(info.budgets_N, [3] * N)
  np.testing.assert_allclose(new.devices.version, [3.0] * N)


def test_ddp_steps_by_hand():
  problem, data, algo, state = setup('ddp', steps_per_cycle=2)
  new, info = jax.jit(algo.cycle)(state, data)
  grad = local.make_device_grad(problem.model.apply, problem.batch_size)
  params, opt_state = problem.init_params, problem.optimizer.init(problem.init_params)
  w = problem.data_weights_N
  for t in range(2):
    grads = [grad(params, state.key_N[i], t, data.images[i], data.labels[i], data.counts[i])[1]
             for i in range(N)]
    g = jax.tree.map(lambda *xs: sum(wi * x for wi, x in zip(w, xs)), *grads)
    updates, opt_state = problem.optimizer.update(g, opt_state, params)
    params = optax.apply_updates(params, updates)
  chex.assert_trees_all_close(new.params, params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(row(algo.device_params(new), 2), params, rtol=1e-5, atol=1e-6)
  m = problem.model_bytes
  # Every step: the slowest gradient (1/10 s), then a ring all-reduce of M bytes over 4.
  assert float(info.cycle_time) == pytest.approx(2 * (1 / 10 + ring_time(4, m)), rel=1e-5)
  np.testing.assert_allclose(info.bytes_sent_N, [2 * 2 * 3 / 4 * m] * N, rtol=1e-6)
  np.testing.assert_array_equal(new.steps_N, [2] * N)


def test_fedavg_round_by_hand():
  problem, data, algo, state = setup('fedavg', local_steps=2, fraction=0.5,
                                     opt_state='reset')
  new, info = jax.jit(algo.cycle)(state, data)
  chosen = np.flatnonzero(np.asarray(info.synced_N))
  assert len(chosen) == 2 == algorithms.fedavg.num_clients(algo.config, N)
  opt0 = problem.optimizer.init(problem.init_params)
  trained = {i: local_steps_by_hand(problem, data, state.devices, i, problem.init_params, opt0,
                                    0, 2)[0] for i in chosen}
  n = problem.num_examples_N[chosen].astype(float)
  avg = jax.tree.map(lambda *xs: sum(wi * x for wi, x in zip(n / n.sum(), xs)),
                     *[trained[i] for i in chosen])
  chex.assert_trees_all_close(algo.consensus_params(new), avg, rtol=1e-5, atol=1e-6)
  m = problem.model_bytes
  # Slowest chosen client's 2 steps, then 2 K M bytes through the server's link.
  t_compute = max(2 / (10.0 * (i + 1)) for i in chosen)
  assert float(info.cycle_time) == pytest.approx(t_compute + 2 * 2 * m / 1e5 + 2 * 0.01,
                                                 rel=1e-5)
  assert float(info.server_bytes) == pytest.approx(2 * 2 * m)
  np.testing.assert_allclose(info.bytes_sent_N, [m if i in chosen else 0 for i in range(N)])
  np.testing.assert_array_equal(info.budgets_N, [2 if i in chosen else 0 for i in range(N)])


def test_dpsgd_round_by_hand():
  problem, data, algo, state = setup('dpsgd', local_steps=2, graph='ring')
  new, info = jax.jit(algo.cycle)(state, data)
  trained = [local_steps_by_hand(problem, data, state.devices, i, row(state.devices.params, i),
                                 row(state.devices.opt_state, i), 0, 2)[0] for i in range(N)]
  w = graphs.mh_matrix(graphs.make_graph('ring', N))  # 1/3 to self and both neighbours.
  np.testing.assert_allclose(w[0], [1 / 3, 1 / 3, 0, 1 / 3])
  for i in range(N):
    mixed = jax.tree.map(lambda *xs: sum(w[i, j] * x for j, x in enumerate(xs)), *trained)
    chex.assert_trees_all_close(row(new.devices.params, i), mixed, rtol=1e-5, atol=1e-6)
  m = problem.model_bytes
  # Barrier (2 steps at 10/s), then each device sends its model to its 2 neighbours.
  assert float(info.cycle_time) == pytest.approx(2 / 10 + 2 * m / 1e5 + 0.01, rel=1e-5)
  np.testing.assert_allclose(info.bytes_sent_N, [2 * m] * N, rtol=1e-6)


@pytest.mark.parametrize('name,idle', [('dfedavg', 2 / 10), ('fedavg', 2 / 10), ('dpsgd', 2 / 10),
                                       ('ddp', 2 * (1 / 10))])
def test_a_round_with_everyone_down_still_takes_time(name, idle):
  # All four devices down in round 0: nobody trains or sends, the round lasts its nominal
  # compute time (2 steps at the slowest speed, 10 steps/s), the models do not move.
  kw = {'steps_per_cycle': 2} if name == 'ddp' else {'local_steps': 2}
  problem, data, algo, state = setup(name, down_trace=tuple((i, 0, 1) for i in range(N)), **kw)
  new, info = jax.jit(algo.cycle)(state, data)
  assert float(info.cycle_time) == pytest.approx(idle, rel=1e-6)
  assert not np.any(info.synced_N) and float(np.sum(info.bytes_sent_N)) == 0
  np.testing.assert_array_equal(info.budgets_N, [0] * N)
  chex.assert_trees_all_close(algo.consensus_params(new), algo.consensus_params(state))


def test_down_device_is_left_alone():
  problem, data, algo, state = setup('dfedavg', local_steps=2, down_trace=((0, 0, 1),))
  new, info = jax.jit(algo.cycle)(state, data)
  np.testing.assert_array_equal(info.up_N, [False, True, True, True])
  np.testing.assert_array_equal(info.budgets_N, [0, 2, 2, 2])
  chex.assert_trees_all_close(row(new.devices.params, 0), problem.init_params)
  assert float(info.bytes_sent_N[0]) == 0
  m = problem.model_bytes
  # The slowest up device now runs 20 steps/s; the ring has 3 members.
  assert float(info.cycle_time) == pytest.approx(2 / 20 + ring_time(3, m), rel=1e-5)


@pytest.mark.parametrize('name', BASELINES)
def test_cycles_never_retrace_and_learn(name):
  problem, data, algo, state = setup(name, optimizer=optax.sgd(0.1, momentum=0.9),
                                     p_drop=0.25, jitter_sigma=0.2)
  chex.clear_trace_counter()

  # Donated, as runs do. A comparison runs many algorithms on one problem: a state that
  # aliased problem.init_params would delete them for the next run.
  @functools.partial(jax.jit, donate_argnums=0)
  @chex.assert_max_traces(n=1)
  def cycle(state, data):
    return algo.cycle(state, data)

  times = []
  for _ in range(4):
    state, info = cycle(state, data)
    times.append(float(info.cycle_time))
  assert all(t > 0 for t in times)
  assert np.all(np.isfinite(jax.tree.leaves(jax.device_get(algo.consensus_params(state)))[0]))
  assert not any(x.is_deleted() for x in jax.tree.leaves(problem.init_params))


def test_registry_and_options(quick_config):
  assert set(BASELINES) <= set(algorithms.names())
  quick_config.algorithm = 'dpsgd'
  quick_config.dpsgd.graph = 'exponential'
  problem, _ = fixtures.make_tiny_problem(num_devices=8, speeds=tuple(range(1, 9)))
  algo = train.build_algorithm(quick_config, problem)
  assert algo.name == 'dpsgd' and algo.config.graph == 'exponential'
  with pytest.raises(typed_config.ConfigError, match=r"config\.dfedavg\.opt_state='x'"):
    algorithms.build('dfedavg', problem, {'opt_state': 'x'})
  with pytest.raises(typed_config.ConfigError, match=r'config\.fedavg\.fraction=0 is invalid'):
    algorithms.fedavg.Config(fraction=0)

