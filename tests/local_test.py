"""Local training schedules: bucketed masked loops against the single masked loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax.algorithms import reference
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import local
from tests import fixtures

SPEEDS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)


@pytest.fixture(scope='module')
def six_devices():
  problem, data = fixtures.make_tiny_problem(num_devices=6, speeds=SPEEDS)
  step = local.make_device_step(problem.model.apply, problem.optimizer, problem.batch_size)
  devices = local.init_devices(jax.random.PRNGKey(0), problem.init_params, problem.optimizer, 6)
  return step, devices, data


def _train(step, devices, data, budgets_N, schedule):
  fn = jax.jit(lambda d, b: local.masked_local_train(step, d, data, b, schedule))
  return jax.device_get(fn(devices, jnp.asarray(budgets_N, jnp.int32)))


@pytest.mark.parametrize('widths,max_width,shards,unroll', [
    ((1, 2, 3), 0, 1, False), ((1,) * 6, 0, 1, False), ((), 2, 1, False), ((), 4, 1, False),
    ((1, 5), 2, 1, False), ((), 0, 2, False), ((2, 1), 0, 2, False), ((1, 1), 0, 3, False),
    ((), 1, 3, False),
    ((), 1, 1, False),  # Sub-buckets of one device: no vmap and no mask (local.lift).
    # Sub-buckets as separate step copies: two of three devices; a bucket of five in three
    # sub-buckets of two (one idle slot); buckets of two and of four (two sub-buckets).
    ((), 4, 1, True), ((1, 5), 2, 1, True), ((2, 4), 3, 1, True),
])
def test_buckets_match_single_loop(six_devices, widths, max_width, shards, unroll):
  step, devices, data = six_devices
  budgets_N = [3, 0, 7, 1, 5, 2]
  expected = _train(step, devices, data, budgets_N, local.LocalSchedule())
  got = _train(step, devices, data, budgets_N,
               local.LocalSchedule(widths, max_width=max_width, num_shards=shards,
                                   unroll=unroll))
  chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-7)
  devices_out, loss_N = got
  assert np.asarray(devices_out.steps).tolist() == budgets_N
  assert loss_N[1] == 0.0  # H = 0: no steps, no loss.
  chex.assert_trees_all_equal(  # A device with H = 0 keeps its parameters exactly.
      jax.tree.map(lambda x: x[1], devices_out.params),
      jax.tree.map(lambda x: np.asarray(x[1]), devices.params))


def test_buckets_never_retrace(six_devices):
  step, devices, data = six_devices
  schedule = local.LocalSchedule((1, 5), max_width=2)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def train(d, b):
    return local.masked_local_train(step, d, data, b, schedule)

  for budgets_N in ([3, 0, 7, 1, 5, 2], [0, 0, 0, 0, 0, 0], [9, 9, 1, 1, 4, 0]):
    jax.block_until_ready(train(devices, jnp.asarray(budgets_N, jnp.int32)))


def test_computed_steps_by_hand():
  budgets_N = np.array([3, 0, 7, 1, 5, 2])  # Sorted: 7 5 3 2 1 0; useful: 18.
  assert local.LocalSchedule().computed_steps(budgets_N) == 6 * 7
  assert local.LocalSchedule((1, 2, 3)).computed_steps(budgets_N) == 7 + 2 * 5 + 3 * 2
  assert local.LocalSchedule((1,) * 6).computed_steps(budgets_N) == 18
  # Two shards [3 0 7 | 1 5 2], each sorted (7 3 0 | 5 2 1), widths (1, 2):
  # bucket 0 holds 7 and 5 -> 2 * 7; bucket 1 holds 3 0 | 2 1 -> 4 * 3.
  assert local.LocalSchedule((1, 2), num_shards=2).computed_steps(budgets_N) == 14 + 12
  # Sub-buckets of at most 2: [7 5] [3 2] [1 0] -> 2 * (7 + 3 + 1).
  schedule = local.LocalSchedule(max_width=2)
  assert schedule.layout(6) == ((6, 3, 2),)
  assert schedule.computed_steps(budgets_N) == 22
  # Buckets (1, 5) split by 2: [7], then [5 3] [2 1] [0 idle] -> 7 + 2 * (5 + 2 + 0).
  schedule = local.LocalSchedule((1, 5), max_width=2)
  assert schedule.layout(6) == ((1, 1, 1), (5, 3, 2))
  assert schedule.computed_steps(budgets_N) == 21


def test_device_working_set_by_hand(six_devices):
  _, devices, _ = six_devices
  problem, _ = fixtures.make_tiny_problem()
  params = jax.tree.map(lambda x: x[0], devices.params)
  opt_state = jax.tree.map(lambda x: x[0], devices.opt_state)
  x_B = jax.ShapeDtypeStruct((3, 4, 4, 1), jnp.float32)
  # 103 parameters + 103 momentum: 3 x 824 bytes. The forward pass on 3 images, float32:
  # flatten 3x16 (192 B), dense: dot 3x5 (60), bias 1x5 (20), add 3x5 (60); tanh 3x5 (60);
  # dense: dot 3x3 (36), bias 1x3 (12), add 3x3 (36): 476 bytes.
  got = local.device_working_set_bytes(problem.model.apply, params, opt_state, x_B)
  assert got == 3 * 824 + 476


def test_max_width_for_bytes():
  assert local.max_width_for_bytes(1000, 4500) == 4
  assert local.max_width_for_bytes(1000, 10) == 1  # Never below one device.
  assert local.max_width_for_bytes(1000, 0) == 0  # No limit.


def test_fit_bucket_widths():
  paper = (1, 1, 2, 2, 4, 4, 8, 8)
  assert local.fit_bucket_widths(paper, 1) == ()
  assert local.fit_bucket_widths(paper, 8) == (1,) * 8
  assert local.fit_bucket_widths(paper, 4) == (2, 2, 2, 2)
  assert local.fit_bucket_widths(paper, 16) == (1,) * 8  # At most one bucket per device.
  assert local.fit_bucket_widths(paper, 4, num_shards=2) == (1, 1, 1, 1)  # Per shard.
  assert local.fit_bucket_widths(np.ones(12), 3) == (4, 4, 4)  # Ties: equal widths.
  # A heavy tail gets a narrow top bucket: devices 0..8 at speed 1, one at speed 100.
  assert local.fit_bucket_widths([1.0] * 9 + [100.0], 2) == (1, 9)
  lognormal = np.exp(0.8 * np.random.default_rng(0).standard_normal(10_000))
  widths = local.fit_bucket_widths(lognormal, 8)
  assert len(widths) == 8 and sum(widths) == 10_000 and list(widths) == sorted(widths)


def test_schedule_errors(six_devices):
  step, devices, data = six_devices
  with pytest.raises(ValueError, match='cannot be split into 4 equal shards'):
    local.masked_local_train(step, devices, data, jnp.ones(6, jnp.int32),
                             local.LocalSchedule(num_shards=4))
  with pytest.raises(ValueError, match='must sum to the 6 devices'):
    local.masked_local_train(step, devices, data, jnp.ones(6, jnp.int32),
                             local.LocalSchedule((2, 2)))
  with pytest.raises(ValueError, match='widths >= 1'):
    local.LocalSchedule((0, 6))
  with pytest.raises(ValueError, match='max_width >= 0'):
    local.LocalSchedule(max_width=-1)
  for bad in (dict(max_width=0), dict(max_width=local.UNROLL_MAX_WIDTH + 1),
              dict(max_width=2, num_shards=2)):
    with pytest.raises(ValueError, match=r'unroll=True\) needs one shard and max_width'):
      local.LocalSchedule(unroll=True, **bad)


def test_hadfl_with_buckets_matches_reference():
  # Two budget-sorted buckets, each run as sub-buckets of two devices, against the
  # plain-loop reference, with faults and jitter moving devices between buckets.
  problem, data = fixtures.make_tiny_problem()
  # TinyNet's working set: 3 x 824 B of parameters and momentum + 356 B of activations.
  algo, problem = fixtures.make_hadfl(problem, t_local=0.3, p_drop=0.25, jitter_sigma=0.3,
                                      speed_ema=0.5, num_buckets=2, bucket_mib=6000 / 2**20)
  schedule = engine_lib.LocalTrainer(
      problem, engine_lib.EngineConfig(num_buckets=2, bucket_mib=6000 / 2**20,
                                       mesh_shards=1)).schedule_for(data.images.shape[2:])
  assert schedule.max_width == 2 and len(schedule.bucket_widths) == 2
  state = ref_state = algo.init(jax.random.PRNGKey(5))
  cycle = jax.jit(algo.cycle)
  for _ in range(3):
    state, info = cycle(state, data)
    ref_state, ref_info = reference.reference_cycle(problem, algo.config, ref_state, data)
    chex.assert_trees_all_close(jax.device_get(state), ref_state, rtol=2e-5, atol=2e-6)
    chex.assert_trees_all_close(jax.device_get(info), ref_info, rtol=2e-5, atol=2e-6)
