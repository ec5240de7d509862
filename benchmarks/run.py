r"""Runs the engine's benchmarks and writes ``results.json`` and ``results.md``.

Every figure is a ratio of timings taken side by side in one process (interleaved
repeats, medians), so that the load of a shared machine hits every contender alike.

  python -m benchmarks.run --out benchmarks/results            # about 10 minutes on 2 cores
  python -m benchmarks.run --out /tmp/bench --quick            # smoke run, about 3 minutes
  python -m benchmarks.run --out /tmp/bench --only waste,aggregation

Sections (``--only``):

* ``engine``: engine vs a naive Python loop over devices vs the one-big-batch limit,
  and the CPU conv trap (:mod:`benchmarks.engine`);
* ``flops``: training's and evaluation's FLOP rates against the machine's float32 matmul
  rate (:mod:`benchmarks.flops`);
* ``waste``: masking waste of the spec's scenarios and what buckets save
  (:mod:`benchmarks.waste`);
* ``aggregation``: sparse group averaging for N = 64 .. 16,384 (:mod:`benchmarks.aggregation`);
* ``gossip``: neighbour (gossip) mixing as a sum of gathered rows against a reduction
  (:mod:`benchmarks.gossip`);
* ``scale``: 10,000 devices on MNIST, memory (:mod:`benchmarks.scale`);
* ``memory``: peak resident memory of paper-like and many-devices runs, and what holds
  it (:mod:`benchmarks.memory`);
* ``step_profile``: a training step's XLA ops timed by JAX's profiler, matmuls against the
  data movement around them (:mod:`benchmarks.step_profile`);
* ``eval_share``: the share of a paper-like run's wall time spent evaluating, at the
  comparison's schedule (:mod:`benchmarks.eval_share`);
* ``compile``: compile time, no recompilation, cost of buckets (:mod:`benchmarks.compile_time`);
* ``sharding``: 1 vs 2 host devices (:mod:`benchmarks.sharding_bench`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

# Two host CPU devices, so that the engine can also be measured sharded over both cores
# (only if JAX is not started yet; the flag changes nothing on GPUs and TPUs).
if 'jax' not in sys.modules and 'host_platform_device_count' not in os.environ.get(
    'XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=2').strip()

from benchmarks import aggregation  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from benchmarks import compile_time
from benchmarks import engine
from benchmarks import eval_share
from benchmarks import flops
from benchmarks import gossip
from benchmarks import memory
from benchmarks import scale
from benchmarks import sharding_bench
from benchmarks import step_profile
from benchmarks import waste

SECTIONS = {
    'engine': (engine, 'Engine against a naive loop and the one-big-batch limit'),
    'flops': (flops, 'FLOP rates: training and evaluation against the matmul limit'),
    'step_profile': (step_profile, "Where a training step's time goes"),
    'waste': (waste, 'Masking waste, and what budget-sorted buckets save'),
    'aggregation': (aggregation, 'Aggregation: O(K M), not O(N^2 M)'),
    'gossip': (gossip, 'Gossip mixing: sum of gathered rows against a reduction'),
    'scale': (scale, '10,000 devices: memory'),
    'memory': (memory, 'Peak memory of whole runs, and what holds it'),
    'eval_share': (eval_share, "Evaluation's share of a paper-like run's wall time"),
    'compile': (compile_time, 'Compile once, never recompile'),
    'sharding': (sharding_bench, 'Sharding the device axis: 1 vs 2 host devices'),
}


def targets(results: dict[str, Any]) -> list[str]:
  """The issue's targets, met or not, from the measured figures."""
  out = []
  rows = results.get('engine', {}).get('rows', [])
  for r in rows:
    if r['num_devices'] != 64:
      continue
    for label, key in (('engine', ''), ('engine on 2 host devices', '2dev_')):
      vs_naive, vs_limit = r.get(f'engine_{key}vs_naive'), r.get(f'engine_{key}vs_limit')
      if vs_naive is not None:
        out.append(f"{'met' if vs_naive >= 1.5 else 'NOT met'}: {label} >= 1.5x naive loop "
                   f"at N=64, {r['model']}: {vs_naive:.2f}x")
      if vs_limit is not None:
        out.append(f"{'met' if vs_limit >= 0.7 else 'NOT met'}: {label} >= 0.7x "
                   f"one-big-batch limit at N=64, {r['model']}: {vs_limit:.2f}x")
  for r in results.get('flops', {}).get('rows', []):
    out.append(f"{'met' if r['train_vs_matmul'] >= 0.5 else 'NOT met'}: training >= 0.5x the "
               f"float32 matmul rate, {r['model']} N={r['num_devices']}: "
               f"{r['train_vs_matmul']:.2f}x")
    single = r.get('one_core')
    if single:
      out.append(f"the step on one core: {single['train_vs_matmul']:.2f}x that core's matmul "
                 f"rate; every core at that rate would give {single['parallel_bound']:.2f}x the "
                 "all-core rate (linear scaling)")
    out.append(f"{'met' if r['eval_vs_train'] >= 1.0 else 'NOT met'}: evaluation >= training's "
               f"FLOP rate, {r['model']}: {r['eval_vs_train']:.2f}x")
  for r in results.get('memory', {}).get('rows', []):
    for what, key in (('run', 'peak_rss_bytes'), ('first run on a machine (autotune '
                                                 'measuring)', 'first_run_peak_rss_bytes')):
      if key in r:
        out.append(f"{'met' if r[key] <= r['goal_bytes'] else 'NOT met'}: peak memory of a "
                   f"{r['scenario']} {what} <= {r['goal_bytes'] / 1e9:.1f} GB: "
                   f"{r[key] / 1e9:.2f} GB")
  share = results.get('eval_share', {}).get('run')
  if share:
    out.append(f"{'met' if share['eval_share'] <= eval_share.GOAL else 'NOT met'}: evaluation "
               f"<= {eval_share.GOAL:.0%} of a paper-like run's wall time: "
               f"{share['eval_share']:.1%}")
  trap = results.get('engine', {}).get('conv_trap')
  if trap:
    eps = trap['examples_per_s']
    out.append(f"CNN in the vmapped loop: {eps['engine/patches'] / eps['naive/flax']:.2f}x a "
               f"naive loop of stock nn.Conv ({eps['engine/patches'] / eps['engine/lax_conv']:.0f}x"
               ' the same loop with lax.conv)')
  sc = results.get('scale')
  if sc and 'cycle_seconds' in sc:
    out.append(f"{'met' if sc['finite'] else 'NOT met'}: {sc['num_devices']:,} devices x "
               f"{sc['model']} on MNIST completed {len(sc['cycle_seconds'])} cycles, peak RSS "
               f"{sc['peak_rss_bytes'] / 2**30:.2f} GiB for {sc['state_bytes'] / 2**30:.2f} GiB "
               'of stacked state')
  return out


def to_markdown(results: dict[str, Any]) -> str:
  meta = results['meta']
  lines = [f"# Benchmarks ({'quick' if meta['quick'] else 'full'} run)", '',
           f"{meta['date']}; JAX {meta['device']['jax_version']} on "
           f"{meta['device']['backend']} ({meta['device']['device_kind']}), "
           f"{meta['device']['cpu_count']} cores, {meta['device'].get('cpu_model', 'CPU unknown')} "
           f"(vector extensions: {', '.join(meta['device'].get('vector_extensions', [])) or 'none found'}); load average at start / end "
           f"{meta['load_start']:.1f} / {meta['load_end']:.1f}; "
           f"{meta['seconds']:.0f} s. Command: `{meta['command']}`.", '']
  for name, (module, title) in SECTIONS.items():
    if name not in results:
      continue
    lines += [f'## {title}', '']
    if 'error' in results[name]:
      lines += ['```', results[name]['error'].strip()[-2000:], '```', '']
    else:
      lines += [module.markdown(results[name]), '']
  lines += ['## Targets', ''] + [f'- {t}' for t in targets(results)]
  return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default='benchmarks/results')
  parser.add_argument('--quick', action='store_true', help='tiny sizes: a smoke run')
  parser.add_argument('--only', default=','.join(SECTIONS),
                      help=f'comma-separated sections from {",".join(SECTIONS)}')
  args = parser.parse_args(argv)
  chosen = [s for s in args.only.split(',') if s]
  unknown = set(chosen) - set(SECTIONS)
  if unknown:
    parser.error(f'unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}')
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  results: dict[str, Any] = {}
  meta = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), quick=args.quick,
              command='python -m benchmarks.run ' + ' '.join(argv if argv is not None
                                                             else sys.argv[1:]),
              load_start=os.getloadavg()[0], device=common.cpu_info())
  failed = False
  for name in chosen:
    module, title = SECTIONS[name]
    print(f'[{name}] {title}', flush=True)
    section_start = time.perf_counter()
    try:
      results[name] = module.run(args.quick)
    except Exception:  # pylint: disable=broad-except
      failed = True
      results[name] = {'error': traceback.format_exc()}
      print(results[name]['error'], file=sys.stderr, flush=True)
    results[name]['seconds'] = time.perf_counter() - section_start
    print(f'[{name}] {results[name]["seconds"]:.0f} s', flush=True)
  meta.update(seconds=time.perf_counter() - start, load_end=os.getloadavg()[0])
  results['meta'] = meta
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1, default=str)
  markdown = to_markdown(results)
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(markdown)
  print(markdown)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
