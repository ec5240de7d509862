"""Checkpoints of a whole run, and resuming one in the same workdir.

A checkpoint (orbax ``CheckpointManager``, ``ocp.args.StandardSave``) holds everything
the run loop needs to continue exactly where it was:

* ``state``: the algorithm's state pytree. For HADFL: the stacked device states
  (parameters, optimizer states, per-device PRNG keys, step counters, versions) and the
  coordinator's (profiled speeds, last-sync cycles, cycle index, key, the time each
  device carries into the next cycle). A device's step
  counter is its data-sampling position: its k-th batch is drawn from
  ``fold_in(key_i, k)``, so the key and the counter are the whole data stream.
* ``progress`` (JSON): the host's float64 ledger (simulated time, bytes, steps), the
  evaluation history (the rows of ``metrics.jsonl`` so far), the time-to-target
  bookkeeping and the config the run was started with.

Checkpoint ``c`` is taken after cycle ``c`` (and its evaluation, if any) and is named by
the number of cycles done. Orbax writes it into a temporary directory and renames it
when complete, so a process killed during a save leaves the previous checkpoint as the
latest one (the temporary directory is removed when the workdir is opened again).

Resuming: :func:`open_workdir` refuses a workdir that holds a run of a different config
(naming the fields that differ), except in :data:`RESUMABLE_FIELDS`, which say how long
the run is, when it checkpoints and how the simulation is executed, not what it
computes.

Example::

  checkpoints = open_workdir(config, workdir)   # ResumeError if it does not fit
  if checkpoints is not None and checkpoints.latest_step is not None:
    state, progress = checkpoints.restore(state)  # ``state``: the fresh, placed one
  ...
  checkpoints.save(cycles_done, state, progress)
  checkpoints.close()                            # waits for a save in flight
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hadfl_jax import algorithms
from hadfl_jax import sharding
from hadfl_jax import validation

PyTree = Any

CHECKPOINT_DIR = 'checkpoints'
CONFIG_FILE = 'config.json'
# Checkpoints kept: the latest, and one before it.
MAX_TO_KEEP = 2
# Config fields (a field or a whole section) that may differ when a run is resumed.
# ``num_cycles`` and ``max_sim_time`` extend (or shorten) a run; ``checkpoint_every``
# only says when to save; ``engine`` is how the simulation is executed (number of
# accelerators, buckets: a change may move results in the last bits, not their meaning);
# data directories are where the same data lives on this machine.
RESUMABLE_FIELDS = ('num_cycles', 'max_sim_time', 'checkpoint_every', 'engine',
                    'dataset.data_dir', 'dataset.idx_dir')


class ResumeError(validation.ConfigError):
  """The workdir holds a run that this config cannot continue."""


def to_json_tree(config) -> dict:
  """A ConfigDict (or dict) as the plain JSON tree ``config.json`` stores."""
  as_dict = config.to_dict() if hasattr(config, 'to_dict') else config
  return json.loads(json.dumps(as_dict))


def active_sections(tree: Mapping) -> dict:
  """A config tree without the sections of algorithms other than ``tree['algorithm']``:
  what determines a run (its resume check and the comparison's run cache)."""
  active = tree.get('algorithm')
  return {k: v for k, v in tree.items() if k == active or k not in algorithms.names()}


def _flatten(tree: Mapping, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(_flatten(value, name + '.'))
    else:
      out[name] = value
  return out


# Fields a state gained after checkpoints were written without them, restored from the
# freshly initialised state (HADFL's ``carry``: zeros, what ``outsiders='planned'`` keeps).
ADDED_STATE_FIELDS = ('carry',)
# Config fields added since, with the value that runs written before them computed with.
ADDED_CONFIG_FIELDS = {'hadfl.outsiders': 'planned'}


def _resumable(field: str) -> bool:
  return any(field == f or field.startswith(f + '.') for f in RESUMABLE_FIELDS)


def config_differences(saved: Mapping, current: Mapping) -> list[str]:
  """The fields, outside :data:`RESUMABLE_FIELDS`, whose values differ.

  Args:
    saved: the config the workdir's run was started with (a JSON tree).
    current: this run's config (a JSON tree, see :func:`to_json_tree`).

  Only the active algorithm's section counts (:func:`active_sections`): a DDP run may be
  resumed after ``hadfl.rho`` changed.

  Returns:
    One line per differing field, ``'name: <saved> in the workdir, <current> now'``,
    sorted by field name; empty if the run may be resumed.
  """
  missing = object()
  old, new = _flatten(active_sections(saved)), _flatten(active_sections(current))
  for field, value in ADDED_CONFIG_FIELDS.items():
    for tree, flat in ((saved, old), (current, new)):
      if field.split('.')[0] in active_sections(tree) and field not in flat:
        flat[field] = value  # Written before the field existed.
  lines = []
  for field in sorted(set(old) | set(new)):
    a, b = old.get(field, missing), new.get(field, missing)
    if a != b and not _resumable(field):
      show = lambda v: 'absent' if v is missing else json.dumps(v)
      lines.append(f'{field}: {show(a)} in the workdir, {show(b)} now')
  return lines


def check_same_run(saved: Mapping, current: Mapping, workdir: str, source: str) -> None:
  """Raises :class:`ResumeError` unless ``current`` may continue the run of ``saved``.

  Args:
    saved: the workdir's config (a JSON tree).
    current: this run's config (a JSON tree).
    workdir: for the message.
    source: where ``saved`` was read, for the message.
  """
  diffs = config_differences(saved, current)
  if diffs:
    raise ResumeError(
        f'workdir {workdir} holds a run of a different config ({source}); fields that '
        f'differ: ' + '; '.join(diffs) + '. Use a new --workdir, or the workdir\'s '
        f'values. Only {", ".join(RESUMABLE_FIELDS)} may change when a run is resumed.')


class Checkpointer:
  """Saves and restores a run's state and progress in ``<workdir>/checkpoints``.

  Attributes:
    directory: where the checkpoints are.
    latest_step: cycles done at the latest complete checkpoint, None if there is none.
  """

  def __init__(self, workdir: str):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_names=('state', 'progress'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=MAX_TO_KEEP,
            # A save that a kill interrupted leaves a temporary directory: remove it.
            cleanup_tmp_directories=True,
        ),
    )
    self.latest_step = self._manager.latest_step()

  def progress(self, step: int) -> dict:
    """The host-side progress saved at ``step`` (no arrays are read)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        progress=ocp.args.JsonRestore()))
    return restored.progress

  def restore(self, like: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
    """The state and progress saved at ``step`` (default: the latest).

    Args:
      like: a state with the structure, shapes, dtypes and shardings to restore into
        (e.g. the freshly initialised, placed state).
      step: which checkpoint.

    Returns:
      ``(state, progress)``.
    """
    step = self.latest_step if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    added = self._added_fields(like, step)
    if not added:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
      return restored.state, restored.progress
    # Written before the state gained ``added``: restore the fields it has, take the
    # others from ``like`` (their initial values).
    target = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)
              if f.name not in added}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore()))
    state = like.replace(**restored.state)
    return state, dict(restored.progress, fields_added_since_saved=sorted(added))

  def _added_fields(self, like: PyTree, step: int) -> set[str]:
    """The fields of :data:`ADDED_STATE_FIELDS` that ``like`` has and checkpoint ``step``
    lacks (it was written by a version before them)."""
    fields = set(ADDED_STATE_FIELDS) & set(getattr(like, '__dataclass_fields__', ()))
    if not fields:
      return set()
    with ocp.StandardCheckpointer() as reader:
      metadata = reader.metadata(os.path.join(self.directory, str(step), 'state'))
    saved = getattr(metadata, 'item_metadata', metadata)
    saved = getattr(saved, 'tree', saved)
    return {f for f in fields if isinstance(saved, Mapping) and saved.get(f) is None}

  def save(self, step: int, state: PyTree, progress: dict) -> None:
    """Saves ``state`` and ``progress`` as checkpoint ``step`` (asynchronously).

    The arrays are copied to host memory before this returns, so ``state`` may be
    donated to the next cycle; the checkpoint becomes the latest once it is complete.
    ``progress`` gets the state's digest (:func:`state_digest`), which a restore checks:
    a corruption that the storage format itself does not notice is caught there.
    """
    progress = {**progress, 'state_digest': state_digest(state)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)),
        force=True)
    self.latest_step = step

  def restore_newest_good(self, like: PyTree, check=None, log=print
                          ) -> tuple[int, PyTree, dict] | None:
    """The newest checkpoint that restores intact: ``(step, state, progress)``.

    A checkpoint that fails to restore (a corrupt, truncated or missing file, or a
    state whose digest differs from the one saved with it) is reported by name and
    deleted, and the one before it is tried.

    Args:
      like: as for :meth:`restore`.
      check: called with each restored progress; it raises :class:`ResumeError` when the
        run may not continue from it (a different config), which is not a corruption
        and is raised as it is.
      log: where the reports go.

    Returns:
      None when there is no checkpoint.

    Raises:
      ResumeError: from ``check``, or when no checkpoint restores (naming each and why).
    """
    failures = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, progress = self.restore(like, step)
        digest = progress.get('state_digest')
        added = progress.pop('fields_added_since_saved', ())
        saved_part = (state.replace(**dict.fromkeys(added, None)) if added
                      else state)  # What the digest covers.
        if digest is not None and digest != state_digest(saved_part):
          raise ValueError('the restored state differs from the state that was saved '
                           '(digest mismatch)')
        if check is not None:
          check(progress)
      except ResumeError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        reason = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]
        failures.append(f'checkpoint {step} ({reason})')
        log(f'checkpoint {step} in {self.directory} cannot be restored ({reason}); it is '
            'removed and the one before it is tried')
        self._manager.delete(step)
        continue
      self._manager.reload()
      self.latest_step = self._manager.latest_step()
      return step, state, progress
    self._manager.reload()
    self.latest_step = self._manager.latest_step()
    if failures:
      raise ResumeError(f'no checkpoint in {self.directory} can be restored: '
                        + '; '.join(failures) + '. Use a new --workdir to start over.')
    return None

  def close(self) -> None:
    """Waits for a save in flight to complete, then releases the manager (once)."""
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None


def state_digest(state: PyTree) -> str:
  """A SHA-256 of every leaf's bytes, shape and dtype (host copies), in tree order.

  With several processes each leaf's shards are gathered first, so every process computes
  the digest of the whole global state (and they agree)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    array = np.ascontiguousarray(sharding.to_host(leaf))
    digest.update(f'{array.dtype}{array.shape}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def algorithm_revision(config) -> int:
  """The ``REVISION`` of ``config.algorithm``'s module: raised when a correction changes
  what the algorithm computes (1 for a module that declares none)."""
  from hadfl_jax import algorithms  # pylint: disable=g-import-not-at-top
  return int(getattr(algorithms.ALGORITHMS.get(config.algorithm), 'REVISION', 1))


def run_identity(config) -> dict:
  """What a checkpoint records of its run (:func:`to_json_tree`), with the algorithm's
  ``REVISION`` where it is past 1: a run checkpointed by an earlier revision of a
  corrected algorithm is not continued by a later one (:func:`check_same_run` names the
  field ``algorithm_revision``)."""
  tree = to_json_tree(config)
  revision = algorithm_revision(config)
  if revision != 1:
    tree['algorithm_revision'] = revision
  return tree


def open_workdir(config, workdir: str) -> Checkpointer | None:
  """Checks that ``config`` may run in ``workdir``; opens its checkpoints.

  Call it before writing anything into ``workdir``.

  Args:
    config: the run's (validated) config.
    workdir: the run's output directory (it need not exist).

  Returns:
    A :class:`Checkpointer`, or None when ``config.checkpoint_every`` is 0 and the
    workdir holds no checkpoints.

  Raises:
    ResumeError: ``workdir/config.json`` or its latest checkpoint holds a different
      config (outside :data:`RESUMABLE_FIELDS`), or the latest checkpoint lies beyond
      ``config.num_cycles``.
  """
  current = to_json_tree(config)
  config_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(config_path):
    with open(config_path) as f:
      check_same_run(json.load(f), current, workdir, config_path)
  if not config.checkpoint_every and not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    return None
  checkpoints = Checkpointer(workdir)
  step = checkpoints.latest_step
  if step is None:
    return checkpoints
  try:
    try:
      saved = checkpoints.progress(step)['config']
    except Exception:  # pylint: disable=broad-except
      saved = None  # Unreadable: the restore reports it and falls back to an older one.
    if saved is not None:
      check_same_run(saved, run_identity(config), workdir,
                     f'checkpoint {step} in {checkpoints.directory}')
    if step > config.num_cycles:
      raise ResumeError(
          f'config.num_cycles={config.num_cycles} is below the cycles already done: the '
          f'latest checkpoint in {checkpoints.directory} is at cycle {step}. Use '
          f'num_cycles >= {step}, or a new --workdir.')
  except ResumeError:
    checkpoints.close()
    raise
  logging.info('resuming from checkpoint %d in %s', step, checkpoints.directory)
  return checkpoints
