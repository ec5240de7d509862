"""The comparison's settings (``config.compare``), typed; absent fields take defaults."""

from __future__ import annotations

import ast
import dataclasses
import os
import re

from hadfl_jax import algorithms
from hadfl_jax import typed_config as tc

_EXTRA_STEPS = re.compile(r'^\s*([\w/]+)\s*=\s*\d+(\s*,\s*\d+)*\s*,?\s*$')


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # A name, e.g. a graph or a selection rule.


def parse_options(spec: str) -> dict[str, dict[str, tuple]]:
  """``'prague.group_size=2,3;fedbuff.server_lr=0.5,1'`` ->
  ``{'prague': {'group_size': (2, 3)}, 'fedbuff': {'server_lr': (0.5, 1)}}``.

  Values are Python literals (numbers, booleans) or bare names (``hadfl.selection=speed``);
  their types are checked against the algorithm's config by ``CompareConfig.check``.

  Raises:
    ValueError: a part that is not ``<algorithm>.<field>=<value>[,<value>...]``.
  """
  out: dict[str, dict[str, tuple]] = {}
  for part in filter(None, (p.strip() for p in spec.split(';'))):
    key, eq, values = part.partition('=')
    name, dot, field = key.strip().partition('.')
    vals = tuple(_literal(v.strip()) for v in values.split(',') if v.strip())
    if not (eq and dot and name and field and vals):
      raise ValueError(f'{part!r} is not <algorithm>.<field>=<value>[,<value>...]')
    out.setdefault(name, {})[field] = vals
  return out


@dataclasses.dataclass(frozen=True)
class CompareConfig(tc.Section):
  """What ``python -m hadfl_jax.compare`` runs (``config.compare``)."""

  SECTION = 'compare'

  algorithms: tuple = tc.names(
      ('hadfl', 'dfedavg', 'ddp', 'fedavg', 'dpsgd', 'adpsgd', 'prague', 'fedbuff'),
      algorithms.ALGORITHMS, doc='the algorithms compared')
  learning_rates: tuple = tc.numbers((0.02, 0.05), low=0, low_open=True,
                                     doc='the same learning-rate grid for every algorithm')
  local_steps: tuple = tc.integers((5, 20), low=1,
                                   doc="H grid: local steps, HADFL's fastest device's steps")
  extra_local_steps: str = tc.text('', doc="more H for some algorithms: 'dfedavg=20,10;dpsgd=5'")
  options: str = tc.text('', doc="grid dimensions of algorithms' own options: "
                         "'prague.group_size=2,3,4;fedbuff.server_lr=0.5,1.0'")
  extend_edges: int = tc.integer(0, low=0, doc='rounds of extending a grid whose edge won: '
                                 'a chosen lr (H) that is its grid\'s largest or smallest gets '
                                 'the point at twice or half of it, the other coordinates kept')
  options_at_best: bool = tc.boolean(False, doc='run the options grid only at the best '
                                     '(lr, H) instead of at every point (coordinate-wise)')
  seeds: tuple = tc.integers((0, 1, 2, 3, 4), low=0,
                             doc='every grid point runs on every seed (partition, '
                             'initialisation, profile, draws); reported as mean and 95% CI')
  eval_interval_s: float = tc.number(0.0, low=0, doc='simulated seconds between evaluations; '
                                     '0: four cycles of HADFL at the smallest H')
  eval_growth: float = tc.number(0.1, low=0, doc='... and at most this relative step')
  winners_from: str | None = tc.string(None, optional=True,
                                       doc='an earlier results.json: run its winners only')
  cached_only: bool = tc.boolean(False, doc='only collect finished runs')
  stop_collapsed: bool = tc.boolean(True, doc='stop a run whose model collapsed to chance '
                                    '(comparison/runs.py, collapse_rule); counted as a miss')
  prune: bool = tc.boolean(False, doc='stop a tuning run once its point can no longer have '
                           "the best mean time to target of its algorithm's points run so far "
                           '(comparison/runs.py, prune_rule; exact for the choice); counted as '
                           'a miss at the time it stopped')
  sweep_ratios: tuple = tc.numbers((1.0, 2.0, 4.0, 8.0, 16.0), low=1,
                                   doc='heterogeneity sweep: fastest / slowest speed')
  sweep: bool = tc.boolean(False, doc='run the heterogeneity sweep too')
  ablation: bool = tc.boolean(False, doc="run HADFL's ablation too")

  def check(self, prefix: str) -> None:
    for part in filter(None, (p.strip() for p in self.extra_local_steps.split(';'))):
      match = _EXTRA_STEPS.match(part)
      if not match or match.group(1) not in algorithms.names() or not all(
          int(v) >= 1 for v in part.split('=')[1].split(',') if v.strip()):
        tc.fail(prefix + 'extra_local_steps', self.extra_local_steps,
                "must look like 'dfedavg=20,10;dpsgd=5': algorithm names from "
                f'{algorithms.names()}, steps >= 1; bad part {part!r}')
    try:
      options = parse_options(self.options)
    except ValueError as e:
      tc.fail(prefix + 'options', self.options, str(e))
    for name, fields in options.items():
      if name not in algorithms.names():
        tc.fail(prefix + 'options', self.options,
                f'names algorithm {name!r}; registered: {algorithms.names()}')
      specs = tc.specs(algorithms.ALGORITHMS.get(name).Config)
      for field, values in fields.items():
        if field not in specs:
          tc.fail(prefix + 'options', self.options,
                  f'{name} has no option {field!r}; its options: {tuple(specs)}')
        for v in values:
          specs[field].coerce(f'{prefix}options: {name}.{field}', v)
    if len(set(self.seeds)) != len(self.seeds):
      tc.fail(prefix + 'seeds', self.seeds, 'must not repeat a seed')
    if len({float(r) for r in self.sweep_ratios}) != len(self.sweep_ratios):
      tc.fail(prefix + 'sweep_ratios', self.sweep_ratios, 'must not repeat a ratio')
    if self.winners_from and not os.path.isfile(os.path.expanduser(self.winners_from)):
      tc.fail(prefix + 'winners_from', self.winners_from,
              'must be None or the path of an existing results.json')
