"""Training loops as plain functions: usable from a notebook or a runner.

:func:`fit` drives a jitted step over a data iterator with a progress bar,
metrics logging, periodic atomic checkpoints and automatic resume. A run that
is killed and started again with the same arguments restores the latest
checkpoint (state and data-iterator position) and ends bitwise-identical to a
run that was never interrupted: the step's randomness is derived from
``(rng, state.step)`` only.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm.auto as tqdm

from kdjax.checkpoint import Checkpointer


class MetricWriter:
  """Writes scalar metrics to a CSV file and TensorBoard event files.

  The CSV is in long form (``step,split,name,value``), so train and eval
  metrics with different keys share one file.

  Args:
    logdir: directory for ``metrics.csv`` and the TensorBoard events.
    tensorboard: also write TensorBoard event files (needs ``tensorboardX``).

  Examples:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with MetricWriter(d, tensorboard=False) as w:
    ...   w.write(10, {'loss': 0.5}, split='train')
    >>> open(os.path.join(d, 'metrics.csv')).read().splitlines()
    ['step,split,name,value', '10,train,loss,0.5']
  """

  def __init__(self, logdir: str | os.PathLike, *, tensorboard: bool = True):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, 'metrics.csv')
    new = not os.path.exists(self.path)
    self._file = open(self.path, 'a', newline='')
    self._csv = csv.writer(self._file)
    if new:
      self._csv.writerow(['step', 'split', 'name', 'value'])
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.fspath(logdir))

  def write(self, step: int, metrics: Mapping[str, Any], *, split: str = 'train') -> None:
    """Appends scalar ``metrics`` at ``step``."""
    for name, value in sorted(metrics.items()):
      value = float(value)
      self._csv.writerow([int(step), split, name, repr(value)])
      if self._tb is not None:
        self._tb.add_scalar(f'{split}/{name}', value, int(step))
    self._file.flush()

  def close(self) -> None:
    """Flushes and closes the files."""
    self._file.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def evaluate(eval_step: Callable, variables: Any, batches: Iterable[Mapping[str, Any]]) -> dict:
  """Exact accuracy and mean cross-entropy over ``batches``.

  Args:
    eval_step: from :func:`kdjax.steps.make_eval_step` (jitted or not).
    variables: the model's variables.
    batches: an iterable of batches; padded rows are dropped by ``'mask'``.

  Returns:
    ``{'accuracy', 'loss', 'count'}``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import function_forward
    >>> from kdjax.steps import make_eval_step
    >>> step = make_eval_step(function_forward(lambda p, x: x))
    >>> batches = [{'x': jnp.eye(2), 'label': jnp.array([0, 0])}]
    >>> evaluate(step, {'params': {}}, batches)['accuracy']
    0.5
  """
  totals = None
  for batch in batches:
    sums = eval_step(variables, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError('`batches` is empty: nothing to evaluate.')
  totals = jax.tree.map(float, jax.device_get(totals))
  count = max(totals['count'], 1.0)
  return {'accuracy': totals['correct'] / count, 'loss': totals['loss_sum'] / count,
          'count': totals['count']}


@dataclasses.dataclass
class FitResult:
  """What :func:`fit` returns.

  Attributes:
    state: the final train state.
    history: logged training metrics, one dict per logging step.
    eval_history: evaluation results, one dict per evaluation.
    resumed_from: the step restored from a checkpoint, or ``None``.
    skipped_steps: how many updates were skipped for non-finite values.
    seconds: wall time of this call.
  """
  state: Any
  history: list
  eval_history: list
  resumed_from: Optional[int]
  skipped_steps: int
  seconds: float


class NonFiniteError(FloatingPointError):
  """Raised when too many consecutive updates had non-finite loss or gradients."""


def fit(state: Any, step_fn: Callable, data: Iterator[Mapping[str, Any]], *,
        num_steps: int, rng: jax.Array, teacher_variables: Any = None,
        checkpointer: Optional[Checkpointer] = None, checkpoint_every: int = 500,
        save_steps: Sequence[int] = (), meta: Optional[Mapping[str, Any]] = None,
        eval_fn: Optional[Callable[[Any], Mapping[str, float]]] = None,
        eval_every: Optional[int] = None, writer: Optional[MetricWriter] = None,
        log_every: int = 100, progress: bool = True, desc: str = 'train',
        max_consecutive_skips: int = 20) -> FitResult:
  """Runs ``step_fn`` until ``state.step == num_steps``, resuming if it can.

  Args:
    state: the initial state (used as the restore template when resuming).
    step_fn: a jitted ``step(state, teacher_variables, batch, rng)``.
    data: an iterator of batches; if it has ``get_state``/``set_state`` (grain
      iterators do), its position is checkpointed and restored.
    num_steps: the total number of updates of the run.
    rng: base PRNG key; step ``i`` uses ``fold_in(rng, i)`` inside the step.
    teacher_variables: frozen teacher variables passed to every step.
    checkpointer: where to save and resume from; ``None`` disables both.
    checkpoint_every: save every this many steps (and at the end).
    save_steps: further steps to save at (and evaluate at, when ``eval_fn`` is
      given), e.g. the checkpoints of an early-stopped teacher; give them to the
      checkpointer's ``keep_steps`` too so they are not deleted.
    meta: JSON record saved with each checkpoint (e.g. the teacher's path).
    eval_fn: ``eval_fn(state) -> metrics``, run every ``eval_every`` steps and
      at the end; its metrics rank the "best" checkpoint.
    eval_every: evaluation period; ``None`` evaluates only at the end.
    writer: optional :class:`MetricWriter`.
    log_every: period of training-metric logging (progress bar, writer).
    progress: show a tqdm progress bar.
    desc: progress bar label.
    max_consecutive_skips: raise :class:`NonFiniteError` after this many
      consecutive skipped (non-finite) updates instead of spinning.

  Returns:
    A :class:`FitResult`.
  """
  start_time = time.perf_counter()
  resumed_from = None
  if checkpointer is not None and checkpointer.latest_step() is not None:
    state, data_state = checkpointer.restore(state)
    resumed_from = int(state.step)
    if data_state and hasattr(data, 'set_state'):
      data.set_state(data_state)

  def save(step, metrics=None):
    if checkpointer is not None:
      data_state = data.get_state() if hasattr(data, 'get_state') else None
      checkpointer.save(step, state, data_state=data_state, metrics=metrics, meta=meta,
                        force=True)

  history, eval_history = [], []
  skipped_total = consecutive = 0
  first = int(state.step)
  bar = tqdm.tqdm(total=num_steps, initial=first, desc=desc, disable=not progress,
                  dynamic_ncols=True, leave=True)
  pending = []
  for step in range(first, num_steps):
    batch = next(data)
    state, metrics = step_fn(state, teacher_variables, batch, rng)
    pending.append(metrics)
    done = step + 1
    if done % log_every == 0 or done == num_steps:
      fetched = jax.device_get(pending)
      pending = []
      skipped = [int(m['skipped']) for m in fetched]
      skipped_total += sum(skipped)
      for s in skipped:
        consecutive = consecutive + 1 if s else 0
        if consecutive >= max_consecutive_skips:
          bar.close()
          raise NonFiniteError(
              f'{consecutive} consecutive updates had a non-finite loss or gradient (last at '
              f'step {done}); the parameters were left untouched. Lower the learning rate or '
              'check the inputs and labels.')
      mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
      history.append({'step': done, **mean})
      if writer is not None:
        writer.write(done, mean, split='train')
      shown = {k: f'{mean[k]:.3g}' for k in ('loss', 'accuracy') if k in mean}
      if skipped_total:
        shown['skipped'] = skipped_total
      bar.set_postfix(shown, refresh=False)
    bar.update(1)
    eval_metrics = None
    special = done in save_steps
    if eval_fn is not None and (
        (eval_every and done % eval_every == 0) or done == num_steps or special):
      eval_metrics = dict(eval_fn(state))
      eval_history.append({'step': done, **eval_metrics})
      if writer is not None:
        writer.write(done, eval_metrics, split='eval')
    if done % checkpoint_every == 0 or done == num_steps or special:
      save(done, eval_metrics)
  bar.close()
  if checkpointer is not None:
    checkpointer.wait()
  return FitResult(state, history, eval_history, resumed_from, skipped_total,
                   time.perf_counter() - start_time)
