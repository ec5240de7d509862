"""Evaluation: the evaluator of a model equals a plain loop over models and examples,
whichever convolution and device chunking it picks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax import data as data_lib
from hadfl_jax import evaluation
from hadfl_jax.core import autotune
from hadfl_jax import models


def _split(n, shape, seed=0):
  rng = np.random.default_rng(seed)
  return data_lib.Split(images=rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                        labels=rng.integers(0, 10, (n,)).astype(np.int32), num_classes=10)


def _loop_reference(model, params, split, m):
  """One image at a time in Python: accuracy and mean cross-entropy over the split, and
  accuracy over its first ``m`` examples (the device evaluation's)."""
  apply = jax.jit(model.apply)  # One image per call, compiled once.
  correct, loss, hits = 0, 0.0, []
  for image, label in zip(split.images, split.labels):
    logits = np.asarray(apply({'params': params}, image[None].astype(np.float32) / 255))[0]
    hits.append(int(np.argmax(logits) == label))
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    loss -= logp[label]
  n = len(split.labels)
  correct, device = sum(hits), np.mean(hits[:m])
  return correct / n, loss / n, device


@pytest.mark.parametrize('name,shape', [('digits_cnn', (8, 8, 1)), ('small_mlp', (28, 28, 1))])
def test_evaluator_for_model_matches_a_plain_loop(name, shape):
  model = models.get_model(name, 10)
  split = _split(37, shape)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params_N = jax.vmap(lambda k: model.init(k, jnp.zeros((1,) + shape))['params'])(keys)
  ev = evaluation.Evaluator.for_model(model, split, batch_size=16, device_examples=20)
  first = jax.tree.map(lambda x: x[0], params_N)
  acc, loss, _ = _loop_reference(model, first, split, 20)
  result = ev.model(first)
  assert float(result.accuracy) == pytest.approx(acc)
  assert float(result.loss) == pytest.approx(loss, rel=1e-4)
  device_acc = np.asarray(ev.devices(params_N))
  for i in range(3):
    _, _, dev = _loop_reference(model, jax.tree.map(lambda x, i=i: x[i], params_N), split, 20)
    assert device_acc[i] == pytest.approx(dev)


def test_evaluation_runs_the_named_or_measured_convolution_and_batch(monkeypatch):
  monkeypatch.setenv(autotune.ENABLED_ENV, '1')  # The suite turns it off (conftest).
  cnn = models.get_model('digits_cnn', 10)
  assert cnn.conv_impl == 'patches'
  for impl in ('patches', 'lax'):
    module, batch = evaluation.inference_plan(cnn, (8, 8, 1), 64, conv_impl=impl)
    assert module.conv_impl == impl and batch == 64
  module, batch = evaluation.inference_plan(cnn, (8, 8, 1), 256)
  assert module.conv_impl in ('patches', 'lax') and batch in (32, 64, 128, 256)
  split = _split(37, (8, 8, 1))
  assert evaluation.Evaluator.for_model(cnn, split, 16, 20, conv_impl='lax').conv_impl == 'lax'
  assert evaluation.Evaluator.for_model(cnn, split, 16, 20).conv_impl in ('patches', 'lax')
  mlp = models.get_model('small_mlp', 10)
  assert evaluation.inference_plan(mlp, (28, 28, 1), 100) == (mlp, 100)
  assert evaluation.Evaluator.for_model(mlp, _split(5, (28, 28, 1))).conv_impl is None


def test_device_models_in_batches_match_one_pass():
  model = models.get_model('digits_cnn', 10)
  split = _split(37, (8, 8, 1))
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params_N = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)))['params'])(keys)
  one = evaluation.Evaluator(model.apply, split, 16, 30, 1)
  batched = evaluation.Evaluator(model.apply, split, 16, 30, 1, device_batch_size=7)
  np.testing.assert_allclose(np.asarray(batched.devices(params_N)),
                             np.asarray(one.devices(params_N)), rtol=0, atol=1e-7)
