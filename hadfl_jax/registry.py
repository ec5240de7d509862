"""Named registries: how built-ins and researchers' additions are found by name.

Every extension point of the project (algorithms, selection rules, averaging weights,
optimizer-state rules, losses, models, partitioners, gossip graphs) is a
:class:`Registry`. The built-ins register themselves at import exactly as a researcher's
module does, so an addition is one ``register`` call in the researcher's own module,
with no edit of the package::

  from hadfl_jax.core import selection

  @selection.RULES.register('loss_aware')
  def loss_aware(inputs):
    return inputs.version_N + 1.0

A config then names it (``--config.hadfl.selection=loss_aware``) once the module is
imported; ``config.imports`` lists modules that the command line imports first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar('T')


class UnknownNameError(ValueError, KeyError):
  """A name that is not registered (a ValueError, and a KeyError for mapping-like use)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ''


class Registry(Generic[T]):
  """A mapping from names to objects of one kind, filled by :meth:`register`.

  Args:
    kind: what the registry holds, for messages (e.g. ``'selection rule'``).
    check: an optional function called on every object registered; it raises
      ``TypeError`` or ``ValueError`` for an object that cannot serve.
  """

  def __init__(self, kind: str, check: Callable[[str, T], None] | None = None):
    self.kind = kind
    self._check = check
    self._items: dict[str, T] = {}

  def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
    """Registers ``obj`` under ``name``; without ``obj``, a decorator that does.

    Args:
      name: the name configs use; a non-empty string.
      obj: what to register.
      overwrite: replace an existing entry (otherwise a second registration of the
        same name is an error, unless it is the very same object, as when a module is
        imported twice).

    Returns:
      ``obj`` (so it can be used as a decorator).

    Raises:
      ValueError: an empty name, or a name already taken by another object.
    """
    if obj is None:
      return lambda o: self.register(name, o, overwrite=overwrite)
    if not isinstance(name, str) or not name:
      raise ValueError(f'a {self.kind} name must be a non-empty string, got {name!r}')
    old = self._items.get(name)
    if old is not None and old is not obj and not overwrite:
      raise ValueError(f'{self.kind} {name!r} is already registered ({old!r}); pass '
                       'overwrite=True to replace it')
    if self._check is not None:
      self._check(name, obj)
    self._items[name] = obj
    return obj

  def unregister(self, name: str) -> None:
    """Removes ``name`` (for tests and notebooks that re-register)."""
    self._items.pop(name, None)

  def snapshot(self) -> dict[str, T]:
    """The current entries (to :meth:`restore` later, e.g. after a test)."""
    return dict(self._items)

  def restore(self, snapshot: dict[str, T]) -> None:
    """Puts the entries back to a :meth:`snapshot`."""
    self._items = dict(snapshot)

  def get(self, name: str) -> T:
    """The object registered as ``name``.

    Raises:
      UnknownNameError: naming the registry and every registered name.
    """
    try:
      return self._items[name]
    except (KeyError, TypeError):
      raise UnknownNameError(f'unknown {self.kind} {name!r}; registered: {self.names()}. An '
                     'addition of your own must be imported (config.imports) before '
                     'it is named') from None

  def names(self) -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(self._items)

  def __contains__(self, name) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(self._items)

  def __len__(self) -> int:
    return len(self._items)

  def __repr__(self) -> str:
    return f'Registry({self.kind!r}, {list(self._items)})'
