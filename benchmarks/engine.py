"""The engine against a naive loop over devices and against the one-big-batch limit.

Useful examples per second of local training, every device running the same number of
steps H (no masking waste here; :mod:`benchmarks.waste` measures that), three ways, side
by side in one process on the same random MNIST-shaped data, same model, same optimizer:

* ``engine``: :func:`hadfl_jax.core.local.masked_local_train` as HADFL runs it by default:
  one jitted call; devices in sub-buckets sized by ``local.default_bucket_mib()`` (on CPU
  cache blocking: a sub-bucket's working set stays in cache for all its steps), each
  sub-bucket one ``jax.vmap`` inside a masked ``lax.while_loop``, a ``fori_loop`` over
  sub-buckets;
* ``engine, one vmap``: the same with all N devices in one vmap (no sub-buckets);
* ``engine, 2 host devices``: the engine with the device axis sharded over two JAX CPU
  devices (``benchmarks.run`` starts JAX with ``--xla_force_host_platform_device_count=2``),
  which lets XLA run the two halves on the two cores (only where two devices exist);
* ``naive``: a Python loop over devices and steps calling one jitted single-device step
  (:func:`hadfl_jax.core.local.make_device_step`), what fedjax's default
  ``for_each_client`` backend does;
* ``limit``: one model trained for H steps on batches of N * B examples (the same number
  of examples, the same forward and backward work) in a jitted ``fori_loop``: what one
  accelerator can do at best with this much data; only the optimizer update is N times
  smaller.

Each timing covers H steps of all N devices (H chosen so that one engine run takes about
``target_s``); the reported figure is the median of interleaved repeats. Ratios are given
by wall time (what a user waits) and by this process's CPU time (the work done, which
the load of other processes on a shared machine disturbs much less; a multi-threaded
contender's CPU time adds up its threads).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from hadfl_jax import data as data_lib
from hadfl_jax.core import local

BATCH = 32
PER_DEVICE = 64  # Examples held by each device (sampling cost does not depend on it).
# At least this many steps per timing: a HADFL cycle's budgets are tens of steps (6 to 73
# on paper-like), and the engine's per-cycle costs (sorting, gathering and scattering
# sub-buckets) are paid once per cycle, not per step.
MIN_STEPS = 4


def _engine(step, devices, data, schedule):
  train = jax.jit(lambda d, b: local.masked_local_train(step, d, data, b, schedule)[0])
  n = devices.num_devices

  def run(h: int):
    return jax.block_until_ready(train(devices, jnp.full((n,), h, jnp.int32)).params)

  return run


def _engine_sharded(step, devices, data, schedule, num_shards: int):
  """The engine with the device axis split over ``num_shards`` JAX devices."""
  from hadfl_jax import sharding  # pylint: disable=g-import-not-at-top
  n = devices.num_devices
  mesh = sharding.make_mesh(num_shards)
  devices = sharding.place(devices, sharding.tree_shardings(devices, n, mesh))
  data = sharding.place(data, sharding.tree_shardings(data, n, mesh))
  schedule = local.LocalSchedule(max_width=schedule.max_width, num_shards=num_shards)
  train = jax.jit(lambda d, x, b: local.masked_local_train(step, d, x, b, schedule)[0])
  ones_N = sharding.place(jnp.ones((n,), jnp.int32),
                          sharding.tree_shardings(jnp.ones((n,)), n, mesh))

  def run(h: int):
    return jax.block_until_ready(train(devices, data, ones_N * h).params)

  return run


def _naive(step, devices, data):
  step = jax.jit(step)
  n = devices.num_devices
  # Per-device arrays, sliced once, outside the timed loop.
  params = [jax.tree.map(lambda x, i=i: x[i], devices.params) for i in range(n)]
  opts = [jax.tree.map(lambda x, i=i: x[i], devices.opt_state) for i in range(n)]
  per_device = [(devices.key[i], data.images[i], data.labels[i], data.counts[i])
                for i in range(n)]

  def run(h: int):
    out = []
    for i in range(n):
      p, o = params[i], opts[i]
      key, images, labels, count = per_device[i]
      for t in range(h):
        p, o, _ = step(p, o, key, t, images, labels, count)
      out.append(p)
    return jax.block_until_ready(out)

  # Compiling needs one device's step, not the whole loop.
  run.warm = lambda: jax.block_until_ready(step(params[0], opts[0], *per_device[0][:1], 0,
                                                *per_device[0][1:]))
  return run


def _limit(model, optimizer, params, data, n):
  big = data_lib.DeviceData(images=data.images.reshape((1, -1) + common.IMAGE_SHAPE),
                            labels=data.labels.reshape(1, -1),
                            counts=jnp.sum(data.counts, keepdims=True))
  step = local.make_device_step(model.apply, optimizer, n * BATCH)
  key = jax.random.PRNGKey(1)

  @jax.jit
  def train(params, opt_state, h):
    def body(t, carry):
      p, o = carry
      p, o, _ = step(p, o, key, t, big.images[0], big.labels[0], big.counts[0])
      return p, o
    return jax.lax.fori_loop(0, h, body, (params, opt_state))

  opt_state = optimizer.init(params)

  def run(h: int):
    return jax.block_until_ready(train(params, opt_state, h))

  return run


def default_schedule(model, params, optimizer) -> local.LocalSchedule:
  """The engine's default on this backend with equal budgets: sub-buckets sized by
  ``local.default_bucket_mib()`` (cache blocking on CPU; one vmap on GPU/TPU)."""
  x_B = jax.ShapeDtypeStruct((BATCH,) + common.IMAGE_SHAPE, jnp.float32)
  working_set = local.device_working_set_bytes(
      model.apply, params, jax.eval_shape(optimizer.init, params), x_B)
  return local.LocalSchedule(
      max_width=local.max_width_for_bytes(working_set, local.default_bucket_mib() * 2**20))


def measure(model_name: str, num_devices: int, target_s: float, repeats: int,
            with_limit: bool = True, with_single: bool = True,
            min_steps: int = MIN_STEPS) -> dict[str, Any]:
  """Useful examples/s of the engine (default and one vmap), naive loop and limit."""
  model, params = common.init_params(model_name)
  optimizer = optax.sgd(0.01)
  data = common.random_device_data(num_devices, PER_DEVICE)
  devices = local.init_devices(jax.random.PRNGKey(0), params, optimizer, num_devices)
  step = local.make_device_step(model.apply, optimizer, BATCH)
  schedule = default_schedule(model, params, optimizer)
  runs = {'engine': _engine(step, devices, data, schedule)}
  if jax.device_count() >= 2 and num_devices % 2 == 0:
    runs['engine_2dev'] = _engine_sharded(step, devices, data, schedule, 2)
  if with_single:
    runs['engine_one_vmap'] = _engine(step, devices, data, local.LocalSchedule())
  runs['naive'] = _naive(step, devices, data)
  if with_limit:
    runs['limit'] = _limit(model, optimizer, params, data, num_devices)
  for run in runs.values():  # Compile (the engine's loop length is traced: no recompile).
    getattr(run, 'warm', lambda r=run: r(1))()
  per_step = common.interleaved_medians({'engine': lambda: runs['engine'](1)}, 1,
                                        warmup=False)['engine']
  h = int(np.clip(round(target_s / per_step), min_steps, 50))
  timings = common.interleaved_timings({k: (lambda r=r: r(h)) for k, r in runs.items()},
                                       repeats, warmup=False)
  seconds = {k: t['wall'] for k, t in timings.items()}
  cpu = {k: t['cpu'] for k, t in timings.items()}
  examples = num_devices * h * BATCH
  row = dict(model=model_name, params=common.num_params(params), num_devices=num_devices,
             steps=h, batch=BATCH, repeats=repeats, max_width=schedule.max_width,
             seconds=seconds, cpu_seconds=cpu,
             examples_per_s={k: examples / s for k, s in seconds.items()},
             examples_per_cpu_s={k: examples / s for k, s in cpu.items()})
  row['cpu_engine_vs_naive'] = cpu['naive'] / cpu['engine']
  row['cpu_engine_vs_limit'] = cpu['limit'] / cpu['engine'] if with_limit else None
  row['engine_vs_naive'] = seconds['naive'] / seconds['engine']
  row['engine_vs_limit'] = seconds['limit'] / seconds['engine'] if with_limit else None
  row['one_vmap_vs_naive'] = (seconds['naive'] / seconds['engine_one_vmap']
                              if with_single else None)
  if 'engine_2dev' in seconds:
    row['engine_2dev_vs_naive'] = seconds['naive'] / seconds['engine_2dev']
    row['engine_2dev_vs_limit'] = (seconds['limit'] / seconds['engine_2dev']
                                   if with_limit else None)
  return row


def conv_trap(num_devices: int, steps: int, repeats: int) -> dict[str, Any]:
  """The CPU conv trap (``docs/spec.md``), side by side: the paper-like CNN in the engine with
  the registry's convolution (patches + one matmul) and with ``lax.conv_general_dilated``
  (what ``nn.Conv`` runs), and in the naive loop with both that and stock ``nn.Conv`` +
  ``nn.max_pool`` (``benchmarks/conv_trap.py``'s ``VariantCNN``)."""
  from benchmarks import conv_trap as trap  # pylint: disable=g-import-not-at-top
  optimizer = optax.sgd(0.01)
  data = common.random_device_data(num_devices, PER_DEVICE)
  cnn, params = common.init_params('cnn')
  models = {'patches': cnn, 'lax_conv': cnn.clone(conv_impl='lax'),
            'flax': trap.VariantCNN(conv='flax', pool='flax')}
  runs = {}
  for loop, name in (('engine', 'patches'), ('engine', 'lax_conv'), ('naive', 'patches'),
                     ('naive', 'flax')):
    model = models[name]
    p = model.init(jax.random.key(0), jnp.zeros((1,) + common.IMAGE_SHAPE))['params']
    devices = local.init_devices(jax.random.PRNGKey(0), p, optimizer, num_devices)
    step = local.make_device_step(model.apply, optimizer, BATCH)
    run = (_engine(step, devices, data, default_schedule(model, p, optimizer))
           if loop == 'engine' else _naive(step, devices, data))
    getattr(run, 'warm', lambda r=run: r(1))()
    runs[f'{loop}/{name}'] = run
  seconds = common.interleaved_medians({k: (lambda r=r: r(steps)) for k, r in runs.items()},
                                       repeats, warmup=False)
  examples = num_devices * steps * BATCH
  return dict(num_devices=num_devices, steps=steps, repeats=repeats, params=common.num_params(params),
              examples_per_s={k: examples / s for k, s in seconds.items()})


def run(quick: bool) -> dict[str, Any]:
  if quick:
    plan = [('small_mlp', 8, True, True), ('small_mlp', 64, True, True)]
    target, repeats = 0.1, 1
  else:
    plan = [('small_mlp', 8, True, True), ('small_mlp', 64, True, True),
            ('small_mlp', 512, True, True),
            ('mlp', 8, True, True), ('mlp', 64, True, True), ('mlp', 512, True, True),
            ('cnn', 8, True, True), ('cnn', 64, True, True),
            # 16,384 examples per step: the one-big-batch limit and the single vmap need
            # ~13 GB of activations, more than this shared machine can spare.
            ('cnn', 512, False, False)]
    target, repeats = 0.5, 3
  rows = []
  for model_name, n, with_limit, with_single in plan:
    big = model_name == 'cnn' and n >= 512
    r = measure(model_name, n, 0.1 if big else target, 1 if big else repeats,
                with_limit, with_single, min_steps=1 if big or quick else MIN_STEPS)
    rows.append(r)
    print(f"  engine {model_name} N={n}: {r['examples_per_s']['engine']:,.0f} ex/s, "
          f"{r['engine_vs_naive']:.2f}x naive"
          + (f", {r['engine_vs_limit']:.2f}x limit" if with_limit else ''), flush=True)
  trap = conv_trap(8, 1, 1) if quick else conv_trap(8, 2, 3)
  eps = trap['examples_per_s']
  print(f"  conv trap N=8: engine patches {eps['engine/patches']:,.0f}, engine lax conv "
        f"{eps['engine/lax_conv']:,.0f}, naive nn.Conv {eps['naive/flax']:,.0f} ex/s", flush=True)
  return dict(rows=rows, conv_trap=trap, device=common.cpu_info())


def markdown(result: dict[str, Any]) -> str:
  two = any('engine_2dev' in r['examples_per_s'] for r in result['rows'])
  head = ['model (params)', 'N', 'steps x batch', 'engine (sub-bucket width)']
  head += ['engine, 2 host devices'] if two else []
  head += ['engine, one vmap of N', 'naive loop', 'one big batch', 'engine / naive',
           'engine / limit']
  head += ['2 devices / naive', '2 devices / limit'] if two else []
  head += ['CPU time: engine / naive', 'CPU time: engine / limit']
  lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
  na = 'n/a (memory)'
  fmt = lambda eps, k: format(eps[k], ',.0f') if k in eps else na
  ratio = lambda x: 'n/a' if x is None else f'**{x:.2f}x**'
  for r in result['rows']:
    eps = r['examples_per_s']
    cells = [f"{r['model']} ({r['params']:,})", str(r['num_devices']),
             f"{r['steps']} x {r['batch']}",
             f"{eps['engine']:,.0f} ({r['max_width'] or 'N'})"]
    cells += [fmt(eps, 'engine_2dev')] if two else []
    cells += [fmt(eps, 'engine_one_vmap'), fmt(eps, 'naive'), fmt(eps, 'limit'),
              ratio(r['engine_vs_naive']), ratio(r['engine_vs_limit'])]
    if two:
      cells += [ratio(r.get('engine_2dev_vs_naive')), ratio(r.get('engine_2dev_vs_limit'))]
    cells += [ratio(r.get('cpu_engine_vs_naive')), ratio(r.get('cpu_engine_vs_limit'))]
    lines.append('| ' + ' | '.join(cells) + ' |')
  trap = result.get('conv_trap')
  if trap:
    eps = trap['examples_per_s']
    base = eps['naive/flax']
    lines += ['', f"The CPU conv trap, cnn, N={trap['num_devices']}, useful examples/s "
              '(relative to the naive loop of stock `nn.Conv`):', '',
              '| convolution | engine (vmap in masked loop) | naive loop |', '|---|---|---|',
              f"| patches + matmul (registry default) | **{eps['engine/patches']:,.0f}** "
              f"({eps['engine/patches'] / base:.2f}x) | {eps['naive/patches']:,.0f} "
              f"({eps['naive/patches'] / base:.2f}x) |",
              f"| `lax.conv_general_dilated` (what `nn.Conv` runs) | "
              f"{eps['engine/lax_conv']:,.0f} ({eps['engine/lax_conv'] / base:.2f}x) | "
              f"{base:,.0f} (1.00x, stock `nn.Conv` + `nn.max_pool`) |"]
  return '\n'.join(lines)
