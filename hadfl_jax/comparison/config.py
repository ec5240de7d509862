"""The comparison's settings (``config.compare``), typed; absent fields take defaults."""

from __future__ import annotations

import dataclasses
import os
import re

from hadfl_jax import algorithms
from hadfl_jax import typed_config as tc

_EXTRA_STEPS = re.compile(r'^\s*([\w/]+)\s*=\s*\d+(\s*,\s*\d+)*\s*,?\s*$')


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
  eval_interval_s: float = tc.number(0.0, low=0, doc='simulated seconds between evaluations; '
                                     '0: four cycles of HADFL at the smallest H')
  eval_growth: float = tc.number(0.1, low=0, doc='... and at most this relative step')
  winners_from: str | None = tc.string(None, optional=True,
                                       doc='an earlier results.json: run its winners only')
  cached_only: bool = tc.boolean(False, doc='only collect finished runs')
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
    if self.winners_from and not os.path.isfile(os.path.expanduser(self.winners_from)):
      tc.fail(prefix + 'winners_from', self.winners_from,
              'must be None or the path of an existing results.json')
