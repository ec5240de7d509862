"""An event-driven simulated clock, vectorised (``docs/spec.md``, "Event clock").

Asynchronous methods (AD-PSGD, Prague, FedBuff) have no rounds: every device has its own
timeline, and what it does at an event (finish its local steps, exchange models) happens
at its own time. The engine keeps that vectorised:

* :class:`Clock` holds each device's next-event time and how many events it has had;
* one *tick* processes every device whose event falls in the window
  ``[t0, t0 + width]``, ``t0`` being the earliest pending event (:func:`due`), with
  ``vmap`` and masks over the device axis, no Python loop over devices; the devices that
  fired schedule their next event (:func:`fire`);
* the global time is ``t0``, the earliest pending event (:func:`now`): it never goes
  back, since an event that is deferred keeps its time.

With ``width`` small enough that no two events share a window, a tick is exactly one
event, processed in time order: the vectorised simulation then equals a plain event loop
that pops one event at a time (``tests/events_test.py`` checks parameters against such a
loop). A larger window processes events that are close in time together, as if they
were simultaneous: faster (fewer ticks, wider vmaps), less exact; ``docs/spec.md`` gives
the measured effect of the width on time to accuracy.

Random draws are keyed by ``(device, its event count)`` (:func:`event_keys`), not by the
tick, so that a device's choices do not depend on how events are grouped into ticks.

Pairwise exchanges between devices that fire in the same tick may collide (two devices
picking the same partner): :func:`first_come` keeps, for every device, only the earliest
event that touches it (ties broken by device index) and defers the others to the next
tick, as an atomic exchange would serialise them.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

# The next-event time of a device with nothing scheduled (e.g. waiting for others): the
# largest float32, finite so that the state passes the run's finiteness check.
NEVER = float(np.finfo(np.float32).max)


@flax.struct.dataclass
class Clock:
  """Every device's timeline.

  Attributes:
    next_N: float32 simulated time of each device's next event.
    events_N: int32 events each device has had (keys its random draws).
  """

  next_N: jax.Array
  events_N: jax.Array

  @classmethod
  def start(cls, num_devices: int) -> 'Clock':
    """Every device has an event at time 0 (starting its first local computation)."""
    return cls(next_N=jnp.zeros((num_devices,), jnp.float32),
               events_N=jnp.zeros((num_devices,), jnp.int32))


def now(clock: Clock) -> jax.Array:
  """The global simulated time: the earliest pending event."""
  return jnp.min(clock.next_N)


def due(clock: Clock, width) -> jax.Array:
  """Which devices' events fall in this tick's window ``[now, now + width]``."""
  return clock.next_N <= now(clock) + width


def fire(clock: Clock, fired_N: jax.Array, duration_N: jax.Array) -> Clock:
  """The devices that fired schedule their next event ``duration_N`` after this one."""
  return Clock(next_N=jnp.where(fired_N, clock.next_N + duration_N, clock.next_N),
               events_N=clock.events_N + fired_N.astype(jnp.int32))


def event_keys(key: jax.Array, clock: Clock) -> jax.Array:
  """One PRNG key per device for its current event: ``fold_in(fold_in(key, i), e_i)``."""
  n = clock.next_N.shape[0]
  return jax.vmap(lambda i, e: jax.random.fold_in(jax.random.fold_in(key, i), e))(
      jnp.arange(n), clock.events_N)


def priority(clock: Clock) -> jax.Array:
  """Each device's rank in event order (earlier first, ties by device index)."""
  order_N = jnp.lexsort((jnp.arange(clock.next_N.shape[0]), clock.next_N))
  return jnp.zeros_like(order_N).at[order_N].set(jnp.arange(order_N.shape[0]))


def first_come(active_N: jax.Array, partner_N: jax.Array, rank_N: jax.Array) -> jax.Array:
  """Which of the active devices' exchanges (device i with ``partner_N[i]``) go ahead.

  An exchange goes ahead if it is the earliest (lowest ``rank_N``) of the active exchanges
  that touch either of its two devices; the others wait for the next tick. (An exchange
  that lost only to one that itself waits is deferred too: conservative, and exact
  whenever one event fires per tick.)
  """
  n = active_N.shape[0]
  big = jnp.iinfo(jnp.int32).max
  claim_N = jnp.where(active_N, rank_N, big).astype(jnp.int32)
  first_N = jnp.full((n,), big, jnp.int32)
  first_N = first_N.at[jnp.arange(n)].min(claim_N)
  first_N = first_N.at[partner_N].min(claim_N)
  return active_N & (first_N == claim_N) & (first_N[partner_N] == claim_N)
