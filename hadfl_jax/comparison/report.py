"""Ranking, speedups, ``results.json``'s content, ``report.md`` and the plots."""

from __future__ import annotations

import os
import warnings

import numpy as np
from scipy import stats as scipy_stats

from hadfl_jax.comparison import stats
from hadfl_jax.comparison.grid import eval_interval
from hadfl_jax.comparison.runs import PointRuns
from hadfl_jax.comparison.runs import RunRecord
from hadfl_jax.comparison.runs import Tuned


def rank_key(runs: PointRuns | RunRecord):
  """Smaller is better, over a point's seeds: fewest seeds that missed the target, then
  the smallest mean time to target (a missed seed counting as its run length), then the
  highest mean final accuracy. Chosen by the mean over seeds, never by the best seed."""
  records = runs.records if isinstance(runs, PointRuns) else (runs,)
  ttas = [r.time_to_target_s for r in records]
  return (sum(t is None for t in ttas),
          float(np.mean([t if t is not None else r.sim_time_s for t, r in zip(ttas, records)])),
          -float(np.mean([r.final_consensus_accuracy for r in records])))


def speedup(hadfl: RunRecord, other: RunRecord) -> dict:
  """TTA(other) / TTA(hadfl) of one seed; a lower bound when only HADFL reached the target."""
  return stats.ratio(hadfl.time_to_target_s, other.time_to_target_s, other.sim_time_s)


def fmt_tta(t):
  return 'not reached' if t is None else f'{t:.2f}'


def fmt_speedup(s):
  """A per-seed ratio (``value``) or a mean over seeds (``mean``, ``ci95``); a mean over
  fewer seeds than were run (those where HADFL reached the target) says how many."""
  if 'mean' in s:
    text = stats.fmt_estimate(s, unit='x')
    runs = len(s.get('per_seed', ()))
    if s['mean'] is not None and s.get('n', runs) < runs:
      text += f' ({s["n"]}/{runs} seeds)'
    return text
  if s['value'] is None:
    return 'n/a'
  return f'{">= " if s["lower_bound"] else ""}{s["value"]:.2f}x'


def _options(point: dict) -> str:
  return ', '.join(f'{k.split(".", 1)[1]}={v}' for k, v in sorted(point.items()) if '.' in k)


def summarise(tuned: dict[str, Tuned]) -> dict:
  """results.json's ``algorithms``: per algorithm its winner's figures over seeds (mean
  and 95% CI, and each seed's), HADFL's paired speedup, and every grid point's."""
  res = {}
  hadfl = tuned['hadfl'].best if 'hadfl' in tuned else None
  for name, t in tuned.items():
    b = t.best
    res[name] = {
        'chosen': b.point,
        'seeds': list(b.seeds),
        'time_to_target_s': b.time_to_target(),
        **{field: b.mean(field) for field in (
            'final_consensus_accuracy', 'best_consensus_accuracy', 'busiest_link_bytes',
            'bytes_sent', 'sim_time_s')},
        'per_seed': b.per_seed(),
        'grid': [{'point': r.point, 'time_to_target_s': r.time_to_target(),
                  'final_consensus_accuracy': r.mean('final_consensus_accuracy'),
                  'diverged': sum('diverged' in x.summary for x in r.records),
                  **{kind: n for kind in ('collapsed', 'pruned')
                     if (n := sum(kind in x.summary for x in r.records))},
                  'wall_time_s': r.wall_time_s} for r in t.grid],
        'not_run': list(t.skipped),
    }
    if hadfl is not None and name != 'hadfl':
      res[name]['hadfl_speedup'] = stats.paired_speedup(hadfl.ttas, b.ttas, b.run_lengths)
  return res


def report_markdown(config, results: dict, title: str, seeds=None, machine=None) -> str:
  seeds = tuple(seeds if seeds is not None else config.compare.get('seeds', (config.seed,)))
  lines = [f'# {title}', '',
           f'Target: {config.target_accuracy:.0%} consensus test accuracy; simulated time cap '
           f'{config.max_sim_time or "none"} s; seeds {", ".join(map(str, seeds))} '
           f'({len(seeds)}: each its own partition, initialisation, profile and draws); '
           f'{config.num_devices} devices; model `{config.model}`; data `{config.dataset.name}` '
           f'({config.partition.kind}' +
           (f', alpha {config.partition.alpha}' if config.partition.kind == 'dirichlet' else '') +
           ').', '']
  if machine:
    lines += [f'Machine: {machine["backend"]} ({machine["device_kind"]}), '
              f'{machine["cpu_model"]}, vector extensions '
              f'{", ".join(machine["vector_extensions"]) or "none found"}; JAX '
              f'{machine["jax_version"]}. The clock is simulated: the figures do not depend '
              'on the machine beyond floating-point rounding.', '']
  if config.compare.get('winners_from'):
    lines += [f'Hyperparameters carried over from `{config.compare.winners_from}` (the points '
              'that won there), not re-tuned here.', '']
  lines += [f'Evaluation (the same for every algorithm, in simulated seconds): after the first '
            f'cycle that ends past the next point, next point = max(t + '
            f'{eval_interval(config, None):g} s, t x {1 + config.compare.get("eval_growth", 0.1):g}). '
            'Runs stop at the target' + (' or the cap' if config.max_sim_time else '') +
            '. Figures are means over the seeds ± the half width of their 95% confidence '
            "interval (Student's t). Time to target: a seed that missed it counts as its run "
            'length and the mean is then a lower bound (">="); "reached" counts the seeds that '
            'reached it. HADFL speedup: the mean of the per-seed ratios TTA(baseline) / '
            'TTA(HADFL) (paired by seed, over the seeds where HADFL reached the target, their '
            'number given when not all; ">=" when a baseline missed the target on such a '
            'seed). '
            'Each algorithm\'s point is the one with the best mean over the seeds. '
            "HADFL's H is the steps of its fastest device per cycle (t_local = H x seconds per "
            'step).', '']
  lines += ['| algorithm | time to target (sim s) | reached | HADFL speedup | final acc '
            '| busiest link (MB) | chosen lr | chosen H | options |',
            '|---|---|---|---|---|---|---|---|---|']
  for name, r in results.items():
    tta = r['time_to_target_s']
    sp = (fmt_speedup(r['hadfl_speedup']) if 'hadfl_speedup' in r else
          '1.00x' if name == 'hadfl' else '-')
    lines.append(f'| {name} | {stats.fmt_estimate(tta)} | {tta["reached"]}/{tta["n"]} | {sp} | '
                 f'{stats.fmt_estimate(r["final_consensus_accuracy"], 4)} | '
                 f'{r["busiest_link_bytes"]["mean"] / 1e6:.1f} | {r["chosen"]["lr"]} | '
                 f'{r["chosen"].get("h", "-")} | {_options(r["chosen"]) or "-"} |')
  lines += ['', '## Per seed', '', 'Time to target (simulated seconds) of each algorithm\'s '
            'chosen point, and HADFL\'s speedup on that seed.', '',
            '| algorithm | ' + ' | '.join(f'seed {s}' for s in seeds) + ' |',
            '|---|' + '---|' * len(seeds)]
  for name, r in results.items():
    cells = []
    for i, t in enumerate(r['time_to_target_s']['per_seed']):
      cell = fmt_tta(t)
      if 'hadfl_speedup' in r:
        cell += f' ({fmt_speedup(r["hadfl_speedup"]["per_seed"][i])})'
      cells.append(cell)
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  lines += ['', '## Grid', '', '| algorithm | lr | H | options | time to target (sim s) | '
            'reached | final acc | wall (s, all seeds) |', '|---|---|---|---|---|---|---|---|']
  for name, r in results.items():
    for g in r['grid']:
      tta = g['time_to_target_s']
      diverged = ''.join(f' ({g[k]} {k})' for k in ('diverged', 'collapsed', 'pruned')
                         if g.get(k))
      lines.append(f'| {name} | {g["point"]["lr"]} | {g["point"].get("h", "-")} | '
                   f'{_options(g["point"]) or "-"} | {stats.fmt_estimate(tta)} | '
                   f'{tta["reached"]}/{tta["n"]}{diverged} | '
                   f'{stats.fmt_estimate(g["final_consensus_accuracy"], 4)} | '
                   f'{g["wall_time_s"]:.0f} |')
    for p in r.get('not_run', []):
      lines.append(f'| {name} | {p["lr"]} | {p.get("h", "-")} | {_options(p) or "-"} | '
                   'not run on every seed (CPU time) | | | |')
  return '\n'.join(lines) + '\n'


def _ratio_cell(row) -> str:
  """A sweep row's ratio, and its seeds when only some have finished (``cached_only``)."""
  seeds = row.get('seeds')
  return f'{row["ratio"]:g}' + (f' (seeds {", ".join(map(str, seeds))})' if seeds else '')


def sweep_table(rows) -> str:
  names = sorted({n for r in rows for n in r.get('hadfl_speedup', {})})
  lines = ['| ratio | HADFL TTA (s) | ' + ' | '.join(f'speedup over {n}' for n in names) + ' |',
           '|---|---|' + '---|' * len(names)]
  for r in rows:
    hadfl = r['time_to_target_s'].get('hadfl')
    lines.append(f'| {_ratio_cell(r)} | {stats.fmt_estimate(hadfl) if hadfl else "-"} | ' +
                 ' | '.join(fmt_speedup(r['hadfl_speedup'][n]) for n in names) + ' |')
  return '\n'.join(lines) + '\n'


def sweep_tta_table(rows) -> str:
  """Every algorithm's time to target (sim s, mean ± 95% CI half width over seeds, and how
  many seeds reached it) at each speed ratio of the sweep."""
  names = sorted({n for r in rows for n in r['time_to_target_s']},
                 key=lambda n: (n != 'hadfl', n))
  lines = ['| ratio | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for r in rows:
    cells = []
    for n in names:
      tta = r['time_to_target_s'].get(n)
      cells.append('-' if tta is None else
                   f'{stats.fmt_estimate(tta)} ({tta["reached"]}/{tta["n"]})')
    lines.append(f'| {_ratio_cell(r)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _figure():
  """A matplotlib figure that is saved, never shown: no pyplot, so the process's
  backend (a notebook's inline one, say) is left as it is."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  return figure.Figure(figsize=(7, 4.5))


def mean_curve(histories, key: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The mean over seeds of consensus accuracy against ``key`` on ``grid``, and the half
  width of its 95% CI (NaN where fewer than two seeds have a value).

  Each seed's curve is a step function: at x, its last evaluation at or before x (carried
  past its end, so a run that stopped at the target keeps its last accuracy); before its
  first evaluation it has no value.
  """
  values = np.full((len(histories), len(grid)), np.nan)
  for i, h in enumerate(histories):
    xs = np.asarray([r[key] for r in h], np.float64)
    ys = np.asarray([r['consensus_accuracy'] for r in h], np.float64)
    idx = np.searchsorted(xs, grid, side='right') - 1
    values[i] = np.where(idx >= 0, ys[np.maximum(idx, 0)], np.nan)
  count = (~np.isnan(values)).sum(0)
  with np.errstate(invalid='ignore'), warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # Columns without values: NaN.
    mean = np.nanmean(values, 0)
    sd = np.nanstd(values, 0, ddof=1)
  t = scipy_stats.t.ppf(0.5 + stats.CONFIDENCE / 2, np.maximum(count - 1, 1))
  half = np.where(count >= 2, t * sd / np.sqrt(np.maximum(count, 1)), np.nan)
  return mean, half


def _null_formatter():
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  return ticker.NullFormatter()


def plot_curves(tuned: dict[str, Tuned], workdir: str, target: float) -> list[str]:
  """accuracy_vs_time.png and accuracy_vs_bytes.png of every algorithm's chosen point:
  the mean over seeds with its 95% confidence band (:func:`mean_curve`)."""
  paths = []
  for key, xlabel, fname, scale in (
      ('sim_time_s', 'simulated time (s)', 'accuracy_vs_time.png', 1.0),
      ('bytes_sent', 'communicated bytes, all devices and server (MB)',
       'accuracy_vs_bytes.png', 1e-6)):
    fig = _figure()
    ax = fig.subplots()
    lo = 1.0
    for name, t in tuned.items():
      histories = [h for h in (r.history for r in t.best.records) if h]
      if not histories:
        continue
      xs = [r[key] for h in histories for r in h if r[key] > 0]
      if not xs:
        continue
      grid = np.geomspace(min(xs), max(xs), 200)
      mean, half = mean_curve(histories, key, grid)
      line, = ax.plot(grid * scale, mean, label=f'{name} ({len(histories)} seeds)')
      ax.fill_between(grid * scale, np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1),
                      color=line.get_color(), alpha=0.15, lw=0)
      lo = min(lo, float(np.nanmin(mean)))
    ax.axhline(target, color='gray', ls='--', lw=0.8)
    ax.set_xscale('log')
    ax.xaxis.set_minor_formatter(_null_formatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel('consensus test accuracy (mean, 95% CI)')
    ax.set_ylim(max(lo, target - 0.1), 1.0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(workdir, fname)
    fig.savefig(path, dpi=100)
    paths.append(path)
  return paths


def plot_sweep(rows, workdir: str) -> str:
  """HADFL's mean paired speedup over each baseline against the speed ratio, with 95%
  CI error bars (triangles: lower bounds)."""
  fig = _figure()
  ax = fig.subplots()
  names = sorted({n for r in rows for n in r.get('hadfl_speedup', {})})
  for name in names:
    xs, ys, err, lb = [], [], [], []
    for r in rows:
      s = r['hadfl_speedup'].get(name)
      if s and s.get('mean') is not None:
        xs.append(r['ratio'])
        ys.append(s['mean'])
        ci = s.get('ci95') or [s['mean'], s['mean']]
        err.append((s['mean'] - ci[0], ci[1] - s['mean']))
        lb.append(s['lower_bound'])
    if not xs:
      continue
    bars = ax.errorbar(xs, ys, yerr=np.asarray(err).T, marker='o', capsize=3,
                       label=f'over {name}')
    for x, y, b in zip(xs, ys, lb):
      if b:
        ax.plot([x], [y], marker='^', color=bars.lines[0].get_color(), ms=9)
  ax.axhline(1.0, color='gray', lw=0.8)
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('speed ratio fastest / slowest')
  ax.set_ylabel("HADFL's speedup in time to target")
  ax.set_title('heterogeneity sweep: mean over seeds, 95% CI (triangles: lower bounds)')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(workdir, 'sweep_speedup.png')
  fig.savefig(path, dpi=100)
  return path
