r"""FLOP rates in one run: the machine's float32 matmul, local training, evaluation.

What a figure means depends on the machine (an AVX-512 CPU ran the same training 3.5x
faster than an AVX2 one), so every rate here is set against the machine's own limit
measured in the same run: numpy's float32 matmul of two 2048 x 2048 matrices (BLAS, all
cores), timed round-robin with everything else, so that a change in the load of a shared
machine moves the limit and the rates set against it alike. Rates:

* ``matmul``: 2 * 2048^3 FLOP per product (and the same product through XLA, to tell a
  slow step from a slow matmul);
* ``train``: the engine's local training (:func:`hadfl_jax.core.local.masked_local_train`,
  N devices in sub-buckets of the width a run uses (:func:`run_schedule`), batch 32, H
  steps), FLOP from XLA's cost analysis of one plain step (forward, backward, optimizer
  update) times N * H;
* ``eval`` (consensus): :class:`hadfl_jax.evaluation.Evaluator`'s ``model`` on 10,000
  test images in batches of 1,000, FLOP from XLA's cost analysis of one batch's forward
  pass times the batches;
* ``eval`` (devices): its ``devices`` on N models x 1,000 images;
* bandwidth: XLA's elementwise ``a * 1.5 + b`` on arrays the size of the step's
  activations and on arrays far larger than the caches, bytes moved per second; times the
  step's FLOP per byte (XLA's cost analysis) it bounds the FLOP rate of a step that is
  limited by data movement rather than by its matmuls (``train_vs_bandwidth_bound``);
* one core: the engine's training and numpy's matmul again, in a child process pinned to
  one CPU with one BLAS thread (:func:`one_core`). Their ratio is the step's own
  efficiency, with no parallel schedule involved. With C cores each training devices on
  its own core at that rate, training would reach C x the one-core training rate over the
  all-core matmul rate (``parallel_bound``): what splitting this step over the cores can
  give if it scales linearly (the cores' own caches could do a little better, a
  different step would change it);
* ``plain loop/<conv>`` (``plain loop/model`` for a model without convolutions): the
  same model, batch and optimizer as a plain jitted single-device step (forward,
  backward, momentum SGD) called from a Python loop on float32 batches prepared
  beforehand, with each convolution: what a researcher writes without the engine, run
  for as many examples as the engine's ``train``. The engine should be faster per example
  (``train_vs_plain``: its examples/s over the faster loop's).

The FLOP of a step or a forward pass are the model's own, the same whichever convolution
runs (:func:`model_flops`): XLA's count with the standard convolution, which counts a
convolution's multiply-adds without its padding taps (0.75 GFLOP per training step of the
paper-like CNN at batch 32, against 0.82 counting the padding).

Evaluation is measured with each convolution implementation (``patches``, the one that
keeps the vmapped training loop fast on CPU, and ``lax``, XLA's native convolution) and
with the one :func:`hadfl_jax.evaluation.inference_module` chooses (measured,
:mod:`hadfl_jax.core.autotune`). XLA's cost analysis
counts a loop's body once, which is why FLOP are taken from single steps and batches.

  python -m benchmarks.flops --out benchmarks/results     # about a minute on 2 cores
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from benchmarks import engine
from hadfl_jax import data as data_lib
from hadfl_jax import evaluation
from hadfl_jax.core import autotune
from hadfl_jax.core import engine as engine_core
from hadfl_jax.core import local

MATMUL_N = 2048
TEST_EXAMPLES = 10_000
EVAL_BATCH = 1_000
# Array sizes of the bandwidth measurement: that of the step's largest activations
# (caches), and far beyond every cache (memory).
BANDWIDTH_BYTES = {'cache': 4 << 20, 'memory': 256 << 20}
DEVICE_EXAMPLES = 1_000


MATMUL_FLOPS = 2 * MATMUL_N**3


def numpy_matmul() -> Callable[[], Any]:
  """One numpy float32 matmul of two ``MATMUL_N`` square matrices (BLAS on every core):
  :data:`MATMUL_FLOPS` per call."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((MATMUL_N, MATMUL_N), np.float32)
  b = rng.standard_normal((MATMUL_N, MATMUL_N), np.float32)
  return lambda: a @ b


def matmul_rate(repeats: int) -> float:
  """numpy float32 matmul FLOP/s (median of ``repeats``; BLAS on every core)."""
  matmul = numpy_matmul()
  matmul()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul()
    times.append(time.perf_counter() - start)
  return MATMUL_FLOPS / float(np.median(times))


def xla_matmul_rate(repeats: int) -> float:
  """The same product through XLA (``jnp.dot``, jitted) FLOP/s: the compiler's own GEMM,
  to tell a slow step from a slow matmul."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((MATMUL_N, MATMUL_N), np.float32)) for _ in range(2))
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    times.append(time.perf_counter() - start)
  return 2 * MATMUL_N**3 / float(np.median(times))


def xla_bandwidth(nbytes: int, repeats: int) -> float:
  """Bytes/s of XLA's elementwise ``a * 1.5 + b`` on float32 arrays of ``nbytes`` each
  (three arrays moved per call, jitted, the median of ``repeats`` calls): the rate at
  which the training step's copies, pads and selects can move data, on arrays the size of
  its activations (caches) or far larger (memory)."""
  n = nbytes // 4
  a, b = jnp.ones((n,), jnp.float32), jnp.full((n,), 2.0, jnp.float32)
  triad = jax.jit(lambda a, b: a * 1.5 + b)
  jax.block_until_ready(triad(a, b))
  calls = max(1, (64 << 20) // nbytes)  # At least 64 MB per timing.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = triad(a, b)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / calls)
  return 3 * 4 * n / float(np.median(times))


def cost(fn, *args) -> tuple[float, float]:
  """XLA's counts for one call of ``jax.jit(fn)(*args)``: (FLOP, bytes accessed)."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per computation.
    analysis = analysis[0]
  return float(analysis['flops']), float(analysis.get('bytes accessed', float('nan')))


def cost_flops(fn, *args) -> float:
  """XLA's FLOP count of one call of ``jax.jit(fn)(*args)``."""
  return cost(fn, *args)[0]


def logits_fn(model):
  """``model``'s forward pass as ``f(params, x) -> logits``."""
  return lambda p, x: model.apply({'params': p}, x)


def plain_step(apply, optimizer):
  """One training step (forward, backward, optimizer update) of the forward pass
  ``apply(params, x) -> logits``, unjitted."""

  def loss(p, x, y):
    logits = apply(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(p, o, x, y):
    updates, o = optimizer.update(jax.grad(loss)(p, x, y), o, p)
    return optax.apply_updates(p, updates), o

  return step


def model_flops(model, fn, *args) -> float:
  """XLA's FLOP count of ``fn(model_with_standard_conv, *args)``: the model's own FLOP.

  Implementations of one model compute different FLOP for the same function (the
  patches block's window form does 1.78x a few-channel convolution's multiply-adds, in a
  faster matmul); rates count the same FLOP for all of them, those of the standard
  convolution (``conv_impl='lax'``) where the model has the choice.
  """
  reference = autotune.with_conv_impl(model, 'lax') if autotune.conv_impls(model) else model
  return cost_flops(functools.partial(fn, reference), *args)


def plain_loop(model, impl: str, optimizer, params, images, labels, steps: int):
  """A plain single-device training loop: one jitted step per batch, from Python.

  Returns a function running ``steps`` steps from the same state each call.
  """
  jitted = jax.jit(plain_step(
      logits_fn(autotune.with_conv_impl(model, impl) if impl else model), optimizer))
  opt_state = optimizer.init(params)
  batches = [(images[i], labels[i]) for i in range(len(images))]

  def run():
    p, o = params, opt_state
    for i in range(steps):
      p, o = jitted(p, o, *batches[i % len(batches)])
    jax.block_until_ready(p)

  return run


def _test_split(n: int) -> data_lib.Split:
  rng = np.random.default_rng(1)
  return data_lib.Split(images=rng.integers(0, 256, (n,) + common.IMAGE_SHAPE, dtype=np.uint8),
                        labels=rng.integers(0, common.NUM_CLASSES, (n,)).astype(np.int32),
                        num_classes=common.NUM_CLASSES)


def _setup(model_name: str, num_devices: int):
  """The model, its parameters, the optimizer, random device data and the stacked device
  states that :func:`measure` and the one-core child train."""
  model, params = common.init_params(model_name)
  optimizer = optax.sgd(0.01, momentum=0.9)
  data = common.random_device_data(num_devices, engine.PER_DEVICE)
  devices = local.init_devices(jax.random.PRNGKey(0), params, optimizer, num_devices)
  return model, params, optimizer, data, devices


def _engine_train(model, params, optimizer, data, devices, schedule, impl):
  """The engine's device step with convolution ``impl`` (``None`` for a model without the
  choice) and a function running ``h`` masked local steps of every device."""
  model = autotune.with_conv_impl(model, impl) if impl else model
  step = local.make_device_step(model.apply, optimizer, engine.BATCH)
  return step, engine._engine(step, devices, data, schedule)  # pylint: disable=protected-access


# Names of the training row timed with the other form of the chosen sub-buckets.
OTHER_SUB_BUCKETS = {True: 'train/step copies', False: 'train/vmapped'}

# Thread counts of the BLAS libraries numpy may link, set to 1 in the one-core child.
_BLAS_THREAD_VARS = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS',
                     'BLIS_NUM_THREADS', 'VECLIB_MAXIMUM_THREADS')


def one_core(model_name: str, num_devices: int, schedule: local.LocalSchedule,
             impl: str | None, steps: int, repeats: int) -> dict[str, Any] | None:
  """Seconds of the engine's training and of numpy's matmul on one core.

  A child process pinned to one CPU (``os.sched_setaffinity``, one BLAS thread) times
  ``steps`` masked local steps of ``num_devices`` devices in the sub-buckets of
  ``schedule`` with convolution ``impl`` (what :func:`measure` times on every core),
  round-robin with :func:`numpy_matmul`. ``None`` where the OS cannot pin a process to a
  CPU.

  Returns:
    ``cpus`` (the CPUs it could run on: one), ``train_seconds`` and ``matmul_seconds``
    (medians).
  """
  if not hasattr(os, 'sched_setaffinity'):
    return None
  cpu = min(os.sched_getaffinity(0))
  env = dict(os.environ, **{var: '1' for var in _BLAS_THREAD_VARS})
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [root, env.get('PYTHONPATH')]))
  args = json.dumps([model_name, num_devices, schedule.max_width, schedule.unroll, impl,
                     steps, repeats])
  # Pinned before numpy and JAX start their threads (XLA sizes its pool from the affinity).
  code = (f'import os; os.sched_setaffinity(0, {{{cpu}}}); import json; '
          f'from benchmarks import flops; flops._one_core_child(*json.loads({args!r}))')
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=root, check=False,
                       capture_output=True, text=True)
  try:
    if out.returncode:
      raise ValueError(f'exit status {out.returncode}')
    return json.loads(out.stdout.strip().splitlines()[-1])
  except (ValueError, IndexError) as e:  # json.JSONDecodeError is a ValueError.
    raise RuntimeError(f'the one-core measurement failed ({e}); its output ends:\n'
                       f'{out.stdout[-1000:]}\n{out.stderr[-2000:]}') from None


def _one_core_child(model_name, num_devices, width, unroll, impl, steps, repeats) -> None:
  """:func:`one_core`'s measurement, in the pinned process: prints one JSON line."""
  model, params, optimizer, data, devices = _setup(model_name, num_devices)
  _, train = _engine_train(model, params, optimizer, data, devices,
                           local.LocalSchedule(max_width=width, unroll=unroll), impl)
  timings = common.interleaved_timings(
      {'train': lambda: train(steps), 'matmul': numpy_matmul()}, repeats)
  print(json.dumps({'cpus': sorted(os.sched_getaffinity(0)),
                    'train_seconds': timings['train']['wall'],
                    'matmul_seconds': timings['matmul']['wall']}))


def run_schedule(model, params, optimizer, num_devices: int) -> local.LocalSchedule:
  """The sub-buckets a run uses (``engine.bucket_mib = None``,
  :func:`hadfl_jax.core.engine.sub_buckets`: measured by autotune on CPU)."""
  plan = engine_core.sub_buckets(model, params, optimizer, None, engine.BATCH,
                                 common.IMAGE_SHAPE, shard_width=num_devices, bucket_mib=None)
  return local.LocalSchedule(max_width=plan.width, unroll=plan.unroll)


def measure(model_name: str, num_devices: int, repeats: int, steps: int,
            with_one_core: bool = True) -> dict[str, Any]:
  """Training and evaluation FLOP/s of one model, and the matmul limit, in one run;
  with ``with_one_core`` (where the OS can pin a process to a CPU), the same training and
  matmul on one core (:func:`one_core`)."""
  model, params, optimizer, data, devices = _setup(model_name, num_devices)
  schedule = run_schedule(model, params, optimizer, num_devices)
  # Training with the convolution autotune chooses here (what runs use), and with each.
  chosen_train = autotune.training_conv_impl(
      model, params, optimizer, None, engine.BATCH, common.IMAGE_SHAPE,
      width=min(num_devices, schedule.max_width or num_devices))
  # Only the chosen one is timed again: the native convolution in this loop ran 20x
  # slower on CPU (minutes here); autotune's cache keeps the times of every candidate.
  step, train = _engine_train(model, params, optimizer, data, devices, schedule, chosen_train)
  trains = {'train': train}
  # The same sub-buckets the other way (vmapped or as separate step copies), for the A/B.
  width = min(num_devices, schedule.max_width or num_devices)
  if 2 <= width <= local.UNROLL_MAX_WIDTH:
    other = local.LocalSchedule(max_width=width, unroll=not schedule.unroll)
    trains[OTHER_SUB_BUCKETS[other.unroll]] = _engine_train(
        model, params, optimizer, data, devices, other, chosen_train)[1]
  opt_state = optimizer.init(params)
  # Bytes as the chosen implementation accesses them; FLOP the model's own.
  _, step_bytes = cost(
      lambda p, o: step(p, o, jax.random.PRNGKey(0), 0, data.images[0], data.labels[0],
                        data.counts[0])[:2], params, opt_state)
  x_b = jnp.zeros((engine.BATCH,) + common.IMAGE_SHAPE, jnp.float32)
  y_b = jnp.zeros((engine.BATCH,), jnp.int32)
  step_flops = model_flops(model, lambda m, *a: plain_step(logits_fn(m), optimizer)(*a),
                           params, opt_state, x_b, y_b)

  test = _test_split(TEST_EXAMPLES)
  params_N = jax.tree.map(lambda x: jnp.stack([x] * num_devices), params)
  x_B = jnp.zeros((EVAL_BATCH,) + common.IMAGE_SHAPE, jnp.float32)
  forward_flops = model_flops(model, lambda m, p, x: m.apply({'params': p}, x), params, x_B)
  fns = {name: (lambda train=train: train(steps)) for name, train in trains.items()}
  # A plain single-device loop over as many examples as the engine's N devices x steps.
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.random((8, engine.BATCH) + common.IMAGE_SHAPE, np.float32))
  labels = jnp.asarray(rng.integers(0, common.NUM_CLASSES, (8, engine.BATCH)), jnp.int32)
  plain_names = []
  has_conv = 'conv_impl' in getattr(model, '__dataclass_fields__', {})
  for impl in ('patches', 'lax') if has_conv else (None,):
    name = f'plain loop/{impl or "model"}'
    plain_names.append(name)
    fns[name] = plain_loop(model, impl, optimizer, params, images, labels, num_devices * steps)
  # What the runs use (Evaluator.for_model), and the alternatives: each convolution,
  # device models vmapped 64 at a time (here all N) or one at a time.
  evaluators = {'chosen': evaluation.Evaluator.for_model(model, test, EVAL_BATCH,
                                                         DEVICE_EXAMPLES)}
  if 'conv_impl' in getattr(model, '__dataclass_fields__', {}):
    for impl in ('patches', 'lax'):
      for chunk in (64, 1):
        evaluators[f'{impl}, {"vmap" if chunk > 1 else "one by one"}'] = evaluation.Evaluator(
            model.clone(conv_impl=impl).apply, test, EVAL_BATCH, DEVICE_EXAMPLES, chunk)
  for name, ev in evaluators.items():
    fns[f'eval_consensus/{name}'] = (
        lambda ev=ev: jax.block_until_ready(ev.model(params)))
    fns[f'eval_devices/{name}'] = (
        lambda ev=ev: jax.block_until_ready(ev.devices(params_N)))
  # The limit in the same rounds as the rates set against it: the load of a shared
  # machine moves within a run.
  fns['matmul'] = numpy_matmul()
  timings = common.interleaved_timings(fns, repeats)
  matmul_s = timings.pop('matmul')['wall']
  limit = MATMUL_FLOPS / matmul_s
  xla_limit = xla_matmul_rate(repeats)
  bandwidth = {'cache': xla_bandwidth(BANDWIDTH_BYTES['cache'], 5 * repeats),
               'memory': xla_bandwidth(BANDWIDTH_BYTES['memory'], repeats)}
  flops = {name: step_flops * num_devices * steps for name in (*trains, *plain_names)}
  for name in evaluators:
    flops[f'eval_consensus/{name}'] = forward_flops * TEST_EXAMPLES / EVAL_BATCH
    flops[f'eval_devices/{name}'] = (forward_flops * DEVICE_EXAMPLES / EVAL_BATCH
                                     * num_devices)
  rates = {k: flops[k] / t['wall'] for k, t in timings.items()}
  single = (one_core(model_name, num_devices, schedule, chosen_train, steps, repeats)
            if with_one_core else None)
  if single is not None:
    single = dict(single, train_flops_per_s=flops['train'] / single['train_seconds'],
                  matmul_flops_per_s=MATMUL_FLOPS / single['matmul_seconds'])
    single['train_vs_matmul'] = single['train_flops_per_s'] / single['matmul_flops_per_s']
    single['cores'] = len(os.sched_getaffinity(0))
    single['parallel_bound'] = single['cores'] * single['train_flops_per_s'] / limit
  chosen_eval = min(rates['eval_consensus/chosen'], rates['eval_devices/chosen'])
  examples = num_devices * steps * engine.BATCH
  examples_per_s = {k: examples / timings[k]['wall'] for k in ('train', *plain_names)}
  best_plain = max(examples_per_s[k] for k in plain_names)
  return dict(model=model_name, num_devices=num_devices, steps=steps, repeats=repeats,
              matmul_seconds=matmul_s, matmul_flops_per_s=limit,
              xla_matmul_flops_per_s=xla_limit, flops=flops,
              seconds={k: t['wall'] for k, t in timings.items()},
              cpu_seconds={k: t['cpu'] for k, t in timings.items()}, flops_per_s=rates,
              train_vs_matmul=rates['train'] / limit, one_core=single,
              sub_buckets=dict(width=schedule.max_width, unroll=schedule.unroll),
              eval_vs_train=chosen_eval / rates['train'],
              examples_per_s=examples_per_s,
              train_vs_plain=examples_per_s['train'] / best_plain,
              chosen_conv=evaluators['chosen'].conv_impl, chosen_train_conv=chosen_train,
              # What bounds training: XLA's bytes accessed per step (caches ignored), the
              # FLOP per byte, and the bytes per second the measured rate implies.
              step_flops=step_flops, step_bytes=step_bytes,
              train_intensity=step_flops / step_bytes,
              train_bytes_per_s=rates['train'] / (step_flops / step_bytes),
              # Against the data movement the machine sustains: the bound that the step's
              # FLOP per byte and that bandwidth put on its FLOP rate (a roofline).
              bandwidth=bandwidth,
              train_vs_bandwidth_bound={
                  k: rates['train'] / min(limit, bw * step_flops / step_bytes)
                  for k, bw in bandwidth.items()})




def run(quick: bool) -> dict[str, Any]:
  rows = [measure('cnn', 8, repeats=2 if quick else 5, steps=4 if quick else 16)]
  return dict(rows=rows, device=common.cpu_info())


def markdown(result: dict[str, Any]) -> str:
  dev = result['device']
  lines = [f'Machine: {common.machine_line(dev)}.', '',
           '| model | N | matmul limit (GFLOP/s) | what | GFLOP/s | / matmul | / training |',
           '|---|---|---|---|---|---|---|']
  for r in result['rows']:
    train = r['flops_per_s']['train']
    for what, rate in r['flops_per_s'].items():
      lines.append(f'| {r["model"]} | {r["num_devices"]} | {r["matmul_flops_per_s"] / 1e9:.0f} '
                   f'| {what} | {rate / 1e9:.1f} | {rate / r["matmul_flops_per_s"]:.2f} | '
                   f'{rate / train:.2f} |')
    if 'sub_buckets' in r:
      sb = r['sub_buckets']
      lines += ['', f'Training runs the sub-buckets a run uses (autotune\'s measurement): '
                f'{sb["width"] or r["num_devices"]} devices each, '
                + ('as separate step copies' if sb['unroll'] else 'one vmapped step') + '.']
      other = OTHER_SUB_BUCKETS[not sb['unroll']]
      if other in r['flops_per_s']:
        lines[-1] += (f' The same sub-buckets {"vmapped" if sb["unroll"] else "as step copies"}'
                      f' (`{other}`): chosen / other = '
                      f'**{r["flops_per_s"]["train"] / r["flops_per_s"][other]:.2f}**.')
    lines += ['', f'Training (with the chosen convolution `{r.get("chosen_train_conv")}`) / '
              f'matmul limit: {r["train_vs_matmul"]:.2f} (goal >= 0.5). '
              f'Evaluation (the slower of consensus and devices, with the chosen convolution '
              f'`{r["chosen_conv"]}`) / training: {r["eval_vs_train"]:.2f} (goal >= 1.0).']
    single = r.get('one_core')
    if single:
      lines += ['', f'On one core (a process pinned to CPU {single["cpus"][0]}, one BLAS '
                f'thread): training {single["train_flops_per_s"] / 1e9:.1f} GFLOP/s, numpy\'s '
                f'matmul {single["matmul_flops_per_s"] / 1e9:.0f}: **'
                f'{single["train_vs_matmul"]:.2f}** of the core\'s matmul rate, the step\'s own '
                f'efficiency. {single["cores"]} cores each training at that rate would reach '
                f'{single["parallel_bound"]:.2f} of the all-core matmul rate: what splitting '
                'this step over the cores gives if it scales linearly.']
    elif 'one_core' in r:
      lines += ['', 'On one core: not measured (this OS cannot pin a process to a CPU).']
    if 'train_vs_plain' in r:
      plain = {k: v for k, v in r['examples_per_s'].items() if k.startswith('plain')}
      lines += ['', f'Per example: the engine trained {r["examples_per_s"]["train"]:,.0f} '
                'examples/s; a plain single-device loop of the same step '
                + ', '.join(f'{v:,.0f} ({k.split("/")[1]})' for k, v in plain.items())
                + f': the engine / the faster loop = {r["train_vs_plain"]:.2f} (goal > 1).']
    if 'step_bytes' in r:
      lines += ['', f'A training step: {r["step_flops"] / 1e9:.2f} GFLOP over '
                f'{r["step_bytes"] / 1e6:.0f} MB accessed (XLA cost analysis, caches ignored): '
                f'{r["train_intensity"]:.1f} FLOP per byte, so the measured training rate moves '
                f'{r["train_bytes_per_s"] / 1e9:.1f} GB/s. XLA\'s own float32 matmul (jitted '
                f'`jnp.dot`, the same product) ran at '
                f'{r.get("xla_matmul_flops_per_s", float("nan")) / 1e9:.0f} GFLOP/s.']
    if 'bandwidth' in r:
      bw, bound = r['bandwidth'], r['train_vs_bandwidth_bound']
      lines += ['', f'XLA\'s elementwise `a * 1.5 + b` moved {bw["cache"] / 1e9:.1f} GB/s on '
                f'{BANDWIDTH_BYTES["cache"] >> 20} MB arrays (the size of the step\'s '
                f'activations) and {bw["memory"] / 1e9:.1f} GB/s on '
                f'{BANDWIDTH_BYTES["memory"] >> 20} MB ones. At the step\'s FLOP per byte '
                f'those bound training at {bw["cache"] * r["train_intensity"] / 1e9:.0f} and '
                f'{bw["memory"] * r["train_intensity"] / 1e9:.0f} GFLOP/s (or the matmul '
                f'rate, if lower): training ran at {bound["cache"]:.2f} and '
                f'{bound["memory"]:.2f} of those bounds.']
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  return common.section_main(sys.modules[__name__], 'flops',
                             'FLOP rates: training, evaluation and the matmul limit', argv)


if __name__ == '__main__':
  raise SystemExit(main())
