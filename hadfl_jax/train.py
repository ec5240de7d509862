"""The run loop: build the problem, run cycles, evaluate, log, summarise.

``train_and_evaluate(config, workdir)`` is what ``hadfl_jax.main`` calls and what
notebooks import. The loop in Python runs over cycles only; each cycle is one jitted
call of the algorithm's pure ``cycle`` function. Simulated time and communicated bytes
are added up on the host in float64 (:class:`Ledger`).

A run writes into ``workdir``:

* ``config.json``: the resolved config;
* ``metrics.jsonl``: one JSON object per evaluation;
* ``summary.json``: the final figures, including the time to the target accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hadfl_jax import algorithms
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
  """Loads and partitions the data, builds the model, optimizer and device profile."""
  ds = config.dataset
  train = data_lib.load_split(ds.name, ds.train_split, data_dir=ds.data_dir, idx_dir=ds.idx_dir)
  test = data_lib.load_split(ds.name, ds.test_split, data_dir=ds.data_dir, idx_dir=ds.idx_dir)
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


def check_finite(info: base.CycleInfo, cycle: int) -> None:
  """Raises :class:`DivergenceError` naming the cycle and devices whose loss is not finite."""
  loss_N = np.asarray(info.train_loss_N)
  bad = np.flatnonzero(~np.isfinite(loss_N) & (np.asarray(info.budgets_N) > 0))
  if bad.size:
    raise DivergenceError(
        f'cycle {cycle}: training loss is not finite on devices {bad.tolist()[:20]}'
        f'{" ..." if bad.size > 20 else ""} (lower optimizer.learning_rate?)'
    )


def evaluate(evaluator: evaluation.Evaluator, algorithm, state) -> dict[str, float]:
  consensus = evaluator.model(algorithm.consensus_params(state))
  device_acc_N = np.asarray(evaluator.devices(algorithm.device_params(state)))
  return {
      'consensus_accuracy': float(consensus.accuracy),
      'loss': float(consensus.loss),
      'mean_device_accuracy': float(device_acc_N.mean()),
      'min_device_accuracy': float(device_acc_N.min()),
  }


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs one algorithm on one scenario and writes its metrics into ``workdir``.

  Args:
    config: the run config (see ``configs/default.py``); validated before any work.
    workdir: output directory, created if needed.

  Returns:
    The summary, as written to ``summary.json``.

  Raises:
    validation.ConfigError: an invalid config field.
    DivergenceError: a loss that stops being finite.
  """
  validation.validate(config, algorithms=algorithms.ALGORITHMS)
  sharding.initialize_distributed(config.get('engine', {}))
  wall_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, 'config.json'), config.to_dict())

  setup = build_setup(config)
  _write_json(os.path.join(workdir, 'partition.json'), setup.partition_report)
  algorithm = algorithms.make_algorithm(config, setup.problem)
  evaluator = evaluation.Evaluator(
      setup.problem.model.apply, setup.test, config.eval_batch_size, config.device_eval_examples
  )
  state = algorithm.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
  # The device axis sharded over the accelerators (a no-op mesh of one on a laptop).
  mesh = sharding.make_mesh(sharding.mesh_size(config.engine) if 'engine' in config else 1)
  cycle_fn, state, device_data = sharding.shard_cycle(
      algorithm.cycle, state, setup.device_data, mesh, setup.problem.num_devices)
  ledger = Ledger(setup.problem.num_devices)
  logging.info('%s: %d devices, %d params, partition %s', algorithm.name,
               setup.problem.num_devices, setup.problem.num_params,
               setup.partition_report.get('summary'))

  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  history = []
  time_to_target = cycle_at_target = None
  with open(metrics_path, 'w') as metrics_file:
    for cycle in range(config.num_cycles):
      state, info = cycle_fn(state, device_data)
      info = jax.device_get(info)
      check_finite(info, cycle)
      ledger.add(info)
      last = cycle + 1 == config.num_cycles
      out_of_time = 0 < config.max_sim_time <= ledger.sim_time
      if (cycle + 1) % config.eval_every and not (last or out_of_time):
        continue
      row = {'cycle': cycle + 1, **ledger.totals(), **evaluate(evaluator, algorithm, state),
             'train_loss': float(np.mean(info.train_loss_N[info.budgets_N > 0]))
             if np.any(info.budgets_N > 0) else float('nan')}
      if not np.isfinite(row['loss']):
        raise DivergenceError(f'cycle {cycle + 1}: consensus test loss is not finite')
      history.append(row)
      metrics_file.write(json.dumps(row) + '\n')
      metrics_file.flush()
      print(f'[{algorithm.name}] cycle {row["cycle"]:5d}  sim {row["sim_time_s"]:9.2f}s  '
            f'acc {row["consensus_accuracy"]:.4f}  device mean/min '
            f'{row["mean_device_accuracy"]:.4f}/{row["min_device_accuracy"]:.4f}  '
            f'loss {row["loss"]:.4f}', flush=True)
      if time_to_target is None and row['consensus_accuracy'] >= config.target_accuracy:
        time_to_target, cycle_at_target = row['sim_time_s'], row['cycle']
        if config.stop_at_target:
          break
      if out_of_time:
        break

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
  _write_json(os.path.join(workdir, 'summary.json'), summary)
  wall_time = time.perf_counter() - wall_start
  _write_json(os.path.join(workdir, 'timing.json'), {'wall_time_s': wall_time})
  print(format_summary(summary, wall_time), flush=True)
  return summary
