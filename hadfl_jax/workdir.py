"""One run per workdir: an advisory lock, and preemption notices.

:class:`WorkdirLock` holds ``<workdir>/.lock`` with ``fcntl.flock`` for as long as a run
uses the workdir. The kernel releases the lock when the process ends, however it ends
(a crash, SIGKILL), so a lock can never be left held by a dead process; the file keeps
the holder's pid, host and start time, for the message a second run gets::

  workdir /w is in use by another run: pid 4242 on host a1, started 2026-11-29 14:03:25
  UTC. Wait for it to finish, stop it, or use another --workdir.

A lock file whose holder is gone (its process ended without removing the file) is taken
over with a message naming the old holder.

:class:`PreemptionWatch` turns SIGTERM (what TPU VMs, spot GPUs and cluster schedulers send
shortly before they take the machine) and JAX's multi-host preemption notice into a flag
that the run loop reads at every cycle boundary: it saves a checkpoint there and stops.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import signal
import socket
import threading

LOCK_FILE = '.lock'


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


class WorkdirLock:
  """An exclusive, non-blocking lock on a workdir (a context manager).

  Args:
    workdir: the directory (created if needed).
    log: where the stale-lock message goes.
  """

  def __init__(self, workdir: str, log=print):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._log = log
    self._fd: int | None = None

  def acquire(self) -> 'WorkdirLock':
    """Takes the lock, or raises :class:`WorkdirBusyError` naming the holder."""
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirBusyError(
          f'workdir {self.workdir} is in use by another run: {_describe(holder)}. Wait for '
          'it to finish, stop it, or use another --workdir.') from None
    previous = _read_holder(fd)
    if previous:
      self._log(f'workdir {self.workdir}: taking over the lock of a run that ended without '
                f'releasing it ({_describe(previous)})')
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({
        'pid': os.getpid(), 'host': socket.gethostname(),
        'started': datetime.datetime.now(datetime.timezone.utc).strftime(
            '%Y-%m-%d %H:%M:%S UTC')}).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # An empty lock file: nobody holds it.
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_holder(fd: int) -> dict:
  try:
    text = os.pread(fd, 4096, 0).decode()
    return json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {'unreadable': True}


def _describe(holder: dict) -> str:
  if not holder or 'pid' not in holder:
    return 'a process that left no details'
  return (f'pid {holder["pid"]} on host {holder.get("host", "?")}, started '
          f'{holder.get("started", "?")}')


class PreemptionWatch:
  """Notices SIGTERM (and, on multi-host, JAX's preemption sync point).

  Install it around a run: the previous SIGTERM handler is restored on exit. A SIGTERM
  that came too late for the run to act on it (during its last cycle, or while it wrote
  its files) is not swallowed: on exit it is raised again for the previous handler (by
  default the process ends, with the finished run's files complete), so a process
  running many runs, like a comparison, still stops. Only the main thread can install a
  signal handler; elsewhere the watch only checks JAX's notice.
  """

  def __init__(self):
    self.signalled = False
    self.acted = False
    self._previous = None

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self.signalled = True

  def __enter__(self) -> 'PreemptionWatch':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
      if self.signalled and not self.acted:
        signal.raise_signal(signal.SIGTERM)

  def should_stop(self, cycle: int) -> bool:
    """Whether to checkpoint and stop after ``cycle`` (every process agrees on it)."""
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        noticed = multihost_utils.reached_preemption_sync_point(cycle)
      except RuntimeError:  # The preemption service is not running.
        noticed = False
      # All processes must stop at the same cycle: a SIGTERM seen by one is shared.
      flags = multihost_utils.process_allgather(np.asarray(self.signalled))
      self.acted = bool(noticed or flags.any())
      return self.acted
    self.acted = self.signalled
    return self.acted
