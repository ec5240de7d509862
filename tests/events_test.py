"""The event clock and AD-PSGD: hand-computed timelines, and the vectorised engine against
a plain event loop that pops one event at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax import algorithms
from hadfl_jax import typed_config
from hadfl_jax.algorithms import reference
from hadfl_jax.core import events
from hadfl_jax.core import faults
from tests import fixtures


def test_first_come_keeps_the_earliest_exchange_touching_each_device():
  # Device 0 (rank 0) and 2 (rank 1) both want device 1: 0 goes, 2 waits; 3 -> 4 is free;
  # 5 wants 3, which 3 (rank 2) already uses: 5 waits.
  active = jnp.array([True, False, True, True, False, True])
  partner = jnp.array([1, 1, 1, 4, 4, 3])
  rank = jnp.array([0, 5, 1, 2, 4, 3])
  np.testing.assert_array_equal(events.first_come(active, partner, rank),
                                [True, False, False, True, False, False])


def test_clock_windows_and_priority():
  clock = events.Clock(next_N=jnp.array([0.3, 0.1, 0.1, 0.25]), events_N=jnp.zeros(4, jnp.int32))
  assert float(events.now(clock)) == pytest.approx(0.1)
  np.testing.assert_array_equal(events.due(clock, 0.0), [False, True, True, False])
  np.testing.assert_array_equal(events.due(clock, 0.2), [True, True, True, True])
  np.testing.assert_array_equal(events.priority(clock), [3, 0, 1, 2])
  fired = events.fire(clock, jnp.array([False, True, False, False]), jnp.full(4, 0.5))
  np.testing.assert_allclose(fired.next_N, [0.3, 0.6, 0.1, 0.25])
  np.testing.assert_array_equal(fired.events_N, [0, 1, 0, 0])


def _adpsgd(problem, **options):
  config = algorithms.config_of('adpsgd', options)
  return algorithms.build('adpsgd', problem, config), config


def test_hand_computed_timeline_and_bytes():
  # Two devices of 10 and 4 steps/s, H = 1, links 1e5 B/s, 10 ms latency, a 412-byte
  # model: an exchange takes 412 / 1e5 + 0.01 = 0.01412 s. Both start at 0; device 0
  # fires at 0.1 (exchange, next at 0.1 + 0.01412 + 0.1), again at 0.21412 (next
  # 0.32824); device 1 fires at 0.25 (next 0.25 + 0.01412 + 0.25). The cycle ends at
  # the first event after 0.3.
  problem, data = fixtures.make_tiny_problem(num_devices=2, speeds=(1.0, 0.4))
  assert problem.model_bytes == 412
  algorithm, _ = _adpsgd(problem, graph='complete', cycle_s=0.3)
  state, info = jax.jit(algorithm.cycle)(algorithm.init(jax.random.PRNGKey(0)), data)
  np.testing.assert_allclose(state.clock.next_N, [0.32824, 0.51412], rtol=1e-6)
  np.testing.assert_array_equal(state.clock.events_N, [3, 2])
  assert float(info.cycle_time) == pytest.approx(0.32824, rel=1e-6)
  np.testing.assert_array_equal(info.bytes_sent_N, [3 * 412, 3 * 412])  # 3 exchanges.
  np.testing.assert_array_equal(info.budgets_N, [3, 2])
  assert bool(np.all(info.synced_N))


SPEEDS = (1.0, 1.7, 2.9, 4.3)  # x10 steps/s: distinct, so no two events coincide.


def _matches_the_event_loop(name, reference_fn, options, fault_kw, jitter, seed, floats,
                            exact, speeds=SPEEDS):
  """Runs two cycles of ``name`` with a window far below the gaps between events (one
  event per tick, or the events of one instant) and checks them against
  ``reference_fn``, the plain event loop: the clock, the bytes, ``floats(state)`` to float
  tolerance, ``exact(state)`` exactly."""
  problem, data = fixtures.make_tiny_problem(speeds=speeds)
  problem = problem.replace(faults=faults.FaultsConfig(**fault_kw),
                            profile=problem.profile._replace(jitter_sigma=jitter))
  config = algorithms.config_of(name, dict(window_s=1e-7, cycle_s=0.4, **options))
  algorithm = algorithms.build(name, problem, config)
  cycle = jax.jit(algorithm.cycle)
  state = algorithm.init(jax.random.PRNGKey(seed))
  expected = state
  for _ in range(2):
    end = float(events.now(state.clock)) + config.cycle_s  # Where the cycle stops.
    state, info = cycle(state, data)
    expected, sent, *server = reference_fn(problem, config, expected, data, end)
    expected = expected.replace(cycle=expected.cycle + 1)
    np.testing.assert_array_equal(state.clock.events_N, expected.clock.events_N)
    np.testing.assert_allclose(state.clock.next_N, expected.clock.next_N, rtol=1e-5)
    np.testing.assert_allclose(info.bytes_sent_N, sent, rtol=1e-6)
    if server:
      assert float(info.server_bytes) == pytest.approx(server[0], rel=1e-6)
    for got, want in zip(jax.tree.leaves(floats(state)), jax.tree.leaves(floats(expected))):
      np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    for got, want in zip(exact(state), exact(expected)):
      np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(state.devices.steps, expected.devices.steps)
  return state


@pytest.mark.parametrize('options,fault_kw,jitter', [
    (dict(graph='ring', local_steps=1), {}, 0.0),
    (dict(graph='complete', local_steps=3), {}, 0.0),
    (dict(graph='ring', local_steps=2), dict(p_drop=0.25, p_sync_fail=0.25), 0.2),
])
def test_vectorised_events_match_the_plain_event_loop(options, fault_kw, jitter):
  state = _matches_the_event_loop(
      'adpsgd', reference.reference_adpsgd, options, fault_kw, jitter, 3,
      floats=lambda st: (st.devices.params, st.delta), exact=lambda st: (st.pending_N,))
  assert int(np.sum(state.clock.events_N)) > 20  # A real test: many events, exchanges.


def test_adpsgd_exchanges_at_the_same_instant_match_the_plain_event_loop():
  # Devices of equal speed fire together in one tick: the colliding exchanges are
  # serialised by index, as the loop pops them.
  _matches_the_event_loop(
      'adpsgd', reference.reference_adpsgd, dict(graph='ring', local_steps=1), {}, 0.0, 3,
      floats=lambda st: (st.devices.params, st.delta), exact=lambda st: (st.pending_N,),
      speeds=(1.0, 1.0, 1.0, 1.0))


def test_a_wide_window_groups_events_and_never_retraces():
  problem, data = fixtures.make_tiny_problem(speeds=SPEEDS)
  exact, _ = _adpsgd(problem, window_s=1e-7, cycle_s=0.3)
  wide, _ = _adpsgd(problem, window_s=0.05, cycle_s=0.3)
  runs = {}
  for name, algorithm in (('exact', exact), ('wide', wide)):
    cycle = jax.jit(algorithm.cycle)
    state = algorithm.init(jax.random.PRNGKey(0))
    for _ in range(3):
      state, info = cycle(state, data)
    assert cycle._cache_size() == 1  # pylint: disable=protected-access
    runs[name] = state
  # About the same events happen (each lasts as long), grouped into fewer ticks; the
  # models differ, since grouped events see each other's models at other times.
  exact_events, wide_events = (int(np.sum(runs[k].clock.events_N)) for k in ('exact', 'wide'))
  assert exact_events > 30 and abs(wide_events - exact_events) <= 0.1 * exact_events
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(runs['exact'].devices.params), jax.tree.leaves(runs['wide'].devices.params)))
  assert diff > 0


def test_devices_that_are_down_neither_exchange_nor_train_and_time_goes_on():
  problem, data = fixtures.make_tiny_problem(speeds=SPEEDS)
  problem = problem.replace(faults=faults.FaultsConfig(
      down_trace=tuple((i, 0, 1) for i in range(4))))  # Everyone down in cycle 0.
  algorithm, _ = _adpsgd(problem, cycle_s=0.5)
  state = algorithm.init(jax.random.PRNGKey(0))
  new, info = jax.jit(algorithm.cycle)(state, data)
  assert float(info.cycle_time) >= 0.5
  assert not np.any(info.synced_N) and float(np.sum(info.bytes_sent_N)) == 0
  np.testing.assert_array_equal(info.budgets_N, [0] * 4)
  np.testing.assert_array_equal(info.up_N, [False] * 4)
  for a, b in zip(jax.tree.leaves(new.devices.params), jax.tree.leaves(state.devices.params)):
    np.testing.assert_array_equal(a, b)
  # Each device retried every H / s_i seconds: 0.1, 1/17, 1/29, 1/43 s.
  np.testing.assert_array_equal(new.clock.events_N,
                                [int(np.ceil(0.5 * 10 * s - 1e-9)) for s in SPEEDS])


# --- Prague ------------------------------------------------------------------------------


def _prague(problem, **options):
  config = algorithms.config_of('prague', options)
  return algorithms.build('prague', problem, config), config


def test_prague_hand_computed_timeline_and_bytes():
  # Three devices of 10, 5 and 2.5 steps/s, H = 1, G = 2; a ring all-reduce of two over
  # 1e5 B/s links with 10 ms latency takes 412 / 1e5 + 2 * 0.01 = 0.02412 s. Device 0 is
  # ready at 0.1 and waits; device 1 at 0.2: group {0, 1} (0 next ready at 0.2 + 0.02412
  # + 0.1, 1 at 0.2 + 0.02412 + 0.2); device 2 at 0.4 joins the waiting device 0 (next
  # 0.4 + 0.02412 + 0.1 and + 0.4); device 1, ready at 0.42412, waits.
  problem, data = fixtures.make_tiny_problem(num_devices=3, speeds=(1.0, 0.5, 0.25))
  algorithm, _ = _prague(problem, local_steps=1, group_size=2, cycle_s=0.5, window_s=1e-7)
  state, info = jax.jit(algorithm.cycle)(algorithm.init(jax.random.PRNGKey(0)), data)
  np.testing.assert_allclose(state.clock.next_N, [0.52412, events.NEVER, 0.82412], rtol=1e-6)
  np.testing.assert_array_equal(state.clock.events_N, [3, 3, 2])
  np.testing.assert_array_equal(state.ready_N, [False, True, False])
  assert float(info.cycle_time) == pytest.approx(0.52412, rel=1e-6)
  np.testing.assert_allclose(info.bytes_sent_N, [2 * 412, 412, 412])
  np.testing.assert_array_equal(info.budgets_N, [3, 2, 2])
  # Device 1 waits with the model it averaged with device 0 at 0.2 plus one step.
  assert int(state.formations) == 2


@pytest.mark.parametrize('options,fault_kw,jitter', [
    (dict(local_steps=1, group_size=2), {}, 0.0),
    (dict(local_steps=3, group_size=3), {}, 0.0),
    (dict(local_steps=2, group_size=2), dict(p_drop=0.25, p_sync_fail=0.25), 0.2),
])
def test_prague_matches_the_plain_event_loop(options, fault_kw, jitter):
  state = _matches_the_event_loop(
      'prague', reference.reference_prague, options, fault_kw, jitter, 5,
      floats=lambda st: st.devices.params, exact=lambda st: (st.ready_N, st.formations))
  assert int(state.formations) >= 4  # Many groups formed: a real test.


def test_prague_group_larger_than_the_devices_is_refused():
  problem, _ = fixtures.make_tiny_problem()
  with pytest.raises(typed_config.ConfigError, match=r'prague\.group_size=5.*at most '
                     r'num_devices=4'):
    _prague(problem, group_size=5)


# --- FedBuff -----------------------------------------------------------------------------


def _fedbuff(problem, **options):
  config = algorithms.config_of('fedbuff', options)
  return algorithms.build('fedbuff', problem, config), config


def test_fedbuff_hand_computed_server_updates_and_bytes():
  # Two clients of 10 and 4 steps/s, H = 1, K = 2; one upload or download takes
  # 412 / 1e5 + 0.01 = 0.01412 s. Client 0 uploads at 0.11412 (buffer 1) and at
  # 0.24236 (buffer 2: the server updates, version 1); client 1 uploads at 0.26412 with
  # staleness 1 (weight 1 / sqrt 2). The cycle ends at client 0's next upload, 0.3706.
  problem, data = fixtures.make_tiny_problem(num_devices=2, speeds=(1.0, 0.4))
  algorithm, config = _fedbuff(problem, local_steps=1, buffer_size=2, cycle_s=0.3,
                               window_s=1e-7)
  state0 = algorithm.init(jax.random.PRNGKey(0))
  state, info = jax.jit(algorithm.cycle)(state0, data)
  np.testing.assert_allclose(state.clock.next_N, [0.3706, 0.54236], rtol=1e-6)
  np.testing.assert_array_equal(state.clock.events_N, [3, 2])
  assert int(state.version) == 1 and int(state.buffered) == 1
  np.testing.assert_array_equal(state.pulled_N, [1, 1])
  np.testing.assert_allclose(info.bytes_sent_N, [2 * 412, 412])
  assert float(info.server_bytes) == 6 * 412  # Three uploads, three downloads.
  # The server's model and buffer, by hand from the clients' own steps.
  expected, _, _ = reference.reference_fedbuff(problem, config, state0, data, 0.3)
  for got, want in zip(jax.tree.leaves((state.server, state.buffer)),
                       jax.tree.leaves((expected.server, expected.buffer))):
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize('options,fault_kw,jitter', [
    (dict(local_steps=1, buffer_size=2), {}, 0.0),
    (dict(local_steps=3, buffer_size=3, server_lr=0.5, staleness_exponent=0.0), {}, 0.0),
    (dict(local_steps=2, buffer_size=2), dict(p_drop=0.25, p_sync_fail=0.25), 0.2),
])
def test_fedbuff_matches_the_plain_event_loop(options, fault_kw, jitter):
  state = _matches_the_event_loop(
      'fedbuff', reference.reference_fedbuff, options, fault_kw, jitter, 7,
      floats=lambda st: (st.server, st.buffer, st.devices.params, st.delta),
      exact=lambda st: (st.version, st.pulled_N, st.buffered))
  assert int(state.version) >= 4  # Many server updates: a real test.


@pytest.mark.parametrize('speeds,options,fault_kw', [
    ((1.0, 1.0, 1.0, 1.0), dict(local_steps=1, buffer_size=2), {}),
    ((2.0, 1.0, 2.0, 1.0), dict(local_steps=2, buffer_size=3), dict(p_sync_fail=0.3)),
    ((1.0, 1.0, 1.0, 1.0), dict(local_steps=1, buffer_size=3), {}),
])
def test_fedbuff_serves_simultaneous_uploads_one_at_a_time(speeds, options, fault_kw):
  # Devices of equal speed upload at the same instant, so one tick holds several uploads
  # however narrow its window: the server takes them in index order, K at a time, each
  # weighted by its staleness at its turn, and each client pulls the model of its turn
  # (four equal clients and K = 2: two updates per tick, the second two deltas stale by
  # one; with K = 3 ticks update with 1 and 2 deltas carried into them), exactly as the
  # plain event loop does. (Not with faults: a retry's time, summed in float64 by the
  # loop and in float32 by the clock, can tie in one and not in the other.)
  state = _matches_the_event_loop(
      'fedbuff', reference.reference_fedbuff, options, fault_kw, 0.0, 5,
      floats=lambda st: (st.server, st.buffer, st.devices.params, st.delta),
      exact=lambda st: (st.version, st.pulled_N, st.buffered), speeds=speeds)
  assert int(state.version) >= 4
