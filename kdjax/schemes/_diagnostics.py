"""Diagnostics of distillation runs: how well a student mimics its teacher.

Cho & Hariharan (2019, §4) explain why bigger teachers are not always better
teachers: a small student cannot mimic a large teacher, so its KD loss stays
high, and its accuracy follows its KD loss. :func:`evaluate_distillation`
measures the converged KD loss (and agreement) of a trained student against a
teacher on a dataset; :func:`read_metrics` reads the per-step training curves
(``loss/kd``, ``accuracy``, ...) that every run writes to ``metrics.csv``, also
for runs that were resumed (their in-memory ``FitResult.history`` only covers
the steps run by the last call).

References:
  Cho & Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019,
  arXiv:1910.01348.
"""

from __future__ import annotations

import csv
import functools
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data as kdata
from kdjax import losses
from kdjax import models as kmodels


def read_metrics(workdir: str | os.PathLike) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
  """Reads a run's ``metrics.csv`` into ``{split: {name: (steps, values)}}``.

  Steps are sorted; when a step was logged more than once (a run killed after
  logging and resumed from an earlier checkpoint), the last row wins.

  Args:
    workdir: the run directory given to :func:`kdjax.runs.train_and_evaluate`.

  Returns:
    Nested dicts of ``(int64 steps, float64 values)`` arrays.

  Raises:
    FileNotFoundError: if ``<workdir>/metrics.csv`` does not exist.

  Examples:
    >>> import tempfile
    >>> from kdjax.train import MetricWriter
    >>> d = tempfile.mkdtemp()
    >>> with MetricWriter(d, tensorboard=False) as w:
    ...   for step, value in ((20, 0.5), (10, 0.9), (20, 0.4)):
    ...     w.write(step, {'loss/kd': value})
    >>> steps, values = read_metrics(d)['train']['loss/kd']
    >>> steps.tolist(), values.tolist()
    ([10, 20], [0.9, 0.4])
  """
  path = os.path.join(os.fspath(workdir), 'metrics.csv')
  if not os.path.exists(path):
    raise FileNotFoundError(f'No metrics file {path!r}: was the run given this workdir?')
  table: dict[str, dict[str, dict[int, float]]] = {}
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      table.setdefault(row['split'], {}).setdefault(row['name'], {})[int(row['step'])] = float(
          row['value'])
  out = {}
  for split, names in table.items():
    out[split] = {}
    for name, by_step in names.items():
      steps = np.asarray(sorted(by_step), np.int64)
      out[split][name] = (steps, np.asarray([by_step[s] for s in steps], np.float64))
  return out


@functools.lru_cache(maxsize=32)
def _distillation_sums(student: Any, teacher: Any, temperature: float):
  """A jitted ``sums(student_variables, teacher_variables, batch)`` (compiled once per pair)."""
  s_fn, t_fn = kmodels.as_forward(student), kmodels.as_forward(teacher)

  @jax.jit
  def sums(sv, tv, batch):
    s = s_fn(sv, batch['x'], train=False).logits
    t = t_fn(tv, batch['x'], train=False).logits
    mask = batch['mask']
    out = {
        'kd_loss': jnp.sum(jnp.where(mask, losses.kl_distillation(s, t, temperature=temperature),
                                     0.0)),
        'kl': jnp.sum(jnp.where(mask, losses.kl_distillation(s, t), 0.0)),
        'agreement': jnp.sum(mask & (jnp.argmax(s, -1) == jnp.argmax(t, -1))),
        'count': jnp.sum(mask),
    }
    if 'label' in batch:
      out['student_accuracy'] = jnp.sum(mask & (jnp.argmax(s, -1) == batch['label']))
      out['teacher_accuracy'] = jnp.sum(mask & (jnp.argmax(t, -1) == batch['label']))
    return jax.tree.map(lambda a: a.astype(jnp.float32), out)

  return sums


def evaluate_distillation(student: Any, student_variables: Mapping[str, Any], teacher: Any,
                          teacher_variables: Mapping[str, Any], data: Any, *,
                          temperature: float = 4.0, batch_size: int = 500) -> dict:
  """Mean KD loss, agreement and accuracies of a student against a teacher over ``data``.

  Both models run in eval mode. With teacher logits ``t`` and student logits
  ``s``, ``kd_loss`` is the mean of ``τ²·KL(softmax(t/τ) ‖ softmax(s/τ))``
  (the term :func:`kdjax.steps.soft_kd` trains), ``kl`` the same at τ = 1.

  Args:
    student: the student's Linen module or forward function.
    student_variables: its variables.
    teacher: the teacher's Linen module or forward function.
    teacher_variables: its variables.
    data: a random-access source (labels optional), e.g. the training set the
      student was distilled on, or the test set.
    temperature: τ of ``kd_loss``.
    batch_size: evaluation batch size (the last batch is padded and masked).

  Returns:
    ``{'kd_loss', 'kl', 'agreement', 'count'}`` plus ``'student_accuracy'``
    and ``'teacher_accuracy'`` when ``data`` is labeled.

  Raises:
    ValueError: for an empty ``data`` or ``temperature <= 0``.

  References:
    Cho & Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019,
    arXiv:1910.01348 (§4, KD loss against accuracy).

  Examples:
    >>> import numpy as np
    >>> from kdjax.models import function_forward
    >>> data = [{'x': np.float32([0.0, 1.0]), 'label': np.int32(1), 'id': np.int32(0)}]
    >>> f = function_forward(lambda p, x: x * p['s'])
    >>> out = evaluate_distillation(f, {'params': {'s': 2.0}}, f, {'params': {'s': 2.0}}, data)
    >>> out['kd_loss'], out['agreement'], out['student_accuracy']
    (0.0, 1.0, 1.0)
  """
  if not temperature > 0:
    raise ValueError(f'`temperature` must be positive, got {temperature}.')
  try:
    sums = _distillation_sums(student, teacher, float(temperature))
  except TypeError:  # unhashable models: build (and compile) for this call only
    sums = _distillation_sums.__wrapped__(student, teacher, float(temperature))

  pipeline = kdata.make_pipeline(data, batch_size=batch_size, seed=0, shuffle=False,
                                 drop_remainder=False, num_epochs=1)
  totals: Optional[dict] = None
  for batch in pipeline:
    batch = {k: batch[k] for k in ('x', 'label', 'mask') if k in batch}
    out = sums(student_variables, teacher_variables, batch)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:
    raise ValueError('`data` is empty: nothing to evaluate.')
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  count = max(totals['count'], 1.0)
  return {k: (v if k == 'count' else v / count) for k, v in totals.items()}
