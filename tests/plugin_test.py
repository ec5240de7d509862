"""Additions from outside the package (``tests/plugin_example.py``) run like the built-ins.

An algorithm, a selection rule, a model, a loss and a partitioner are registered by a
module of the tests, not of the package, and go through the command line, the open run
loop, the comparison, checkpoints and resume; ``config.json`` names them.
"""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from hadfl_jax import algorithms
from hadfl_jax import compare
from hadfl_jax import evaluation
from hadfl_jax import train
from hadfl_jax.algorithms import reference
from hadfl_jax.core import mixing
from tests import fixtures

PLUGIN = 'tests.plugin_example'


@pytest.fixture(autouse=True)
def plugin_example():
  """The plugin module, imported (and so registered) for each test, never at collection:
  its registrations are undone after this module (tests/conftest.py)."""
  import importlib  # pylint: disable=g-import-not-at-top

  return importlib.import_module(PLUGIN)


def _plugin_config(config):
  config.imports = (PLUGIN,)
  config.algorithm = 'pairwise_gossip'
  config.model = 'tiny_mlp'
  config.loss = 'smoothed_cross_entropy'
  config.partition.kind = 'round_robin'
  config.eval_every = 2
  return config


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_random_pairs_are_a_symmetric_matching(plugin_example):
  up_N = np.array([True, True, False, True, True, True, True, False, True])
  for seed in range(5):
    mix = plugin_example.random_pairs(jax.random.PRNGKey(seed), up_N)
    w = mixing.neighbours_to_dense(mix)
    mixing.check_stochastic(w, doubly=True)
    np.testing.assert_allclose(w, w.T)
    paired = np.flatnonzero(np.diag(w) == 0.5)
    assert len(paired) == 6  # 7 up devices: three pairs, one left out, downs untouched.
    assert not set(paired) & {2, 7}
    assert np.asarray(mixing.synced(mix, 9)).sum() == 6


def test_plugin_runs_from_the_command_line_and_resumes(quick_config, tmp_path, plugin_example,
                                                       compilation_cache_dir):
  config = _plugin_config(quick_config)
  workdir = tmp_path / 'cli'
  # Four cycles from Python, checkpointed; then the command line resumes to six.
  config.num_cycles, config.checkpoint_every = 4, 2
  train.train_and_evaluate(config, str(workdir))
  cmd = [sys.executable, '-m', 'hadfl_jax.main', '--config', 'configs/default.py',
         f'--workdir={workdir}', f'--config.dataset.data_dir={config.dataset.data_dir}',
         f'--config.imports=("{PLUGIN}",)', '--config.algorithm=pairwise_gossip',
         '--config.model=tiny_mlp', '--config.loss=smoothed_cross_entropy',
         '--config.partition.kind=round_robin', '--config.eval_every=2',
         '--config.checkpoint_every=2', '--config.num_cycles=6']
  env = fixtures.subprocess_env(compilation_cache_dir)
  out = subprocess.run(cmd, cwd=fixtures.REPO, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'resuming after cycle 4' in out.stdout

  with open(workdir / 'config.json') as f:
    recorded = json.load(f)
  assert recorded['imports'] == [PLUGIN] and recorded['algorithm'] == 'pairwise_gossip'
  assert (recorded['model'], recorded['loss'], recorded['partition']['kind']) == (
      'tiny_mlp', 'smoothed_cross_entropy', 'round_robin')
  # The plugin's section is recorded in full, with its declared defaults.
  assert recorded['pairwise_gossip'] == plugin_example.Config().to_dict()

  # Resumed, the files are those of a run never stopped.
  config.num_cycles, config.checkpoint_every = 6, 0
  train.train_and_evaluate(config, str(tmp_path / 'straight'))
  assert _rows(workdir) == _rows(tmp_path / 'straight')
  rows = _rows(workdir)
  assert [r['cycle'] for r in rows] == [2, 4, 6]
  assert rows[-1]['consensus_accuracy'] > 0.5  # Ten classes: it learns.


def test_plugin_selection_rule_matches_the_reference_loop():
  problem, data = fixtures.make_tiny_problem()
  algo, problem = fixtures.make_hadfl(problem, t_local=0.3, selection='fewest_examples',
                                      rho=0.5)
  state = ref = algo.init(jax.random.PRNGKey(0))
  cycle = jax.jit(algo.cycle)
  for _ in range(3):
    state, info = cycle(state, data)
    ref, ref_info = reference.reference_cycle(problem, algo.config, ref, data)
    chex.assert_trees_all_close(jax.device_get(state), ref, rtol=2e-5, atol=2e-6)
    chex.assert_trees_all_close(jax.device_get(info), ref_info, rtol=2e-5, atol=2e-6)


def test_open_run_loop_takes_a_plugin_algorithm(quick_config):
  config = _plugin_config(quick_config)
  setup = train.build_setup(config)
  # Round robin: device i holds examples i, i + N, ...: sizes differ by at most one.
  assert np.ptp(setup.problem.num_examples_N) <= 1
  algorithm = algorithms.build('pairwise_gossip', setup.problem, {'t_local': 0.05})
  evaluator = evaluation.Evaluator(setup.problem.model.apply, setup.test,
                                   device_examples=100, task=setup.problem.task)
  state, progress = train.run(algorithm, algorithm.init(jax.random.PRNGKey(0)),
                              setup.device_data, evaluator, num_cycles=4,
                              schedule=train.EvalSchedule(every=2), verbose=False)
  assert [r['cycle'] for r in progress.history] == [2, 4]
  assert progress.ledger.cycles == 4
  # Cycle time: t_local plus one model over a 100 Mbit/s link plus the latency.
  m = setup.problem.model_bytes
  assert progress.ledger.sim_time == pytest.approx(4 * (0.05 + m / 12.5e6 + 0.005), rel=1e-5)
  assert int(state.cycle) == 4


def test_compare_runs_a_plugin_beside_hadfl(quick_config, tmp_path):
  from hadfl_jax.configs import quick_compare  # pylint: disable=g-import-not-at-top

  config = quick_compare.get_config()
  config.dataset.data_dir = quick_config.dataset.data_dir
  config.imports = (PLUGIN,)
  config.compare.algorithms = ('hadfl', 'pairwise_gossip')
  config.compare.seeds = (0,)
  config.hadfl.selection = 'fewest_examples'  # HADFL with the plug-in selection rule.
  config.max_sim_time = 1.0
  results = compare.compare(config, str(tmp_path), log=lambda _: None)
  assert set(results['algorithms']) == {'hadfl', 'pairwise_gossip'}
  gossip = results['algorithms']['pairwise_gossip']
  assert gossip['chosen'] == {'lr': 0.05, 'h': 5}
  assert 'hadfl_speedup' in gossip
  with open(tmp_path / 'runs' / 'pairwise_gossip_h5_lr0.05' / 'seed0' / 'config.json') as f:
    # h = 5 steps of the fastest device (10 ms per step): t_local = 0.05 s.
    assert json.load(f)['pairwise_gossip']['t_local'] == pytest.approx(0.05)
  with open(tmp_path / 'runs' / 'hadfl_h5_lr0.05' / 'seed0' / 'config.json') as f:
    assert json.load(f)['hadfl']['selection'] == 'fewest_examples'

