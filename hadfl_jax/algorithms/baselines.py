"""The baselines HADFL is measured against, on the same clock, data, model and evaluation.

``HADFL.md``, "Baselines". Every baseline reuses the engine's pieces: per-device
gradients and steps (:func:`hadfl_jax.core.local.make_device_grad`,
:func:`~hadfl_jax.core.local.make_device_step`), the vmapped masked local loop
(:func:`~hadfl_jax.core.local.masked_local_train`), sparse mixing
(:mod:`hadfl_jax.core.mixing`), faults and the clock (:mod:`hadfl_jax.core.clock`).

* :class:`Ddp`, synchronous data-parallel SGD ("PyTorch distributed"): every step all
  up devices compute one minibatch gradient on their own shard, wait for the slowest
  (max_i 1/s_i), ring all-reduce the gradients over the N devices (weights n_i, so the
  update is the gradient of the global objective, as DDP over the union of the data),
  and apply one identical update. ``ddp_steps`` steps run per jitted cycle; the clock
  adds every step.
* :class:`DFedAvg`, decentralized FedAvg (the paper's baseline): all devices run the
  same H local steps, wait for the slowest (H / min_i s_i), then all-reduce their models
  over all N with weights n_i (ring all-reduce, no server).
* :class:`FedAvg` (McMahan et al. 2017, "Communication-Efficient Learning of Deep
  Networks from Decentralized Data", AISTATS): K = max(1, round(C N)) clients drawn
  uniformly among the up devices start from the server's model, run H local steps, and
  the server averages them with weights n_j. The server's link carries 2 K M bytes per
  round (K downloads, K uploads): t_comm = 2 K M / b_server + 2 l.
* :class:`DPsgd` (Lian et al. 2017, "Can Decentralized Algorithms Outperform
  Centralized Algorithms?", NeurIPS): every H local steps, each device averages with its
  neighbours on a fixed graph (:mod:`hadfl_jax.algorithms.graphs`) with
  Metropolis-Hastings weights, after a global barrier (H / min_i s_i). Each device sends
  its model to each neighbour: t_gossip = max_i d_i M / b_i + l, d_i M bytes per device.

Common rules (documented choices):

* Faults: a device is down in a cycle with probability ``p_drop`` (or by the trace), as
  in HADFL. A down device does no steps; aggregations run over the up devices (D-PSGD:
  MH weights of the subgraph of up devices). A down device resumes from its own model
  (DDP: from the common model).
* Speed jitter: true speeds s_i exp(sigma z_i) per cycle, as in HADFL; the barrier waits
  for the slowest true speed.
* Optimizer state (``opt_state``): ``average`` mixes optimizer states with the same
  weights as the models (the default, as HADFL's), ``keep`` keeps each device's own,
  ``reset`` starts a fresh one after every aggregation. Bytes count the models only, as
  HADFL's clock does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from hadfl_jax import data as data_lib
from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import graphs
from hadfl_jax.core import clock
from hadfl_jax.core import faults
from hadfl_jax.core import local
from hadfl_jax.core import mixing
from hadfl_jax.core import selection

OPT_STATE_KINDS = ('average', 'keep', 'reset')
BASELINES = ('ddp', 'dfedavg', 'fedavg', 'dpsgd')


@dataclasses.dataclass(frozen=True)
class BaselineOptions:
  """The baselines' options (``config.baselines``, ``config.faults``, ``config.profile``).

  Attributes:
    local_steps: H, local steps per round (dfedavg, fedavg, dpsgd).
    ddp_steps: synchronous steps per jitted cycle (ddp); only the logging and
      evaluation granularity depend on it, not the training.
    fedavg_fraction: C, the fraction of clients per FedAvg round.
    graph: the D-PSGD graph, one of :data:`graphs.GRAPH_KINDS`.
    opt_state: what an aggregation does to optimizer states (see the module docstring).
    p_drop: probability that a device is down in a cycle.
    down_trace: (device, first_cycle, end_cycle) rows of forced downtime.
    jitter_sigma: per-cycle speed jitter.
  """

  local_steps: int = 10
  ddp_steps: int = 10
  fedavg_fraction: float = 0.5
  graph: str = 'ring'
  opt_state: str = 'average'
  p_drop: float = 0.0
  down_trace: tuple[tuple[int, int, int], ...] = ()
  jitter_sigma: float = 0.0

  @classmethod
  def from_config(cls, config) -> 'BaselineOptions':
    b = config.get('baselines', {})
    d = cls()
    return cls(
        local_steps=int(b.get('local_steps', d.local_steps)),
        ddp_steps=int(b.get('ddp_steps', d.ddp_steps)),
        fedavg_fraction=float(b.get('fedavg_fraction', d.fedavg_fraction)),
        graph=b.get('graph', d.graph),
        opt_state=b.get('opt_state', d.opt_state),
        p_drop=config.faults.p_drop,
        down_trace=tuple(tuple(int(v) for v in row) for row in config.faults.down_trace),
        jitter_sigma=config.profile.jitter_sigma,
    )


@flax.struct.dataclass
class BaselineState:
  """State of a decentralized baseline (and FedAvg's clients).

  Attributes:
    devices: stacked device states.
    cycle: index of the next round.
    key: raw PRNG key of the coordinator (faults, jitter, client sampling).
    server: FedAvg's server model and optimizer state ``(params, opt_state)``; ``()``
      for the others.
  """

  devices: local.DeviceState
  cycle: jax.Array
  key: jax.Array
  server: Any = ()


@flax.struct.dataclass
class DdpState:
  """State of synchronous data-parallel SGD: one model, per-device data streams.

  Attributes:
    params: the common model (no device axis).
    opt_state: the common optimizer state.
    key_N: raw PRNG keys of the devices' minibatch streams, (N, 2).
    steps_N: int32 (N,), gradients each device has computed.
    cycle: index of the next cycle.
    key: raw PRNG key of the coordinator.
  """

  params: Any
  opt_state: Any
  key_N: jax.Array
  steps_N: jax.Array
  cycle: jax.Array
  key: jax.Array


class _Baseline:
  """What the baselines share: the problem, faults, true speeds, consensus."""

  name = 'baseline'

  def __init__(self, problem: base.Problem, options: BaselineOptions):
    if options.opt_state not in OPT_STATE_KINDS:
      raise ValueError(f'baselines.opt_state must be one of {OPT_STATE_KINDS}, '
                       f'got {options.opt_state!r}')
    if options.local_steps < 1 or options.ddp_steps < 1:
      raise ValueError(f'baselines.local_steps and ddp_steps must be >= 1, got {options}')
    self.problem = problem
    self.options = options
    self.num_devices = problem.num_devices
    self._trace = faults.parse_down_trace(options.down_trace, self.num_devices)
    self._speed_N = jnp.asarray(problem.profile.speed_N, jnp.float32)
    self._bandwidth_N = jnp.asarray(problem.profile.bandwidth_N, jnp.float32)
    self._n_N = jnp.asarray(problem.num_examples_N, jnp.float32)
    self._device_step = local.make_device_step(
        problem.model.apply, problem.optimizer, problem.batch_size)

  def init(self, key: jax.Array) -> BaselineState:
    device_key, coord_key = jax.random.split(key)
    return BaselineState(
        devices=local.init_devices(device_key, self.problem.init_params,
                                   self.problem.optimizer, self.num_devices),
        cycle=jnp.zeros((), jnp.int32),
        key=coord_key,
    )

  def device_params(self, state) -> Any:
    return state.devices.params

  def consensus_params(self, state) -> Any:
    return base.weighted_average(state.devices.params, self.problem.data_weights_N)

  def _draws(self, state):
    """This round's up mask, true speeds and a key for the algorithm's own draws."""
    k_fault, k_jitter, k_own = jax.random.split(jax.random.fold_in(state.key, state.cycle), 3)
    up_N = faults.up_mask(k_fault, state.cycle, self.num_devices, self.options.p_drop,
                          self._trace)
    speed_N = self._speed_N
    if self.options.jitter_sigma > 0:
      speed_N = speed_N * jnp.exp(
          self.options.jitter_sigma * jax.random.normal(k_jitter, (self.num_devices,)))
    return up_N, speed_N, k_own

  def _barrier(self, budgets_N, speed_N, member_N):
    """The slowest member's compute time (0 if there is no member)."""
    return jnp.max(jnp.where(member_N, clock.compute_time(budgets_N, speed_N), 0.0))

  def _min_bandwidth(self, member_N):
    return jnp.min(jnp.where(member_N, self._bandwidth_N, jnp.inf))

  def _after_mix(self, mixed_opt, own_opt, params, synced_N):
    """Optimizer states after an aggregation, per ``opt_state``."""
    if self.options.opt_state == 'average':
      return mixed_opt
    if self.options.opt_state == 'keep':
      return own_opt
    fresh = jax.vmap(self.problem.optimizer.init)(params)
    return local.select_tree(synced_N, fresh, own_opt)

  def _info(self, cycle_time, bytes_N, budgets_N, loss_N, up_N, synced_N, server_bytes=0.0):
    return base.CycleInfo(
        cycle_time=jnp.asarray(cycle_time, jnp.float32),
        bytes_sent_N=jnp.asarray(bytes_N, jnp.float32),
        server_bytes=jnp.asarray(server_bytes, jnp.float32),
        budgets_N=budgets_N.astype(jnp.int32),
        train_loss_N=loss_N,
        up_N=up_N,
        synced_N=synced_N,
    )


class DFedAvg(_Baseline):
  """Decentralized FedAvg: equal H, barrier, all-reduce of the models over all N."""

  name = 'dfedavg'

  def cycle(self, state: BaselineState, data: data_lib.DeviceData):
    n = self.num_devices
    h = self.options.local_steps
    up_N, speed_N, _ = self._draws(state)
    budgets_N = jnp.where(up_N, h, 0).astype(jnp.int32)
    devices, loss_N = local.masked_local_train(self._device_step, state.devices, data,
                                               budgets_N)
    idx_K = jnp.where(up_N, jnp.arange(n), n).astype(jnp.int32)
    group = mixing.GroupMixing(
        idx_K=idx_K,
        weight_K=mixing.group_weights('data', idx_K=idx_K, valid_K=up_N,
                                      num_examples_N=self._n_N, budgets_N=budgets_N,
                                      version_N=devices.version),
        valid_K=up_N,
    )
    synced_N = up_N & group.active
    params = mixing.apply_group(group, devices.params)
    devices = devices.replace(
        params=params,
        opt_state=self._after_mix(mixing.apply_group(group, devices.opt_state),
                                  devices.opt_state, params, synced_N),
        version=mixing.apply_group(group, devices.version),
    )
    num_up = jnp.sum(synced_N)
    t_sync = clock.ring_allreduce_time(num_up, self.problem.model_bytes,
                                       self._min_bandwidth(synced_N),
                                       self.problem.profile.latency)
    cycle_time = self._barrier(budgets_N, speed_N, up_N) + t_sync
    bytes_N = jnp.where(synced_N, clock.ring_allreduce_bytes_per_peer(
        num_up, self.problem.model_bytes), 0.0)
    return (state.replace(devices=devices, cycle=state.cycle + 1),
            self._info(cycle_time, bytes_N, budgets_N, loss_N, up_N, synced_N))


class FedAvg(_Baseline):
  """Server FedAvg with partial participation (K of N clients per round)."""

  name = 'fedavg'

  def __init__(self, problem: base.Problem, options: BaselineOptions):
    super().__init__(problem, options)
    if not 0 < options.fedavg_fraction <= 1:
      raise ValueError(f'baselines.fedavg_fraction must be in (0, 1], '
                       f'got {options.fedavg_fraction}')
    self.k = max(1, int(round(options.fedavg_fraction * self.num_devices)))

  def init(self, key: jax.Array) -> BaselineState:
    state = super().init(key)
    params = self.problem.init_params
    return state.replace(server=(jax.tree.map(jnp.array, params),
                                 self.problem.optimizer.init(params)))

  def consensus_params(self, state: BaselineState) -> Any:
    return state.server[0]

  def cycle(self, state: BaselineState, data: data_lib.DeviceData):
    n = self.num_devices
    h = self.options.local_steps
    up_N, speed_N, k_select = self._draws(state)
    # K clients, uniformly among the up devices (Gumbel top-k of equal scores).
    score_N = jnp.where(up_N, jax.random.gumbel(k_select, (n,)), -jnp.inf)
    score_K, idx_K = jax.lax.top_k(score_N, self.k)
    valid_K = jnp.isfinite(score_K)
    idx_K = jnp.where(valid_K, idx_K, n).astype(jnp.int32)
    chosen_N = selection.membership(idx_K, valid_K, n)
    server_params, server_opt = state.server
    bcast = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)
    if self.options.opt_state == 'reset':
      server_opt = self.problem.optimizer.init(server_params)
    devices = state.devices
    start_opt = bcast(server_opt) if self.options.opt_state != 'keep' else devices.opt_state
    devices = devices.replace(
        params=local.select_tree(chosen_N, bcast(server_params), devices.params),
        opt_state=local.select_tree(chosen_N, start_opt, devices.opt_state),
    )
    budgets_N = jnp.where(chosen_N, h, 0).astype(jnp.int32)
    devices, loss_N = local.masked_local_train(self._device_step, devices, data, budgets_N)
    weight_K = mixing.group_weights('data', idx_K=idx_K, valid_K=valid_K,
                                    num_examples_N=self._n_N, budgets_N=budgets_N,
                                    version_N=devices.version)
    any_chosen = jnp.any(valid_K)

    def server_avg(tree_N, old):
      x_K = jax.tree.map(lambda x: x[jnp.minimum(idx_K, n - 1)], tree_N)
      avg = jax.tree.map(
          lambda x, o: jnp.where(any_chosen, mixing._cast_like(  # pylint: disable=protected-access
              mixing._weighted_sum(weight_K, valid_K, x), o), o),  # pylint: disable=protected-access
          x_K, old)
      return avg

    new_server = (server_avg(devices.params, server_params),
                  server_avg(devices.opt_state, server_opt))
    k_eff = jnp.sum(valid_K).astype(jnp.float32)
    m = self.problem.model_bytes
    b_server = jnp.min(self._bandwidth_N)
    t_comm = jnp.where(k_eff > 0, 2.0 * k_eff * m / b_server + 2.0 * self.problem.profile.latency,
                       0.0)
    cycle_time = self._barrier(budgets_N, speed_N, chosen_N) + t_comm
    bytes_N = jnp.where(chosen_N, m, 0.0)
    return (state.replace(devices=devices, cycle=state.cycle + 1, server=new_server),
            self._info(cycle_time, bytes_N, budgets_N, loss_N, up_N, chosen_N,
                       server_bytes=2.0 * k_eff * m))


class DPsgd(_Baseline):
  """D-PSGD: H local steps, barrier, Metropolis-Hastings gossip on a fixed graph."""

  name = 'dpsgd'

  def __init__(self, problem: base.Problem, options: BaselineOptions):
    super().__init__(problem, options)
    self.graph = graphs.make_graph(options.graph, self.num_devices)

  def cycle(self, state: BaselineState, data: data_lib.DeviceData):
    h = self.options.local_steps
    up_N, speed_N, _ = self._draws(state)
    budgets_N = jnp.where(up_N, h, 0).astype(jnp.int32)
    devices, loss_N = local.masked_local_train(self._device_step, state.devices, data,
                                               budgets_N)
    mix = graphs.mh_mixing(self.graph, up_N)
    deg_N = jnp.sum((mix.weight_NxD[:, 1:] > 0), axis=1).astype(jnp.float32)
    synced_N = deg_N > 0
    params = mixing.apply_neighbours(mix, devices.params)
    devices = devices.replace(
        params=params,
        opt_state=self._after_mix(mixing.apply_neighbours(mix, devices.opt_state),
                                  devices.opt_state, params, synced_N),
        version=mixing.apply_neighbours(mix, devices.version),
    )
    m = self.problem.model_bytes
    t_gossip = jnp.where(jnp.any(synced_N),
                         jnp.max(deg_N * m / self._bandwidth_N) + self.problem.profile.latency,
                         0.0)
    cycle_time = self._barrier(budgets_N, speed_N, up_N) + t_gossip
    return (state.replace(devices=devices, cycle=state.cycle + 1),
            self._info(cycle_time, deg_N * m, budgets_N, loss_N, up_N, synced_N))


class Ddp(_Baseline):
  """Synchronous data-parallel SGD: one identical update per step from all gradients."""

  name = 'ddp'

  def __init__(self, problem: base.Problem, options: BaselineOptions):
    super().__init__(problem, options)
    self._device_grad = local.make_device_grad(problem.model.apply, problem.batch_size)

  def init(self, key: jax.Array) -> DdpState:
    device_key, coord_key = jax.random.split(key)
    params = jax.tree.map(jnp.array, self.problem.init_params)
    return DdpState(
        params=params,
        opt_state=self.problem.optimizer.init(params),
        key_N=jax.random.split(device_key, self.num_devices),
        steps_N=jnp.zeros((self.num_devices,), jnp.int32),
        cycle=jnp.zeros((), jnp.int32),
        key=coord_key,
    )

  def device_params(self, state: DdpState) -> Any:
    n = self.num_devices
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), state.params)

  def consensus_params(self, state: DdpState) -> Any:
    return state.params

  def cycle(self, state: DdpState, data: data_lib.DeviceData):
    n = self.num_devices
    num_steps = self.options.ddp_steps
    up_N, speed_N, _ = self._draws(state)
    w_N = jnp.where(up_N, self._n_N, 0.0)
    w_N = w_N / jnp.maximum(jnp.sum(w_N), 1e-30)
    any_up = jnp.any(up_N)
    grad_N = jax.vmap(self._device_grad, in_axes=(None, 0, 0, 0, 0, 0))

    def step(carry, _):
      params, opt_state, steps_N = carry
      loss_N, grads_N = grad_N(params, state.key_N, steps_N, data.images, data.labels,
                               data.counts)
      grads = base.weighted_average(grads_N, w_N)
      updates, new_opt = self.problem.optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(any_up, a, b), new, old)
      return (keep(new_params, params), keep(new_opt, opt_state),
              steps_N + up_N.astype(jnp.int32)), loss_N

    (params, opt_state, steps_N), loss_TxN = jax.lax.scan(
        step, (state.params, state.opt_state, state.steps_N), None, length=num_steps)
    num_up = jnp.sum(up_N)
    t_step = (jnp.max(jnp.where(up_N, 1.0 / speed_N, 0.0))
              + clock.ring_allreduce_time(num_up, self.problem.model_bytes,
                                          self._min_bandwidth(up_N),
                                          self.problem.profile.latency))
    budgets_N = jnp.where(up_N, num_steps, 0).astype(jnp.int32)
    bytes_N = jnp.where(up_N, num_steps * clock.ring_allreduce_bytes_per_peer(
        num_up, self.problem.model_bytes), 0.0)
    loss_N = jnp.where(up_N, jnp.mean(loss_TxN, axis=0), 0.0)
    new_state = state.replace(params=params, opt_state=opt_state, steps_N=steps_N,
                              cycle=state.cycle + 1)
    return new_state, self._info(num_steps * t_step, bytes_N, budgets_N, loss_N, up_N,
                                 up_N & (num_up >= 2))


def make_baseline(name: str, problem: base.Problem, options: BaselineOptions):
  """The baseline called ``name`` (one of :data:`BASELINES`)."""
  classes = {'ddp': Ddp, 'dfedavg': DFedAvg, 'fedavg': FedAvg, 'dpsgd': DPsgd}
  if name not in classes:
    raise ValueError(f'baseline must be one of {BASELINES}, got {name!r}')
  return classes[name](problem, options)
