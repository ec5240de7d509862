"""The comparison's grid: which points each algorithm runs, and what a point sets.

Every algorithm takes its learning rate from ``compare.learning_rates`` and, where its
module lists ``h`` in ``GRID_KNOBS``, its H from ``compare.local_steps`` (plus
``compare.extra_local_steps``); ``compare.options`` adds dimensions of an algorithm's own
options (Prague's G, FedBuff's K and server learning rate, HADFL's rho: any field of its
typed config). The algorithm's module maps the point onto its typed config
(:func:`hadfl_jax.algorithms.apply_grid_point`), so nothing here branches on a name.
"""

from __future__ import annotations

import copy
import itertools
import json
import os

import ml_collections

from hadfl_jax import algorithms
from hadfl_jax import validation
from hadfl_jax.comparison.config import parse_options


def parse_extra_local_steps(spec: str) -> dict[str, tuple[int, ...]]:
  """``'dfedavg=20,10;dpsgd=5'`` -> ``{'dfedavg': (20, 10), 'dpsgd': (5,)}``."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(';'))):
    name, _, values = part.partition('=')
    out[name.strip()] = tuple(int(v) for v in values.split(',') if v.strip())
  return out


def grid_points(config, algorithm: str) -> list[dict]:
  """The hyperparameter grid of one algorithm: dicts with ``lr``, maybe ``h`` and any
  ``'<algorithm>.<field>'`` of ``compare.options``.

  With ``compare.winners_from`` (the path of an earlier ``results.json``) the grid is the
  single point that won there, where that comparison ran the algorithm. With
  ``compare.options_at_best`` the options are left out here (:func:`option_points`).
  """
  cmp = config.compare
  earlier = carried_over(config)
  if algorithm in earlier:
    return [dict(earlier[algorithm])]
  points = []
  extra = parse_extra_local_steps(cmp.get('extra_local_steps') or '')
  steps = sorted(set(cmp.local_steps) | set(extra.get(algorithm, ())))
  options = ({} if cmp.get('options_at_best') else
             parse_options(cmp.get('options') or '').get(algorithm, {}))
  for lr in cmp.learning_rates:
    base = ([{'lr': float(lr), 'h': int(h)} for h in steps]
            if 'h' in algorithms.grid_knobs(algorithm) else [{'lr': float(lr)}])
    for point in base:
      for values in itertools.product(*options.values()):
        points.append(dict(point, **{f'{algorithm}.{f}': v for f, v in zip(options, values)}))
  return points


def carried_over(config) -> dict[str, dict]:
  """The points that won in ``compare.winners_from`` (an earlier ``results.json``), per
  algorithm there; none without it. Those algorithms run that point only; the others
  get the whole search."""
  path = config.compare.get('winners_from')
  if not path:
    return {}
  with open(os.path.expanduser(path)) as f:
    earlier = json.load(f)['algorithms']
  return {name: r['chosen'] for name, r in earlier.items() if r.get('chosen')}


def edge_points(best: dict, points: list[dict]) -> list[dict]:
  """The points that extend a grid whose edge won (``compare.extend_edges``).

  For the learning rate and H: where ``best``'s value is the largest (smallest) on its
  own line, the points of ``points`` that share ``best``'s other coordinates, the point at
  twice (half) of it, those other coordinates kept (H halves down to 1). A value that is
  alone on its line (an extension point) gets both. A coordinate with a single value in
  the whole grid was fixed, not searched, and is left alone. The line, not the whole
  grid: lr 0.05 at H 10, where H 10 was an extension run at lr 0.05 only, is the
  largest lr run at H 10, although lr 0.1 ran at H 20.
  """
  out = []
  for knob, kind in (('lr', float), ('h', int)):
    if knob not in best or len({p[knob] for p in points if knob in p}) < 2:
      continue
    line = sorted({p[knob] for p in points
                   if knob in p and all(p.get(k) == v for k, v in best.items() if k != knob)}
                  | {best[knob]})
    if best[knob] == line[-1]:
      out.append(dict(best, **{knob: kind(best[knob] * 2)}))
    if best[knob] == line[0] and (kind is float or best[knob] >= 2):
      out.append(dict(best, **{knob: kind(best[knob] / 2)}))
  return [p for p in out if p not in points]


def option_points(config, algorithm: str, best: dict) -> list[dict]:
  """``compare.options_at_best``: the algorithm's options grid at its best (lr, H).

  The combination that ``best`` ran with, the scenario's own values of those fields
  (its ``config.<algorithm>`` section, else the algorithm's defaults), is left out.
  """
  options = parse_options(config.compare.get('options') or '').get(algorithm, {})
  if not options:
    return []
  defaults = validation.algorithm_config(config, algorithm)
  out = []
  for values in itertools.product(*options.values()):
    if all(getattr(defaults, f) == v for f, v in zip(options, values)):
      continue
    out.append(dict(best, **{f'{algorithm}.{f}': v for f, v in zip(options, values)}))
  return out


def apply_point(config, algorithm: str, point: dict, problem) -> ml_collections.ConfigDict:
  """A copy of ``config`` that runs ``algorithm`` with the grid point's values.

  ``lr`` sets the optimizer's learning rate; the algorithm's module maps the rest (``h``,
  and e.g. DDP's cycle length from the evaluation interval) onto its typed config
  (:func:`hadfl_jax.algorithms.apply_grid_point`); ``'<algorithm>.<field>'`` keys (an
  ablation's) override its fields.
  """
  cfg = copy.deepcopy(config)
  cfg.algorithm = algorithm
  cfg.optimizer.learning_rate = point['lr']
  section = algorithms.apply_grid_point(
      algorithm, validation.algorithm_config(cfg), point,
      algorithms.GridContext(problem=problem, eval_interval_s=eval_interval(config, problem)))
  with cfg.unlocked():
    cfg[algorithm] = section.to_config_dict()
  return cfg


def eval_interval(config, problem) -> float:
  """``compare.eval_interval_s``, or (0) about 4 cycles of HADFL at the grid's smallest H
  (``compare.local_steps`` and ``compare.extra_local_steps``; points that extend the grid
  later do not change it, so that every point of a study is evaluated alike)."""
  if config.compare.eval_interval_s > 0:
    return float(config.compare.eval_interval_s)
  extra = parse_extra_local_steps(config.compare.get('extra_local_steps') or '')
  h = min([*config.compare.local_steps, *(h for steps in extra.values() for h in steps)])
  del problem
  return float(4 * h * config.profile.seconds_per_step)


def point_tag(point: dict) -> str:
  return '_'.join(f'{k.split(".")[-1]}{v}' for k, v in sorted(point.items()))

