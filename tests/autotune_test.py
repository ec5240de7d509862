"""Implementation choices by measurement: the fastest wins, once per machine and shape."""

import importlib
import json

import jax
import jax.numpy as jnp
import optax
import pytest

from hadfl_jax import algorithms
from hadfl_jax import models
from hadfl_jax import train
from hadfl_jax import validation
from hadfl_jax.core import autotune


@pytest.fixture(autouse=True)
def _measuring(monkeypatch):
  monkeypatch.setenv(autotune.ENABLED_ENV, '1')  # The suite turns it off (conftest).


def _timers(seconds, calls):
  def timer(name):
    def measure():
      calls.append(name)
      return seconds[name]
    return measure
  return {name: timer(name) for name in seconds}


def test_the_fastest_is_chosen_measured_once_and_cached(tmp_path, monkeypatch):
  path = str(tmp_path / 'choices.json')
  calls = []
  work = {'shape': [8, 8]}
  assert autotune.choose('x', work, _timers({'a': 2.0, 'b': 1.0}, calls), path=path) == 'b'
  assert sorted(calls) == ['a', 'b']
  (entry,) = json.loads(open(path).read()).values()
  assert entry['choice'] == 'b' and entry['seconds'] == {'a': 2.0, 'b': 1.0}
  # Measured again by nobody, in this process or another (the file): the choice stays.
  monkeypatch.setattr(autotune, '_memory', {})
  assert autotune.choose('x', work, _timers({'a': 0.5, 'b': 1.0}, calls), path=path) == 'b'
  assert len(calls) == 2
  # Other work, or another machine, is measured.
  assert autotune.choose('x', {'shape': [4]}, _timers({'a': 0.5, 'b': 1.0}, calls),
                         path=path) == 'a'
  monkeypatch.setattr(autotune, 'machine_key', lambda: {'backend': 'other'})
  assert autotune.choose('x', work, _timers({'a': 0.5, 'b': 1.0}, calls), path=path) == 'a'
  # Each measurement: 'a' twice (its samples reach the 1 s budget), 'b' once.
  assert calls[2:] == ['a', 'b', 'a'] * 2
  assert len(json.loads(open(path).read())) == 3


def test_candidates_are_sampled_in_interleaved_rounds_within_their_budgets():
  calls = []
  seconds = autotune.measure(_timers({'a': 0.01, 'b': 0.02, 'c': 0.6}, calls), repeats=3,
                             budget_s=1.0)
  # Name order, then reversed; 'c' stops once its samples took the budget (0.6 + 0.6).
  assert calls == ['a', 'b', 'c', 'c', 'b', 'a', 'a', 'b']
  assert seconds == {'a': 0.01, 'b': 0.02, 'c': 0.6}
  calls.clear()
  timers = _timers({'a': 0.01, 'b': float('inf')}, calls)
  assert autotune.measure(timers, per={'a': 4}) == {'a': 0.0025, 'b': float('inf')}
  assert calls == ['a', 'b', 'a', 'a']  # Not run, 'b' is not sampled again.


def test_a_load_that_comes_and_goes_falls_on_every_candidate_alike(tmp_path):
  # 'a' takes 1 ms and 'b' 2 ms, 10x that while the machine is loaded: over the first
  # three samples taken. Timed one after the other, 'a' would have seen only the load.
  taken = []

  def sampler(name, ms):
    def sample():
      taken.append(name)
      return ms * (10 if len(taken) <= 3 else 1) / 1e3
    return sample

  sequential = {name: min(sampler(name, ms)() for _ in range(3))
                for name, ms in (('a', 1.0), ('b', 2.0))}
  assert min(sequential, key=sequential.get) == 'b'  # The wrong choice.
  taken.clear()
  path = str(tmp_path / 'c.json')
  candidates = {'a': sampler('a', 1.0), 'b': sampler('b', 2.0)}
  assert autotune.choose('load', {}, candidates, path=path) == 'a'
  (entry,) = json.loads(open(path).read()).values()
  assert entry['seconds'] == pytest.approx({'a': 1e-3, 'b': 2e-3})


def test_an_unreadable_cache_is_measured_again_and_no_file_when_disabled(tmp_path, monkeypatch):
  monkeypatch.setattr(autotune, '_memory', {})
  path = tmp_path / 'choices.json'
  path.write_text('{not json')
  calls = []
  assert autotune.choose('y', {}, _timers({'a': 1.0, 'b': 3.0}, calls), path=str(path)) == 'a'
  assert calls and json.loads(path.read_text())
  monkeypatch.setattr(autotune, '_memory', {})
  monkeypatch.setenv(autotune.CACHE_ENV, '')
  assert autotune.cache_path() is None
  assert autotune.choose('z', {}, _timers({'a': 1.0, 'b': 3.0}, calls)) == 'a'
  assert not list(tmp_path.glob('*.tmp'))


def test_convolution_choices_keep_the_parameters_and_the_function():
  cnn = models.get_model('digits_cnn', 10)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 8, 8, 1))
  params = {impl: autotune.with_conv_impl(cnn, impl).init(jax.random.PRNGKey(1), x)
            for impl in autotune.conv_impls(cnn)}
  assert set(params) == {'patches', 'lax'}
  chex_equal = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params['patches'], params['lax'])
  assert all(jax.tree.leaves(chex_equal))
  out = {impl: autotune.with_conv_impl(cnn, impl).apply(params['lax'], x) for impl in params}
  assert jnp.allclose(out['patches'], out['lax'], atol=1e-5)
  mlp = models.get_model('small_mlp', 10)
  assert autotune.conv_impls(mlp) == () and autotune.with_conv_impl(mlp, None) is mlp
  assert autotune.training_conv_impl(mlp, {}, optax.sgd(0.1), None, 4, (28, 28, 1), 2) is None


def test_training_convolution_measured_in_the_engine_loop(tmp_path, monkeypatch):
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'c.json'))
  cnn = models.get_model('digits_cnn', 10)
  params = cnn.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))['params']
  opt = optax.sgd(0.1, momentum=0.9)
  impl = autotune.training_conv_impl(cnn, params, opt, None, 4, (8, 8, 1), width=3, steps=2)
  assert impl in ('patches', 'lax')
  (entry,) = json.loads((tmp_path / 'c.json').read_text()).values()
  assert entry['choice'] == impl and set(entry['seconds']) == {'patches', 'lax'}
  assert min(entry['seconds'].values()) == entry['seconds'][impl] > 0
  assert autotune.training_conv_impl(cnn, params, opt, None, 4, (8, 8, 1), 3,
                                     setting='lax') == 'lax'
  # Cached, the choice is read without making any candidate's inputs or program.
  made = []
  real = autotune._training_loop_sampler  # pylint: disable=protected-access
  monkeypatch.setattr(autotune, '_training_loop_sampler',
                      lambda *a, **k: made.append(a) or real(*a, **k))
  monkeypatch.setattr(autotune, '_memory', {})
  assert autotune.training_conv_impl(cnn, params, opt, None, 4, (8, 8, 1), 3, steps=2) == impl
  assert made == []
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'other.json'))
  monkeypatch.setattr(autotune, '_memory', {})
  assert autotune.training_conv_impl(cnn, params, opt, None, 4, (8, 8, 1), 3, steps=2) in (
      'patches', 'lax')
  assert len(made) == 2  # Measured: each candidate built once, at its first sample.


def test_setup_runs_and_records_the_engine_convolution(quick_config, tmp_path):
  quick_config.model = 'digits_cnn'
  quick_config.engine.conv_impl = 'lax'
  quick_config.hadfl.t_local = 0.02  # Two local steps: XLA:CPU runs lax.conv slowly in loops.
  quick_config.engine.bucket_mib = 64.0  # The width is measured in its own test below.
  setup = train.build_setup(quick_config)
  assert setup.problem.model.conv_impl == 'lax'
  # The sub-buckets the trainers run: sized by engine.bucket_mib here, vmapped.
  problem = setup.problem
  from hadfl_jax.core import engine, local
  trainer = engine.LocalTrainer(problem, validation.engine_config(quick_config))
  schedule = trainer.schedule_for(problem.input_shape)
  sub_buckets = {'width': schedule.max_width, 'unroll': False}
  assert setup.implementation == {'training_conv': 'lax', 'sub_buckets': sub_buckets}
  x_B = jax.ShapeDtypeStruct((problem.batch_size,) + problem.input_shape, jnp.float32)
  assert schedule.max_width == local.max_width_for_bytes(local.device_working_set_bytes(
      problem.model.apply, problem.init_params,
      jax.eval_shape(problem.optimizer.init, problem.init_params), x_B), 64 * 2**20)
  quick_config.num_cycles = quick_config.eval_every = 1
  train.train_and_evaluate(quick_config, str(tmp_path), verbose=False)
  timing = json.loads((tmp_path / 'timing.json').read_text())
  assert timing['implementation'] == {'training_conv': 'lax', 'inference_conv': 'lax',
                                      'inference_batch': 360,  # The whole test split.
                                      'sub_buckets': sub_buckets}
  quick_config.model = 'digits_mlp'
  assert set(train.build_setup(quick_config).implementation) == {'sub_buckets'}


def test_evaluation_batch_sizes_tried():
  assert autotune.batch_sizes(1000) == (125, 250, 500, 1000)
  assert autotune.batch_sizes(100) == (50, 100)
  assert autotune.batch_sizes(20) == (20,)


def test_sub_buckets_measured_per_device_step(tmp_path, monkeypatch):
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'c.json'))
  mlp = models.get_model('small_mlp', 10)
  params = mlp.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))['params']
  plan = autotune.training_sub_buckets(mlp, params, optax.sgd(0.1), None, 4, (28, 28, 1),
                                       shard_width=4)
  (entry,) = json.loads((tmp_path / 'c.json').read_text()).values()
  # Every width vmapped, and from 2 devices up to the unroll limit as step copies too.
  assert set(entry['seconds']) == {'1', '2', '4', '2u', '4u'}
  best = min(entry['seconds'], key=entry['seconds'].get)
  # The whole shard vmapped: the loop is not cut.
  assert plan == ((0, False) if best == '4' else (int(best.rstrip('u')), best.endswith('u')))
  # A sharded device axis times vmapped steps only.
  plan = autotune.training_sub_buckets(mlp, params, optax.sgd(0.1), None, 4, (28, 28, 1),
                                       shard_width=4, unroll=False)
  assert not plan.unroll
  entries = json.loads((tmp_path / 'c.json').read_text()).values()
  assert {'1', '2', '4'} in [set(e['seconds']) for e in entries]


def test_sub_bucket_widths_timed_only_within_the_memory_cap(tmp_path, monkeypatch):
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'c.json'))
  mlp = models.get_model('small_mlp', 10)
  params = mlp.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))['params']
  from hadfl_jax.core import local
  per_device = local.device_working_set_bytes(
      mlp.apply, params, jax.eval_shape(optax.sgd(0.1).init, params),
      jax.ShapeDtypeStruct((4, 28, 28, 1), jnp.float32))
  # A cap that holds two devices' working sets and not three.
  monkeypatch.setattr(autotune, 'TIMED_MIB', 2.5 * per_device / 2**20)
  plan = autotune.training_sub_buckets(mlp, params, optax.sgd(0.1), None, 4, (28, 28, 1),
                                       shard_width=8)
  (entry,) = json.loads((tmp_path / 'c.json').read_text()).values()
  assert set(entry['seconds']) == {'1', '2', '2u'}
  best = min(entry['seconds'], key=entry['seconds'].get)
  assert plan == (int(best.rstrip('u')), best.endswith('u'))  # Never 0: cut.


def test_engine_uses_the_measured_width_and_the_budget_when_off(monkeypatch):
  from hadfl_jax.core import engine
  from tests import fixtures
  problem = fixtures.make_tiny_problem()[0]
  monkeypatch.setattr(autotune, 'training_sub_buckets',
                      lambda *a, **k: autotune.SubBuckets(3, k['unroll']))
  schedule = engine.LocalTrainer(problem).schedule_for(problem.input_shape)
  on_cpu = jax.default_backend() == 'cpu'
  assert (schedule.max_width, schedule.unroll) == ((3, True) if on_cpu else (0, False))
  monkeypatch.setenv(autotune.ENABLED_ENV, 'off')
  assert not autotune.enabled()
  from hadfl_jax.core import local
  x_B = jax.ShapeDtypeStruct((problem.batch_size,) + problem.input_shape, jnp.float32)
  opt_state = jax.eval_shape(problem.optimizer.init, problem.init_params)
  expected = local.max_width_for_bytes(
      local.device_working_set_bytes(problem.model.apply, problem.init_params, opt_state, x_B),
      local.default_bucket_mib() * 2**20)
  assert engine.LocalTrainer(problem).schedule_for(problem.input_shape).max_width == expected
  cnn = models.get_model('digits_cnn', 10)
  assert autotune.training_conv_impl(cnn, None, None, None, 4, (8, 8, 1), 2) == 'patches'
  assert autotune.inference_plan(cnn, None, (8, 8, 1), 100) == ('lax', 100)


def test_time_call_skips_a_candidate_over_the_memory_cap():
  # A product sorted, then multiplied again: XLA keeps the sorted product as a temporary.
  fn = jax.jit(lambda x: jnp.sort(x @ x, axis=0) @ x)
  x = jnp.ones((64, 64))
  temp = fn.lower(x).compile().memory_analysis().temp_size_in_bytes
  assert temp > 0
  assert autotune.time_call(fn, x, max_temp_bytes=temp - 1) == float('inf')
  assert 0 < autotune.time_call(fn, x, max_temp_bytes=temp) < float('inf')
  assert 0 < autotune.time_call(fn, x) < float('inf')
  lowered = []
  traced = jax.jit(lambda x: lowered.append(1) or x @ x)
  sample = autotune.call_timer(traced, x)
  assert all(0 < sample() < float('inf') for _ in range(3)) and lowered == [1]


def test_the_code_key_follows_the_models_module_and_survives_a_model_without_a_file(
    tmp_path, monkeypatch):
  cnn = models.get_model('digits_cnn', 10)
  package_only = autotune.code_key()
  assert autotune.code_key(cnn) == package_only  # The CNN's module is in the package.
  module = tmp_path / 'autotune_user_model.py'
  module.write_text('import flax.linen as nn\n\nclass Model(nn.Module):\n  width: int = 1\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  user = importlib.import_module('autotune_user_model')
  first = autotune.code_key(user.Model())
  assert first != package_only
  # Edited, the user's model is measured again.
  module.write_text(module.read_text() + '# a new version\n')
  autotune._digest_of_files.cache_clear()
  assert autotune.code_key(user.Model()) not in (first, package_only)
  no_file = type('NoFile', (), {'__module__': 'a_module_that_is_not_loaded'})()
  assert autotune.code_key(no_file) == package_only


def test_memory_goes_back_to_the_system_after_a_measurement_only(tmp_path, monkeypatch):
  released = []
  monkeypatch.setattr(autotune.machine, 'release_free_memory', lambda: released.append(1))
  monkeypatch.setattr(autotune, '_memory', {})
  path = str(tmp_path / 'c.json')
  assert autotune.choose('w', {}, _timers({'a': 1.0, 'b': 2.0}, []), path=path) == 'a'
  assert released == [1]
  assert autotune.choose('w', {}, _timers({'a': 3.0, 'b': 2.0}, []), path=path) == 'a'
  assert released == [1]  # Read from the cache: nothing was timed.


def test_releasing_free_memory_without_glibc_does_nothing(monkeypatch):
  import ctypes  # pylint: disable=g-import-not-at-top
  from hadfl_jax import machine  # pylint: disable=g-import-not-at-top

  def no_glibc(name):
    raise OSError(f'{name}: cannot open shared object file')

  monkeypatch.setattr(ctypes, 'CDLL', no_glibc)
  assert machine.release_free_memory() is False


@pytest.mark.parametrize('algorithm', algorithms.names())
def test_sub_buckets_as_step_copies_run_every_algorithm_alike(algorithm, quick_config, tmp_path,
                                                             monkeypatch):
  # The measured plan with sub-buckets of two devices, vmapped or as separate step copies:
  # every algorithm's run gives the same metrics up to float rounding.
  if jax.default_backend() != 'cpu':
    pytest.skip('sub-buckets are measured on CPU only (engine.sub_buckets)')
  from hadfl_jax.core import local
  quick_config.algorithm = algorithm
  quick_config.num_cycles = quick_config.eval_every = 2
  quick_config.engine.num_buckets = 2  # Buckets of four devices: two sub-buckets each.
  lifted = []  # How the trainers lifted the device step over its sub-buckets.
  lift = local.lift
  monkeypatch.setattr(local, 'lift', lambda step, unroll=False: (lifted.append(unroll),
                                                                   lift(step, unroll))[1])
  metrics = {}
  for unroll in (False, True):
    monkeypatch.setattr(autotune, 'training_sub_buckets',
                        lambda *a, copies=unroll, **k: autotune.SubBuckets(2, copies))
    workdir = tmp_path / str(unroll)
    lifted.clear()
    train.train_and_evaluate(quick_config, str(workdir), verbose=False)
    # The trainers ran the plan (DDP averages every step's gradients: no local loop).
    assert set(lifted) == (set() if algorithm == 'ddp' else {unroll})
    lines = (workdir / 'metrics.jsonl').read_text().splitlines()
    metrics[unroll] = [json.loads(line) for line in lines]
    timing = json.loads((workdir / 'timing.json').read_text())
    assert timing['implementation']['sub_buckets'] == {'width': 2, 'unroll': unroll}
  assert len(metrics[False]) == len(metrics[True]) >= 1
  for vmapped, copies in zip(metrics[False], metrics[True]):
    assert copies.keys() == vmapped.keys()
    for key, value in vmapped.items():
      # Within one test example of 360 (accuracies); NaN where no device trained in an
      # evaluated cycle.
      if isinstance(value, float):
        assert copies[key] == pytest.approx(value, rel=1e-3, abs=3e-3, nan_ok=True), key
