r"""The CPU conv trap: how fast the paper-like CNN trains N devices in one vmapped loop.

HADFL's engine trains every device at once: one ``jax.vmap`` over the stacked device axis
inside one ``lax.fori_loop`` whose trip count is traced (``docs/spec.md``, "One HADFL cycle",
step 3). On CPU the standard convolution is very slow there (``docs/spec.md``, "A known
trap"; jax-ml/jax#12868). This script measures, for the ``cnn`` model (421,642
parameters) on MNIST-shaped random data, batch 32, plain SGD:

* ``python_loop/*``: a Python loop over steps and devices, calling a jitted
  single-device train step (the naive baseline, no vmap, no loop inside jit);
* ``vmap_fori/*``: ``jax.vmap`` over devices of the same step inside one
  ``lax.fori_loop`` with a traced trip count and the engine's per-device mask.

with these model implementations (all the same function, checked at start-up):

* ``flax``: ``nn.Conv`` and ``nn.max_pool``, stock Flax;
* ``patches``: the registry's default, ``hadfl_jax.models.layers.conv2d_patches``
  (shifted slices + one matmul) and ``max_pool_2x2`` (reshape + max);
* ``lax_conv``: ``lax.conv_general_dilated`` (what ``nn.Conv`` runs) with the reshape
  pooling (``conv_impl='lax'``);
* ``patches+flax_pool``: the patches convolution with ``nn.max_pool``;
* ``conv_patches_op``: ``lax.conv_general_dilated_patches`` + one matmul;
* ``lax_nchw``: ``lax.conv_general_dilated`` in NCHW/OIHW layout, reshape pooling.

"Useful examples/s" counts the examples of real (unmasked) device steps per wall-clock
second, compilation and warm-up excluded (``block_until_ready`` on the results). Every
device does the same number of steps here. With heterogeneous budgets the masked loop
still runs ``max_i H_i`` full steps for every device, so its useful rate is this one times
``mean(H) / max(H)``, while the Python loop's is unchanged; the ``hetero`` columns apply
that factor for the paper-like speeds [1, 1, 2, 2, 4, 4, 8, 8] (tiled to N).

Usage (default: under 3 minutes on 2 CPU cores)::

  python benchmarks/conv_trap.py --out /tmp/conv_trap.json
  python benchmarks/conv_trap.py --devices 8 --variants vmap_fori/patches,python_loop/flax
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hadfl_jax import models  # pylint: disable=g-import-not-at-top
from hadfl_jax.models import layers  # pylint: disable=g-import-not-at-top

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
NUM_BATCHES = 4  # Distinct minibatches per device, cycled through.
PAPER_SPEEDS = (1, 1, 2, 2, 4, 4, 8, 8)

ConvFn = Callable[[chex.Array, chex.Array], chex.Array]


def _conv_nchw(x_BxHxWxC: chex.Array, kernel_KxKxCxF: chex.Array) -> chex.Array:
  """SAME convolution computed in NCHW/OIHW layout, NHWC in and out."""
  y_BxFxHxW = lax.conv_general_dilated(
      x_BxHxWxC.transpose(0, 3, 1, 2), kernel_KxKxCxF.transpose(3, 2, 0, 1), (1, 1),
      'SAME', dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
  return y_BxFxHxW.transpose(0, 2, 3, 1)


def _conv_patches_op(x_BxHxWxC: chex.Array, kernel_KxKxCxF: chex.Array) -> chex.Array:
  """SAME convolution as ``lax.conv_general_dilated_patches`` and one matmul."""
  k, _, c, f = kernel_KxKxCxF.shape
  patches = lax.conv_general_dilated_patches(
      x_BxHxWxC, (k, k), (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # The op orders a patch's features as (C, K, K).
  return jnp.dot(patches, kernel_KxKxCxF.transpose(2, 0, 1, 3).reshape(c * k * k, f))


class _ConvFnLayer(nn.Module):
  """A SAME 3x3 convolution through ``conv_fn``, with ``nn.Conv``'s parameters."""

  features: int
  conv_fn: ConvFn

  @nn.compact
  def __call__(self, x_BxHxWxC: chex.Array) -> chex.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, x_BxHxWxC.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return self.conv_fn(x_BxHxWxC, kernel) + bias.reshape(1, 1, 1, -1)


class VariantCNN(nn.Module):
  """The ``cnn`` architecture and parameter tree, with a chosen conv and pooling.

  Attributes:
    conv: ``'flax'`` (``nn.Conv``), ``'patches'`` (``layers.Conv2D``), ``'lax_nchw'``
      or ``'conv_patches_op'``.
    pool: ``'flax'`` (``nn.max_pool``) or ``'reshape'`` (``layers.max_pool_2x2``).
  """

  conv: str
  pool: str

  @nn.compact
  def __call__(self, x_BxHxWxC: chex.Array) -> chex.Array:
    x = x_BxHxWxC
    for i, width in enumerate((32, 64)):
      if self.conv == 'flax':
        x = nn.Conv(width, (3, 3), padding='SAME', name=f'conv{i}')(x)
      elif self.conv == 'patches':
        x = layers.Conv2D(width, impl='patches', name=f'conv{i}')(x)
      else:
        conv_fn = {'lax_nchw': _conv_nchw, 'conv_patches_op': _conv_patches_op}[self.conv]
        x = _ConvFnLayer(width, conv_fn, name=f'conv{i}')(x)
      x = nn.relu(x)
      if self.pool == 'flax':
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
      else:
        x = layers.max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(128, name='dense0')(x))
    return nn.Dense(NUM_CLASSES, name='dense1')(x)


@dataclasses.dataclass(frozen=True)
class Variant:
  """One measured configuration.

  Attributes:
    name: ``'<loop>/<model>'``.
    loop: ``'python_loop'`` (loop over devices of a jitted step) or ``'vmap_fori'``.
    model: the Flax module trained.
  """

  name: str
  loop: str
  model: nn.Module


def _variants() -> dict[str, Variant]:
  """All measurable variants by name, the baseline first."""
  cnn = models.get_model('cnn', NUM_CLASSES)  # The registry's default: patches.
  model_by_name = {
      'flax': VariantCNN(conv='flax', pool='flax'),
      'patches': cnn,
      'lax_conv': cnn.clone(conv_impl='lax'),
      'patches+flax_pool': VariantCNN(conv='patches', pool='flax'),
      'conv_patches_op': VariantCNN(conv='conv_patches_op', pool='reshape'),
      'lax_nchw': VariantCNN(conv='lax_nchw', pool='reshape'),
  }
  loops = (('python_loop', ('flax', 'patches')), ('vmap_fori', tuple(model_by_name)))
  return {f'{loop}/{name}': Variant(f'{loop}/{name}', loop, model_by_name[name])
          for loop, names in loops for name in names}


def _make_step(model: nn.Module, optimizer: optax.GradientTransformation):
  """One device's SGD step: forward, backward, optax update."""

  def step(params, opt_state, x_BxHxWxC, y_B):
    def loss_fn(params):
      logits = model.apply({'params': params}, x_BxHxWxC)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y_B).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def _make_vmap_fori(step, x_NxSxBxHxWxC, y_NxSxB):
  """All devices in one vmap inside one fori_loop with a traced trip count, masked.

  Returns ``run(params_N, opt_N, budgets_N)``: device i does ``budgets_N[i]`` steps.
  """

  @jax.jit
  def train(params_N, opt_N, budgets_N):
    def body(t, carry):
      params_N, opt_N = carry
      x_NxB = lax.dynamic_index_in_dim(x_NxSxBxHxWxC, t % NUM_BATCHES, 1, keepdims=False)
      y_NxB = lax.dynamic_index_in_dim(y_NxSxB, t % NUM_BATCHES, 1, keepdims=False)
      new_params_N, new_opt_N = jax.vmap(step)(params_N, opt_N, x_NxB, y_NxB)
      active_N = t < budgets_N

      def select(new, old):
        return jnp.where(active_N.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

      return (jax.tree.map(select, new_params_N, params_N),
              jax.tree.map(select, new_opt_N, opt_N))

    return lax.fori_loop(0, jnp.max(budgets_N), body, (params_N, opt_N))

  def run(params_N, opt_N, budgets_N: np.ndarray):
    return train(params_N, opt_N, jnp.asarray(budgets_N, jnp.int32))

  return run


def _make_python_loop(step, x_NxSxBxHxWxC, y_NxSxB):
  """A Python loop over steps and devices of one jitted single-device step.

  Returns ``run(params_N, opt_N, budgets_N)``: device i does ``budgets_N[i]`` steps.
  """
  step = jax.jit(step)
  num_devices = x_NxSxBxHxWxC.shape[0]
  # Device-resident minibatches, so that the timed loop does no slicing.
  xs = [[x_NxSxBxHxWxC[i, s] for s in range(NUM_BATCHES)] for i in range(num_devices)]
  ys = [[y_NxSxB[i, s] for s in range(NUM_BATCHES)] for i in range(num_devices)]

  def run(params_N, opt_N, budgets_N: np.ndarray):
    params = [jax.tree.map(lambda a, i=i: a[i], params_N) for i in range(num_devices)]
    opts = [jax.tree.map(lambda a, i=i: a[i], opt_N) for i in range(num_devices)]
    for t in range(int(np.max(budgets_N))):
      for i in range(num_devices):
        if t < budgets_N[i]:
          params[i], opts[i] = step(params[i], opts[i], xs[i][t % NUM_BATCHES],
                                    ys[i][t % NUM_BATCHES])
    return params, opts

  return run


def measure(variant: Variant, num_devices: int, batch_size: int, seconds: float,
            max_steps: int, seed: int = 0) -> dict[str, Any]:
  """Times one variant; returns steps, wall seconds and useful examples per second."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(num_devices, NUM_BATCHES, batch_size) + IMAGE_SHAPE),
                  jnp.float32)
  y = jnp.asarray(rng.integers(0, NUM_CLASSES, (num_devices, NUM_BATCHES, batch_size)),
                  jnp.int32)
  model = variant.model
  keys = jax.random.split(jax.random.key(seed), num_devices)
  params_N = jax.jit(jax.vmap(lambda k: model.init(k, x[0, 0])['params']))(keys)
  optimizer = optax.sgd(0.01)
  opt_N = jax.vmap(optimizer.init)(params_N)
  step = _make_step(model, optimizer)
  make = _make_vmap_fori if variant.loop == 'vmap_fori' else _make_python_loop
  run = make(step, x, y)

  def timed(num_steps: int) -> float:
    start = time.perf_counter()
    jax.block_until_ready(run(params_N, opt_N, np.full(num_devices, num_steps)))
    return time.perf_counter() - start

  timed(1)  # Compilation and warm-up.
  num_steps, elapsed = 1, timed(1)
  if elapsed < seconds / 2:  # Otherwise one step is already a long enough measurement.
    num_steps = int(np.clip(round(seconds / elapsed), 1, max_steps))
    # Best of two, unless one run already takes the whole time budget.
    elapsed = timed(num_steps)
    if elapsed < seconds:
      elapsed = min(elapsed, timed(num_steps))
  examples = num_devices * num_steps * batch_size
  return dict(variant=variant.name, num_devices=num_devices, batch_size=batch_size,
              steps=num_steps, seconds=elapsed, useful_examples_per_s=examples / elapsed)


def check_same_function(variants: Sequence[Variant]) -> None:
  """Asserts that every variant's model computes the same logits with the same params."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2,) + IMAGE_SHAPE), jnp.float32)
  params = variants[0].model.init(jax.random.key(0), x)['params']
  reference = variants[0].model.apply({'params': params}, x)
  for variant in variants[1:]:
    logits = jax.jit(variant.model.apply)({'params': params}, x)
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4,
                               err_msg=variant.name)


def hetero_factor(num_devices: int) -> float:
  """mean(H) / max(H) for the paper-like speeds tiled to ``num_devices``."""
  speeds = np.resize(np.asarray(PAPER_SPEEDS, np.float64), num_devices)
  return float(speeds.mean() / speeds.max())


def to_markdown(results: Sequence[dict[str, Any]], baseline: str) -> str:
  """A table: one row per variant, per N the rate, the ratio to ``baseline``, hetero."""
  devices = sorted({r['num_devices'] for r in results})
  names = list(dict.fromkeys(r['variant'] for r in results))
  by_key = {(r['variant'], r['num_devices']): r for r in results}
  header = ['variant']
  for n in devices:
    header += [f'N={n} ex/s', f'N={n} vs (a)', f'N={n} hetero ex/s']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name in names:
    row = [f'`{name}`']
    for n in devices:
      r = by_key.get((name, n))
      if r is None:
        row += ['', '', '']
        continue
      row += [f"{r['useful_examples_per_s']:,.0f}", f"{r['ratio_vs_baseline']:.2f}x",
              f"{r['hetero_useful_examples_per_s']:,.0f}"]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines) + f'\n\n(a) = `{baseline}`.'


def main(argv: Sequence[str] | None = None) -> None:
  all_variants = _variants()
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--devices', default='8,16', help='comma-separated N values')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--seconds', type=float, default=1.5,
                      help='target wall time of one timed run')
  parser.add_argument('--max_steps', type=int, default=200)
  parser.add_argument('--variants', default=','.join(all_variants),
                      help=f'comma-separated, from: {", ".join(all_variants)}')
  parser.add_argument('--baseline', default='python_loop/flax')
  parser.add_argument('--out', default=None, help='write the results as JSON here')
  args = parser.parse_args(argv)

  chosen = [all_variants[name] for name in args.variants.split(',')]
  if args.baseline not in {v.name for v in chosen}:
    chosen.insert(0, all_variants[args.baseline])
  check_same_function(chosen)
  start = time.perf_counter()
  results = []
  for num_devices in (int(n) for n in args.devices.split(',')):
    for variant in chosen:
      r = measure(variant, num_devices, args.batch_size, args.seconds, args.max_steps)
      results.append(r)
      print(f"N={num_devices:3d} {variant.name:32s} {r['useful_examples_per_s']:9,.0f} ex/s"
            f"  ({r['steps']} steps, {r['seconds']:.2f} s)", flush=True)
  for r in results:
    base = next(b for b in results
                if b['variant'] == args.baseline and b['num_devices'] == r['num_devices'])
    r['ratio_vs_baseline'] = r['useful_examples_per_s'] / base['useful_examples_per_s']
    factor = hetero_factor(r['num_devices']) if r['variant'].startswith('vmap') else 1.0
    r['hetero_useful_examples_per_s'] = r['useful_examples_per_s'] * factor
  table = to_markdown(results, args.baseline)
  print()
  print(table)
  print(f'\ntotal {time.perf_counter() - start:.0f} s')
  if args.out:
    report = dict(
        benchmark='conv_trap', model='cnn', image_shape=IMAGE_SHAPE,
        batch_size=args.batch_size, optimizer='sgd(0.01)', baseline=args.baseline,
        hetero_speeds=PAPER_SPEEDS, jax_version=jax.__version__,
        backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
        cpu_count=os.cpu_count(), machine=platform.machine(), results=results,
        markdown=table)
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()
