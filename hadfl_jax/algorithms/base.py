"""What every algorithm shares: the problem it trains on and what a cycle reports.

An algorithm (HADFL or a baseline) is an object with

* ``init(key) -> state``: a pytree whose device-indexed leaves have a leading N axis;
* ``cycle(state, data) -> (state, CycleInfo)``: one aggregation cycle (for synchronous
  baselines, one round), a pure function that the run loop jits once;
* ``device_params(state)``: the stacked per-device models (N, ...);
* ``consensus_params(state)``: the model that is evaluated, x_bar = sum_i n_i/n x_i for
  decentralized algorithms.

Nothing in an algorithm depends on wall-clock time: the cost of a cycle is reported in
simulated seconds and bytes in :class:`CycleInfo`, and the run loop adds them up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hadfl_jax import data as data_lib
from hadfl_jax.core import profiles

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


@dataclasses.dataclass(frozen=True)
class Problem:
  """The learning problem every algorithm of a comparison shares.

  Attributes:
    model: a stateless flax module mapping images to logits.
    optimizer: the local optimizer (per device).
    init_params: the common initial parameters (no device axis).
    profile: device speeds, bandwidths and latency.
    num_examples_N: n_i, training examples on each device.
    batch_size: B, the local minibatch size.
    bytes_per_param: bytes of one parameter on the wire.
  """

  model: nn.Module
  optimizer: optax.GradientTransformation
  init_params: PyTree
  profile: profiles.DeviceProfile
  num_examples_N: np.ndarray
  batch_size: int
  bytes_per_param: int = 4

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


class Algorithm(Protocol):
  """The interface the run loop and the comparison drive (see the module docstring)."""

  name: str

  def init(self, key: jax.Array) -> PyTree:
    ...

  def cycle(self, state: PyTree, data: data_lib.DeviceData) -> tuple[PyTree, CycleInfo]:
    ...

  def device_params(self, state: PyTree) -> PyTree:
    ...

  def consensus_params(self, state: PyTree) -> PyTree:
    ...


def weighted_average(params_N: PyTree, weight_N) -> PyTree:
  """sum_i w_i x_i over the leading device axis, in float32."""
  w_N = jnp.asarray(weight_N, jnp.float32)
  return jax.tree.map(lambda x: jnp.tensordot(w_N, x.astype(jnp.float32), axes=1).astype(x.dtype), params_N)
