"""Shared pieces of the benchmarks: side-by-side timing, synthetic problems, planners.

Every figure the benchmarks report is a ratio of timings taken in the same process,
interleaved (A, B, C, A, B, C, ...) so that load from other processes on a shared machine
hits every contender alike; each contender's time is the median of its repeats. Where it
matters, the CPU time of this process is reported beside the wall time: on a machine
whose cores other processes keep busy it measures the work done, not the waiting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hadfl_jax import data as data_lib
from hadfl_jax import machine
from hadfl_jax import models as models_lib
from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import hadfl
from hadfl_jax.core import faults
from hadfl_jax.core import local
from hadfl_jax.core import mixing
from hadfl_jax.core import profiles

PyTree = Any
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
PAPER_SPEEDS = (1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0)


def interleaved_timings(fns: Mapping[str, Callable[[], Any]], repeats: int,
                        warmup: bool = True) -> dict[str, dict[str, float]]:
  """Median wall and CPU seconds of each zero-argument function, run round-robin.

  CPU seconds (``time.process_time``: every thread of this process) count the work this
  process did; on a machine shared with other busy processes they vary much less than
  wall seconds, which also count the time the scheduler gave to others.

  Args:
    fns: name -> function doing the whole timed work and blocking on its result.
    repeats: timed runs of every function.
    warmup: run each function once, untimed, first (compilation).

  Returns:
    name -> ``{'wall': median seconds, 'cpu': median CPU seconds}``.
  """
  if warmup:
    for fn in fns.values():
      fn()
  wall: dict[str, list[float]] = {name: [] for name in fns}
  cpu: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      fn()
      cpu[name].append(time.process_time() - start_cpu)
      wall[name].append(time.perf_counter() - start)
  return {name: dict(wall=statistics.median(wall[name]), cpu=statistics.median(cpu[name]))
          for name in fns}


def interleaved_medians(fns: Mapping[str, Callable[[], Any]], repeats: int,
                        warmup: bool = True) -> dict[str, float]:
  """Median wall seconds of each function, run round-robin (see
  :func:`interleaved_timings`)."""
  return {name: t['wall'] for name, t in interleaved_timings(fns, repeats, warmup).items()}


def peak_rss_bytes() -> int:
  """Peak resident memory so far by ``getrusage`` (Linux reports KiB).

  On Linux a process started by fork and exec inherits its parent's peak here; prefer
  ``proc_status_bytes('VmHWM')``.
  """
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def proc_status_bytes(field: str) -> int:
  """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process (Linux)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  raise KeyError(field)


def reset_peak_rss() -> None:
  """Resets ``VmHWM`` to the current resident memory (Linux ``clear_refs``)."""
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')


def tree_bytes(tree: PyTree) -> int:
  return int(sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def random_device_data(num_devices: int, per_device: int, seed: int = 0) -> data_lib.DeviceData:
  """MNIST-shaped random uint8 images and labels, ``per_device`` rows per device."""
  rng = np.random.default_rng(seed)
  return data_lib.DeviceData(
      images=jnp.asarray(rng.integers(0, 256, (num_devices, per_device) + IMAGE_SHAPE,
                                      dtype=np.uint8)),
      labels=jnp.asarray(rng.integers(0, NUM_CLASSES, (num_devices, per_device)), jnp.int32),
      counts=jnp.full((num_devices,), per_device, jnp.int32),
  )


def init_params(model_name: str, seed: int = 0) -> tuple[Any, PyTree]:
  """The registry model and its parameters on MNIST-shaped inputs."""
  model = models_lib.get_model(model_name, NUM_CLASSES)
  params = model.init(jax.random.key(seed), jnp.zeros((1,) + IMAGE_SHAPE))['params']
  return model, params


def num_params(params: PyTree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


@dataclasses.dataclass(frozen=True)
class Scenario:
  """A device population and HADFL schedule whose step budgets we study.

  Attributes:
    name: label in the tables.
    num_devices: N.
    profile: ``config.profile``-like fields (kind, speeds, sigma, ...).
    options: HADFL's options (``hadfl.Config`` fields: t_local, rho, ...) and ``p_drop``.
    model_params: parameters of the model (sets M, hence t_sync).
  """

  name: str
  num_devices: int
  profile: Mapping[str, Any]
  options: Mapping[str, Any]
  model_params: int


def make_profile(scenario: Scenario, seed: int = 0) -> profiles.DeviceProfile:
  fields = dict(kind='list', speeds=(), ratio=1.0, sigma=0.0, seconds_per_step=0.01,
                bandwidth_mbps=100.0, latency_s=0.005)
  fields.update(scenario.profile)
  return profiles.make_profile(_Namespace(**fields), scenario.num_devices, seed)


class _Namespace:

  def __init__(self, **kw):
    self.__dict__.update(kw)


def budget_trace(scenario: Scenario, num_cycles: int, seed: int = 0) -> np.ndarray:
  """The step budgets H of ``num_cycles`` HADFL cycles, without training, int (C, N).

  Runs HADFL's planner (faults, selection, budgets) and the bookkeeping that feeds it
  back (versions averaged over the synchronising group, last sync, cycle); local
  training is left out since budgets do not depend on the parameters.
  """
  n = scenario.num_devices
  problem = base.Problem(
      model=models_lib.get_model('digits_mlp', NUM_CLASSES), optimizer=optax.sgd(0.1),
      init_params={'w': np.zeros((scenario.model_params,), np.float32)},
      profile=make_profile(scenario, seed),
      num_examples_N=np.full((n,), 100, np.int64), batch_size=32,
      faults=faults.FaultsConfig(p_drop=scenario.options.get('p_drop', 0.0)))
  config = hadfl.Config(weights='data', **{k: v for k, v in scenario.options.items()
                                           if k != 'p_drop'})
  device_key, coord_key = jax.random.split(jax.random.PRNGKey(seed))
  state = hadfl.HadflState(
      devices=local.DeviceState(
          params={}, opt_state=(), key=jax.random.split(device_key, n),
          steps=jnp.zeros((n,), jnp.int32), version=jnp.zeros((n,), jnp.float32)),
      speed_est=jnp.asarray(problem.profile.speed_N, jnp.float32),
      last_sync=jnp.full((n,), -1, jnp.int32), cycle=jnp.zeros((), jnp.int32), key=coord_key,
      carry=jnp.zeros((n,), jnp.float32))

  @jax.jit
  def step(state):
    plan = hadfl.plan(problem, config, state)
    version_N = state.devices.version + plan['budgets_N'].astype(jnp.float32)
    group = mixing.GroupMixing(
        idx_K=plan['idx_K'], valid_K=plan['survive_K'],
        weight_K=mixing.group_weights(
            'uniform', idx_K=plan['idx_K'], valid_K=plan['survive_K'],
            num_examples_N=jnp.ones((n,)), budgets_N=plan['budgets_N'], version_N=version_N))
    synced_N = plan['selected_N'] & group.active
    state = state.replace(
        devices=state.devices.replace(version=mixing.apply_group(group, version_N)),
        last_sync=jnp.where(synced_N, state.cycle, state.last_sync), cycle=state.cycle + 1,
        carry=plan['carry_N'])
    return state, plan['budgets_N']

  rows = []
  for _ in range(num_cycles):
    state, budgets_N = step(state)
    rows.append(np.asarray(budgets_N))
  return np.stack(rows)


def write_result(out: str, name: str, title: str, result: dict[str, Any], text: str) -> None:
  """Writes ``OUT/NAME.json`` (the figures) and ``OUT/NAME.md`` (``# title`` and ``text``)."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f'{name}.json'), 'w') as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(out, f'{name}.md'), 'w') as f:
    f.write(f'# {title}\n\n{text}')


def section_main(module, name: str, title: str, argv=None) -> int:
  """The command line of a benchmark section: ``--out DIR [--quick]`` runs
  ``module.run(quick)`` and writes ``DIR/NAME.json`` and ``DIR/NAME.md``."""
  parser = argparse.ArgumentParser(description=module.__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args(argv)
  result = module.run(args.quick)
  text = module.markdown(result)
  write_result(args.out, name, title, result, text)
  print(text)
  return 0


def cpu_info() -> dict[str, Any]:
  """The machine a benchmark ran on (:func:`hadfl_jax.machine.describe`)."""
  return machine.describe()


def machine_line(dev: dict[str, Any]) -> str:
  """``dev`` (from :func:`cpu_info`) in words: CPU, cores, vector extensions, backend."""
  return (f'{dev["cpu_model"]}, {dev["cpu_count"]} cores, vector extensions '
          f'{", ".join(dev["vector_extensions"]) or "none found"}; {dev["backend"]}')
