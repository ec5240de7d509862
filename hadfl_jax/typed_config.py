"""Typed, self-validating config sections.

A section of a run config (an algorithm's options, the engine's, the faults') is a
frozen dataclass whose fields declare their default and what values they allow::

  @dataclasses.dataclass(frozen=True)
  class Config(typed_config.Section):
    SECTION = 'hadfl'
    rho: float = typed_config.number(0.5, low=0, high=1, low_open=True,
                                     doc='fraction of devices that sync per cycle')

That declaration is the only place the default lives and the only place the bounds are
written: the instance checks itself when it is made, from Python or from a command
line, with one message format (``config.hadfl.rho=-1 is invalid: must be in (0, 1]``);
:meth:`Section.to_config_dict` writes the section into ``configs/default.py``'s
ConfigDict; :meth:`Section.from_config` reads it back, refusing unknown fields; and the
property tests draw invalid values from the same declared bounds (:func:`specs`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers as numbers_lib
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import ml_collections


class ConfigError(ValueError):
  """A config field has a value that the run cannot use."""


def fail(field: str, value, allowed: str):
  """Raises :class:`ConfigError` naming ``config.<field>``, the value and what is allowed."""
  raise ConfigError(f'config.{field}={value!r} is invalid: {allowed}')


def is_number(value, integer: bool = False) -> bool:
  """A real number (an integer if ``integer``), never a bool."""
  if isinstance(value, bool) or not isinstance(value, numbers_lib.Real):
    return False
  return isinstance(value, numbers_lib.Integral) if integer else True


def interval(low, high, low_open=False, high_open=False) -> str:
  lo = '(' if low_open else '['
  hi = ')' if high_open else ']'
  return f'{lo}{"-inf" if low is None else low}, {"inf" if high is None else high}{hi}'


def in_bounds(v, low, high, low_open=False, high_open=False) -> bool:
  return not ((low is not None and (v < low or (low_open and v == low))) or
              (high is not None and (v > high or (high_open and v == high))))


@dataclasses.dataclass(frozen=True)
class Spec:
  """What one field allows (read by :class:`Section` and by the property tests).

  Attributes:
    kind: ``number``, ``integer``, ``choice``, ``boolean``, ``string`` (non-empty),
      ``text`` (any string), ``numbers`` or ``integers`` (a tuple of them), ``names`` (a
      tuple of distinct choices) or ``rows`` (a tuple of integer rows of ``width``).
    low, high, low_open, high_open: bounds of a number (or of each element).
    optional: None is allowed too.
    choices: the allowed names: a tuple, or any object with ``names()`` (a
      :class:`hadfl_jax.registry.Registry`, read when a value is checked, so additions
      registered later are allowed).
    min_len: the fewest elements of a ``numbers`` field.
    width: the length of each row of a ``rows`` field.
    doc: what the field means.
  """

  kind: str
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  optional: bool = False
  choices: Any = ()
  min_len: int = 0
  width: int = 0
  doc: str = ''

  def allowed_choices(self) -> tuple[str, ...]:
    return tuple(self.choices.names() if hasattr(self.choices, 'names') else self.choices)

  def coerce(self, field: str, value):
    """The value in its canonical type (floats for numbers, tuples for sequences).

    Raises:
      ConfigError: naming ``config.<field>``, the value and what is allowed.
    """
    if value is None and self.optional:
      return None
    none = ' or None' if self.optional else ''
    bounds = interval(self.low, self.high, self.low_open, self.high_open)
    if self.kind in ('number', 'integer'):
      integer = self.kind == 'integer'
      if not is_number(value, integer):
        fail(field, value, f'must be {"an integer" if integer else "a number"}{none}')
      if not math.isfinite(value):
        fail(field, value, 'must be finite')
      if not in_bounds(value, self.low, self.high, self.low_open, self.high_open):
        fail(field, value, f'must be in {bounds}')
      return int(value) if integer else float(value)
    if self.kind == 'choice':
      allowed = self.allowed_choices()
      if not isinstance(value, str) or value not in allowed:
        fail(field, value, f'must be one of {allowed}')
      return value
    if self.kind == 'boolean':
      if not isinstance(value, bool):
        fail(field, value, 'must be True or False')
      return value
    if self.kind == 'string':
      if not isinstance(value, str) or not value:
        fail(field, value, f'must be a non-empty string{none}')
      return value
    if self.kind in ('numbers', 'integers'):
      integer = self.kind == 'integers'
      what = (f'must be a tuple of at least {self.min_len} {self.kind} in {bounds}')
      if not isinstance(value, (tuple, list)) or len(value) < self.min_len or not all(
          is_number(v, integer) and math.isfinite(v) and
          in_bounds(v, self.low, self.high, self.low_open, self.high_open) for v in value):
        fail(field, value, what)
      return tuple(int(v) if integer else float(v) for v in value)
    if self.kind == 'names':
      allowed = self.allowed_choices()
      if (not isinstance(value, (tuple, list)) or len(value) < max(self.min_len, 1) or
          len(set(value)) != len(value) or
          not all(isinstance(v, str) and v in allowed for v in value)):
        fail(field, value, f'must be a tuple of distinct names from {allowed}')
      return tuple(value)
    if self.kind == 'text':
      if not isinstance(value, str):
        fail(field, value, 'must be a string')
      return value
    if self.kind == 'rows':
      if not isinstance(value, (tuple, list)) or not all(
          isinstance(r, (tuple, list)) and len(r) == self.width and
          all(is_number(v, True) for v in r) for r in value):
        fail(field, value, f'must be a tuple of rows of {self.width} integers')
      return tuple(tuple(int(v) for v in r) for r in value)
    raise TypeError(f'unknown field kind {self.kind!r}')

  def placeholder_type(self):
    return {'number': float, 'integer': int, 'string': str, 'choice': str}.get(self.kind)


def _field(default, spec: Spec):
  return dataclasses.field(default=default, metadata={'spec': spec})


def number(default: float | None, *, low=None, high=None, low_open=False, high_open=False,
           optional=False, doc=''):
  """A finite real number within the bounds."""
  return _field(default, Spec('number', low, high, low_open, high_open, optional, doc=doc))


def integer(default: int | None, *, low=None, high=None, optional=False, doc=''):
  """An integer within the closed bounds."""
  return _field(default, Spec('integer', low, high, optional=optional, doc=doc))


def choice(default: str, choices, doc=''):
  """One of ``choices`` (a tuple of names, or a registry)."""
  return _field(default, Spec('choice', choices=choices, doc=doc))


def boolean(default: bool, doc=''):
  return _field(default, Spec('boolean', doc=doc))


def string(default: str | None, *, optional=False, doc=''):
  """A non-empty string."""
  return _field(default, Spec('string', optional=optional, doc=doc))


def numbers(default: tuple | None, *, low=None, high=None, low_open=False, min_len=1,
            optional=False, doc=''):
  """A tuple of at least ``min_len`` finite numbers within the bounds."""
  return _field(default, Spec('numbers', low, high, low_open, optional=optional,
                              min_len=min_len, doc=doc))


def integers(default: tuple, *, low=None, high=None, min_len=1, doc=''):
  """A tuple of at least ``min_len`` integers within the closed bounds."""
  return _field(default, Spec('integers', low, high, min_len=min_len, doc=doc))


def names(default: tuple, choices, doc=''):
  """A non-empty tuple of distinct names from ``choices`` (a tuple or a registry)."""
  return _field(default, Spec('names', choices=choices, doc=doc))


def text(default: str, doc=''):
  """Any string, the empty one included."""
  return _field(default, Spec('text', doc=doc))


def rows(default: tuple, *, width: int, doc=''):
  """A tuple of rows of ``width`` integers."""
  return _field(default, Spec('rows', width=width, doc=doc))


def specs(cls) -> dict[str, Spec]:
  """The declared :class:`Spec` of every field of a section class."""
  return {f.name: f.metadata['spec'] for f in dataclasses.fields(cls) if 'spec' in f.metadata}


class Section:
  """Base of the frozen dataclasses that hold one config section (see the module doc).

  Subclasses set ``SECTION``, the config path used in messages, and may override
  :meth:`check` for constraints between their own fields, and :meth:`check_devices`
  for constraints that need the number of devices.
  """

  SECTION: ClassVar[str] = ''

  def __post_init__(self):
    self._validate(type(self).SECTION)

  def _validate(self, section: str) -> None:
    prefix = f'{section}.' if section else ''
    for name, spec in specs(type(self)).items():
      object.__setattr__(self, name, spec.coerce(prefix + name, getattr(self, name)))
    self.check(prefix)

  def check(self, prefix: str) -> None:
    """Constraints between this section's fields; ``prefix`` is ``'<section>.'``."""

  def check_devices(self, num_devices: int, prefix: str) -> None:
    """Constraints that need N, the number of devices (e.g. a group size K <= N)."""

  @classmethod
  def from_config(cls, values: Mapping | None, section: str | None = None):
    """The section from a config's mapping; absent fields take their defaults.

    Args:
      values: e.g. ``config.hadfl`` (a ConfigDict, a dict, or None for all defaults).
      section: the config path for messages (default ``SECTION``).

    Raises:
      ConfigError: an unknown field, or an invalid value, named ``config.<section>.<f>``.
    """
    section = cls.SECTION if section is None else section
    prefix = f'{section}.' if section else ''
    values = dict(values or {})
    known = specs(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise ConfigError(f'config.{prefix}{unknown[0]} is not a field of {cls.__module__}.'
                        f'{cls.__qualname__}; its fields: {tuple(known)}')
    # Validate with this section's name before the constructor validates again.
    coerced = {k: known[k].coerce(prefix + k, v) for k, v in values.items()}
    obj = cls.__new__(cls)
    for f in dataclasses.fields(cls):
      object.__setattr__(obj, f.name, coerced.get(f.name, f.default))
    obj._validate(section)  # pylint: disable=protected-access
    return obj

  def to_config_dict(self) -> ml_collections.ConfigDict:
    """The section as a ConfigDict (optional fields as typed placeholders, so that a
    command line can set them)."""
    out = ml_collections.ConfigDict()
    for name, spec in specs(type(self)).items():
      value = getattr(self, name)
      if value is None and spec.placeholder_type() is not None:
        value = ml_collections.config_dict.placeholder(spec.placeholder_type())
      out[name] = value
    return out

  def to_dict(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def replace(self, **changes):
    """A copy with ``changes`` (checked like any new section)."""
    return dataclasses.replace(self, **changes)


def describe(cls) -> str:
  """A table of a section's fields: name, default, allowed values, meaning (for docs)."""
  lines = []
  for f in dataclasses.fields(cls):
    spec = f.metadata.get('spec')
    if spec is None:
      continue
    if spec.kind in ('choice', 'names'):
      allowed = ' | '.join(spec.allowed_choices())
    elif spec.kind in ('number', 'integer', 'numbers', 'integers'):
      allowed = interval(spec.low, spec.high, spec.low_open, spec.high_open)
    else:
      allowed = spec.kind
    lines.append(f'{f.name} = {f.default!r}  ({allowed}){": " + spec.doc if spec.doc else ""}')
  return '\n'.join(lines)


def iter_specs(sections: Iterable[tuple[str, type]]) -> Iterable[tuple[str, Spec]]:
  """``(dotted field name, spec)`` for every field of the given ``(section, class)``."""
  for section, cls in sections:
    for name, spec in specs(cls).items():
      yield f'{section}.{name}', spec

