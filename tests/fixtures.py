"""Tiny problems whose answers can be checked by hand or by a plain loop."""

import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hadfl_jax import algorithms
from hadfl_jax import data as data_lib
from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import hadfl
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import faults
from hadfl_jax.core import profiles

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_MNIST = pathlib.Path(os.environ.get('HADFL_MNIST_DIR', REPO.parent / 'shared' / 'data' / 'mnist'))


class TinyNet(nn.Module):
  """A one-hidden-layer net on flattened 4x4 images: fast, yet a real model."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(nn.tanh(nn.Dense(5)(x)))


def subprocess_env(cache_dir=None) -> dict:
  """The environment of a command-line subprocess: CPU only, and (given a directory) the
  tests' persistent compilation cache."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if cache_dir is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  return env


def make_tiny_problem(num_devices=4, speeds=(1.0, 2.0, 3.0, 4.0), optimizer=None,
                      counts=None, batch_size=3, seed=0):
  """A tiny problem: random 4x4 images, 3 classes, shards of different sizes."""
  rng = np.random.default_rng(seed)
  counts = counts or [5 + 2 * i for i in range(num_devices)]
  total = sum(counts)
  images = rng.integers(0, 256, size=(total, 4, 4, 1), dtype=np.uint8)
  labels = rng.integers(0, 3, size=(total,)).astype(np.int32)
  bounds = np.cumsum([0] + list(counts))
  parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(num_devices)]
  device_data = data_lib.DeviceData.from_partition(images, labels, parts)
  model = TinyNet()
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 4, 4, 1)))['params']
  profile = profiles.DeviceProfile(
      speed_N=np.asarray(speeds, np.float64) * 10.0,
      bandwidth_N=np.full(num_devices, 1e5),
      latency=0.01,
  )
  problem = base.Problem(
      model=model,
      optimizer=optimizer or optax.sgd(0.1, momentum=0.9),
      init_params=params,
      profile=profile,
      num_examples_N=np.asarray(counts, np.int64),
      batch_size=batch_size,
      input_shape=(4, 4, 1),
  )
  return problem, device_data



def make_hadfl(problem, *, p_drop=0.0, p_sync_fail=0.0, down_trace=(), jitter_sigma=0.0,
               num_buckets=1, bucket_mib=0.0, num_shards=1, weights='data', t_local=0.5,
               **hadfl_options):
  """HADFL on ``problem`` with faults, jitter and engine knobs given as keywords.

  The defaults are the plain engine (one masked loop, one shard) and the spec's data
  weights, which the hand-computed answers of the tests assume.

  Returns:
    ``(algorithm, problem)``: the problem with the faults and the jitter in it.
  """
  problem = problem.replace(
      faults=faults.FaultsConfig(p_drop=p_drop, p_sync_fail=p_sync_fail, down_trace=down_trace),
      profile=problem.profile._replace(jitter_sigma=jitter_sigma))
  config = hadfl.Config(weights=weights, t_local=t_local, **hadfl_options)
  engine = engine_lib.EngineConfig(num_buckets=num_buckets, bucket_mib=bucket_mib,
                                   mesh_shards=num_shards)
  return algorithms.build('hadfl', problem, config, engine), problem
