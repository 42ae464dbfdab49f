"""Logit-based distillation losses (per-example: ``[..., C] -> [...]``)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from kdjax.losses import _checks


def _masked_log_softmax(logits: jax.Array, where: Optional[jax.Array]) -> jax.Array:
  """``log_softmax`` over the last axis restricted to the classes where ``where``."""
  if where is not None:
    logits = jnp.where(where, logits, jnp.finfo(logits.dtype).min / 2)
  return jax.nn.log_softmax(logits, axis=-1)


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
) -> jax.Array:
  r"""Softmax cross-entropy with integer labels.

  ``CE = -\sum_c y_c \log softmax(z)_c`` with ``y`` the (optionally smoothed)
  one-hot target. A label outside ``[0, C)`` gives NaN for that example, so a
  corrupted batch is never silently trained on; the train steps report and skip
  such updates.

  Args:
    logits: ``[..., C]`` unnormalised scores.
    labels: ``[...]`` integer class indices.
    label_smoothing: mass in ``[0, 1)`` spread uniformly over all classes.

  Returns:
    ``[...]`` per-example cross-entropy, in at least float32.

  Raises:
    ValueError: for a non-floating ``logits``, non-integer or wrongly shaped
      ``labels``, or ``label_smoothing`` outside ``[0, 1)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import cross_entropy
    >>> cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([1]))
    Array([0.6931472], dtype=float32)
  """
  logits = _checks.as_float(logits, 'logits')
  _checks.check_min_rank(logits, 1, 'logits')
  labels = _checks.check_labels(labels, logits, 'labels', 'logits')
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'`label_smoothing` must be in [0, 1), got {label_smoothing}.')
  num_classes = logits.shape[-1]
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_p, jnp.clip(labels, 0, num_classes - 1)[..., None], axis=-1)[..., 0]
  loss = nll if label_smoothing == 0.0 else (
      (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1))
  valid = (labels >= 0) & (labels < num_classes)
  return jnp.where(valid, loss, jnp.nan)


def kl_distillation(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Soft-target distillation: ``τ² · KL(softmax(t/τ) ‖ softmax(s/τ))``.

  The τ² factor keeps gradient magnitudes comparable across temperatures
  (Hinton et al., 2015, §2).

  Args:
    student_logits: ``[..., C]`` student logits ``s``.
    teacher_logits: ``[..., C]`` teacher logits ``t``.
    temperature: softmax temperature τ > 0.
    where: optional boolean mask broadcastable to ``[..., C]``. Classes where it
      is False are left out of both softmaxes and of the sum, which equals
      slicing the class axis. Pass ``mask[..., None]`` to drop whole positions;
      a fully masked row gives 0.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for mismatched shapes, non-floating inputs, a bad mask, or
      ``temperature <= 0``.

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    NIPS Deep Learning Workshop 2014, arXiv:1503.02531.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import kl_distillation
    >>> s = jnp.array([[1.0, 2.0, 3.0]])
    >>> kl_distillation(s, s, temperature=4.0)
    Array([0.], dtype=float32)
    >>> kl_distillation(s, s[:, ::-1], temperature=2.0)
    Array([1.2806...], dtype=float32)
  """
  _checks.check_same_shape(student_logits, teacher_logits, 'student_logits', 'teacher_logits')
  _checks.check_min_rank(student_logits, 1, 'student_logits')
  _checks.check_positive(temperature, 'temperature')
  s = _checks.as_float(student_logits, 'student_logits')
  t = _checks.as_float(teacher_logits, 'teacher_logits')
  dtype = jnp.promote_types(s.dtype, t.dtype)
  s, t = s.astype(dtype), t.astype(dtype)
  where = _checks.check_where(where, s.shape)
  log_q = _masked_log_softmax(s / temperature, where)
  log_p = _masked_log_softmax(t / temperature, where)
  terms = _checks.xlogy_ratio(jnp.exp(log_p), log_p, log_q)
  if where is not None:
    terms = jnp.where(where, terms, 0.0)
  return temperature**2 * jnp.sum(terms, axis=-1)


def hinton_kd(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> jax.Array:
  r"""Classic KD objective: ``α·CE(y, s) + (1−α)·τ²·KL(p_T^τ ‖ p_S^τ)``.

  Args:
    student_logits: ``[..., C]`` student logits.
    teacher_logits: ``[..., C]`` teacher logits.
    labels: ``[...]`` integer ground-truth classes.
    temperature: softmax temperature τ > 0 of the soft term (typical: 4).
    alpha: weight in ``[0, 1]`` of the hard-label cross-entropy.

  Returns:
    ``[...]`` per-example loss.

  Raises:
    ValueError: for mismatched shapes, bad labels, ``temperature <= 0`` or
      ``alpha`` outside ``[0, 1]``.

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import hinton_kd
    >>> s = jnp.array([[0.0, 0.0]])
    >>> hinton_kd(s, s, jnp.array([0]), alpha=1.0)
    Array([0.6931472], dtype=float32)
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'`alpha` must be in [0, 1], got {alpha}.')
  soft = kl_distillation(student_logits, teacher_logits, temperature=temperature)
  hard = cross_entropy(student_logits, labels)
  return alpha * hard + (1.0 - alpha) * soft
