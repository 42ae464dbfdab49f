"""Run checkpoints with orbax: atomic saves, the last N plus the best, and resume.

A checkpoint holds the student's :class:`~kdjax.state.TrainState` (params,
other collections, adapters, optimizer state, step), the data iterator's state
(so that a resumed run continues on the exact next batch) and a small JSON
record (e.g. the path of the teacher's own checkpoint, big_vision style: the
teacher is referenced, never copied).

Integrity: orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames
it to ``<step>`` once complete, so a save interrupted by a crash (even
SIGKILL) never shows up as a step. A complete step damaged later (a truncated
or overwritten file) is detected when it is read back: the arrays are stored
with checksums (OCDBT), and the two JSON items carry a SHA-256 digest of their
content. :meth:`Checkpointer.restore` then falls back to the newest intact
step (see there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Mapping, Optional, Sequence
import warnings

import jax
import numpy as np
from orbax.checkpoint import checkpoint_managers
import orbax.checkpoint as ocp


_ITEMS = ('state', 'data', 'meta')
_DIGEST = '__kdjax_sha256__'  # key of the content digest inside the JSON items
CORRUPT_SUFFIX = '.corrupt'


class CorruptCheckpointError(RuntimeError):
  """A checkpoint step exists on disk but cannot be read back intact."""


class CorruptCheckpointWarning(UserWarning):
  """A corrupt checkpoint step was skipped (and moved aside) by :meth:`Checkpointer.restore`."""


def _digest(record: Any) -> str:
  return hashlib.sha256(
      json.dumps(record, sort_keys=True, separators=(',', ':')).encode()).hexdigest()


def _seal(record: Optional[Mapping[str, Any]]) -> dict:
  """``record`` plus the digest of its JSON form (as it will read back)."""
  record = json.loads(json.dumps(dict(record or {})))
  return {**record, _DIGEST: _digest(record)}


def _short(error: BaseException) -> str:
  """``Type: message`` of an exception, cut to one short line (tensorstore's run long)."""
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:200]}{"..." if len(text) > 200 else ""}'


def _unseal(record: Any, where: str) -> dict:
  """Checks and strips the digest (records saved before digests pass as they are)."""
  if not isinstance(record, dict):
    raise CorruptCheckpointError(f'{where} is not a JSON object: {type(record).__name__}.')
  record = dict(record)
  digest = record.pop(_DIGEST, None)
  if digest is None and any(str(k).startswith('__kdjax') for k in record):
    raise CorruptCheckpointError(f'{where} has a damaged SHA-256 digest key.')
  if digest is not None and digest != _digest(record):
    raise CorruptCheckpointError(f'{where} does not match its SHA-256 digest.')
  return record


class _QuietUnrankedSaves(logging.Filter):
  """Drops orbax's warning for saves without metrics: they are kept as "latest" only."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'did not provide metrics' not in record.getMessage()


logging.getLogger('absl').addFilter(_QuietUnrankedSaves())


class Checkpointer:
  """Saves and restores a run directory.

  Orbax writes each step to a temporary directory and renames it when
  complete, so a run killed mid-save never leaves a half-written "latest"
  checkpoint; a step damaged after the fact is skipped by :meth:`restore`.
  Kept: the ``max_to_keep`` most recent steps, the best one by
  ``best_metric`` (when metrics are given to :meth:`save`), and every step in
  ``keep_steps`` (e.g. early-stopped teachers for ESKD).

  Args:
    directory: the run's checkpoint directory (created if missing).
    max_to_keep: how many of the most recent checkpoints to keep.
    best_metric: metric key that ranks checkpoints for the "best" one.
    best_mode: ``'max'`` or ``'min'``.
    keep_steps: steps that are never deleted once saved.

  Examples:
    >>> import tempfile, jax.numpy as jnp
    >>> ckpt = Checkpointer(tempfile.mkdtemp())
    >>> ckpt.save(3, {'w': jnp.ones(2)}, data_state={'next': 7})
    >>> ckpt.wait()
    >>> state, data = ckpt.restore({'w': jnp.zeros(2)})
    >>> state['w'], data, ckpt.latest_step()
    (Array([1., 1.], dtype=float32), {'next': 7}, 3)
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2,
               best_metric: str = 'accuracy', best_mode: str = 'max',
               keep_steps: Sequence[int] = ()):
    if best_mode not in ('max', 'min'):
      raise ValueError(f"`best_mode` must be 'max' or 'min', got {best_mode!r}.")
    if max_to_keep < 1:
      raise ValueError(f'`max_to_keep` must be >= 1, got {max_to_keep}.')
    self.directory = os.path.abspath(os.fspath(directory))
    self.best_metric = best_metric
    self.keep_steps = tuple(int(s) for s in keep_steps)
    policies = [checkpoint_managers.CustomSteps(self.keep_steps)] if self.keep_steps else []
    policy = checkpoint_managers.AnyPreservationPolicy(policies + [
        checkpoint_managers.LatestN(n=max_to_keep),
        checkpoint_managers.BestN(
            get_metric_fn=lambda m: m[best_metric], reverse=best_mode == 'min', n=1,
            keep_checkpoints_without_metrics=False),
    ])
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=_ITEMS,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=lambda m: m[best_metric], best_mode=best_mode,
            create=True))

  def save(self, step: int, state: Any, *, data_state: Optional[Mapping[str, Any]] = None,
           metrics: Optional[Mapping[str, float]] = None,
           meta: Optional[Mapping[str, Any]] = None, force: bool = False) -> None:
    """Saves ``state`` (any pytree) and the JSON-able ``data_state`` and ``meta`` at ``step``.

    The write is asynchronous; call :meth:`wait` before reading it back.
    """
    metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
    self._manager.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(_seal(data_state)),
            meta=ocp.args.JsonSave(_seal(meta))),
        metrics=metrics, force=force)

  def latest_step(self) -> Optional[int]:
    """The newest complete step, or ``None`` for an empty directory.

    "Complete" means committed by orbax (an interrupted save never is); it is
    not read back here, :meth:`restore` checks that it is intact.
    """
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The step with the best ``best_metric`` among those saved with metrics."""
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    """Every step currently on disk."""
    return list(self._manager.all_steps())

  def restore(self, template: Any, step: Optional[int] = None) -> tuple[Any, dict]:
    """Restores ``(state, data_state)`` at ``step`` (default: the newest intact step).

    With ``step=None`` (the resume path of :func:`kdjax.train.fit`) the steps
    are tried newest first. A step that cannot be read back intact (a file
    truncated, overwritten or missing) is skipped with a
    :class:`CorruptCheckpointWarning` naming its directory, and, once an
    older intact step is found, renamed to ``<step>.corrupt`` (kept for
    inspection, ignored by orbax) so that the resumed run can save that step
    again. If no step is intact, nothing is renamed and
    :class:`CorruptCheckpointError` is raised: the run does not silently
    start over.

    A step that reads back intact but does not fit ``template`` (e.g. a
    different model) is not corruption: that error is raised as is.

    Args:
      template: a pytree with the structure, shapes and dtypes to restore into
        (e.g. a freshly created state; arrays or ``jax.ShapeDtypeStruct``).
      step: which step; ``None`` for the newest intact one.

    Raises:
      FileNotFoundError: if there is no checkpoint to restore.
      CorruptCheckpointError: if ``step`` (or, with ``step=None``, every step)
        is corrupt.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    if step is not None:
      return self._restore(self._check_step(step), abstract)
    candidates = sorted(self.all_steps(), reverse=True)
    if not candidates:
      self._check_step(None)  # raises FileNotFoundError
    corrupt = []
    for s in candidates:
      try:
        restored = self._restore(s, abstract)
      except CorruptCheckpointError as e:
        corrupt.append((s, e))
        continue
      for bad, error in corrupt:
        moved = self._quarantine(bad)
        warnings.warn(
            f'Skipped corrupt checkpoint {self._step_dir(bad)} '
            f'({_short(error.__cause__)}); moved it to {moved} and restored step {s}, the '
            'newest intact one.', CorruptCheckpointWarning, stacklevel=2)
      return restored
    newest, error = corrupt[0]
    raise CorruptCheckpointError(
        f'Every checkpoint in {self.directory} is corrupt (steps {candidates}); the newest, '
        f'{self._step_dir(newest)}, failed with {_short(error.__cause__)}. Move or delete '
        'the directory to start the run over.') from error

  def restore_meta(self, step: Optional[int] = None) -> dict:
    """The JSON record saved with ``step`` (default: the latest).

    Raises:
      FileNotFoundError: if there is no checkpoint at ``step``.
      CorruptCheckpointError: if the record cannot be read back intact.
    """
    step = self._check_step(step)
    where = f'The `meta` record of {self._step_dir(step)}'
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))['meta']
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f'{where} cannot be read: {_short(e)}') from e
    return _unseal(meta or {}, where)

  def restore_raw(self, step: Optional[int] = None) -> dict:
    """Restores the saved state without a template, as nested dicts of arrays.

    Raises:
      FileNotFoundError: if there is no checkpoint at ``step``.
      CorruptCheckpointError: if the state cannot be read back intact.
    """
    step = self._check_step(step)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))['state']
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(
          f'Checkpoint {self._step_dir(step)} cannot be read back: {_short(e)}') from e

  def _restore(self, step: int, abstract: Any) -> tuple[Any, dict]:
    """Restores one step, raising :class:`CorruptCheckpointError` if it is not intact."""
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
      data = _unseal(restored['data'] or {}, 'the `data` record')
      _unseal(restored['meta'] or {}, 'the `meta` record')
    except Exception as e:  # pylint: disable=broad-except
      if not isinstance(e, CorruptCheckpointError) and self._intact(step):
        raise  # it reads back without the template: the template does not fit
      raise CorruptCheckpointError(
          f'Checkpoint {self._step_dir(step)} cannot be read back intact: {_short(e)}') from e
    return restored['state'], data

  def _intact(self, step: int) -> bool:
    """Whether every item of ``step`` reads back (no template) and matches its digest."""
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
      _unseal(restored['data'] or {}, 'data')
      _unseal(restored['meta'] or {}, 'meta')
    except Exception:  # pylint: disable=broad-except
      return False
    return True

  def _quarantine(self, step: int) -> str:
    """Renames a corrupt step directory out of orbax's sight; returns the new path."""
    source = self._step_dir(step)
    target, n = source + CORRUPT_SUFFIX, 1
    while os.path.exists(target):
      target, n = f'{source}{CORRUPT_SUFFIX}-{n}', n + 1
    if jax.process_index() == 0:
      os.rename(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'kdjax-quarantine-{step}')
    self._manager.reload()
    return target

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _check_step(self, step: Optional[int]) -> int:
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(
          f'No checkpoint{"" if step is None else f" at step {step}"} in {self.directory}; '
          f'steps on disk: {self.all_steps()}.')
    return step

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def load_variables(directory: str | os.PathLike, *, step: Optional[int] = None,
                   which: str = 'latest') -> dict:
  """Loads a model's variables (``{'params', **collections}``) from a run directory.

  This is how a teacher is loaded: by the path of its own checkpoint. The
  optimizer state is not read into the result.

  Args:
    directory: a checkpoint directory written by :class:`Checkpointer` with a
      :class:`~kdjax.state.TrainState`.
    step: a specific step (e.g. an early-stopped teacher); overrides ``which``.
    which: ``'latest'`` or ``'best'``.

  Returns:
    The variables dict.

  Raises:
    FileNotFoundError: if the directory or the step does not exist.
    CorruptCheckpointError: if that step cannot be read back intact (no
      fallback: a teacher is loaded from the step asked for, or not at all).
    ValueError: for an unknown ``which``.
  """
  if which not in ('latest', 'best'):
    raise ValueError(f"`which` must be 'latest' or 'best', got {which!r}.")
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'Teacher checkpoint directory {os.fspath(directory)!r} does not exist. Train the '
        'teacher first (python -m experiments.run ... trains and saves it), or point '
        '`teacher_checkpoint` at an existing run.')
  ckpt = Checkpointer(directory)
  try:
    if step is None and which == 'best':
      step = ckpt.best_step()
    raw = ckpt.restore_raw(step)
  finally:
    ckpt.close()
  variables = {'params': raw['params'], **dict(raw.get('model_state') or {})}
  return jax.tree.map(np.asarray, variables)
