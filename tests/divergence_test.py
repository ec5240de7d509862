"""A loss or a parameter that stops being finite stops the run, naming cycle and devices."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax import checkpoint
from hadfl_jax import train
from hadfl_jax.algorithms import base
from tests import compile_cache


@pytest.fixture(scope='module', autouse=True)
def _cache(tmp_path_factory):
  with compile_cache.persistent_compilation_cache(tmp_path_factory.mktemp('jax_cache')):
    yield


def _info(loss_N, budgets_N):
  n = len(loss_N)
  return base.CycleInfo(
      cycle_time=np.float32(1.0), bytes_sent_N=np.zeros(n, np.float32),
      server_bytes=np.float32(0.0), budgets_N=np.asarray(budgets_N, np.int32),
      train_loss_N=np.asarray(loss_N, np.float32), up_N=np.ones(n, bool),
      synced_N=np.zeros(n, bool))


def _finite(params_N, state=True):
  return train.Finiteness(params_N=np.asarray(params_N), state=np.asarray(state))


def test_check_finite_names_the_cycle_and_the_devices():
  ok = _info([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4])
  train.check_finite(ok, 4, _finite([True] * 4))
  # A down device (no steps) reports no loss: its NaN does not count.
  with pytest.raises(train.DivergenceError,
                     match=re.escape('cycle 5: training loss is not finite on devices [1]')):
    train.check_finite(_info([0.1, np.nan, np.nan, 0.4], [1, 2, 0, 4]), 4)
  with pytest.raises(train.DivergenceError,
                     match=re.escape('cycle 1: parameters are not finite on devices [1, 3]')):
    train.check_finite(ok, 0, _finite([True, False, True, False]))
  with pytest.raises(train.DivergenceError, match='cycle 2: the optimizer or coordinator state'):
    train.check_finite(ok, 1, _finite([True] * 4, state=False))
  many = _info([np.inf] * 30, [1] * 30)
  with pytest.raises(train.DivergenceError, match=re.escape('devices [0, 1, 2, 3, 4, 5, 6, 7, '
                                                            '8, 9, 10, 11, 12, 13, 14, 15, 16, '
                                                            '17, 18, 19] ...')):
    train.check_finite(many, 0)


class _AddData:
  """A stand-in algorithm: the cycle adds ``data`` to the state, so a test can put a NaN
  anywhere. Device parameters: two leaves with a leading axis of N = 4."""

  def cycle(self, state, data):
    return jax.tree.map(jnp.add, state, data), None

  def device_params(self, state):
    return state['params']


_STATE = {'params': {'w': jnp.zeros((4, 3, 2)), 'b': jnp.zeros((4, 2))},
          'opt_state': jnp.zeros((4, 5)), 'step': jnp.zeros((), jnp.int32)}
_cycle = jax.jit(train.with_finiteness(_AddData()))


@pytest.mark.parametrize('leaf,index,params_N,state', [
    (None, None, [True, True, True, True], True),
    ('w', (2, 1, 0), [True, True, False, True], False),
    ('b', (0, 1), [False, True, True, True], False),
    ('opt_state', (3, 4), [True, True, True, True], False),
])
def test_with_finiteness_reports_the_devices_inside_the_cycle(leaf, index, params_N, state):
  data = jax.tree.map(jnp.zeros_like, _STATE)
  if leaf == 'opt_state':
    data['opt_state'] = data['opt_state'].at[index].set(jnp.nan)
  elif leaf is not None:
    data['params'][leaf] = data['params'][leaf].at[index].set(jnp.inf)
  _, (_, finite) = _cycle(_STATE, data)
  assert np.asarray(finite.params_N).tolist() == params_N
  assert bool(finite.state) == state


def test_huge_learning_rate_stops_the_run_and_keeps_the_last_good_checkpoint(
    quick_config, tmp_path):
  config = quick_config
  config.num_devices = 4
  config.profile.speeds = (1.0, 2.0, 3.0, 4.0)
  config.engine.num_buckets = 1
  config.device_eval_examples = 100
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 1e10
  # Every device is down for cycles 0..2 (nothing trains, checkpoints 1..3 are good);
  # they come up in the 4th cycle and the learning rate blows them up.
  config.faults.down_trace = tuple((i, 0, 3) for i in range(4))
  config.num_cycles, config.eval_every, config.checkpoint_every = 6, 1, 1
  pattern = (r'cycle 4: (training loss|parameters) (is|are) not finite on devices \[([\d, ]+)\]'
             r'.*last good checkpoint \(after cycle 3\)')
  with pytest.raises(train.DivergenceError, match=pattern) as error:
    train.train_and_evaluate(config, str(tmp_path))
  devices = [int(d) for d in re.search(pattern, str(error.value)).group(3).split(',')]
  assert devices and set(devices) <= {0, 1, 2, 3}

  # The non-finite state was never saved; the latest checkpoint is the good one.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '3']
  checkpoints = checkpoint.Checkpointer(str(tmp_path))
  try:
    state, progress = checkpoints.restore(_initial_state(config))
  finally:
    checkpoints.close()
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state)
             if jnp.issubdtype(x.dtype, jnp.inexact))
  assert [row['cycle'] for row in progress['history']] == [1, 2, 3]
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert rows == progress['history']
  assert not (tmp_path / 'summary.json').exists()

  # The same command resumes from it, and stops again at the same cycle.
  with pytest.raises(train.DivergenceError, match=pattern):
    train.train_and_evaluate(config, str(tmp_path))


def _initial_state(config):
  setup = train.build_setup(config)
  algorithm = train.build_algorithm(config, setup.problem)
  return algorithm.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
