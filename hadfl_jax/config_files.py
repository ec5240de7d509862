r"""Config files on the command line: a path, or the name of a packaged config.

The scenario configs of the project's ``configs/`` folder are installed inside the package
as ``hadfl_jax.configs`` (``pyproject.toml``), so an installed copy has them too. The
command-line modules accept either form for ``--config``::

  python -m hadfl_jax.main --config quick_compare --workdir /tmp/run
  python -m hadfl_jax.main --config configs/default.py --workdir /tmp/run   # in a clone
  python -m hadfl_jax.main --config my_study.py --workdir /tmp/run          # your own

A value that names an existing file is used as it is; otherwise a bare name (``default``,
``default.py``) or the clone's ``configs/NAME.py`` is the packaged config of that name.
``ml_collections``' ``path:argument`` suffix is kept.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
from typing import Sequence

from absl import app

PACKAGE = 'hadfl_jax.configs'


def packaged_names() -> tuple[str, ...]:
  """The names of the packaged configs, e.g. ``('default', 'paper_mnist', ...)``."""
  return tuple(sorted(
      entry.name[:-3] for entry in importlib.resources.files(PACKAGE).iterdir()
      if entry.name.endswith('.py') and not entry.name.startswith('_')
  ))


def packaged_path(name: str) -> str:
  """The file of the packaged config ``name``.

  Raises:
    ValueError: naming the packaged configs, if there is none of that name.
  """
  if name not in packaged_names():
    raise ValueError(f'no packaged config {name!r}; packaged are {packaged_names()}')
  return importlib.util.find_spec(f'{PACKAGE}.{name}').origin


def resolve(value: str) -> str:
  """A ``--config`` value with a packaged config's name replaced by its file's path.

  Raises:
    ValueError: if ``value`` is neither an existing file nor a packaged config.
  """
  path, sep, argument = value.partition(':')
  if os.path.isfile(path):
    return value
  folder, base = os.path.split(path)
  name = base[:-3] if base.endswith('.py') else base
  if folder in ('', 'configs') and name in packaged_names():
    return packaged_path(name) + sep + argument
  raise ValueError(
      f'--config {value}: no such file, and not a packaged config (packaged: '
      f'{", ".join(packaged_names())})'
  )


def resolve_argv(argv: Sequence[str], flag: str = 'config') -> list[str]:
  """``argv`` with the value of ``--flag`` (``--flag=V`` or ``--flag V``) resolved."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    for prefix in (f'--{flag}=', f'-{flag}='):
      if arg.startswith(prefix):
        argv[i] = prefix + resolve(arg[len(prefix):])
    if arg in (f'--{flag}', f'-{flag}') and i + 1 < len(argv):
      argv[i + 1] = resolve(argv[i + 1])
  return argv


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parser, with ``--config`` resolved first (``app.run(flags_parser=...)``)."""
  try:
    argv = resolve_argv(argv)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  return app.parse_flags_with_usage(argv)
