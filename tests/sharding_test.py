"""The device axis sharded over a mesh gives the same simulation as one device.

Multi-device checks run in a subprocess with ``XLA_FLAGS=
--xla_force_host_platform_device_count=8`` (eight CPU devices), so that the rest of the
suite keeps its single default device; single-device checks run here.
"""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hadfl_jax import sharding
from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEEDS_8 = (1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0)


def _run_cycles(num_shards, num_buckets=1, mesh_shards=None, cycles=3):
  """HADFL on a tiny 8-device problem, the device axis over ``mesh_shards`` devices."""
  problem, data = fixtures.make_tiny_problem(num_devices=8, speeds=SPEEDS_8,
                                             counts=[5 + i for i in range(8)])
  algo, _ = fixtures.make_hadfl(problem, t_local=0.3, p_drop=0.2, jitter_sigma=0.3,
                                num_buckets=num_buckets, num_shards=num_shards)
  state = algo.init(jax.random.PRNGKey(3))
  mesh = sharding.make_mesh(mesh_shards or num_shards)
  cycle, state, data = sharding.shard_cycle(algo.cycle, state, data, mesh, 8)
  infos = []
  for _ in range(cycles):
    state, info = cycle(state, data)
    infos.append(jax.device_get(info))
  return state, infos, cycle


def _child_main():
  """Runs in the subprocess with eight CPU devices; exits non-zero on a mismatch."""
  assert jax.device_count() == 8, jax.devices()
  report = {}
  ref_state, ref_infos, _ = _run_cycles(num_shards=1)
  for shards, buckets in ((8, 1), (4, 2), (2, 4)):
    state, infos, cycle = _run_cycles(num_shards=shards, num_buckets=buckets)
    leaf = jax.tree.leaves(state.devices.params)[0]
    # The parameters really are split: each of the mesh's devices holds N / S rows.
    assert len(leaf.sharding.device_set) == shards
    assert {s.data.shape[0] for s in leaf.addressable_shards} == {8 // shards}
    chex.assert_trees_all_close(jax.device_get(state), jax.device_get(ref_state),
                                rtol=2e-5, atol=2e-6)
    chex.assert_trees_all_close(infos, ref_infos, rtol=2e-5, atol=2e-6)
    assert cycle._cache_size() == 1  # pylint: disable=protected-access
    report[f'{shards}x{buckets}'] = 'ok'
  # The run loop end to end: 8 shards against 1, same summary.
  from hadfl_jax.configs import default  # pylint: disable=g-import-not-at-top
  from hadfl_jax import train  # pylint: disable=g-import-not-at-top
  summaries = []
  for shards in (1, 8):
    config = default.get_config()
    config.num_cycles, config.eval_every, config.engine.num_buckets = 4, 2, 2
    config.engine.mesh_shards = shards
    summaries.append(train.train_and_evaluate(config, os.path.join(sys.argv[2], str(shards))))
  for key, value in summaries[0].items():
    if isinstance(value, float):
      np.testing.assert_allclose(summaries[1][key], value, rtol=1e-4, err_msg=key)
    else:
      assert summaries[1][key] == value, key
  report['train'] = 'ok'
  print(json.dumps(report))


def test_sharded_run_matches_unsharded(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, __file__, 'child', str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report == {'8x1': 'ok', '4x2': 'ok', '2x4': 'ok', 'train': 'ok'}


def test_single_device_mesh_matches_plain_jit():
  state, infos, _ = _run_cycles(num_shards=1, cycles=2)
  problem, data = fixtures.make_tiny_problem(num_devices=8, speeds=SPEEDS_8,
                                             counts=[5 + i for i in range(8)])
  algo, _ = fixtures.make_hadfl(problem, t_local=0.3, p_drop=0.2, jitter_sigma=0.3)
  ref, cycle = algo.init(jax.random.PRNGKey(3)), jax.jit(algo.cycle)
  for i in range(2):
    ref, info = cycle(ref, data)
    chex.assert_trees_all_close(jax.device_get(info), infos[i], rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(jax.device_get(ref), jax.device_get(state), rtol=1e-6, atol=1e-7)


def test_tree_shardings_split_device_axis_only():
  mesh = sharding.make_mesh(1)
  tree = {'x_N': jnp.zeros((8, 3)), 'v_N': jnp.zeros(8), 'key': jnp.zeros(2), 'c': jnp.zeros(())}
  specs = jax.tree.map(lambda s: s.spec, sharding.tree_shardings(tree, 8, mesh))
  assert specs == {'x_N': jax.sharding.PartitionSpec('devices'),
                   'v_N': jax.sharding.PartitionSpec('devices'),
                   'key': jax.sharding.PartitionSpec(), 'c': jax.sharding.PartitionSpec()}


def test_uneven_split_is_a_clear_error():
  with pytest.raises(ValueError, match=r'num_devices=10 .* over 4 accelerators.*\[1, 2\]'):
    sharding.check_divisible(10, 4)
  problem, _ = fixtures.make_tiny_problem(num_devices=4)
  with pytest.raises(ValueError, match='cannot be split evenly over 3'):
    fixtures.make_hadfl(problem, num_shards=3)
  with pytest.raises(ValueError, match='mesh_shards=99'):
    sharding.make_mesh(99)


def test_distributed_is_off_unless_configured():
  assert not sharding.initialize_distributed({'distributed': False})
  assert not sharding.initialize_distributed({})


if __name__ == '__main__' and sys.argv[1:2] == ['child']:
  _child_main()
