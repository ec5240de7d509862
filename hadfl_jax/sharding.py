"""Many accelerators: the device axis sharded over a ``jax.sharding.Mesh``.

Every leaf of a simulation state that has a leading device axis (``x_N``, ``params_N``)
is split over the mesh axis ``'devices'`` (:data:`DEVICE_AXIS`); everything else (the
coordinator's key, the cycle counter) is replicated. The jitted cycle is written for one
array of N devices and runs unchanged under GSPMD: XLA partitions the vmapped local
training (no communication: each accelerator trains its own simulated devices), and
inserts the collectives that selection (a top-K over N scores) and the sparse group
average (K rows) need. The per-cycle report is replicated, so the host can read it.

Local training sorts devices into buckets within each shard
(:class:`hadfl_jax.core.local.LocalSchedule` with ``num_shards`` = the mesh size), so no
device state crosses accelerators outside the group average.

Multi-host (a TPU pod, several GPU hosts): every process runs the same program;
:func:`initialize_distributed` (``config.engine.distributed = True``) calls
``jax.distributed.initialize`` first, with the coordinator address, process count and id
from the config or, left unset, detected from the cluster environment (TPU pods, SLURM,
...). Every process builds the same initial state and data from the seed (all are
deterministic), and :func:`place` hands each process only its own shards
(``jax.make_array_from_callback``), so the global arrays are never gathered on one host.

Example (single host, all local accelerators)::

  mesh = make_mesh()
  cycle, state, data = shard_cycle(algorithm.cycle, state, data, mesh, num_devices)
  state, info = cycle(state, data)

N must be a multiple of the mesh size (:func:`check_divisible` says which sizes work).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
DEVICE_AXIS = 'devices'


def initialize_distributed(engine_config) -> bool:
  """Starts multi-host JAX when ``engine_config.distributed`` is set; call it first.

  Args:
    engine_config: the engine settings with ``distributed`` (bool) and optional
      ``coordinator_address``, ``num_processes``, ``process_id`` (None: detected from the
      cluster environment, as on a TPU pod).

  Returns:
    Whether ``jax.distributed.initialize`` was called.
  """
  if not _field(engine_config, 'distributed', False):
    return False
  jax.distributed.initialize(
      coordinator_address=_field(engine_config, 'coordinator_address', None),
      num_processes=_field(engine_config, 'num_processes', None),
      process_id=_field(engine_config, 'process_id', None),
  )
  logging.info('jax.distributed: process %d of %d, %d global devices',
               jax.process_index(), jax.process_count(), jax.device_count())
  return True


def mesh_size(engine_config) -> int:
  """The mesh size ``config.engine.mesh_shards`` asks for (0: every accelerator)."""
  return int(_field(engine_config, 'mesh_shards', 0) or 0) or jax.device_count()


def _field(engine_config, name: str, default):
  """A field of an :class:`hadfl_jax.core.engine.EngineConfig` or a ConfigDict section."""
  if engine_config is None:
    return default
  if hasattr(engine_config, 'get'):
    return engine_config.get(name, default)
  return getattr(engine_config, name, default)


def make_mesh(num_shards: int = 0) -> Mesh:
  """A 1-D mesh with axis :data:`DEVICE_AXIS` over the first ``num_shards`` accelerators.

  Args:
    num_shards: how many accelerators (of ``jax.devices()``, all processes) to use;
      0 means all.

  Raises:
    ValueError: more shards than accelerators, or a negative number.
  """
  available = jax.devices()
  if num_shards < 0 or num_shards > len(available):
    raise ValueError(f'engine.mesh_shards={num_shards}: must be in [0, {len(available)}] '
                     f'(0 = all {len(available)} accelerators)')
  devices = available[:num_shards or len(available)]
  return Mesh(np.asarray(devices), (DEVICE_AXIS,))


def check_divisible(num_devices: int, num_shards: int) -> None:
  """Raises ValueError, naming the sizes that work, unless num_shards divides N."""
  if num_devices % num_shards:
    fits = [s for s in range(1, num_shards + 1) if num_devices % s == 0]
    raise ValueError(
        f'num_devices={num_devices} simulated devices cannot be split evenly over '
        f'{num_shards} accelerators: use a multiple of {num_shards} devices, or set '
        f'engine.mesh_shards to one of {fits}')


def tree_shardings(tree: PyTree, num_devices: int, mesh: Mesh) -> PyTree:
  """NamedShardings: leaves with a leading axis of size N split over the mesh, the rest
  replicated.

  Args:
    tree: arrays or ``jax.ShapeDtypeStruct`` leaves.
    num_devices: N, the simulated devices.
    mesh: from :func:`make_mesh`.
  """
  split = NamedSharding(mesh, PartitionSpec(DEVICE_AXIS))
  whole = NamedSharding(mesh, PartitionSpec())

  def pick(x):
    return split if np.ndim(x) >= 1 and np.shape(x)[0] == num_devices else whole

  return jax.tree.map(pick, tree)


def replicated(tree: PyTree, mesh: Mesh) -> PyTree:
  """A replicated NamedSharding for every leaf."""
  return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def place(tree: PyTree, shardings: PyTree) -> PyTree:
  """Global arrays with the given shardings, each process supplying only its shards.

  Every process must hold the same host values (they are built from the seed). In a
  single process this is ``jax.device_put`` (no copy where the placement is unchanged).
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def put(x, sharding):
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree, shardings)


def to_host(x) -> np.ndarray:
  """A global array's whole value on this host: ``np.asarray`` in one process; with
  several, the shards of every process gathered (every process must call it)."""
  if jax.process_count() == 1 or getattr(x, 'is_fully_replicated', True):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def shard_cycle(
    cycle_fn: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]],
    state: PyTree,
    data: PyTree,
    mesh: Mesh,
    num_devices: int,
    donate: bool = True,
) -> tuple[Callable[[PyTree, PyTree], tuple[PyTree, PyTree]], PyTree, PyTree]:
  """Places state and data on the mesh and jits the cycle with matching shardings.

  The state comes out of a cycle with the sharding it went in with, so later cycles
  never recompile; the per-cycle report (the second output) is replicated.

  Args:
    cycle_fn: ``cycle(state, data) -> (state, info)``, pure.
    state: the initial state (any placement).
    data: the device data (any placement).
    mesh: from :func:`make_mesh`.
    num_devices: N; must be a multiple of the mesh size.
    donate: donate the state buffers to the cycle.

  Returns:
    ``(jitted_cycle, placed_state, placed_data)``.

  Raises:
    ValueError: N is not a multiple of the mesh size.
  """
  check_divisible(num_devices, mesh.size)
  state_sh = tree_shardings(state, num_devices, mesh)
  data_sh = tree_shardings(data, num_devices, mesh)
  _, info_shape = jax.eval_shape(cycle_fn, state, data)
  # Input shardings come from the placed arguments (a state restored from elsewhere is
  # accepted, at the cost of one more compilation); outputs are pinned, so the state
  # returned by a cycle always matches the one the cycle was compiled for.
  jitted = jax.jit(cycle_fn, out_shardings=(state_sh, replicated(info_shape, mesh)),
                   donate_argnums=(0,) if donate else ())
  return jitted, place(state, state_sh), place(data, data_sh)
