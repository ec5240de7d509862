"""Ranking, speedups, ``results.json``'s content, ``report.md`` and the plots."""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from hadfl_jax.comparison.grid import eval_interval
from hadfl_jax.comparison.runs import RunRecord
from hadfl_jax.comparison.runs import Tuned


def rank_key(record: RunRecord):
  """Smaller is better: reached the target first, then higher final accuracy."""
  tta = record.time_to_target_s
  return (0, tta, -record.final_consensus_accuracy) if tta is not None else (
      1, 0.0, -record.final_consensus_accuracy)


def speedup(hadfl: RunRecord, other: RunRecord) -> dict:
  """TTA(other) / TTA(hadfl); a lower bound when only HADFL reached the target."""
  a, b = hadfl.time_to_target_s, other.time_to_target_s
  if a is None:
    return {'value': None, 'lower_bound': False}
  if b is None:
    return {'value': other.sim_time_s / a, 'lower_bound': True}
  return {'value': b / a, 'lower_bound': False}


def fmt_tta(t):
  return 'not reached' if t is None else f'{t:.2f}'


def fmt_speedup(s):
  if s['value'] is None:
    return 'n/a'
  return f'{">= " if s["lower_bound"] else ""}{s["value"]:.2f}x'


def summarise(tuned: dict[str, Tuned]) -> dict:
  """results.json's content (without the per-evaluation histories)."""
  res = {}
  hadfl = tuned['hadfl'].best if 'hadfl' in tuned else None
  for name, t in tuned.items():
    b = t.best
    res[name] = {
        'time_to_target_s': b.time_to_target_s,
        'final_consensus_accuracy': b.final_consensus_accuracy,
        'best_consensus_accuracy': b.best_consensus_accuracy,
        'busiest_link_bytes': b.busiest_link_bytes,
        'bytes_sent': b.bytes_sent,
        'sim_time_s': b.sim_time_s,
        'chosen': b.point,
        'grid': [{'point': r.point, 'time_to_target_s': r.time_to_target_s,
                  'final_consensus_accuracy': r.final_consensus_accuracy,
                  'sim_time_s': r.sim_time_s, 'wall_time_s': r.wall_time_s}
                 for r in t.grid],
        'not_run': list(t.skipped),
    }
    if hadfl is not None and name != 'hadfl':
      res[name]['hadfl_speedup'] = speedup(hadfl, b)
  return res


def report_markdown(config, results: dict, title: str) -> str:
  lines = [f'# {title}', '',
           f'Target: {config.target_accuracy:.0%} consensus test accuracy; simulated time cap '
           f'{config.max_sim_time or "none"} s; seed {config.seed}; '
           f'{config.num_devices} devices; model `{config.model}`; data `{config.dataset.name}` '
           f'({config.partition.kind}' +
           (f', alpha {config.partition.alpha}' if config.partition.kind == 'dirichlet' else '') +
           ').', '']
  if config.compare.get('winners_from'):
    lines += [f'Hyperparameters carried over from `{config.compare.winners_from}` (the points '
              'that won there), not re-tuned here.', '']
  lines += [f'Evaluation (the same for every algorithm, in simulated seconds): after the first '
            f'cycle that ends past the next point, next point = max(t + '
            f'{eval_interval(config, None):g} s, t x {1 + config.compare.get("eval_growth", 0.1):g}). '
            'Runs stop at the target' + (' or the cap' if config.max_sim_time else '') +
            '; "final acc" is the consensus accuracy at the end of the run (so about the target '
            'for runs that reach it). Speedup = TTA(baseline) / TTA(HADFL); ">=" when the '
            'baseline never reached the target (its run length over HADFL\'s TTA). HADFL\'s H is '
            'the steps of its fastest device per cycle (t_local = H x seconds per step).', '']
  lines += ['| algorithm | time to target (sim s) | HADFL speedup | final acc | busiest link (MB) '
           '| chosen lr | chosen H |',
           '|---|---|---|---|---|---|---|']
  for name, r in results.items():
    sp = fmt_speedup(r['hadfl_speedup']) if 'hadfl_speedup' in r else '1.00x'
    lines.append(f'| {name} | {fmt_tta(r["time_to_target_s"])} | {sp} | '
                 f'{r["final_consensus_accuracy"]:.4f} | {r["busiest_link_bytes"] / 1e6:.1f} | '
                 f'{r["chosen"]["lr"]} | {r["chosen"].get("h", "-")} |')
  lines += ['', '## Grid', '', '| algorithm | lr | H | time to target (sim s) | final acc '
            '| sim time (s) | wall (s) |', '|---|---|---|---|---|---|---|']
  for name, r in results.items():
    for g in r['grid']:
      lines.append(f'| {name} | {g["point"]["lr"]} | {g["point"].get("h", "-")} | '
                   f'{fmt_tta(g["time_to_target_s"])} | {g["final_consensus_accuracy"]:.4f} | '
                   f'{g["sim_time_s"]:.1f} | {g["wall_time_s"]:.0f} |')
    for p in r.get('not_run', []):
      lines.append(f'| {name} | {p["lr"]} | {p.get("h", "-")} | not run (CPU time) | | | |')
  return '\n'.join(lines) + '\n'


def sweep_table(rows) -> str:
  names = sorted({n for r in rows for n in r.get('hadfl_speedup', {})})
  lines = ['| ratio | HADFL TTA (s) | ' + ' | '.join(f'speedup over {n}' for n in names) + ' |',
           '|---|---|' + '---|' * len(names)]
  for r in rows:
    lines.append(f'| {r["ratio"]:g} | {fmt_tta(r["time_to_target_s"].get("hadfl"))} | ' +
                 ' | '.join(fmt_speedup(r['hadfl_speedup'][n]) for n in names) + ' |')
  return '\n'.join(lines) + '\n'


def ablation_over_seeds(paths: Sequence[str]) -> str:
  """A markdown table of several ``ablation.json`` (one per seed): mean and per-seed TTA.

  Points that never reached the target count as their run length (marked), so a mean
  with such a point is a lower bound.
  """
  runs = []
  for p in paths:
    with open(p) as f:
      runs.append(json.load(f))
  lines = ['| option | value | mean TTA (sim s) | TTA per seed | mean final acc |',
           '|---|---|---|---|---|']
  for i, row in enumerate(runs[0]):
    ttas = [r[i]['time_to_target_s'] for r in runs]
    vals = [t if t is not None else r[i]['sim_time_s'] for t, r in zip(ttas, runs)]
    mark = '>= ' if any(t is None for t in ttas) else ''
    per = ', '.join(fmt_tta(t) for t in ttas)
    acc = np.mean([r[i]['final_consensus_accuracy'] for r in runs])
    lines.append(f'| {row["field"]} | {row["value"]} | {mark}{np.mean(vals):.2f} | {per} | '
                 f'{acc:.4f} |')
  return '\n'.join(lines) + '\n'


def _figure():
  """A matplotlib figure that is saved, never shown: no pyplot, so the process's
  backend (a notebook's inline one, say) is left as it is."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  return figure.Figure(figsize=(6, 4))


def plot_curves(tuned: dict[str, Tuned], workdir: str, target: float) -> list[str]:
  """accuracy_vs_time.png and accuracy_vs_bytes.png of every algorithm's winner."""
  paths = []
  for key, xlabel, fname, scale in (
      ('sim_time_s', 'simulated time (s)', 'accuracy_vs_time.png', 1.0),
      ('bytes_sent', 'communicated bytes, all devices and server (MB)',
       'accuracy_vs_bytes.png', 1e-6)):
    fig = _figure()
    ax = fig.subplots()
    for name, t in tuned.items():
      h = t.best.history
      ax.plot([r[key] * scale for r in h], [r['consensus_accuracy'] for r in h],
              marker='.', label=name)
    ax.axhline(target, color='gray', ls='--', lw=0.8)
    ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('consensus test accuracy')
    lo = min(min(r['consensus_accuracy'] for r in t.best.history) for t in tuned.values())
    ax.set_ylim(max(lo, target - 0.1), 1.0)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(workdir, fname)
    fig.savefig(path, dpi=100)
    paths.append(path)
  return paths


def plot_sweep(rows, workdir: str) -> str:
  fig = _figure()
  ax = fig.subplots()
  names = sorted({n for r in rows for n in r.get('hadfl_speedup', {})})
  for name in names:
    xs, ys, lb = [], [], []
    for r in rows:
      s = r['hadfl_speedup'].get(name)
      if s and s['value'] is not None:
        xs.append(r['ratio'])
        ys.append(s['value'])
        lb.append(s['lower_bound'])
    line, = ax.plot(xs, ys, marker='o', label=f'over {name}')
    for x, y, b in zip(xs, ys, lb):
      if b:
        ax.plot([x], [y], marker='^', color=line.get_color(), ms=9)
  ax.axhline(1.0, color='gray', lw=0.8)
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('speed ratio fastest / slowest')
  ax.set_ylabel("HADFL's speedup in time to target")
  ax.set_title('heterogeneity sweep (triangles: lower bounds)')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(workdir, 'sweep_speedup.png')
  fig.savefig(path, dpi=100)
  return path

