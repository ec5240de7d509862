"""What every algorithm shares: the problem it trains on and what a cycle reports.

An algorithm (:class:`hadfl_jax.algorithms.base.Algorithm`) runs on a :class:`Problem`:
the model, the task (loss and accuracy), the local optimizer, the common initial
parameters, the devices' heterogeneity (speeds, links, faults) and their data sizes.
Nothing in an algorithm depends on wall-clock time: the cost of a cycle is reported in
simulated seconds and bytes in :class:`CycleInfo`, and the run loop adds them up.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hadfl_jax.core import faults as faults_lib
from hadfl_jax.core import profiles
from hadfl_jax.core import task as task_lib

PyTree = Any


@flax.struct.dataclass
class CycleInfo:
  """What one cycle did, for the clock, the ledger and the logs.

  Attributes:
    cycle_time: simulated seconds the cycle took.
    bytes_sent_N: bytes each device sent this cycle.
    server_bytes: bytes through a server's link (0 for decentralized algorithms).
    budgets_N: local steps each device ran.
    train_loss_N: mean training loss of each device over its steps (0 if none).
    up_N: which devices were up.
    synced_N: which devices took part in an aggregation.
  """

  cycle_time: jax.Array
  bytes_sent_N: jax.Array
  server_bytes: jax.Array
  budgets_N: jax.Array
  train_loss_N: jax.Array
  up_N: jax.Array
  synced_N: jax.Array

  @classmethod
  def make(cls, cycle_time, bytes_N, budgets_N, loss_N, up_N, synced_N,
           server_bytes=0.0) -> 'CycleInfo':
    """A report with the canonical dtypes."""
    return cls(
        cycle_time=jnp.asarray(cycle_time, jnp.float32),
        bytes_sent_N=jnp.asarray(bytes_N, jnp.float32),
        server_bytes=jnp.asarray(server_bytes, jnp.float32),
        budgets_N=jnp.asarray(budgets_N).astype(jnp.int32),
        train_loss_N=jnp.asarray(loss_N, jnp.float32),
        up_N=jnp.asarray(up_N, bool),
        synced_N=jnp.asarray(synced_N, bool),
    )


@dataclasses.dataclass(frozen=True)
class Problem:
  """The learning problem every algorithm of a comparison shares.

  Attributes:
    model: a stateless flax module mapping inputs to logits.
    optimizer: the local optimizer (per device).
    init_params: the common initial parameters (no device axis).
    profile: device speeds, bandwidths, latency and speed jitter.
    num_examples_N: n_i, training examples on each device.
    batch_size: B, the local minibatch size.
    input_shape: the shape of one stored example (e.g. (28, 28, 1)).
    task: the loss and accuracy (default: softmax cross-entropy, argmax accuracy).
    faults: which devices are down, and who fails during a sync.
    bytes_per_param: bytes of one parameter on the wire.
  """

  model: nn.Module
  optimizer: optax.GradientTransformation
  init_params: PyTree
  profile: profiles.DeviceProfile
  num_examples_N: np.ndarray
  batch_size: int
  input_shape: tuple[int, ...] = ()
  task: task_lib.Task = task_lib.Task()
  faults: faults_lib.FaultsConfig = faults_lib.FaultsConfig()
  bytes_per_param: int = 4

  def __post_init__(self):
    # Checked here, before any work: a trace naming a device beyond N, and so on.
    self.faults.check_devices(self.num_devices, 'faults.')

  @property
  def num_devices(self) -> int:
    return len(self.num_examples_N)

  @property
  def num_params(self) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(self.init_params)))

  @property
  def model_bytes(self) -> float:
    """M, the size of one model on the wire."""
    return float(self.num_params * self.bytes_per_param)

  @property
  def data_weights_N(self) -> np.ndarray:
    """n_i / n, the consensus weights."""
    n = np.asarray(self.num_examples_N, np.float64)
    return n / n.sum()

  @property
  def seconds_per_step(self) -> float:
    """Simulated seconds of one local step on the fastest device."""
    return float(1.0 / np.max(self.profile.speed_N))

  def replace(self, **changes) -> 'Problem':
    return dataclasses.replace(self, **changes)


def weighted_average(params_N: PyTree, weight_N) -> PyTree:
  """sum_i w_i x_i over the leading device axis, in float32."""
  w_N = jnp.asarray(weight_N, jnp.float32)
  return jax.tree.map(
      lambda x: jnp.tensordot(w_N, x.astype(jnp.float32), axes=1).astype(x.dtype), params_N)
