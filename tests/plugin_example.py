"""A researcher's additions, outside the package: one of each registry.

Importing this module registers, exactly as the built-ins do:

* ``pairwise_gossip``, an algorithm: every up device trains for ``t_local`` simulated
  seconds at its own speed (heterogeneity-aware budgets, as HADFL's), then the up devices
  are matched in random pairs and each pair averages its two models (a sparse
  :class:`~hadfl_jax.core.mixing.NeighbourMixing` of width 2). The cycle lasts
  ``t_local`` plus the slowest pair's model exchange (M / b + l).
* ``fewest_examples``, a HADFL selection rule: q_i = 1 / n_i.
* ``tiny_mlp``, a model: one hidden layer of 16 units.
* ``smoothed_cross_entropy``, a loss: cross-entropy against labels smoothed by 0.1.
* ``round_robin``, a partitioner: example j goes to device j mod N.

The tests (``tests/plugin_test.py``) run them through the command line, ``run``,
``compare``, checkpoints and resume; ``docs/extending.md`` walks through the same code.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hadfl_jax import algorithms
from hadfl_jax import data
from hadfl_jax import models
from hadfl_jax import typed_config as tc
from hadfl_jax.algorithms import rounds
from hadfl_jax.core import engine as engine_lib
from hadfl_jax.core import mixing
from hadfl_jax.core import selection
from hadfl_jax.core import task

# --- an algorithm ------------------------------------------------------------------------

GRID_KNOBS = ('lr', 'h')


@dataclasses.dataclass(frozen=True)
class Config(tc.Section):
  SECTION = 'pairwise_gossip'

  t_local: float = tc.number(0.1, low=0, low_open=True,
                             doc='simulated seconds of local training per cycle')
  opt_state: str = tc.choice('keep', engine_lib.OPT_STATE_RULES,
                             doc='what an exchange does to optimizer states')


def apply_grid_point(config: Config, point, context: algorithms.GridContext) -> Config:
  """The grid's ``h``: the fastest device's local steps per cycle."""
  if 'h' in point:
    return config.replace(t_local=point['h'] * context.problem.seconds_per_step)
  return config


def random_pairs(key: jax.Array, up_N: jax.Array) -> mixing.NeighbourMixing:
  """A uniformly random matching of the up devices as a width-2 neighbour mixing.

  Up devices are shuffled (down ones last) and consecutive ones paired; an unpaired
  device (an odd count, or a down one) keeps its model.
  """
  n = up_N.shape[0]
  score_N = jnp.where(up_N, jax.random.uniform(key, (n,)), 2.0)
  order_N = jnp.argsort(score_N)
  rank_N = jnp.zeros((n,), jnp.int32).at[order_N].set(jnp.arange(n, dtype=jnp.int32))
  partner_rank_N = rank_N ^ 1  # 0<->1, 2<->3, ...
  partner_N = order_N[jnp.minimum(partner_rank_N, n - 1)]
  paired_N = up_N & (partner_rank_N < n) & up_N[partner_N]
  partner_N = jnp.where(paired_N, partner_N, jnp.arange(n))
  weight = jnp.where(paired_N, 0.5, 0.0)
  return mixing.NeighbourMixing(
      cols_NxD=jnp.stack([jnp.arange(n), partner_N], axis=1).astype(jnp.int32),
      weight_NxD=jnp.stack([1.0 - weight, weight], axis=1).astype(jnp.float32))


def make(problem, config: Config, engine=None) -> algorithms.Algorithm:
  trainer = engine_lib.LocalTrainer(problem, engine)
  speed_N = jnp.asarray(problem.profile.speed_N, jnp.float32)
  bandwidth_N = jnp.asarray(problem.profile.bandwidth_N, jnp.float32)
  m = problem.model_bytes

  def cycle(state: rounds.State, data):
    up_N, _, k_pairs = rounds.draws(problem, state)
    budgets_N = jnp.where(up_N, jnp.maximum(jnp.floor(speed_N * config.t_local * (1 + 1e-6)),
                                            1), 0).astype(jnp.int32)
    pairs = random_pairs(k_pairs, up_N)
    devices, loss_N, synced_N = engine_lib.train_and_mix(
        trainer, state.devices, data, budgets_N, lambda _: pairs,
        opt_state_rule=config.opt_state)
    partner_N = pairs.cols_NxD[:, 1]
    link_N = jnp.minimum(bandwidth_N, bandwidth_N[partner_N])
    t_exchange = jnp.max(jnp.where(synced_N, m / link_N + problem.profile.latency, 0.0))
    cycle_time = config.t_local + t_exchange
    return (state.replace(devices=devices, cycle=state.cycle + 1),
            algorithms.base.CycleInfo.make(cycle_time, jnp.where(synced_N, m, 0.0), budgets_N,
                                           loss_N, up_N, synced_N))

  return rounds.decentralized('pairwise_gossip', problem, cycle)


algorithms.register('pairwise_gossip', sys.modules[__name__])


# --- a selection rule, a model, a loss, a partitioner -------------------------------------


@selection.RULES.register('fewest_examples')
def fewest_examples(x: selection.SelectionInputs) -> jax.Array:
  return 1.0 / jnp.maximum(x.num_examples_N, 1.0)


models.MODELS.register('tiny_mlp', lambda num_classes: models.MLP(hidden=(16,),
                                                                  num_classes=num_classes))


@task.LOSSES.register('smoothed_cross_entropy')
def smoothed_cross_entropy(logits_BxC, labels_B):
  targets = optax.smooth_labels(jax.nn.one_hot(labels_B, logits_BxC.shape[-1]), 0.1)
  return optax.softmax_cross_entropy(logits_BxC, targets)


@data.PARTITIONS.register('round_robin')
def round_robin(labels, num_devices, rng, **_):
  del rng  # Deterministic.
  return np.arange(labels.shape[0]) % num_devices
