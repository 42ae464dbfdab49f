"""One training run as one function call: build, train (with resume), evaluate.

:func:`train_and_evaluate` composes the library pieces (a grain pipeline, a
:class:`~kdjax.state.TrainState`, a step from :mod:`kdjax.steps`, the
:func:`~kdjax.train.fit` loop with orbax checkpoints and metrics) for the
common cases: training a teacher or a student from scratch (no teacher, the
task cross-entropy), and distilling a student from a frozen teacher, on a
labeled set or an unlabeled transfer set. Schemes (TAKD chains, BAN
generations, early-stopped teachers) are sequences of such calls whose
teacher is the previous run's checkpoint directory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import checkpoint
from kdjax import data as kdata
from kdjax import models
from kdjax import steps
from kdjax import train
from kdjax.data._pipeline import _read_batch
from kdjax.state import TrainState


@dataclasses.dataclass
class RunResult:
  """What :func:`train_and_evaluate` returns.

  Attributes:
    state: the final student state.
    metrics: test metrics of the final state (``accuracy``, ``loss``,
      ``count``, and ``agreement`` with the teacher when there is one).
    num_params: the student's parameter count (adapters excluded).
    seconds: wall time of this call, including compilation.
    fit: the :class:`~kdjax.train.FitResult` (history, resume info).
    checkpoint_dir: where the checkpoints are (``None`` without a workdir).
  """
  state: TrainState
  metrics: dict
  num_params: int
  seconds: float
  fit: train.FitResult
  checkpoint_dir: Optional[str]


def default_optimizer(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
  """Adam with a cosine decay of the learning rate to 0 over ``num_steps``.

  Examples:
    >>> tx = default_optimizer(1e-3, 100)
    >>> import jax.numpy as jnp
    >>> _ = tx.init({'w': jnp.zeros(2)})
  """
  return optax.adam(optax.cosine_decay_schedule(learning_rate, max(num_steps, 1)))


def agreement(student_fn, student_variables, teacher_fn, teacher_variables,
              batches) -> float:
  """Top-1 agreement between student and teacher over the valid rows of ``batches``."""
  @jax.jit
  def counts(sv, tv, batch):
    s = student_fn(sv, batch['x'], train=False).logits.argmax(-1)
    t = teacher_fn(tv, batch['x'], train=False).logits.argmax(-1)
    mask = batch.get('mask', jnp.ones(s.shape, bool))
    return jnp.sum((s == t) & mask), jnp.sum(mask)

  same = total = 0
  for batch in batches:
    a, b = counts(student_variables, teacher_variables, batch)
    same, total = same + int(a), total + int(b)
  return same / max(total, 1)


def train_and_evaluate(
    model: nn.Module,
    *,
    train_data: Sequence[Any],
    eval_data: Sequence[Any],
    num_steps: int,
    batch_size: int = 100,
    learning_rate: float = 1e-3,
    optimizer: Optional[optax.GradientTransformation] = None,
    seed: int = 0,
    terms: Optional[Sequence[steps.Term]] = None,
    teacher: Optional[nn.Module | Callable] = None,
    teacher_variables: Optional[Mapping[str, Any]] = None,
    teacher_checkpoint: Optional[str] = None,
    teacher_step: Optional[int] = None,
    transform: Optional[Callable] = None,
    workdir: Optional[str] = None,
    checkpoint_every: int = 1000,
    keep_steps: Sequence[int] = (),
    eval_every: Optional[int] = None,
    eval_batch_size: int = 500,
    log_every: int = 100,
    progress: bool = True,
    desc: str = 'train',
    data_placement: str = 'auto',
    compute_dtype: Optional[Any] = None,
) -> RunResult:
  """Trains ``model`` (from scratch or by distillation) and evaluates it.

  Args:
    model: the student (or teacher being trained), a Flax Linen module whose
      ``__call__`` takes ``(x, train=...)``.
    train_data: a random-access source of training examples (``'x'``, and
      ``'label'`` when a term needs labels), e.g. ``kdjax.data.load(...)`` or
      ``kdjax.data.transfer_set(...)``.
    eval_data: a labeled source for the final (and periodic) evaluation.
    num_steps: number of updates.
    batch_size: training batch size.
    learning_rate: peak learning rate of :func:`default_optimizer`.
    optimizer: an optax transformation; overrides ``learning_rate``.
    seed: seeds the initialisation, the data order and the augmentation.
    terms: the objective; default ``(task_ce(),)``, i.e. supervised training.
    teacher: the teacher's Linen module or forward function.
    teacher_variables: the teacher's variables, or ...
    teacher_checkpoint: ... the teacher's checkpoint directory (recorded in
      this run's checkpoint metadata; the teacher itself is not copied).
    teacher_step: with ``teacher_checkpoint``, a specific (e.g. early) step.
    transform: per-example augmentation for the training pipeline.
    workdir: run directory for checkpoints (``<workdir>/checkpoints``), the
      metrics CSV and TensorBoard events. A run whose workdir already has
      checkpoints resumes from the latest one. ``None``: nothing on disk.
    checkpoint_every: checkpoint period in steps.
    keep_steps: steps whose checkpoints are saved, evaluated and never deleted
      (e.g. to distill later from an early-stopped teacher, ``teacher_step``).
    eval_every: evaluation period in steps (``None``: only at the end).
    eval_batch_size: evaluation batch size (the last batch is padded and
      masked, so every example counts once).
    log_every: training-metric logging period.
    progress: show a progress bar.
    desc: progress bar label.
    data_placement: ``'device'`` puts the training source on the device
      (:class:`kdjax.data.DeviceData`, batches gathered in the compiled
      loop, augmented in-graph); ``'host'`` streams grain batches; ``'auto'``
      picks the device when the ``transform`` (if any) can run there
      (:func:`kdjax.data.device_transform`) and the source takes at most a
      quarter of the device memory (:func:`kdjax.data.fits_on_device`). Both give the
      same batches, so the same parameters.
    compute_dtype: e.g. ``jnp.bfloat16``: student and teacher forward passes
      (training and evaluation) run in it through
      :func:`kdjax.models.mixed_precision`; parameters, optimizer state and
      losses stay float32. ``None``: the models' own dtypes.

  Returns:
    A :class:`RunResult`.

  Raises:
    ValueError: if a teacher is given both as variables and as a checkpoint,
      or terms need a teacher that was not given.
    FileNotFoundError: if ``teacher_checkpoint`` does not exist.
  """
  terms = tuple(terms) if terms is not None else (steps.task_ce(),)
  if teacher_variables is not None and teacher_checkpoint is not None:
    raise ValueError('Pass `teacher_variables` or `teacher_checkpoint`, not both.')
  needs_teacher = any(t.teacher is not None for t in terms)
  if needs_teacher and teacher is None:
    raise ValueError('The objective has teacher terms but `teacher` is None.')
  if teacher_checkpoint is not None:
    teacher_variables = checkpoint.load_variables(teacher_checkpoint, step=teacher_step)
  if needs_teacher and teacher_variables is None:
    raise ValueError('Give the teacher as `teacher_variables` or `teacher_checkpoint`.')

  forward = (models.as_forward(model) if compute_dtype is None
             else models.mixed_precision(model, compute_dtype))
  if teacher is not None and compute_dtype is not None:
    teacher = models.mixed_precision(teacher, compute_dtype)
  sample = _read_batch(train_data, np.arange(min(2, len(train_data))))  # shapes for init
  data_iter = kdata.training_data(train_data, batch_size=batch_size, seed=seed,
                                  transform=transform, placement=data_placement)
  init_rng, adapter_rng, step_rng = jax.random.split(jax.random.key(seed), 3)
  variables = models.init_variables(model, init_rng, sample['x'][:1])
  teacher_sample = None
  if needs_teacher and any(t.module is not None for t in terms):
    teacher_sample = models.as_forward(teacher)(teacher_variables, sample['x'][:2], train=False)
  init = steps.init_terms(terms, forward(variables, sample['x'][:2], train=False), adapter_rng,
                          teacher_sample)
  tx = optimizer or default_optimizer(learning_rate, num_steps)
  state = TrainState.create(apply_fn=forward, variables=variables, tx=tx, **init)

  step_fn = jax.jit(steps.make_distill_step(terms, teacher if needs_teacher else None),
                    donate_argnums=0)
  eval_step = jax.jit(steps.make_eval_step(forward))

  def eval_batches():
    return iter(kdata.make_pipeline(eval_data, batch_size=eval_batch_size, seed=0,
                                    shuffle=False, drop_remainder=False, num_epochs=1))

  def eval_fn(s):
    return train.evaluate(eval_step, s.variables, eval_batches())

  ckpt = writer = None
  checkpoint_dir = None
  if workdir is not None:
    checkpoint_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
    ckpt = checkpoint.Checkpointer(checkpoint_dir, keep_steps=keep_steps)
    writer = train.MetricWriter(workdir)
  meta = {'teacher_checkpoint': os.path.abspath(teacher_checkpoint) if teacher_checkpoint
          else None, 'teacher_step': teacher_step, 'seed': seed, 'num_steps': num_steps}
  try:
    result = train.fit(
        state, step_fn, data_iter, num_steps=num_steps, rng=step_rng,
        teacher_variables=teacher_variables if needs_teacher else None, checkpointer=ckpt,
        checkpoint_every=checkpoint_every, save_steps=keep_steps, meta=meta, eval_fn=eval_fn,
        eval_every=eval_every,
        writer=writer, log_every=log_every, progress=progress, desc=desc)
  finally:
    if ckpt is not None:
      ckpt.close()
    if writer is not None:
      writer.close()
  metrics = dict(result.eval_history[-1]) if result.eval_history else eval_fn(result.state)
  metrics.pop('step', None)
  if needs_teacher:
    t_fn = models.as_forward(teacher)
    metrics['agreement'] = agreement(forward, result.state.variables, t_fn,
                                     teacher_variables, eval_batches())
  return RunResult(result.state, metrics, models.count_params(result.state.params),
                   result.seconds, result, checkpoint_dir)
