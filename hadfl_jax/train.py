"""The run loop: build the problem, run cycles, evaluate, log, summarise.

``train_and_evaluate(config, workdir)`` is what ``hadfl_jax.main`` calls and what
notebooks import. The loop in Python runs over cycles only; each cycle is one jitted
call of the algorithm's pure ``cycle`` function. Simulated time and communicated bytes
are added up on the host in float64 (:class:`Ledger`).

A run writes into ``workdir``:

* ``config.json``: the resolved config;
* ``metrics.jsonl``: one JSON object per evaluation;
* ``summary.json``: the final figures, including the time to the target accuracy;
* ``tensorboard/``: the rows of ``metrics.jsonl`` as TensorBoard scalars
  (:mod:`hadfl_jax.tensorboard`; ``tensorboard --logdir WORKDIR``);
* ``partition.json`` (who holds which labels) and ``timing.json`` (wall and CPU time);
* ``checkpoints/``: every ``checkpoint_every`` cycles, the whole simulation state
  (:mod:`hadfl_jax.checkpoint`). Re-running the same command resumes from the latest
  one and writes the same ``metrics.jsonl`` and ``summary.json`` as a run never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hadfl_jax import algorithms
from hadfl_jax import checkpoint
from hadfl_jax import data as data_lib
from hadfl_jax import evaluation
from hadfl_jax import models as models_lib
from hadfl_jax import optim
from hadfl_jax import sharding
from hadfl_jax import tensorboard
from hadfl_jax import validation
from hadfl_jax import workdir as workdir_lib
from hadfl_jax.algorithms import base
from hadfl_jax.core import autotune
from hadfl_jax.core import engine as engine_core
from hadfl_jax.core import profiles
from hadfl_jax.core import task as task_lib

PyTree = Any


class DivergenceError(RuntimeError):
  """Training produced a loss or parameter that is not finite."""


class GaveUp(RuntimeError):
  """A run stopped by its ``give_up`` rule (:func:`run`), e.g. a comparison's grid point
  whose model collapsed (:func:`hadfl_jax.comparison.runs.collapse_rule`)."""


@dataclasses.dataclass
class Setup:
  """Everything a run needs besides the algorithm's state."""

  problem: base.Problem
  device_data: data_lib.DeviceData
  test: data_lib.Split
  partition_report: dict
  # Implementation choices of this machine (autotune; recorded in timing.json).
  implementation: dict = dataclasses.field(default_factory=dict)


def build_setup(config: ml_collections.ConfigDict) -> Setup:
  """Loads and partitions the data, builds the model, optimizer and device profile.

  Raises:
    data.DatasetError: the dataset cannot be read (unknown, missing, corrupt or
      truncated files), naming the file.
    validation.ConfigError: the config asks for more than the dataset holds (e.g. more
      devices than examples).
  """
  ds = config.dataset
  train = data_lib.load_split(ds.name, ds.train_split, data_dir=ds.data_dir, idx_dir=ds.idx_dir)
  test = data_lib.load_split(ds.name, ds.test_split, data_dir=ds.data_dir, idx_dir=ds.idx_dir)
  validation.validate_against_data(config, len(train.labels), train.num_classes)
  partition = validation.partition_config(config)
  parts = data_lib.partition(
      train.labels,
      config.num_devices,
      partition.kind,
      seed=config.seed,
      alpha=partition.alpha,
      classes_per_device=partition.classes_per_device,
      quantity_alpha=partition.quantity_alpha,
      min_examples=partition.min_examples,
  )
  report = data_lib.partition_report(train.labels, parts, train.num_classes)
  # Batches are drawn with replacement from a device's own shard (docs/spec.md): a batch
  # larger than a shard repeats examples. Allowed (many devices with tiny shards), but said
  # and recorded in partition.json.
  counts = np.asarray([len(p) for p in parts])
  small_N = counts < config.batch_size
  report['batch_size'] = config.batch_size
  report['devices_with_fewer_examples_than_a_batch'] = int(small_N.sum())
  if small_N.any():
    smallest = int(np.argmin(counts))
    print(f'warning: config.batch_size={config.batch_size} is larger than the shards of '
          f'{int(small_N.sum())} of {len(counts)} devices (device {smallest} holds only '
          f'{counts[smallest]} examples): their batches are drawn with replacement and '
          'repeat examples (recorded in partition.json)', flush=True)
  device_data = data_lib.DeviceData.from_partition(train.images, train.labels, parts)
  model = models_lib.get_model(config.model, train.num_classes)
  init_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
  input_shape = tuple(train.images.shape[1:])
  init_params = model.init(init_key, jnp.zeros((1,) + input_shape, jnp.float32))
  optimizer = optim.make_optimizer(validation.optimizer_config(config))
  task = task_lib.Task.from_loss(config.loss)
  # The convolution of local training, measured on this machine where the model has a
  # choice (engine.conv_impl; the parameters do not depend on it).
  engine = validation.engine_config(config)
  params = init_params['params']
  impl = autotune.training_conv_impl(
      model, params, optimizer, task, config.batch_size, input_shape,
      width=engine.loop_width(model.apply, params, optimizer.init(params), config.batch_size,
                              input_shape, config.num_devices),
      setting=engine.conv_impl)
  model = autotune.with_conv_impl(model, impl)
  problem = base.Problem(
      model=model,
      optimizer=optimizer,
      init_params=params,
      profile=profiles.make_profile(validation.profile_config(config), config.num_devices,
                                    config.seed),
      num_examples_N=np.asarray([len(p) for p in parts], np.int64),
      batch_size=config.batch_size,
      input_shape=input_shape,
      task=task,
      faults=validation.faults_config(config),
      bytes_per_param=validation.profile_config(config).bytes_per_param,
  )
  # The sub-buckets of the engine's loop (measured on CPU; the trainers make the same
  # cached choice): what ran how, recorded with the convolution.
  plan = engine_core.problem_sub_buckets(problem, engine, input_shape)
  implementation = {} if impl is None else {'training_conv': impl}
  implementation['sub_buckets'] = plan._asdict()
  return Setup(problem, device_data, test, report, implementation)


def implementation(setup: Setup, evaluator: evaluation.Evaluator) -> dict:
  """What ran how on this machine: the setup's choices and the evaluator's."""
  out = dict(setup.implementation)
  if evaluator.conv_impl is not None:
    out.update(inference_conv=evaluator.conv_impl, inference_batch=evaluator.batch_size)
  return out


def build_algorithm(config: ml_collections.ConfigDict,
                    problem: base.Problem) -> algorithms.Algorithm:
  """The algorithm ``config.algorithm`` with its section and the engine settings."""
  return algorithms.build(config.algorithm, problem, validation.algorithm_config(config),
                          validation.engine_config(config))


@dataclasses.dataclass
class Ledger:
  """Host-side float64 totals of the simulated clock and of communication."""

  num_devices: int
  sim_time: float = 0.0
  server_bytes: float = 0.0
  cycles: int = 0
  bytes_sent_N: np.ndarray = None  # type: ignore[assignment]
  steps_N: np.ndarray = None  # type: ignore[assignment]

  def __post_init__(self):
    if self.bytes_sent_N is None:
      self.bytes_sent_N = np.zeros(self.num_devices, np.float64)
    if self.steps_N is None:
      self.steps_N = np.zeros(self.num_devices, np.int64)

  def state_dict(self) -> dict[str, Any]:
    """The ledger as JSON values (exact: float64 totals round-trip through JSON)."""
    return {
        'num_devices': self.num_devices,
        'sim_time': self.sim_time,
        'server_bytes': self.server_bytes,
        'cycles': self.cycles,
        'bytes_sent_N': self.bytes_sent_N.tolist(),
        'steps_N': self.steps_N.tolist(),
    }

  @classmethod
  def from_state_dict(cls, d: dict[str, Any]) -> 'Ledger':
    return cls(
        num_devices=d['num_devices'],
        sim_time=d['sim_time'],
        server_bytes=d['server_bytes'],
        cycles=d['cycles'],
        bytes_sent_N=np.asarray(d['bytes_sent_N'], np.float64),
        steps_N=np.asarray(d['steps_N'], np.int64),
    )

  def add(self, info: base.CycleInfo) -> None:
    self.sim_time += float(info.cycle_time)
    self.server_bytes += float(info.server_bytes)
    self.bytes_sent_N += np.asarray(info.bytes_sent_N, np.float64)
    self.steps_N += np.asarray(info.budgets_N, np.int64)
    self.cycles += 1

  @property
  def busiest_link_bytes(self) -> float:
    return float(max(self.bytes_sent_N.max(initial=0.0), self.server_bytes))

  def totals(self) -> dict[str, float]:
    return {
        'sim_time_s': self.sim_time,
        'bytes_sent': float(self.bytes_sent_N.sum() + self.server_bytes),
        'bytes_sent_per_device': float(self.bytes_sent_N.mean()),
        'busiest_link_bytes': self.busiest_link_bytes,
        'local_steps': int(self.steps_N.sum()),
    }


@flax.struct.dataclass
class Finiteness:
  """Whether a cycle's resulting state is finite (:func:`with_finiteness`).

  Attributes:
    params_N: bool (N,), device i's parameters are all finite.
    state: bool (), every floating-point leaf of the whole state is finite (optimizer
      and coordinator state included).
  """

  params_N: jax.Array
  state: jax.Array


def _inexact_leaves(tree: PyTree) -> list[jax.Array]:
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]


def finiteness(state: PyTree, params_N: PyTree) -> Finiteness:
  """Per-device and whole-state finiteness: a few fused reductions, traceable."""
  leaves = _inexact_leaves(params_N)
  n = leaves[0].shape[0]
  params_finite_N = jnp.stack(
      [jnp.all(jnp.isfinite(x.reshape(n, -1)), axis=1) for x in leaves]).all(axis=0)
  state_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in _inexact_leaves(state)]))
  return Finiteness(params_N=params_finite_N, state=state_finite)


def with_finiteness(algorithm: base.Algorithm) -> Callable:
  """``algorithm.cycle`` that also returns the :class:`Finiteness` of the new state.

  The check runs inside the jitted cycle, so the host reads N booleans per cycle, not
  the parameters.
  """

  def cycle(state, data):
    state, info = algorithm.cycle(state, data)
    return state, (info, finiteness(state, algorithm.device_params(state)))

  return cycle


def _devices(bad: np.ndarray) -> str:
  return f'{bad.tolist()[:20]}{" ..." if bad.size > 20 else ""}'


def check_finite(info: base.CycleInfo, cycle: int, finite: Finiteness | None = None) -> None:
  """Raises :class:`DivergenceError` if a cycle made a loss or the state non-finite.

  Args:
    info: the cycle's report (host values).
    cycle: the 0-based index of the cycle; messages name it 1-based, as the ``cycle``
      field of ``metrics.jsonl`` does (cycle k: the k-th cycle, after which k are done).
    finite: the state's :class:`Finiteness` after the cycle (host values), if known.

  Raises:
    DivergenceError: naming the cycle and the devices whose training loss or
      parameters are not finite.
  """
  hint = '(lower optimizer.learning_rate?)'
  loss_N = np.asarray(info.train_loss_N)
  bad = np.flatnonzero(~np.isfinite(loss_N) & (np.asarray(info.budgets_N) > 0))
  if bad.size:
    raise DivergenceError(
        f'cycle {cycle + 1}: training loss is not finite on devices {_devices(bad)} {hint}')
  if finite is None:
    return
  bad = np.flatnonzero(~np.asarray(finite.params_N))
  if bad.size:
    raise DivergenceError(
        f'cycle {cycle + 1}: parameters are not finite on devices {_devices(bad)} {hint}')
  if not bool(finite.state):
    raise DivergenceError(
        f'cycle {cycle + 1}: the optimizer or coordinator state is not finite {hint}')


def evaluate(evaluator: evaluation.Evaluator, algorithm, state) -> dict[str, float]:
  # With several processes the device accuracies are sharded like the devices: gathered.
  consensus = evaluator.model(algorithm.consensus_params(state))
  device_acc_N = sharding.to_host(evaluator.devices(algorithm.device_params(state)))
  return {
      'consensus_accuracy': float(sharding.to_host(consensus.accuracy)),
      'loss': float(sharding.to_host(consensus.loss)),
      'mean_device_accuracy': float(device_acc_N.mean()),
      'min_device_accuracy': float(device_acc_N.min()),
  }


def refine_time_to_target(evaluator: evaluation.Evaluator,
                          snapshots: Sequence[tuple[int, float, PyTree]],
                          target_accuracy: float) -> list[dict]:
  """Evaluates the consensus models of ``snapshots`` (``(cycle, sim_time_s, params)``,
  in cycle order) until the first that reaches ``target_accuracy``; returns their rows."""
  rows = []
  for cycle, sim_time, params in snapshots:
    result = evaluator.model(params)
    rows.append({'cycle': cycle, 'sim_time_s': sim_time,
                 'consensus_accuracy': float(sharding.to_host(result.accuracy)),
                 'loss': float(sharding.to_host(result.loss))})
    if rows[-1]['consensus_accuracy'] >= target_accuracy:
      break
  return rows


def _write_rows(path: str, rows: list[dict]) -> None:
  """Writes ``metrics.jsonl`` atomically: one JSON object per line."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in rows)
  os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def write_summaries(writer: tensorboard.SummaryWriter | None, row: dict) -> None:
  """One evaluation row as TensorBoard scalars: every field against the cycle, and the
  accuracy and loss against simulated time (in milliseconds, TensorBoard's steps being
  integers) under ``vs_sim_ms/``."""
  if writer is None:
    return
  values = {k: v for k, v in row.items() if k != 'cycle' and isinstance(v, (int, float))}
  writer.scalars(row['cycle'], values)
  writer.scalars(round(row['sim_time_s'] * 1000), {
      f'vs_sim_ms/{k}': row[k] for k in ('consensus_accuracy', 'loss')})


def format_summary(summary: dict, wall_time_s: float | None = None) -> str:
  """A short table of a run's final figures."""
  tta = summary['time_to_target_s']
  rows = [
      ('algorithm', summary['algorithm']),
      ('cycles', summary['cycles']),
      ('final consensus accuracy', f'{summary["final_consensus_accuracy"]:.4f}'),
      ('best consensus accuracy', f'{summary["best_consensus_accuracy"]:.4f}'),
      (f'time to {summary["target_accuracy"]:.0%} (sim s)', 'not reached' if tta is None else f'{tta:.2f}'),
      ('simulated time (s)', f'{summary["sim_time_s"]:.2f}'),
      ('bytes sent per device (MB)', f'{summary["bytes_sent_per_device"] / 1e6:.1f}'),
      ('busiest link (MB)', f'{summary["busiest_link_bytes"] / 1e6:.1f}'),
  ]
  if wall_time_s is not None:
    rows.append(('wall time (s)', f'{wall_time_s:.1f}'))
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


class EvalSchedule:
  """When to evaluate: every ``every`` cycles, or on a simulated-time schedule.

  With ``interval_s > 0`` the consensus model is evaluated after the first cycle that
  passes the next evaluation point, and the next point is
  ``max(t + interval_s, t * (1 + growth))``: algorithms with different cycle lengths are
  then evaluated at comparable simulated times (what a fair time-to-accuracy comparison
  needs, see :mod:`hadfl_jax.compare`). The last cycle, and a cycle that runs out of
  simulated time, are always evaluated. The schedule depends only on the evaluations so
  far, so a resumed run continues it exactly.
  """

  def __init__(self, every: int = 1, interval_s: float = 0.0, growth: float = 0.0,
               history: list[dict] | None = None):
    self._every = every
    self._interval = float(interval_s)
    self._growth = float(growth)
    self._next = self._interval
    if history:
      self.evaluated(history[-1]['sim_time_s'])

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  history: list[dict] | None = None) -> 'EvalSchedule':
    return cls(config.eval_every, config.get('eval_interval_s', 0.0),
               config.get('eval_growth', 0.0), history)

  def due(self, cycles_done: int, sim_time: float) -> bool:
    if self._interval > 0:
      return sim_time >= self._next
    return cycles_done % self._every == 0

  def evaluated(self, sim_time: float) -> None:
    self._next = max(sim_time + self._interval, sim_time * (1.0 + self._growth))


@dataclasses.dataclass
class Progress:
  """The host-side record of a run so far (checkpointed as JSON beside the state).

  Attributes:
    ledger: the float64 clock and byte totals.
    history: the evaluation rows (what ``metrics.jsonl`` holds).
    time_to_target_s: simulated seconds at the first evaluation at or above the target
      (with ``refine_target``, at the first cycle whose consensus model reaches it, see
      :func:`run`).
    cycle_at_target: the cycle of that evaluation.
    refinement: with ``refine_target``, the consensus evaluations of the cycles between
      the last scheduled evaluation below the target and the first at or above it
      (``cycle``, ``sim_time_s``, ``consensus_accuracy``, ``loss``), in order, up to the
      first that reaches it.
    wall: where this process's wall time went (not checkpointed, not a result):
      ``cycles_s`` (the jitted cycles, with their first compilation), ``eval_s`` (the
      evaluations, with theirs) and ``evaluations``.
  """

  ledger: Ledger
  history: list[dict] = dataclasses.field(default_factory=list)
  time_to_target_s: float | None = None
  cycle_at_target: int | None = None
  refinement: list[dict] = dataclasses.field(default_factory=list)
  wall: dict[str, float] = dataclasses.field(
      default_factory=lambda: {'cycles_s': 0.0, 'eval_s': 0.0, 'evaluations': 0,
                               'refinement_evaluations': 0})

  def state_dict(self) -> dict[str, Any]:
    return {'ledger': self.ledger.state_dict(), 'history': list(self.history),
            'time_to_target_s': self.time_to_target_s, 'cycle_at_target': self.cycle_at_target,
            'refinement': list(self.refinement)}

  @classmethod
  def from_state_dict(cls, d: dict[str, Any]) -> 'Progress':
    return cls(Ledger.from_state_dict(d['ledger']), list(d['history']), d['time_to_target_s'],
               d['cycle_at_target'], list(d.get('refinement', ())))


def format_duration(seconds: float) -> str:
  """``'42s'``, ``'3m05s'`` or ``'2h07m'``."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


class TimeLeft:
  """Estimates the wall time left of a run from its progress towards its budget.

  The budget is ``num_cycles`` cycles or ``max_sim_time`` simulated seconds, whichever
  comes first; the estimate extrapolates the wall time per unit of progress made since
  the estimator was started (so a resumed run does not count the cycles it restored).
  A run stopped at its target accuracy may end sooner: then the estimate is a bound.
  """

  def __init__(self, num_cycles: int, max_sim_time: float, ledger: Ledger,
               bound: bool = False):
    self._num_cycles, self._max_sim_time, self._ledger = num_cycles, max_sim_time, ledger
    self._bound = bound
    self._start_wall = time.perf_counter()
    self._start_fraction = self.fraction()

  def fraction(self) -> float:
    """How much of the budget is used, in [0, 1]."""
    done = self._ledger.cycles / max(1, self._num_cycles)
    if self._max_sim_time > 0:
      done = max(done, self._ledger.sim_time / self._max_sim_time)
    return min(1.0, done)

  def __str__(self) -> str:
    now = self.fraction()
    if now <= self._start_fraction:
      return 'eta ?'
    left = (time.perf_counter() - self._start_wall) * (1.0 - now) / (now - self._start_fraction)
    return f'eta {"<=" if self._bound else ""}{format_duration(left)}'


def _print_row(name: str, row: dict, time_left: TimeLeft) -> None:
  print(f'[{name}] cycle {row["cycle"]:5d}  sim {row["sim_time_s"]:9.2f}s  '
        f'acc {row["consensus_accuracy"]:.4f}  device mean/min '
        f'{row["mean_device_accuracy"]:.4f}/{row["min_device_accuracy"]:.4f}  '
        f'loss {row["loss"]:.4f}  {time_left}', flush=True)


def run(algorithm: base.Algorithm, state: PyTree, data, evaluator: evaluation.Evaluator, *,
        num_cycles: int, target_accuracy: float = 1.0, stop_at_target: bool = False,
        max_sim_time: float = 0.0, schedule: EvalSchedule | None = None,
        refine_target: bool = False, progress: Progress | None = None, mesh=None,
        on_row: Callable[[dict], None] | None = None,
        on_cycle_end: Callable[[int, PyTree, Progress, bool], None] | None = None,
        give_up: Callable[[list[dict]], str | None] | None = None,
        verbose: bool = True) -> tuple[PyTree, Progress]:
  """Runs any algorithm for up to ``num_cycles`` cycles, evaluating on a schedule.

  The open core of the run loop: any :class:`~hadfl_jax.algorithms.base.Algorithm`
  (a built-in or one's own), any state (fresh or restored), any evaluator. Each cycle is
  one call of the jitted ``algorithm.cycle`` (compiled once; with a ``mesh``, the device
  axis is sharded over it), its report is checked for divergence and added to the
  simulated clock.

  Args:
    algorithm: the algorithm.
    state: its state (``algorithm.init(key)``, or restored).
    data: the stacked device data.
    evaluator: evaluates the consensus and device models.
    num_cycles: the last cycle index to run to (cycles already in ``progress`` count).
    target_accuracy: the consensus accuracy whose first crossing is recorded.
    stop_at_target: stop once it is reached.
    max_sim_time: stop after this many simulated seconds (0: no limit).
    schedule: when to evaluate (default: after every cycle).
    refine_target: resolve the time to target to the cycle, at the cost of a few
      consensus-only evaluations once: the consensus model of every cycle after the last
      scheduled evaluation is kept (a copy, on the accelerator) until the next; when that
      evaluation is the first at or above the target, the kept models are evaluated in
      order and the first that reaches it gives ``time_to_target_s`` and
      ``cycle_at_target`` (``progress.refinement`` holds what was evaluated). The
      scheduled evaluations, and so the curves, are unchanged; the target's first crossing
      is looked for in that last interval only. Models kept before a checkpoint are not
      in it: a run resumed between two evaluations refines over the cycles since it
      resumed.
    progress: the record of the cycles done so far (default: none done).
    mesh: a ``jax.sharding.Mesh`` to shard the device axis over (default: no sharding).
    on_row: called with every evaluation row (e.g. to append it to a file).
    on_cycle_end: called as ``(cycles_done, state, progress, last)`` after every cycle
      and its evaluation (e.g. to checkpoint); ``last`` is True for the final cycle.
    give_up: called with the evaluation rows after each evaluation before the target is
      reached; a message (not None) stops the run with :class:`GaveUp`.
    verbose: print a line per evaluation, with an estimate of the wall time left.

  Returns:
    ``(state, progress)``: the final state and the whole record.

  Raises:
    DivergenceError: a loss, a parameter or the test loss that stops being finite,
      naming the cycle and the devices.
    GaveUp: ``give_up`` said so.
  """
  n = jax.tree.leaves(data)[0].shape[0]  # The device axis.
  progress = progress or Progress(Ledger(n))
  schedule = schedule or EvalSchedule(history=progress.history)
  ledger = progress.ledger
  if mesh is None:
    cycle_fn = jax.jit(with_finiteness(algorithm), donate_argnums=(0,))
  else:
    cycle_fn, state, data = sharding.shard_cycle(with_finiteness(algorithm), state, data, mesh, n)

  def stopped() -> bool:
    return (stop_at_target and progress.time_to_target_s is not None) or (
        0 < max_sim_time <= ledger.sim_time)

  time_left = TimeLeft(num_cycles, max_sim_time, ledger, bound=stop_at_target)
  cycle = ledger.cycles
  wall = progress.wall
  kept = []  # refine_target: (cycle, sim time, consensus params) since the last evaluation.
  while cycle < num_cycles and not stopped():
    start = time.perf_counter()
    state, (info, finite) = cycle_fn(state, data)
    info, finite = jax.device_get((info, finite))
    wall['cycles_s'] += time.perf_counter() - start
    check_finite(info, cycle, finite)
    ledger.add(info)
    cycle += 1
    last = cycle == num_cycles or 0 < max_sim_time <= ledger.sim_time
    due = schedule.due(cycle, ledger.sim_time) or last
    if refine_target and not due and progress.time_to_target_s is None:
      # A copy: the state's buffers are donated to the next cycle.
      kept.append((cycle, ledger.sim_time,
                   jax.tree.map(jnp.copy, algorithm.consensus_params(state))))
    if due:
      schedule.evaluated(ledger.sim_time)
      trained = info.budgets_N > 0
      start = time.perf_counter()
      evaluated = evaluate(evaluator, algorithm, state)
      wall['eval_s'] += time.perf_counter() - start
      wall['evaluations'] += 1
      row = {'cycle': cycle, **ledger.totals(), **evaluated,
             'train_loss': float(np.mean(info.train_loss_N[trained])) if np.any(trained)
                           else float('nan')}
      if not np.isfinite(row['loss']):
        raise DivergenceError(f'cycle {cycle}: consensus test loss is not finite')
      progress.history.append(row)
      if on_row is not None:
        on_row(row)
      if verbose:
        _print_row(algorithm.name, row, time_left)
      if progress.time_to_target_s is None and row['consensus_accuracy'] >= target_accuracy:
        progress.time_to_target_s, progress.cycle_at_target = row['sim_time_s'], row['cycle']
        if kept:
          start = time.perf_counter()
          progress.refinement = refine_time_to_target(evaluator, kept, target_accuracy)
          wall['eval_s'] += time.perf_counter() - start
          wall['refinement_evaluations'] += len(progress.refinement)
          first = progress.refinement[-1]
          if first['consensus_accuracy'] >= target_accuracy:
            progress.time_to_target_s, progress.cycle_at_target = (first['sim_time_s'],
                                                                   first['cycle'])
      kept.clear()
      reason = (give_up(progress.history)
                if give_up is not None and progress.time_to_target_s is None else None)
      if reason is not None:
        raise GaveUp(f'cycle {cycle}: {reason}')
    if on_cycle_end is not None:
      on_cycle_end(cycle, state, progress, last or stopped())
  return state, progress


def summarize(algorithm: base.Algorithm, problem: base.Problem, progress: Progress,
              target_accuracy: float) -> dict:
  """The final figures of a run (``summary.json``)."""
  history = progress.history
  final = history[-1]
  return {
      'algorithm': algorithm.name,
      'cycles': progress.ledger.cycles,
      'num_devices': problem.num_devices,
      'num_params': problem.num_params,
      'target_accuracy': target_accuracy,
      'time_to_target_s': progress.time_to_target_s,
      'cycle_at_target': progress.cycle_at_target,
      **({'target_refinement': progress.refinement} if progress.refinement else {}),
      'final_consensus_accuracy': final['consensus_accuracy'],
      'best_consensus_accuracy': max(r['consensus_accuracy'] for r in history),
      'final_mean_device_accuracy': final['mean_device_accuracy'],
      'final_min_device_accuracy': final['min_device_accuracy'],
      'final_loss': final['loss'],
      **progress.ledger.totals(),
  }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       setup: Setup | None = None,
                       evaluator: evaluation.Evaluator | None = None,
                       give_up: Callable[[list[dict]], str | None] | None = None,
                       verbose: bool = True) -> dict:
  """Runs one algorithm on one scenario and writes its metrics into ``workdir``.

  A thin adapter over :func:`run`: the config names the data, the model, the algorithm
  and the engine; this function builds them, resumes from the workdir's checkpoints and
  writes the run's files.

  Args:
    config: the run config (see ``configs/default.py``); validated before any work.
    workdir: output directory, created if needed.
    setup: the data, model and profile, when a caller shares them between runs (the
      comparison does); built from ``config`` otherwise. Its optimizer is rebuilt from
      ``config.optimizer`` either way.
    evaluator: a shared evaluator on ``setup.test``; built otherwise.
    give_up: a rule that stops the run early (:func:`run`; raises :class:`GaveUp`, the
      evaluation rows so far being in ``metrics.jsonl``).
    verbose: print a line per evaluation (with the time left) and the final summary;
      with False the run prints nothing but warnings.

  With ``config.checkpoint_every > 0`` the whole simulation state is saved every that
  many cycles and at the end (:mod:`hadfl_jax.checkpoint`); called again with the same
  config and workdir, the run resumes from the latest checkpoint, rewrites
  ``metrics.jsonl`` with the rows that checkpoint holds, and continues: the files come
  out as if the run had never stopped. Only the fields in
  :data:`checkpoint.RESUMABLE_FIELDS` (e.g. ``num_cycles``, to extend a run) may differ
  from the workdir's config.

  Returns:
    The summary, as written to ``summary.json``.

  Raises:
    validation.ConfigError: an invalid config field.
    checkpoint.ResumeError: the workdir holds a run of a different config.
    DivergenceError: a loss or a parameter that stops being finite (no checkpoint is
      taken of a non-finite state: the latest one stays the last good one).
    GaveUp: ``give_up`` stopped the run.
  """
  config = validation.resolve(config)
  sharding.initialize_distributed(validation.engine_config(config))
  # One run per workdir (process 0 holds the lock for all processes of a run).
  lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()
  try:
    checkpoints = checkpoint.open_workdir(config, workdir)
    try:
      with workdir_lib.PreemptionWatch() as preemption:
        return _run(config, workdir, checkpoints, setup, evaluator, preemption, verbose,
                    give_up)
    finally:
      if checkpoints is not None:
        checkpoints.close()  # Completes a save in flight: the last good state.
  finally:
    if lock is not None:
      lock.release()


class Preempted(RuntimeError):
  """The run was told to stop (SIGTERM, a preemption notice) and saved a checkpoint."""


def _run(config: ml_collections.ConfigDict, workdir: str,
         checkpoints: checkpoint.Checkpointer | None,
         setup: Setup | None = None,
         evaluator: evaluation.Evaluator | None = None,
         preemption: workdir_lib.PreemptionWatch | None = None,
         verbose: bool = True,
         give_up: Callable[[list[dict]], str | None] | None = None) -> dict:
  """The body of :func:`train_and_evaluate`, once the workdir is known to fit."""
  wall_start, cpu_start = time.perf_counter(), time.process_time()
  # Only process 0 writes the run's files; every process takes part in checkpoints.
  writer = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  summary_path = os.path.join(workdir, 'summary.json')
  if writer:
    _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    if os.path.exists(summary_path):
      os.remove(summary_path)  # Written again when this run ends.

  if setup is None:
    setup = build_setup(config)
  else:
    setup = dataclasses.replace(setup, problem=dataclasses.replace(
        setup.problem, optimizer=optim.make_optimizer(validation.optimizer_config(config))))
  if writer:
    _write_json(os.path.join(workdir, 'partition.json'), setup.partition_report)
  problem = setup.problem
  algorithm = build_algorithm(config, problem)
  if evaluator is None:
    evaluator = evaluation.Evaluator.for_model(
        problem.model, setup.test, config.eval_batch_size, config.device_eval_examples,
        task=problem.task, conv_impl=validation.engine_config(config).conv_impl)
  state = algorithm.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
  # The device axis sharded over the accelerators (a no-op mesh of one on a laptop).
  mesh = sharding.make_mesh(sharding.mesh_size(validation.engine_config(config)))
  logging.info('%s: %d devices, %d params, partition %s', algorithm.name,
               problem.num_devices, problem.num_params,
               setup.partition_report.get('summary'))

  progress = Progress(Ledger(problem.num_devices))
  resumed_from = None
  if checkpoints is not None and checkpoints.latest_step is not None:
    state = sharding.place(state, sharding.tree_shardings(state, problem.num_devices, mesh))
    current = checkpoint.run_identity(config)
    restored = checkpoints.restore_newest_good(state, check=lambda p: checkpoint.check_same_run(
        p['config'], current, workdir, f'a checkpoint in {checkpoints.directory}'))
    if restored is not None:
      _, state, saved = restored
      progress = Progress.from_state_dict(saved)
      resumed_from = progress.ledger.cycles
      if verbose:
          print(f'[{algorithm.name}] resuming after cycle {resumed_from} from '
              f'{checkpoints.directory}', flush=True)
  # metrics.jsonl holds exactly the rows of the state the run continues from.
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if writer:
    _write_rows(metrics_path, progress.history)
  save_every = config.checkpoint_every if checkpoints is not None else 0
  preempted_at = []

  def save(cycles_done: int, state, progress: Progress) -> None:
    nonlocal checkpoints
    if checkpoints is None:  # Preempted before any checkpoint was asked for.
      checkpoints = checkpoint.Checkpointer(workdir)
    checkpoints.save(cycles_done, state, {'config': checkpoint.run_identity(config),
                                          **progress.state_dict()})

  def on_cycle_end(cycles_done: int, state, progress: Progress, last: bool) -> None:
    # A preemption notice (SIGTERM) is acted on at the next cycle boundary: save, stop.
    stop = not last and preemption is not None and preemption.should_stop(cycles_done)
    if stop or (save_every and (not cycles_done % save_every or last)):
      save(cycles_done, state, progress)
    if stop:
      preempted_at.append(cycles_done)
      raise Preempted(cycles_done)

  # TensorBoard's copy of the rows, rewritten like metrics.jsonl on a resume.
  events_dir = os.path.join(workdir, 'tensorboard')
  if writer:
    tensorboard.remove_event_files(events_dir)
  with contextlib.ExitStack() as files:
    metrics_file = files.enter_context(open(metrics_path, 'a')) if writer else None
    events = files.enter_context(tensorboard.SummaryWriter(events_dir)) if writer else None
    for row in progress.history:
      write_summaries(events, row)

    def on_row(row: dict) -> None:
      if metrics_file is not None:
        metrics_file.write(json.dumps(row) + '\n')
        metrics_file.flush()
      write_summaries(events, row)

    try:
      state, progress = run(
          algorithm, state, setup.device_data, evaluator, num_cycles=config.num_cycles,
          target_accuracy=config.target_accuracy, stop_at_target=bool(config.stop_at_target),
          max_sim_time=config.max_sim_time,
          schedule=EvalSchedule.from_config(config, progress.history),
          refine_target=bool(config.refine_target), progress=progress,
          mesh=mesh, on_row=on_row, on_cycle_end=on_cycle_end, give_up=give_up,
          verbose=verbose)
    except Preempted:
      checkpoints.close()  # The checkpoint is complete before the process goes.
      raise Preempted(
          f'preempted: stopped after cycle {preempted_at[0]} with a checkpoint in '
          f'{checkpoints.directory}; run the same command again to resume') from None
    except DivergenceError as error:
      if not save_every:
        raise
      kept = ('no checkpoint was taken yet' if checkpoints.latest_step is None else
              f'the last good checkpoint (after cycle {checkpoints.latest_step}) in '
              f'{checkpoints.directory} is kept')
      raise DivergenceError(f'{error}; {kept}') from None

  summary = summarize(algorithm, problem, progress, config.target_accuracy)
  wall_time = time.perf_counter() - wall_start
  if writer:
    # Wall time is not part of the summary: the same config and seed must give the same
    # summary.json on any machine; it goes to timing.json instead.
    _write_json(summary_path, summary)
    _write_json(os.path.join(workdir, 'timing.json'),
                {'wall_time_s': wall_time,
                 # The process's CPU time (all its threads): unlike the wall time, it
                 # does not count a pause or the other processes of a loaded machine.
                 'cpu_time_s': time.process_time() - cpu_start,
                 'resumed_after_cycle': resumed_from,
                 **progress.wall, 'implementation': implementation(setup, evaluator)})
    if verbose:
      print(format_summary(summary, wall_time), flush=True)
  return summary
