r"""Peak resident memory of whole runs, and what holds it.

Each scenario runs in fresh subprocesses. The peak is that of a run alone, exactly as
``python -m hadfl_jax.main`` does it (``train.train_and_evaluate``: real MNIST IDX files,
a few cycles with one evaluation, checkpoints off): the process's peak resident memory
(Linux ``VmHWM``). It is measured twice against a fresh autotune cache
(:mod:`hadfl_jax.core.autotune`): first as a run's first on a machine, which times the
implementations, then as every later run, which reads the choices.

What holds the memory comes from another process, so that its own compilations do not
count in the peaks: the resident memory after importing JAX (the runtime and libraries),
the training data, the test set, the stacked device state (parameters and optimizer
states of every device), and XLA's memory analysis of the compiled cycle and of the
evaluation (temporaries).

Scenarios: ``paper-like`` (8 devices, the 421,642-parameter CNN) and ``many-devices``
(N = 64, the same CNN). Goals: at most 1.5 GB and 3 GB of peak resident memory. Needs
the MNIST IDX files (``HADFL_MNIST_DIR``, default ``../shared/data/mnist``).

  python -m benchmarks.memory --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from benchmarks import common
from benchmarks import compile_time

SCENARIOS = {'paper-like': ('paper_mnist', 1.5e9), 'many-devices': ('many_devices', 3.0e9)}


def _config(name: str, num_cycles: int):
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'hadfl_jax.configs.{SCENARIOS[name][0]}').get_config()
  config.dataset.idx_dir = compile_time.mnist_dir()
  config.num_cycles, config.eval_every = num_cycles, num_cycles
  return config


def child_peak(name: str, num_cycles: int) -> dict[str, Any]:
  """A run alone, in a fresh process: its peak resident memory."""
  from hadfl_jax import train  # pylint: disable=g-import-not-at-top
  config = _config(name, num_cycles)
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir, verbose=False)
  return dict(scenario=name, num_devices=config.num_devices, model=config.model,
              cycles=num_cycles, peak_rss_bytes=common.proc_status_bytes('VmHWM'),
              goal_bytes=SCENARIOS[name][1])


def child_held(name: str, num_cycles: int) -> dict[str, Any]:
  """What a run holds, in a fresh process (its compilations for XLA's memory analysis
  would inflate a peak): bytes per item."""
  import jax  # pylint: disable=g-import-not-at-top
  rss_runtime = common.proc_status_bytes('VmRSS')
  from hadfl_jax import evaluation  # pylint: disable=g-import-not-at-top
  from hadfl_jax import train  # pylint: disable=g-import-not-at-top
  config = _config(name, num_cycles)
  setup = train.build_setup(config)
  algorithm = train.build_algorithm(config, setup.problem)
  state = algorithm.init(jax.random.PRNGKey(0))
  cycle = jax.jit(algorithm.cycle, donate_argnums=0).lower(
      state, setup.device_data).compile().memory_analysis()
  evaluator = evaluation.Evaluator.for_model(setup.problem.model, setup.test,
                                             config.eval_batch_size,
                                             config.device_eval_examples)
  consensus = evaluator.model.lower(algorithm.consensus_params(state)).compile()
  devices = evaluator.devices.lower(algorithm.device_params(state)).compile()
  held = dict(runtime=rss_runtime, train_data=common.tree_bytes(setup.device_data),
              test_data=int(setup.test.images.nbytes + setup.test.labels.nbytes),
              device_state=common.tree_bytes((state.devices.params, state.devices.opt_state)),
              cycle_temporaries=int(cycle.temp_size_in_bytes),
              eval_consensus_temporaries=int(consensus.memory_analysis().temp_size_in_bytes),
              eval_devices_temporaries=int(devices.memory_analysis().temp_size_in_bytes))
  return dict(params=setup.problem.num_params, held_bytes=held)


def child(name: str, num_cycles: int, mode: str) -> dict[str, Any]:
  """The measurement itself, in a fresh process: ``mode`` ``'peak'`` or ``'held'``."""
  return (child_peak if mode == 'peak' else child_held)(name, num_cycles)


def run(quick: bool) -> dict[str, Any]:
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if not os.path.isdir(compile_time.mnist_dir()):
    return dict(rows=[], skipped=f'no MNIST IDX files in {compile_time.mnist_dir()}',
                device=common.cpu_info())
  flags = ' '.join(f for f in os.environ.get('XLA_FLAGS', '').split()
                   if 'host_platform_device_count' not in f)  # One device, as a plain run.
  rows = []
  for name in SCENARIOS:
    with tempfile.TemporaryDirectory() as cache_dir:
      env = dict(os.environ, PYTHONPATH=repo, XLA_FLAGS=flags,
                 HADFL_JAX_AUTOTUNE_CACHE=os.path.join(cache_dir, 'autotune.json'))
      runs = {}
      for what, mode in (('first', 'peak'), ('later', 'peak'), ('held', 'held')):
        proc = subprocess.run(
            [sys.executable, '-m', 'benchmarks.memory', '--child', name, '--mode', mode,
             '--cycles', str(2 if quick else 3)],
            cwd=repo, capture_output=True, text=True, check=False, env=env)
        if proc.returncode:
          raise RuntimeError(f'memory run {name} ({what}) failed:\n{proc.stderr[-4000:]}')
        runs[what] = json.loads(proc.stdout.strip().splitlines()[-1])
    rows.append(dict(runs['later'], **runs['held'],
                     first_run_peak_rss_bytes=runs['first']['peak_rss_bytes']))
  return dict(rows=rows, device=common.cpu_info())


def markdown(result: dict[str, Any]) -> str:
  if not result['rows']:
    return f'Skipped: {result.get("skipped")}.\n'
  gb = lambda b: f'{b / 1e9:.2f}'
  lines = ['| scenario | N | peak RSS (GB) | goal (GB) | first run on the machine | runtime '
           'after import | train data | test data | device state | cycle temporaries | eval '
           'temporaries (consensus / devices) |', '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    h = r['held_bytes']
    lines.append(f'| {r["scenario"]} | {r["num_devices"]} | {gb(r["peak_rss_bytes"])} | '
                 f'{gb(r["goal_bytes"])} | {gb(r.get("first_run_peak_rss_bytes", float("nan")))} | '
                 f'{gb(h["runtime"])} | {gb(h["train_data"])} | '
                 f'{gb(h["test_data"])} | {gb(h["device_state"])} | '
                 f'{gb(h["cycle_temporaries"])} | {gb(h["eval_consensus_temporaries"])} / '
                 f'{gb(h["eval_devices_temporaries"])} |')
  lines += ['', 'Peak RSS: a run alone whose implementations are chosen already (autotune\'s '
            'cache holds them); first run on the machine: the same run measuring them (once '
            'per machine and shape). What holds the memory: measured in another process.']
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out')
  parser.add_argument('--child', choices=tuple(SCENARIOS))
  parser.add_argument('--mode', choices=('peak', 'held'), default='peak')
  parser.add_argument('--cycles', type=int, default=3)
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(args.child, args.cycles, args.mode)))
    return 0
  result = run(args.quick)
  text = markdown(result)
  if args.out:
    common.write_result(args.out, 'memory', 'Peak memory of whole runs', result, text)
  print(text)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
