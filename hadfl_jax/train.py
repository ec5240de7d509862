"""The run loop: build the problem, run cycles, evaluate, log, summarise.

``train_and_evaluate(config, workdir)`` is what ``hadfl_jax.main`` calls and what
notebooks import. The loop in Python runs over cycles only; each cycle is one jitted
call of the algorithm's pure ``cycle`` function. Simulated time and communicated bytes
are added up on the host in float64 (:class:`Ledger`).

A run writes into ``workdir``:

* ``config.json``: the resolved config;
* ``metrics.jsonl``: one JSON object per evaluation;
* ``summary.json``: the final figures, including the time to the target accuracy;
* ``checkpoints/``: every ``checkpoint_every`` cycles, the whole simulation state
  (:mod:`hadfl_jax.checkpoint`). Re-running the same command resumes from the latest
  one and writes the same ``metrics.jsonl`` and ``summary.json`` as a run never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
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
from hadfl_jax import validation
from hadfl_jax.algorithms import base
from hadfl_jax.core import profiles

PyTree = Any


class DivergenceError(RuntimeError):
  """Training produced a loss or parameter that is not finite."""


@dataclasses.dataclass
class Setup:
  """Everything a run needs besides the algorithm's state."""

  problem: base.Problem
  device_data: data_lib.DeviceData
  test: data_lib.Split
  partition_report: dict


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
  parts = data_lib.partition(
      train.labels,
      config.num_devices,
      config.partition.kind,
      seed=config.seed,
      alpha=config.partition.alpha,
      classes_per_device=config.partition.classes_per_device,
      quantity_alpha=config.partition.quantity_alpha,
      min_examples=config.partition.min_examples,
  )
  device_data = data_lib.DeviceData.from_partition(train.images, train.labels, parts)
  model = models_lib.get_model(config.model, train.num_classes)
  init_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
  init_params = model.init(init_key, jnp.zeros((1,) + train.images.shape[1:], jnp.float32))
  problem = base.Problem(
      model=model,
      optimizer=optim.make_optimizer(config.optimizer),
      init_params=init_params['params'],
      profile=profiles.make_profile(config.profile, config.num_devices, config.seed),
      num_examples_N=np.asarray([len(p) for p in parts], np.int64),
      batch_size=config.batch_size,
      bytes_per_param=config.profile.bytes_per_param,
  )
  return Setup(problem, device_data, test,
               data_lib.partition_report(train.labels, parts, train.num_classes))


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
  consensus = evaluator.model(algorithm.consensus_params(state))
  device_acc_N = np.asarray(evaluator.devices(algorithm.device_params(state)))
  return {
      'consensus_accuracy': float(consensus.accuracy),
      'loss': float(consensus.loss),
      'mean_device_accuracy': float(device_acc_N.mean()),
      'min_device_accuracy': float(device_acc_N.min()),
  }


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
  """When to evaluate: every ``eval_every`` cycles, or on a simulated-time schedule.

  With ``config.eval_interval_s > 0`` the consensus model is evaluated after the first
  cycle that passes the next evaluation point, and the next point is
  ``max(t + eval_interval_s, t * (1 + eval_growth))``: algorithms with different cycle
  lengths are then evaluated at comparable simulated times (what a fair time-to-accuracy
  comparison needs, see :mod:`hadfl_jax.compare`). The last cycle, and a cycle that
  runs out of simulated time, are always evaluated. The schedule depends only on the
  evaluations so far, so a resumed run continues it exactly.
  """

  def __init__(self, config: ml_collections.ConfigDict, history: list[dict]):
    self._every = config.eval_every
    self._interval = float(config.get('eval_interval_s', 0.0))
    self._growth = float(config.get('eval_growth', 0.0))
    self._next = self._interval
    if history:
      self.evaluated(history[-1]['sim_time_s'])

  def due(self, cycles_done: int, sim_time: float) -> bool:
    if self._interval > 0:
      return sim_time >= self._next
    return cycles_done % self._every == 0

  def evaluated(self, sim_time: float) -> None:
    self._next = max(sim_time + self._interval, sim_time * (1.0 + self._growth))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       setup: Setup | None = None,
                       evaluator: evaluation.Evaluator | None = None) -> dict:
  """Runs one algorithm on one scenario and writes its metrics into ``workdir``.

  Args:
    config: the run config (see ``configs/default.py``); validated before any work.
    workdir: output directory, created if needed.
    setup: the data, model and profile, when a caller shares them between runs (the
      comparison does); built from ``config`` otherwise. Its optimizer is rebuilt from
      ``config.optimizer`` either way.
    evaluator: a shared evaluator on ``setup.test``; built otherwise.

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
  """
  validation.validate(config, algorithms=algorithms.ALGORITHMS)
  sharding.initialize_distributed(config.get('engine', {}))
  checkpoints = checkpoint.open_workdir(config, workdir)
  try:
    return _run(config, workdir, checkpoints, setup, evaluator)
  finally:
    if checkpoints is not None:
      checkpoints.close()  # Completes a save in flight: the last good state.


def _stopped_early(config: ml_collections.ConfigDict, ledger: Ledger,
                   time_to_target: float | None) -> bool:
  """Whether the run stopped before ``num_cycles`` (target reached, or out of time)."""
  return (bool(config.stop_at_target) and time_to_target is not None) or (
      0 < config.max_sim_time <= ledger.sim_time)


def _run(config: ml_collections.ConfigDict, workdir: str,
         checkpoints: checkpoint.Checkpointer | None,
         setup: Setup | None = None,
         evaluator: evaluation.Evaluator | None = None) -> dict:
  """The body of :func:`train_and_evaluate`, once the workdir is known to fit."""
  wall_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  summary_path = os.path.join(workdir, 'summary.json')
  if os.path.exists(summary_path):
    os.remove(summary_path)  # Written again when this run ends.

  if setup is None:
    setup = build_setup(config)
  else:
    setup = dataclasses.replace(setup, problem=dataclasses.replace(
        setup.problem, optimizer=optim.make_optimizer(config.optimizer)))
  _write_json(os.path.join(workdir, 'partition.json'), setup.partition_report)
  algorithm = algorithms.make_algorithm(config, setup.problem)
  if evaluator is None:
    evaluator = evaluation.Evaluator(
        setup.problem.model.apply, setup.test, config.eval_batch_size,
        config.device_eval_examples)
  state = algorithm.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
  # The device axis sharded over the accelerators (a no-op mesh of one on a laptop).
  mesh = sharding.make_mesh(sharding.mesh_size(config.engine) if 'engine' in config else 1)
  cycle_fn, state, device_data = sharding.shard_cycle(
      with_finiteness(algorithm), state, setup.device_data, mesh, setup.problem.num_devices)
  ledger = Ledger(setup.problem.num_devices)
  logging.info('%s: %d devices, %d params, partition %s', algorithm.name,
               setup.problem.num_devices, setup.problem.num_params,
               setup.partition_report.get('summary'))

  history: list[dict] = []
  time_to_target = cycle_at_target = None
  resumed_from = None
  if checkpoints is not None and checkpoints.latest_step is not None:
    state, progress = checkpoints.restore(state)
    ledger = Ledger.from_state_dict(progress['ledger'])
    history = progress['history']
    time_to_target, cycle_at_target = progress['time_to_target_s'], progress['cycle_at_target']
    resumed_from = ledger.cycles
    print(f'[{algorithm.name}] resuming after cycle {resumed_from} from '
          f'{checkpoints.directory}', flush=True)
  # metrics.jsonl holds exactly the rows of the state the run continues from.
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  _write_rows(metrics_path, history)
  save_every = config.checkpoint_every if checkpoints is not None else 0

  def save(cycles_done: int) -> None:
    checkpoints.save(cycles_done, state, {
        'config': checkpoint.to_json_tree(config),
        'ledger': ledger.state_dict(),
        'history': list(history),  # A copy: the save may complete in the background.
        'time_to_target_s': time_to_target,
        'cycle_at_target': cycle_at_target,
    })

  def diverged(error: DivergenceError) -> DivergenceError:
    if not save_every:
      return error
    kept = ('no checkpoint was taken yet' if checkpoints.latest_step is None else
            f'the last good checkpoint (after cycle {checkpoints.latest_step}) in '
            f'{checkpoints.directory} is kept')
    return DivergenceError(f'{error}; {kept}')

  stop = _stopped_early(config, ledger, time_to_target)
  schedule = EvalSchedule(config, history)
  with open(metrics_path, 'a') as metrics_file:
    for cycle in range(ledger.cycles, config.num_cycles):
      if stop:
        break
      state, (info, finite) = cycle_fn(state, device_data)
      info, finite = jax.device_get((info, finite))
      try:
        check_finite(info, cycle, finite)
      except DivergenceError as e:
        raise diverged(e) from None
      ledger.add(info)
      last = cycle + 1 == config.num_cycles
      out_of_time = 0 < config.max_sim_time <= ledger.sim_time
      stop = out_of_time
      if schedule.due(cycle + 1, ledger.sim_time) or last or out_of_time:
        schedule.evaluated(ledger.sim_time)
        row = {'cycle': cycle + 1, **ledger.totals(), **evaluate(evaluator, algorithm, state),
               'train_loss': float(np.mean(info.train_loss_N[info.budgets_N > 0]))
               if np.any(info.budgets_N > 0) else float('nan')}
        if not np.isfinite(row['loss']):
          raise diverged(DivergenceError(f'cycle {cycle + 1}: consensus test loss is not finite'))
        history.append(row)
        metrics_file.write(json.dumps(row) + '\n')
        metrics_file.flush()
        print(f'[{algorithm.name}] cycle {row["cycle"]:5d}  sim {row["sim_time_s"]:9.2f}s  '
              f'acc {row["consensus_accuracy"]:.4f}  device mean/min '
              f'{row["mean_device_accuracy"]:.4f}/{row["min_device_accuracy"]:.4f}  '
              f'loss {row["loss"]:.4f}', flush=True)
        if time_to_target is None and row['consensus_accuracy'] >= config.target_accuracy:
          time_to_target, cycle_at_target = row['sim_time_s'], row['cycle']
          stop = stop or bool(config.stop_at_target)
      if save_every and (not (cycle + 1) % save_every or last or stop):
        save(cycle + 1)

  final = history[-1]
  summary = {
      'algorithm': algorithm.name,
      'cycles': ledger.cycles,
      'num_devices': setup.problem.num_devices,
      'num_params': setup.problem.num_params,
      'target_accuracy': config.target_accuracy,
      'time_to_target_s': time_to_target,
      'cycle_at_target': cycle_at_target,
      'final_consensus_accuracy': final['consensus_accuracy'],
      'best_consensus_accuracy': max(r['consensus_accuracy'] for r in history),
      'final_mean_device_accuracy': final['mean_device_accuracy'],
      'final_min_device_accuracy': final['min_device_accuracy'],
      'final_loss': final['loss'],
      **ledger.totals(),
  }
  # Wall time is not part of the summary: the same config and seed must give the same
  # summary.json on any machine; it goes to timing.json instead.
  _write_json(summary_path, summary)
  wall_time = time.perf_counter() - wall_start
  _write_json(os.path.join(workdir, 'timing.json'),
              {'wall_time_s': wall_time, 'resumed_after_cycle': resumed_from})
  print(format_summary(summary, wall_time), flush=True)
  return summary
