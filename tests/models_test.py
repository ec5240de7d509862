"""Models: the patches convolution and pooling against the standard ops, shapes, counts."""

import functools
import importlib.util
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hadfl_jax import models
from hadfl_jax.models import layers

# float32 convolutions summed in a different order agree to about 1e-6 relative.
TOL = dict(rtol=2e-5, atol=2e-5)


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _random_params(model, x, seed):
  """Parameters shaped as ``model.init``'s, drawn with NumPy: no slow RNG compile."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  return jax.tree.map(
      lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), jnp.float32), shapes)


@pytest.mark.parametrize('kernel_size', [1, 2, 3, 5])
@pytest.mark.parametrize('padding', ['SAME', 'VALID'])
def test_patches_conv_matches_lax_values_and_grads(kernel_size, padding):
  # Odd, non-square images; an even kernel makes SAME padding asymmetric (0 low, 1 high).
  x = _normal(0, (2, 7, 6, 3))
  kernel = _normal(1, (kernel_size, kernel_size, 3, 4))
  cotangent = _normal(2, layers.conv2d_lax(x, kernel, padding).shape)

  def loss(conv, x, kernel):
    return jnp.sum(conv(x, kernel, padding) * cotangent)

  value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(1, 2)), static_argnums=0)
  value_patches, grads_patches = value_and_grads(layers.conv2d_patches, x, kernel)
  value_lax, grads_lax = value_and_grads(layers.conv2d_lax, x, kernel)
  np.testing.assert_allclose(value_patches, value_lax, **TOL)
  np.testing.assert_allclose(
      layers.conv2d_patches(x, kernel, padding), layers.conv2d_lax(x, kernel, padding), **TOL)
  for g_patches, g_lax in zip(grads_patches, grads_lax):
    np.testing.assert_allclose(g_patches, g_lax, **TOL)


def test_patches_conv_rejects_unknown_padding():
  with pytest.raises(ValueError, match='CIRCULAR'):
    layers.conv2d_patches(_normal(0, (1, 4, 4, 1)), _normal(1, (3, 3, 1, 2)), 'CIRCULAR')


def _flax_pool(y):
  return nn.max_pool(y, (2, 2), strides=(2, 2))


@pytest.mark.parametrize('impl', layers.CONV_IMPLS)
@pytest.mark.parametrize('module_cls,after_conv', [
    (layers.Conv2D, lambda y: y), (layers.Conv2DMaxPool, _flax_pool)])
def test_conv_modules_match_flax_conv_with_same_params(impl, module_cls, after_conv):
  x = _normal(0, (2, 6, 5, 3))
  reference = nn.Conv(features=4, kernel_size=(3, 3), padding='SAME')
  reference_init = reference.init(jax.random.key(1), x)['params']
  module = module_cls(features=4, kernel_size=3, impl=impl)
  own_init = module.init(jax.random.key(1), x)['params']
  # Same tree, same shapes, and the same initialisation from the same key.
  assert jax.tree.map(jnp.shape, own_init) == jax.tree.map(jnp.shape, reference_init)
  jax.tree.map(np.testing.assert_array_equal, own_init, reference_init)
  # A non-zero bias, so that the bias broadcast is checked too.
  params = dict(reference_init, bias=_normal(2, (4,)))
  np.testing.assert_allclose(module.apply({'params': params}, x),
                             after_conv(reference.apply({'params': params}, x)), **TOL)


@pytest.mark.parametrize('module_cls', [layers.Conv2D, layers.Conv2DMaxPool])
def test_conv_modules_reject_unknown_impl(module_cls):
  module = module_cls(features=2, impl='winograd')
  with pytest.raises(ValueError, match='winograd'):
    module.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))


@pytest.mark.parametrize('shape', [(2, 6, 4, 3), (1, 7, 5, 2), (1, 2, 2, 1)])
def test_max_pool_matches_flax_values_and_grads(shape):
  # Continuous random values have no ties, where the two gradients are defined alike.
  x = _normal(0, shape)

  def flax_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')

  np.testing.assert_array_equal(layers.max_pool_2x2(x), flax_pool(x))
  cotangent = _normal(1, flax_pool(x).shape)
  grad_ours = jax.grad(lambda x: jnp.sum(layers.max_pool_2x2(x) * cotangent))(x)
  grad_flax = jax.grad(lambda x: jnp.sum(flax_pool(x) * cotangent))(x)
  np.testing.assert_array_equal(grad_ours, grad_flax)


def _conv_then_pool(x, kernel, bias):
  """The reference: flax's own pooling after the standard convolution."""
  y = layers.conv2d_lax(x, kernel) + bias.reshape(1, 1, 1, -1)
  return nn.max_pool(y, (2, 2), strides=(2, 2), padding='VALID')


@pytest.mark.parametrize('form,shape,kernel_size', [
    ('pooled', (2, 7, 4, 3), 3), ('pooled', (1, 9, 6, 2), 5), ('pooled', (1, 2, 2, 1), 1),
    ('window', (1, 7, 5, 2), 3), ('window', (1, 6, 6, 2), 2), ('auto', (2, 8, 8, 1), 3)])
def test_conv_max_pool_matches_conv_then_flax_pool(form, shape, kernel_size):
  # Odd sizes (the pool drops the last row or column), even and unit kernels (asymmetric
  # or no SAME padding), and 2x2 images. Random values: no ties.
  x = _normal(0, shape)
  kernel = _normal(1, (kernel_size, kernel_size, shape[-1], 4))
  bias = _normal(2, (4,))
  expected = _conv_then_pool(x, kernel, bias)
  cotangent = _normal(3, expected.shape)

  def loss(conv, *args):
    return jnp.sum(conv(*args) * cotangent)

  fused = lambda x, k, b: layers.conv2d_max_pool_patches(x, k, b, form)
  np.testing.assert_allclose(fused(x, kernel, bias), expected, **TOL)
  grads = [jax.grad(loss, argnums=(1, 2, 3))(f, x, kernel, bias)
           for f in (fused, _conv_then_pool)]
  for g_fused, g_ref in zip(*grads):
    np.testing.assert_allclose(g_fused, g_ref, **TOL)


def test_conv_max_pool_splits_gradient_among_tied_maxima_like_jnp_max():
  # A blank image: every output of a window is the bias, all four tie. The input's and
  # kernel's gradients then come from the tie rule alone; jnp.max splits evenly.
  x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(1.0)
  kernel, bias = _normal(1, (3, 3, 1, 2)), _normal(2, (2,))

  def reference(x, k, b):
    return layers.max_pool_2x2(layers.conv2d_lax(x, k) + b.reshape(1, 1, 1, -1))

  cotangent = _normal(3, (1, 2, 2, 2))
  for form in ('pooled', 'window'):
    fused = lambda x, k, b, form=form: layers.conv2d_max_pool_patches(x, k, b, form)
    grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2))(
        x, kernel, bias) for f in (fused, reference)]
    for g_fused, g_ref in zip(*grads):
      np.testing.assert_allclose(g_fused, g_ref, **TOL)


def test_max_over_window_gradient_by_hand():
  # One window with values (1, 3, 3, 0): the two tied maxima get half the cotangent each.
  y = jnp.array([[1.0], [3.0], [3.0], [0.0]])
  np.testing.assert_array_equal(layers.max_over_window(y), [3.0])
  grad = jax.grad(lambda y: 4.0 * layers.max_over_window(y)[0])(y)
  np.testing.assert_array_equal(grad, [[0.0], [2.0], [2.0], [0.0]])


def test_conv_max_pool_vmaps_over_device_kernels():
  # The engine vmaps the block and its gradient over devices, each with its own kernel.
  x = _normal(0, (3, 2, 6, 6, 2))
  kernel, bias = _normal(1, (3, 3, 3, 2, 4)), _normal(2, (3, 4))
  batched = jax.vmap(layers.conv2d_max_pool_patches)(x, kernel, bias)
  loss = lambda block, *args: jnp.sum(jnp.sin(block(*args)))
  grads = jax.vmap(jax.grad(functools.partial(loss, layers.conv2d_max_pool_patches),
                            argnums=(0, 1, 2)))(x, kernel, bias)
  for i in range(3):
    np.testing.assert_allclose(batched[i], _conv_then_pool(x[i], kernel[i], bias[i]), **TOL)
    expected = jax.grad(functools.partial(loss, _conv_then_pool), argnums=(0, 1, 2))(
        x[i], kernel[i], bias[i])
    for g_batched, g_ref in zip(grads, expected):
      np.testing.assert_allclose(g_batched[i], g_ref, **TOL)


def test_conv_max_pool_rejects_bad_form_and_tiny_images():
  x, kernel, bias = _normal(0, (1, 4, 4, 1)), _normal(1, (3, 3, 1, 2)), jnp.zeros(2)
  with pytest.raises(ValueError, match='winograd'):
    layers.conv2d_max_pool_patches(x, kernel, bias, 'winograd')
  with pytest.raises(ValueError, match='1x4'):
    layers.conv2d_max_pool_patches(x[:, :1], kernel, bias)


def test_cnn_is_conv_relu_pool_as_written_in_the_spec():
  # The CNN pools before its ReLU (cheaper); the spec's order is ReLU then pooling, with
  # flax's own ops. Same logits, and the same gradients (no ties in random inputs).
  model = models.get_model('cnn', 10)
  x = _normal(0, (3, 28, 28, 1))
  params = _random_params(model, x, 1)
  labels = jnp.array([0, 4, 9])

  def reference(p, x):
    for name in ('conv0', 'conv1'):
      x = layers.conv2d_lax(x, p[name]['kernel']) + p[name]['bias'].reshape(1, 1, 1, -1)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding='VALID')
    x = nn.relu(x.reshape(x.shape[0], -1) @ p['dense0']['kernel'] + p['dense0']['bias'][None])
    return x @ p['dense1']['kernel'] + p['dense1']['bias'][None]

  def loss(apply, p):
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), labels).mean()

  ours = lambda p, x: model.apply({'params': p}, x)
  np.testing.assert_allclose(ours(params, x), reference(params, x), **TOL)
  grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)  # One program, not op by op.
  grads = [grad(f, params) for f in (ours, reference)]
  for g_ours, g_ref in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(g_ours, g_ref, **TOL)


# Parameter counts by hand: a dense layer has in * out + out, a 3x3 conv 9 * C * F + F.
PARAM_COUNTS = {
    # 784-200-200-10.
    ('mlp', (28, 28, 1)): (784 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10),  # 199,210
    # 784-64-64-10.
    ('small_mlp', (28, 28, 1)): (784 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10),  # 55,050
    # 64-64-10.
    ('digits_mlp', (8, 8, 1)): (64 * 64 + 64) + (64 * 10 + 10),  # 4,810
    # conv16 (8x8 -> pool 4x4), conv32 (4x4 -> pool 2x2), 2*2*32 = 128 -> 64 -> 10.
    ('digits_cnn', (8, 8, 1)): ((9 * 1 * 16 + 16) + (9 * 16 * 32 + 32)
                                + (2 * 2 * 32 * 64 + 64) + (64 * 10 + 10)),  # 13,706
    # conv32 (28 -> 14), conv64 (14 -> 7), 7*7*64 = 3136 -> 128 -> 10.
    ('cnn', (28, 28, 1)): ((9 * 1 * 32 + 32) + (9 * 32 * 64 + 64)
                           + (7 * 7 * 64 * 128 + 128) + (128 * 10 + 10)),  # 421,642
    # conv32 (32 -> 16), conv64 (16 -> 8), 8*8*64 = 4096 -> 128 -> 10.
    ('cnn', (32, 32, 3)): ((9 * 3 * 32 + 32) + (9 * 32 * 64 + 64)
                           + (8 * 8 * 64 * 128 + 128) + (128 * 10 + 10)),  # 545,098
}


@pytest.mark.parametrize(('name', 'image_shape'), list(PARAM_COUNTS))
def test_param_counts_and_output_shapes(name, image_shape):
  model = models.get_model(name, num_classes=10)
  x = jnp.zeros((3,) + image_shape, jnp.float32)
  # eval_shape: counting needs no FLOPs.
  params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  assert models.count_params(params) == PARAM_COUNTS[(name, image_shape)]
  logits = jax.eval_shape(model.apply, {'params': params}, x)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_every_model_runs_and_is_stateless():
  assert set(models.MODELS) >= {'mlp', 'small_mlp', 'digits_mlp', 'digits_cnn', 'cnn'}
  for name in models.MODELS:
    model = models.get_model(name, num_classes=7)
    x = _normal(0, (2, 8, 8, 1))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert set(variables) == {'params'}, name  # No batch stats or other mutable state.
    logits = jax.jit(model.apply)({'params': _random_params(model, x, 1)}, x)
    assert logits.shape == (2, 7) and bool(jnp.all(jnp.isfinite(logits))), name


def test_unknown_model_name_lists_the_registered_ones():
  with pytest.raises(ValueError, match='resnet') as error:
    models.get_model('resnet', num_classes=10)
  for name in models.MODELS:
    assert repr(name) in str(error.value)


def test_cnn_conv_impls_share_params_values_and_grads():
  patches_model = models.get_model('cnn', num_classes=10)
  assert patches_model.conv_impl == 'patches'
  lax_model = patches_model.clone(conv_impl='lax')
  x = _normal(0, (2, 28, 28, 1))
  labels = jnp.array([3, 7])
  params = _random_params(patches_model, x, 1)
  lax_params = jax.eval_shape(lax_model.init, jax.random.key(1), x)['params']
  assert jax.tree.map(jnp.shape, lax_params) == jax.tree.map(jnp.shape, params)

  def loss(model, params):
    logits = model.apply({'params': params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  loss_patches, grads_patches = value_and_grad(patches_model, params)
  loss_lax, grads_lax = value_and_grad(lax_model, params)
  np.testing.assert_allclose(loss_patches, loss_lax, **TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), grads_patches, grads_lax)


@pytest.mark.parametrize('name', ['digits_cnn', 'digits_mlp'])
def test_models_vmap_over_stacked_device_params(name):
  num_devices = 3
  model = models.get_model(name, num_classes=10)
  x_NxBxHxWxC = _normal(0, (num_devices, 2, 8, 8, 1))
  params_N = jax.tree.map(
      lambda *leaves: jnp.stack(leaves),
      *[_random_params(model, x_NxBxHxWxC[0], seed) for seed in range(num_devices)])
  single = jax.eval_shape(model.init, jax.random.key(0), x_NxBxHxWxC[0])['params']
  assert models.count_params(params_N) == num_devices * models.count_params(single)
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))

  logits_NxBxK = jax.vmap(apply)(params_N, x_NxBxHxWxC)
  assert logits_NxBxK.shape == (num_devices, 2, 10)
  for i in range(num_devices):
    params_i = jax.tree.map(lambda a, i=i: a[i], params_N)
    np.testing.assert_allclose(logits_NxBxK[i], apply(params_i, x_NxBxHxWxC[i]), **TOL)


@pytest.mark.slow
def test_conv_trap_benchmark_runs(tmp_path, monkeypatch):
  path = pathlib.Path(__file__).resolve().parents[1] / 'benchmarks' / 'conv_trap.py'
  spec = importlib.util.spec_from_file_location('conv_trap', path)
  conv_trap = importlib.util.module_from_spec(spec)
  monkeypatch.setitem(sys.modules, 'conv_trap', conv_trap)  # dataclasses look it up.
  spec.loader.exec_module(conv_trap)
  out = tmp_path / 'conv_trap.json'
  conv_trap.main(['--devices', '2', '--batch_size', '2', '--seconds', '0',
                  '--variants', 'vmap_fori/patches', '--baseline', 'vmap_fori/patches',
                  '--out', str(out)])
  report = json.loads(out.read_text())
  [result] = report['results']
  assert (result['variant'], result['num_devices'], result['steps']) == (
      'vmap_fori/patches', 2, 1)
  assert result['ratio_vs_baseline'] == 1.0
  assert '| `vmap_fori/patches` |' in report['markdown']
