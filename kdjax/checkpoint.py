"""Run checkpoints with orbax: atomic saves, the last N plus the best, and resume.

A checkpoint holds the student's :class:`~kdjax.state.TrainState` (params,
other collections, adapters, optimizer state, step), the data iterator's state
(so that a resumed run continues on the exact next batch) and a small JSON
record (e.g. the path of the teacher's own checkpoint, big_vision style: the
teacher is referenced, never copied).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from orbax.checkpoint import checkpoint_managers
import orbax.checkpoint as ocp


_ITEMS = ('state', 'data', 'meta')


class _QuietUnrankedSaves(logging.Filter):
  """Drops orbax's warning for saves without metrics: they are kept as "latest" only."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'did not provide metrics' not in record.getMessage()


logging.getLogger('absl').addFilter(_QuietUnrankedSaves())


class Checkpointer:
  """Saves and restores a run directory.

  Orbax writes each step to a temporary directory and renames it when
  complete, so a run killed mid-save never leaves a corrupt "latest"
  checkpoint. Kept: the ``max_to_keep`` most recent steps, the best one by
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
            data=ocp.args.JsonSave(dict(data_state or {})),
            meta=ocp.args.JsonSave(dict(meta or {}))),
        metrics=metrics, force=force)

  def latest_step(self) -> Optional[int]:
    """The newest complete step, or ``None`` for an empty directory."""
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The step with the best ``best_metric`` among those saved with metrics."""
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    """Every step currently on disk."""
    return list(self._manager.all_steps())

  def restore(self, template: Any, step: Optional[int] = None) -> tuple[Any, dict]:
    """Restores ``(state, data_state)`` at ``step`` (default: the latest).

    Args:
      template: a pytree with the structure, shapes and dtypes to restore into
        (e.g. a freshly created state; arrays or ``jax.ShapeDtypeStruct``).
      step: which step; ``None`` for the latest.

    Raises:
      FileNotFoundError: if there is no checkpoint to restore.
    """
    step = self._check_step(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return restored['state'], dict(restored['data'] or {})

  def restore_meta(self, step: Optional[int] = None) -> dict:
    """The JSON record saved with ``step`` (default: the latest)."""
    step = self._check_step(step)
    return dict(self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta'] or {})

  def restore_raw(self, step: Optional[int] = None) -> dict:
    """Restores the saved state without a template, as nested dicts of arrays."""
    step = self._check_step(step)
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))['state']

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
