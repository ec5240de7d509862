"""Implementation choices made by measurement on the machine at hand, and cached.

Some computations have several implementations with the same parameters and the same
results up to float rounding, and which one is fastest depends on the machine and on the
shape of the work, not on the model alone. The convolution is the case in point
(``docs/spec.md``, "A known trap"): inside the vmapped loop of small per-device batches
the ``patches`` convolution (shifted slices and one matmul) is the fast one on CPU, while
one model on batches of a thousand test images runs several times faster with XLA's
native convolution, the natural choice on GPUs and TPUs too. One default for every machine
is wrong somewhere, so with ``engine.conv_impl = 'auto'`` (the default) each is timed where
it runs:

* :func:`training_conv_impl`: a few vmapped local steps of a sub-bucket of devices (as
  wide as ``engine.bucket_mib``'s budget allows) in a loop like the engine's
  (:class:`hadfl_jax.core.engine.LocalTrainer`);
* :func:`training_sub_buckets`: that sub-bucket's width (cache blocking on CPU) and
  whether its devices run as one vmapped step or as separate step copies that XLA:CPU
  can overlap, per device-step, for ``engine.bucket_mib = None`` on CPU;
* :func:`inference_plan`: the convolution and the batch size of evaluation, timed on
  forward passes of one model over test-sized batches
  (:class:`hadfl_jax.evaluation.Evaluator`); accuracy does not depend on the batch size,
  the loss only by float rounding.

Candidates are timed in interleaved rounds, each the best of a few calls
(:func:`measure`), so that a load that comes and goes on a shared machine falls on all of
them alike. Timing a candidate holds its memory, so on CPU candidates are timed only within
:data:`TIMED_MIB` (sub-bucket working sets, XLA's temporaries of a timed call): a run's
first on a machine would otherwise peak far above its own needs.

A choice is measured once per machine and shape: it is kept in memory and in a JSON file
(``$HADFL_JAX_AUTOTUNE_CACHE``, default ``~/.cache/hadfl_jax/autotune.json``; an empty value
keeps choices in memory only), keyed by what was timed (the model, the shapes, the
optimizer), the code that ran (:func:`code_key`: a digest of the package's source and of
the model's module, so a new version measures again) and the machine (backend, device
kind, CPU model and vector extensions, JAX version), with the times that decided it.
The parameter tree is the same for every implementation, so checkpoints, run keys and
results do not depend on the choice beyond float rounding. With several processes,
process 0's choice is broadcast so that every process compiles the same program.
``$HADFL_JAX_AUTOTUNE=0`` turns measurement off (:func:`enabled`: fixed defaults, e.g.
for a test suite).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hadfl_jax import machine

PyTree = Any

CACHE_ENV = 'HADFL_JAX_AUTOTUNE_CACHE'
ENABLED_ENV = 'HADFL_JAX_AUTOTUNE'  # '0' or 'off': no measurement, the fixed defaults.
CHOICES = ('auto', 'patches', 'lax')  # engine.conv_impl
_memory: dict[str, dict] = {}


def _eager(fn: Callable) -> Callable:
  """Runs a measurement eagerly even when called while a function is being traced (the
  engine's schedule is made when its cycle is first traced)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.ensure_compile_time_eval():
      return fn(*args, **kwargs)

  return wrapped


def enabled() -> bool:
  """Whether ``'auto'`` measures (``$HADFL_JAX_AUTOTUNE`` is not ``0``/``off``). Off, the
  choices are fixed: training's convolution is the model's own (``patches``), evaluation's
  the native one at the configured batch size, sub-buckets sized by the MiB budget."""
  return os.environ.get(ENABLED_ENV, '1').strip().lower() not in ('0', 'off', 'false', 'no')


def cache_path() -> str | None:
  """The JSON file of choices (``$HADFL_JAX_AUTOTUNE_CACHE``, empty for none)."""
  path = os.environ.get(CACHE_ENV)
  if path is None:
    path = os.path.join(os.path.expanduser('~'), '.cache', 'hadfl_jax', 'autotune.json')
  return path or None


def machine_key() -> dict:
  """What a measurement depends on besides the work: the machine and the compiler."""
  device = jax.devices()[0]
  cpu, flags = machine.cpu_model_and_vector_extensions()
  return {'backend': jax.default_backend(), 'device_kind': device.device_kind,
          'cpu': cpu, 'vector_extensions': flags, 'jax': jax.__version__}


@functools.cache
def _digest_of_files(paths: tuple[str, ...]) -> str:
  digest = hashlib.sha256()
  for path in paths:
    with open(path, 'rb') as f:
      digest.update(f.read())
  return digest.hexdigest()[:16]


@functools.cache
def _package_sources() -> tuple[str, ...]:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return tuple(sorted(os.path.join(folder, name) for folder, _, names in os.walk(root)
                      for name in names if name.endswith('.py')))


def code_key(model=None) -> str:
  """What a measurement depends on in the code: a digest of this package's source files
  and of the module defining ``model``'s class (a user's model lives outside the package),
  so that a choice measured with older code is measured again, not reused."""
  paths = list(_package_sources())
  try:  # A class typed into a notebook has no file: its repr in the work key stands alone.
    module_file = None if model is None else inspect.getsourcefile(type(model))
  except (TypeError, OSError):
    module_file = None
  if module_file and os.path.exists(module_file) and os.path.abspath(module_file) not in paths:
    paths.append(os.path.abspath(module_file))
  return _digest_of_files(tuple(paths))


def _load(path: str | None) -> dict:
  if not path or not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    logging.warning('autotune: ignoring the unreadable cache %s', path)
    return {}


def _store(path: str | None, key: str, entry: dict) -> None:
  if not path or jax.process_index() != 0:
    return
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table = _load(path)
    table[key] = entry
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      json.dump(table, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except OSError as e:  # A read-only home: the choice is still kept in memory.
    logging.warning('autotune: cannot write %s (%s)', path, e)


def call_timer(fn: Callable[..., Any], *args,
               max_temp_bytes: float | None = None) -> Callable[[], float]:
  """A sampler of the jitted ``fn(*args)``: each call of it runs ``fn`` once and returns
  the seconds taken. ``fn`` is compiled at the first sample, outside the time. Infinite,
  without a call, where XLA's memory analysis gives the compiled call more than
  ``max_temp_bytes`` of temporaries."""
  compiled = None

  def sample() -> float:
    nonlocal compiled
    if compiled is None:
      compiled = fn.lower(*args).compile()
      if max_temp_bytes is not None:
        analysis = compiled.memory_analysis()
        temp = getattr(analysis, 'temp_size_in_bytes', None) if analysis is not None else None
        if temp is not None and temp > max_temp_bytes:
          compiled = False
    if compiled is False:
      return float('inf')
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start

  return sample


def lazy_timer(make: Callable[[], Callable[[], float]]) -> Callable[[], float]:
  """A sampler that builds its inputs and its program (``make()``, a sampler) at its first
  sample: where a choice is cached, no candidate's inputs are made or compiled. Its
  ``release()`` drops what it built (:func:`choose` calls it once the choice is made, so
  the candidates' inputs and programs are not held while the run goes on)."""
  built = {}

  def sample() -> float:
    if 'sampler' not in built:
      built['sampler'] = make()
    return built['sampler']()

  sample.release = built.clear
  return sample


def _random_inputs(shape: tuple[int, ...]) -> jax.Array:
  """Timing inputs (numpy's generator: nothing to compile for them)."""
  return jnp.asarray(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))


REPEATS = 3  # Samples of each candidate: the best counts.
BUDGET_S = 1.0  # A candidate is sampled again only while its samples took less than this.


def measure(samplers: Mapping[str, Callable[[], float]], *,
            per: Mapping[str, float] | None = None, repeats: int = REPEATS,
            budget_s: float = BUDGET_S) -> dict[str, float]:
  """The best of up to ``repeats`` samples of each sampler (name -> seconds of one call),
  divided by its units of work (``per``, default 1), taken in interleaved rounds: every
  candidate once per round, in name order and reversed every other round. A change in the
  machine's load then falls on every candidate alike instead of on whichever was being
  timed (sequential timing chose the slower of two evaluation batch sizes on a machine
  that a test suite loaded halfway through). A candidate is sampled no more once its
  samples took ``budget_s`` (a slow one is timed once) or it is infinite (not run)."""
  names = sorted(samplers)
  best = dict.fromkeys(names, float('inf'))
  spent = dict.fromkeys(names, 0.0)
  for round_ in range(repeats):
    for name in names if round_ % 2 == 0 else names[::-1]:
      if round_ and (spent[name] >= budget_s or spent[name] == float('inf')):
        continue
      seconds = float(samplers[name]())
      spent[name] += seconds
      best[name] = min(best[name], seconds)
  units = per or {}
  return {name: best[name] / units.get(name, 1) for name in names}


def time_call(fn: Callable[..., Any], *args, repeats: int = REPEATS,
              budget_s: float = BUDGET_S, max_temp_bytes: float | None = None) -> float:
  """Seconds of one call of the jitted ``fn(*args)``, compiled first: the best of up to
  ``repeats`` calls, fewer once ``budget_s`` is spent (:func:`call_timer`, :func:`measure`)."""
  sampler = call_timer(fn, *args, max_temp_bytes=max_temp_bytes)
  return measure({'call': sampler}, repeats=repeats, budget_s=budget_s)['call']


def choose(what: str, work: Mapping[str, Any],
           candidates: Mapping[str, Callable[[], float]], *,
           per: Mapping[str, float] | None = None, path: str | None = None,
           repeats: int = REPEATS, budget_s: float = BUDGET_S) -> str:
  """The fastest of ``candidates`` for ``work`` on this machine, from the cache if it was
  measured before.

  Args:
    what: the computation (``'training_conv'``, ``'training_sub_buckets'``,
      ``'inference'``).
    work: what the timing depends on besides the machine (shapes, model, ...; JSON).
    candidates: the implementations and their samplers (name -> a function running it
      once and returning the seconds taken, e.g. :func:`call_timer`), sampled in
      interleaved rounds (:func:`measure`).
    per: each candidate's units of work per call (default 1): the choice is the fastest
      per unit, e.g. per device-step or per example.
    path: the cache file (default :func:`cache_path`).
    repeats: samples of each candidate, at most (:func:`measure`).
    budget_s: a candidate is sampled again only while its samples took less than this.

  Returns:
    The name of the fastest candidate (process 0's, with several processes).
  """
  names = sorted(candidates)
  if len(names) == 1:
    return names[0]
  path = cache_path() if path is None else path
  key = json.dumps({'what': what, 'work': work, 'machine': machine_key()}, sort_keys=True,
                   default=str)
  entry = _memory.get(key) or _load(path).get(key)
  if entry is None or entry.get('choice') not in candidates:
    seconds = measure(candidates, per=per, repeats=repeats, budget_s=budget_s)
    for candidate in candidates.values():  # Drop their inputs and programs (lazy_timer).
      getattr(candidate, 'release', lambda: None)()
    machine.release_free_memory()  # What the candidates held goes back to the system.
    entry = {'choice': min(names, key=seconds.__getitem__), 'seconds': seconds,
             'measured': time.strftime('%Y-%m-%dT%H:%M:%S')}
    logging.info('autotune %s: %s (%s)', what, entry['choice'],
                 ', '.join(f'{n} {s * 1e3:.2f} ms' for n, s in seconds.items()))
    _store(path, key, entry)
  _memory[key] = entry
  choice = entry['choice']
  if jax.process_count() > 1:  # Every process must compile the same program.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    index = multihost_utils.broadcast_one_to_all(np.int32(names.index(choice)))
    choice = names[int(index)]
  return choice


def conv_impls(model) -> tuple[str, ...]:
  """The convolution implementations ``model`` offers (none for a model without a
  ``conv_impl`` field)."""
  from hadfl_jax.models import layers  # pylint: disable=g-import-not-at-top
  if 'conv_impl' in getattr(model, '__dataclass_fields__', {}):
    return tuple(layers.CONV_IMPLS)
  return ()


def with_conv_impl(model, impl: str):
  """``model`` with convolution ``impl`` (itself where it has no choice)."""
  return model.clone(conv_impl=impl) if conv_impls(model) else model


def _training_loop_timer(model, params: PyTree, optimizer, task, batch_size: int,
                         input_shape: tuple[int, ...], width: int,
                         steps: int) -> Callable[[], float]:
  """A sampler (:func:`call_timer`) of ``steps`` local steps of ``width`` devices vmapped
  in a ``lax.fori_loop`` (the engine's loop) on random examples (infinite for a loop
  needing more than :data:`TIMED_MIB` of temporaries, not run), built at its first sample."""
  return lazy_timer(functools.partial(_training_loop_sampler, model, params, optimizer, task,
                                      batch_size, input_shape, width, steps))


def _training_loop_sampler(model, params: PyTree, optimizer, task, batch_size: int,
                           input_shape: tuple[int, ...], width: int,
                           steps: int) -> Callable[[], float]:
  from hadfl_jax.core import local  # pylint: disable=g-import-not-at-top
  stack = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (width,) + x.shape), tree)
  params_W, opt_state_W = stack(params), stack(optimizer.init(params))
  pool = 4 * batch_size
  images = _random_inputs((width, pool) + tuple(input_shape))
  labels = jnp.zeros((width, pool), jnp.int32)
  count = jnp.full((width,), pool, jnp.int32)
  keys = jax.random.split(jax.random.PRNGKey(1), width)
  step = local.lift(local.make_device_step(model.apply, optimizer, batch_size, task))

  @jax.jit
  def loop(params_W, opt_state_W):
    def body(i, carry):
      p, o, _ = carry
      return step(p, o, keys, jnp.full((width,), i), images, labels, count)
    return jax.lax.fori_loop(0, steps, body, (params_W, opt_state_W, jnp.zeros((width,))))

  return call_timer(loop, params_W, opt_state_W, max_temp_bytes=timed_bytes())


def _sub_bucket_timer(model, params: PyTree, optimizer, task, batch_size: int,
                      input_shape: tuple[int, ...], width: int, unroll: bool,
                      steps: int) -> Callable[[], float]:
  """A sampler (:func:`call_timer`) of the engine's own masked loop
  (:func:`hadfl_jax.core.local.masked_local_train`) giving ``steps`` local steps to each of
  two sub-buckets of ``width`` devices (``unroll``: as separate step copies), on random
  uint8 examples: the sub-buckets' gathers and scatters and the first steps of each, which
  a longer loop amortises, are timed with the steps (a run's sub-buckets may be narrower
  than ``width``: a bucket is cut into sub-buckets of equal width). Built at its first
  sample; infinite beyond :data:`TIMED_MIB` of temporaries."""

  def make() -> Callable[[], float]:
    from hadfl_jax.core import device_data, local  # pylint: disable=g-import-not-at-top
    n, pool = 2 * width, 4 * batch_size
    rng = np.random.default_rng(0)  # Stored images are uint8, as a run's DeviceData.
    images = rng.integers(0, 256, (n, pool) + tuple(input_shape), dtype=np.uint8)
    data = device_data.DeviceData(images=jnp.asarray(images),
                                  labels=jnp.zeros((n, pool), jnp.int32),
                                  counts=jnp.full((n,), pool, jnp.int32))
    devices = local.init_devices(jax.random.PRNGKey(1), params, optimizer, n)
    step = local.make_device_step(model.apply, optimizer, batch_size, task)
    schedule = local.LocalSchedule(max_width=width, unroll=unroll)
    train = jax.jit(lambda d, x, b: local.masked_local_train(step, d, x, b, schedule)[0])
    return call_timer(train, devices, data, jnp.full((n,), steps, jnp.int32),
                      max_temp_bytes=timed_bytes())

  return lazy_timer(make)


def _training_work(model, params, optimizer, batch_size, input_shape) -> dict:
  # What the step touches besides the model: the optimizer state's size (its repr names
  # functions by address, which differs from process to process).
  opt_floats = sum(int(np.size(x)) for x in jax.tree.leaves(jax.eval_shape(optimizer.init,
                                                                          params)))
  return {'model': repr(model), 'code': code_key(model), 'optimizer_state_floats': opt_floats,
          'batch_size': batch_size, 'input_shape': list(input_shape)}


@_eager
def training_conv_impl(model, params: PyTree, optimizer, task, batch_size: int,
                       input_shape: tuple[int, ...], width: int, setting: str = 'auto',
                       steps: int = 2) -> str | None:
  """The convolution of local training: ``setting`` unless ``'auto'``, else the faster
  on ``steps`` local steps of ``width`` devices vmapped in a ``lax.fori_loop`` (the
  engine's loop), at ``batch_size`` examples of ``input_shape``. None: no choice."""
  impls = conv_impls(model)
  if not impls:
    return None
  if setting != 'auto':
    return setting
  if not enabled():
    return model.conv_impl
  timers = {impl: _training_loop_timer(with_conv_impl(model, impl), params, optimizer, task,
                                       batch_size, input_shape, width, steps)
            for impl in impls}
  work = dict(_training_work(model, params, optimizer, batch_size, input_shape), width=width)
  return choose('training_conv', work, timers)


WIDEST_TIMED = 64
# On CPU, candidates are timed only within this much memory: sub-buckets up to the width
# whose devices' working sets fit (a sub-bucket far beyond the caches is not faster, and
# timing 64 CNN devices at once took a run to 3.8 GB), evaluation batches and training
# loops whose XLA temporaries fit (the patches convolution on 1,000 images needs about
# 0.4 GB). What a run's first measurement holds is then close to what the run holds.
TIMED_MIB = 128


def timed_bytes() -> float | None:
  """The memory cap of a timed candidate, in bytes: :data:`TIMED_MIB` on CPU, none on
  accelerators (their memory is not the process's, and wide work is what they are for)."""
  return TIMED_MIB * 2**20 if jax.default_backend() == 'cpu' else None


# Step copies are taken only when at least this much faster per device-step than the
# fastest vmapped sub-bucket: they cost compile time (the step is traced once per device),
# and gains under a few percent are within a shared machine's noise. The seconds a choice
# records for them include this handicap.
UNROLL_MARGIN = 1.03
# Samples of each sub-bucket candidate (the best counts), and the seconds after which a
# candidate is sampled no more: with best-of-3 samples of 1 s, step copies measured 1%
# faster than the vmapped step on a machine where best-of-5 found them 4 to 6% faster.
SUB_BUCKET_REPEATS = 5
SUB_BUCKET_BUDGET_S = 3.0


class SubBuckets(NamedTuple):
  """How the engine's loop runs a bucket's devices (:class:`hadfl_jax.core.local.LocalSchedule`).

  Attributes:
    width: the most devices of one sub-bucket, its ``max_width`` (0: the loop is not cut).
    unroll: the sub-bucket's devices as separate step copies, not one vmapped step.
  """

  width: int
  unroll: bool = False


@_eager
def training_sub_buckets(model, params: PyTree, optimizer, task, batch_size: int,
                         input_shape: tuple[int, ...], shard_width: int,
                         steps: int = 16, unroll: bool = True) -> SubBuckets:
  """How one sub-bucket of the engine's loop runs, the fastest per device-step: its width,
  among the powers of two up to ``shard_width`` (and it), each as one vmapped step and,
  from 2 to :data:`hadfl_jax.core.local.UNROLL_MAX_WIDTH` devices, as separate step copies
  (candidate names ``'<width>'`` and ``'<width>u'``). On a CPU a narrow sub-bucket keeps
  its devices' states in cache, and separate copies let XLA:CPU overlap one device's data
  movement with another's matmuls; on an accelerator the widest vmap is usually fastest.
  Widths above :data:`WIDEST_TIMED`, or whose working sets
  (:func:`hadfl_jax.core.local.device_working_set_bytes`) exceed :data:`TIMED_MIB`, are
  not timed; the loop is not cut (width 0) when the whole shard, vmapped, is the choice.
  ``unroll=False`` times vmapped steps only (a sharded device axis).

  Each candidate runs the engine's masked loop for ``steps`` local steps of two
  sub-buckets (:func:`_sub_bucket_timer`); step copies must be :data:`UNROLL_MARGIN`
  faster than the fastest vmapped width to be taken. Fewer steps favour narrow
  sub-buckets: the first steps of a loop, which warm the caches with its devices' states,
  cost more per device the wider it is (timed with 2 steps, one device per sub-bucket
  looked fastest on a 2-core CPU where, at 16 steps as a run takes them, two as step
  copies were 6% faster).
  """
  from hadfl_jax.core import local  # pylint: disable=g-import-not-at-top
  x_B = jax.ShapeDtypeStruct((batch_size,) + tuple(input_shape), jnp.float32)
  per_device = local.device_working_set_bytes(
      model.apply, params, jax.eval_shape(optimizer.init, params), x_B)
  cap = timed_bytes()
  widest = WIDEST_TIMED if cap is None else min(WIDEST_TIMED,
                                                local.max_width_for_bytes(per_device, cap))
  widths = sorted({w for w in (2**k for k in range(7)) if w < shard_width}
                  | {shard_width})
  widths = [w for w in widths if w <= widest] or [widest]
  plans = {str(w): SubBuckets(w) for w in widths}
  plans.update({f'{w}u': SubBuckets(w, True) for w in widths
                if unroll and 2 <= w <= local.UNROLL_MAX_WIDTH})
  if len(plans) == 1:
    best = next(iter(plans.values()))
  else:
    timers = {name: _sub_bucket_timer(model, params, optimizer, task, batch_size,
                                      input_shape, plan.width, plan.unroll, steps)
              for name, plan in plans.items()}
    work = dict(_training_work(model, params, optimizer, batch_size, input_shape),
                shard_width=shard_width, unroll=unroll, steps=steps,
                unroll_margin=UNROLL_MARGIN)
    # Per device-step; step copies must beat the vmapped step by UNROLL_MARGIN.
    per = {name: 2 * plan.width * steps / (UNROLL_MARGIN if plan.unroll else 1.0)
           for name, plan in plans.items()}
    # More samples than other choices: the differences are a few percent.
    best = plans[choose('training_sub_buckets', work, timers, per=per,
                        repeats=SUB_BUCKET_REPEATS, budget_s=SUB_BUCKET_BUDGET_S)]
  if best.width >= shard_width and not best.unroll:
    return SubBuckets(0)
  return best


def batch_sizes(max_batch: int, smallest: int = 32) -> tuple[int, ...]:
  """The evaluation batch sizes tried: ``max_batch`` and its halvings down to ``smallest``
  (at most four)."""
  sizes = [max_batch >> k for k in range(4) if (max_batch >> k) >= smallest]
  return tuple(sorted(set(sizes or [max_batch])))


@_eager
def inference_plan(model, params: PyTree, input_shape: tuple[int, ...], max_batch: int,
                   setting: str = 'auto') -> tuple[str | None, int]:
  """How evaluation runs one model: ``(convolution, batch size)``.

  ``setting`` names a convolution: that one, at ``max_batch``. ``'auto'``: every
  convolution at every size of :func:`batch_sizes` is timed on the same examples (a
  ``lax.map`` over batches, as :class:`hadfl_jax.evaluation.Evaluator` runs them), and the
  fastest per example is chosen; on CPU a batch that fits the caches can be faster than
  a large one. A candidate needing more than :data:`TIMED_MIB` of temporaries is not
  run (infinite time). Models without a convolution choice: ``(None, max_batch)``.
  """
  impls = conv_impls(model)
  if not impls:
    return None, max_batch
  if setting != 'auto':
    return setting, max_batch
  if not enabled():
    return 'lax', max_batch
  sizes = batch_sizes(max_batch)
  examples = 2 * max(sizes)
  inputs = functools.cache(lambda: _random_inputs((examples,) + tuple(input_shape)))

  def sampler(impl: str, size: int) -> Callable[[], float]:
    module = with_conv_impl(model, impl)
    x_TxB = inputs()[:examples // size * size].reshape(
        (examples // size, size) + tuple(input_shape))
    forward = jax.jit(lambda p, x_TxB: jax.lax.map(lambda x_B: module.apply(p, x_B), x_TxB))
    return call_timer(forward, {'params': params}, x_TxB, max_temp_bytes=timed_bytes())

  timer = lambda impl, size: lazy_timer(functools.partial(sampler, impl, size))

  work = {'model': repr(model), 'code': code_key(model), 'max_batch': max_batch,
          'input_shape': list(input_shape)}
  candidates = {f'{impl}@{size}': timer(impl, size) for impl in impls for size in sizes}
  per_example = {f'{impl}@{size}': examples // size * size for impl in impls for size in sizes}
  name = choose('inference', work, candidates, per=per_example)
  impl, _, size = name.partition('@')
  return impl, int(size)
