"""Logit-based distillation losses.

Per-example (``[..., C] -> [...]``) except :func:`mutual_kl` (``[K, ..., C] ->
[K, ...]``, one entry per peer) and the batch-level :func:`dist_loss`
(``[B, C] -> []``).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

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
  one-hot target. A concrete label outside ``[0, C)`` raises ``ValueError``; a
  traced one (under ``jit``) gives NaN for that example, so a corrupted batch is
  never silently trained on (the kdjax steps exclude and count such labels).

  Args:
    logits: ``[..., C]`` unnormalised scores.
    labels: ``[...]`` integer class indices.
    label_smoothing: scalar mass in ``[0, 1)`` spread uniformly over all
      classes. May be a traced value (e.g. a schedule under ``jax.jit``); its
      range is then not checked.

  Returns:
    ``[...]`` per-example cross-entropy, in at least float32.

  Raises:
    ValueError: for a non-floating ``logits``, non-integer or wrongly shaped
      ``labels``, or a concrete ``label_smoothing`` outside ``[0, 1)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import cross_entropy
    >>> cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([1]))
    Array([0.6931472], dtype=float32)
  """
  logits = _checks.as_float(logits, 'logits')
  _checks.check_min_rank(logits, 1, 'logits')
  labels = _checks.check_labels(labels, logits, 'labels', 'logits')
  _checks.check_in_range(label_smoothing, 'label_smoothing', 0.0, 1.0, include_high=False)
  num_classes = logits.shape[-1]
  log_p = jax.nn.log_softmax(logits, axis=-1)
  safe_labels = jnp.clip(labels, 0, num_classes - 1)[..., None]
  nll = -jnp.take_along_axis(log_p, safe_labels, axis=-1)[..., 0]
  traced = _checks.is_traced(label_smoothing)
  if not traced and np.all(np.asarray(label_smoothing) == 0.0):
    loss = nll
  else:
    smoothed = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)
    # A traced 0 must give exactly `nll`, also for -inf logits (0 · -inf = NaN).
    loss = jnp.where(label_smoothing == 0.0, nll, smoothed) if traced else smoothed
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


def hard_label_distillation(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Cross-entropy of the student against the teacher's hard label ``argmax_c t_c``.

  ``L = -log softmax(s)_{ĉ}`` with ``ĉ = argmax_c t_c`` (the first maximum on
  ties): the "hard" alternative to Hinton's soft targets, used e.g. by
  Touvron et al. 2021 (DeiT's hard distillation) and as the control that
  separates the value of the teacher's dark knowledge from that of its
  labels on a transfer set. No gradient reaches ``teacher_logits`` (the
  argmax is piecewise constant).

  Args:
    student_logits: ``[..., C]`` student logits ``s``.
    teacher_logits: ``[..., C]`` teacher logits ``t``.
    where: optional boolean mask broadcastable to ``[..., C]``. Classes where it
      is False are left out of both the argmax and the student's softmax,
      which equals slicing the class axis. A fully masked row gives 0.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for mismatched shapes, non-floating inputs or a bad mask.

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531 (soft vs hard targets).
    Touvron et al., "Training data-efficient image transformers & distillation
    through attention", ICML 2021, arXiv:2012.12877.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import hard_label_distillation
    >>> s = jnp.array([[0.0, 0.0], [2.0, 0.0]])
    >>> hard_label_distillation(s, jnp.array([[1.0, 3.0], [5.0, -1.0]]))
    Array([0.6931472 , 0.12692805], dtype=float32)
  """
  _checks.check_same_shape(student_logits, teacher_logits, 'student_logits', 'teacher_logits')
  _checks.check_min_rank(student_logits, 1, 'student_logits')
  s = _checks.as_float(student_logits, 'student_logits')
  t = _checks.as_float(teacher_logits, 'teacher_logits')
  where = _checks.check_where(where, s.shape)
  log_q = _masked_log_softmax(s, where)
  if where is not None:
    t = jnp.where(where, t, -jnp.inf)
  hard = jnp.argmax(t, axis=-1)[..., None]
  loss = -jnp.take_along_axis(log_q, hard, axis=-1)[..., 0]
  if where is not None:
    loss = jnp.where(jnp.any(jnp.broadcast_to(where, s.shape), axis=-1), loss, 0.0)
  return loss


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
    alpha: weight in ``[0, 1]`` of the hard-label cross-entropy. May be a
      traced value (e.g. an α schedule under ``jax.jit``); its range is then
      not checked.

  Returns:
    ``[...]`` per-example loss, in at least float32. With ``α = 0`` it is
    :func:`kl_distillation`, with ``α = 1`` :func:`cross_entropy` (labels
    outside ``[0, C)`` are treated as there).

  Raises:
    ValueError: for mismatched shapes, non-floating logits, bad labels, a
      concrete ``temperature <= 0`` or a concrete ``alpha`` outside ``[0, 1]``.

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import hinton_kd
    >>> s = jnp.array([[0.0, 0.0]])
    >>> hinton_kd(s, s, jnp.array([0]), alpha=1.0)
    Array([0.6931472], dtype=float32)

    ``alpha`` (like ``temperature``) may be traced, e.g. scheduled in a step:

    >>> import jax
    >>> step = jax.jit(lambda alpha: hinton_kd(s, s, jnp.array([0]), alpha=alpha))
    >>> step(jnp.float32(0.5))  # ½·log 2 + ½·0
    Array([0.3465736], dtype=float32)
  """
  _checks.check_in_range(alpha, 'alpha', 0.0, 1.0)
  soft = kl_distillation(student_logits, teacher_logits, temperature=temperature)
  hard = cross_entropy(student_logits, labels)
  return alpha * hard + (1.0 - alpha) * soft


# ------------------------------------------------------------------ helpers

def _neg_fill(dtype) -> float:
  """A large finite negative logit that excludes a class from a softmax."""
  return float(jnp.finfo(dtype).min) / 2


def _check_nonnegative(value, name: str) -> None:
  """Raises a ``ValueError`` if a concrete scalar option is negative (tracers pass)."""
  if _checks.is_traced(value):
    return
  if not np.all(np.asarray(value) >= 0):
    raise ValueError(f'`{name}` must be >= 0, got {value}.')


def _student_teacher(student_logits, teacher_logits, temperature):
  """Shared checks; returns both logits in one floating dtype (>= float32)."""
  _checks.check_same_shape(student_logits, teacher_logits, 'student_logits', 'teacher_logits')
  _checks.check_min_rank(student_logits, 1, 'student_logits')
  _checks.check_positive(temperature, 'temperature')
  s = _checks.as_float(student_logits, 'student_logits')
  t = _checks.as_float(teacher_logits, 'teacher_logits')
  dtype = jnp.promote_types(s.dtype, t.dtype)
  return s.astype(dtype), t.astype(dtype)


def _check_two_classes(x, name: str) -> None:
  if x.shape[-1] < 2:
    raise ValueError(f'`{name}` needs at least 2 classes on its last axis, got shape {x.shape}.')


def _kl_terms(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """Elementwise ``p (log p − log q)`` from log-probabilities, ``0 log 0 = 0``."""
  return _checks.xlogy_ratio(jnp.exp(log_p), log_p, log_q)


def _log_mass(z: jax.Array, keep: jax.Array) -> jax.Array:
  """``log Σ_{c: keep} softmax(z)_c`` computed as a difference of logsumexps.

  Stable for probabilities close to 0 or 1 (no ``log(1 − p)``). An empty ``keep``
  gives a huge finite negative number rather than ``-inf``, so gradients stay finite.
  """
  inside = jnp.where(keep, z, _neg_fill(z.dtype))
  return jax.nn.logsumexp(inside, axis=-1) - jax.nn.logsumexp(z, axis=-1)


def _label_mask(labels: jax.Array, num_classes: int):
  """Returns ``(one_hot_bool [..., C], valid [...])`` for integer labels."""
  valid = (labels >= 0) & (labels < num_classes)
  is_label = jnp.arange(num_classes) == jnp.clip(labels, 0, num_classes - 1)[..., None]
  return is_label, valid


# ------------------------------------------------------- Tang et al. (2020)

def topk_distillation(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    k: int,
    temperature: float = 1.0,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""KD-topk: distil a teacher target that keeps only its top-k probabilities.

  With ``p = softmax(t/τ)`` and ``K`` the ``k`` classes of largest teacher logit,
  the target is ``ρ_c = p_c`` for ``c ∈ K`` and ``ρ_c = (1 − Σ_{j∈K} p_j)/(C − k)``
  otherwise, and the loss is ``τ² · KL(ρ ‖ softmax(s/τ))``. With ``k = C`` (and
  also ``k = C − 1``) the target is the teacher itself and the loss equals
  :func:`kl_distillation`. The target depends on the teacher only through its
  top-k logits, their indices and ``logsumexp(t/τ)``, so a top-k logit cache that
  also stores that log-normaliser can rebuild it exactly.

  The uniform tail mass is computed as a log-sum-exp over the non-top-k logits,
  not as ``1 − Σ top-k``, so it stays accurate when it is tiny.

  Ties: classes are ranked by teacher logit with ``jax.lax.top_k``, which keeps
  the lowest class index among equal logits.

  Args:
    student_logits: ``[..., C]`` student logits ``s``.
    teacher_logits: ``[..., C]`` teacher logits ``t``.
    k: number of teacher probabilities kept, a Python int in ``1..C``.
    temperature: softmax temperature τ > 0 of both distributions.
    where: optional boolean mask broadcastable to ``[..., C]``. Classes where it
      is False are removed before anything else (ranking, tail mass, both
      softmaxes), which equals slicing the class axis; if fewer than ``k``
      classes remain in a row, all of them are kept. Pass ``mask[..., None]`` to
      drop whole positions; a fully masked row gives 0.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for mismatched shapes, non-floating inputs, a bad mask,
      ``temperature <= 0``, or ``k`` not an integer in ``1..C``.

  References:
    Tang, Shivanna, Zhao, Lin, Singh, Chi & Jain, "Understanding and Improving
    Knowledge Distillation", arXiv:2002.03532, 2020 (§5, KD-topk).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import kl_distillation, topk_distillation
    >>> t = jnp.log(jnp.array([[0.5, 0.3, 0.1, 0.1]]))
    >>> s = jnp.log(jnp.array([[0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3]]))
    >>> loss = topk_distillation(s, t, k=1)  # the target is exactly softmax(s)
    >>> bool(jnp.abs(loss).max() < 1e-6)  # 0 up to float32 rounding
    True
    >>> bool(jnp.allclose(topk_distillation(s, t, k=4), kl_distillation(s, t)))
    True
  """
  s, t = _student_teacher(student_logits, teacher_logits, temperature)
  num_classes = s.shape[-1]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
    raise ValueError(f'`k` must be a Python int in 1..{num_classes} (the number of classes), '
                     f'got {k!r}.')
  k = int(k)
  where = _checks.check_where(where, s.shape)
  zt = t / temperature
  if where is not None:
    zt = jnp.where(where, zt, _neg_fill(zt.dtype))
  _, top_idx = jax.lax.top_k(zt, k)
  top = jnp.put_along_axis(
      jnp.zeros(zt.shape, jnp.bool_), top_idx, True, axis=-1, inplace=False)
  if where is not None:
    top = top & where
    tail = where & ~top
  else:
    tail = ~top
  num_tail = jnp.sum(tail, axis=-1, keepdims=True)
  log_tail = _log_mass(zt, tail)[..., None] - jnp.log(jnp.maximum(num_tail, 1).astype(zt.dtype))
  log_target = jnp.where(top, jax.nn.log_softmax(zt, axis=-1), log_tail)
  log_q = _masked_log_softmax(s / temperature, where)
  terms = _kl_terms(log_target, log_q)
  if where is not None:
    terms = jnp.where(where, terms, 0.0)
  return temperature**2 * jnp.sum(terms, axis=-1)


def teacher_label_smoothing(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = 1.0,
) -> jax.Array:
  r"""KD-pt: the teacher as adaptive label smoothing.

  With ``p = softmax(t/τ)`` and ``y`` the true class, the synthetic target keeps
  only the teacher's confidence on the true class, ``ρ_y = p_y``, and spreads the
  rest uniformly, ``ρ_c = (1 − p_y)/(C − 1)`` for ``c ≠ y``. The loss is the KD
  objective with this target, ``τ² · KL(ρ ‖ softmax(s/τ))``, written as a KL like
  :func:`kl_distillation`: the paper's cross-entropy form
  ``τ² · CE(ρ, softmax(s/τ))`` differs from it only by ``τ² · H(ρ)``, which does
  not depend on the student, so both give the same gradients. With ``C = 2`` the
  target is the teacher itself and the loss equals :func:`kl_distillation`.

  ``1 − p_y`` is computed as a log-sum-exp over the other classes, so a
  confident teacher does not lose it to rounding.

  Args:
    student_logits: ``[..., C]`` student logits ``s``, ``C >= 2``.
    teacher_logits: ``[..., C]`` teacher logits ``t``.
    labels: ``[...]`` integer ground-truth classes ``y``. A concrete label
      outside ``[0, C)`` raises ``ValueError`` (a traced one gives NaN).
    temperature: softmax temperature τ > 0 of both the teacher probability and
      the student.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for mismatched shapes, non-floating logits, fewer than 2
      classes, non-integer or wrongly shaped ``labels``, or ``temperature <= 0``.

  References:
    Tang, Shivanna, Zhao, Lin, Singh, Chi & Jain, "Understanding and Improving
    Knowledge Distillation", arXiv:2002.03532, 2020 (§4, KD-pt).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import teacher_label_smoothing
    >>> t = jnp.log(jnp.array([[0.1, 0.6, 0.3]]))
    >>> s = jnp.log(jnp.array([[0.2, 0.6, 0.2]]))  # equals the target for y = 1
    >>> loss = teacher_label_smoothing(s, t, jnp.array([1]))
    >>> bool(jnp.abs(loss).max() < 1e-6)  # 0 up to float32 rounding
    True
    >>> uniform = jnp.zeros((1, 3))  # KL([0.2, 0.6, 0.2] ‖ [1/3, 1/3, 1/3])
    >>> round(float(teacher_label_smoothing(uniform, t, jnp.array([1]))[0]), 4)
    0.1483
  """
  s, t = _student_teacher(student_logits, teacher_logits, temperature)
  _check_two_classes(s, 'student_logits')
  labels = _checks.check_labels(labels, s, 'labels', 'student_logits')
  num_classes = s.shape[-1]
  is_label, valid = _label_mask(labels, num_classes)
  zt = t / temperature
  log_rest = _log_mass(zt, ~is_label) - jnp.log(jnp.asarray(num_classes - 1, zt.dtype))
  log_target = jnp.where(is_label, jax.nn.log_softmax(zt, axis=-1), log_rest[..., None])
  log_q = jax.nn.log_softmax(s / temperature, axis=-1)
  loss = temperature**2 * jnp.sum(_kl_terms(log_target, log_q), axis=-1)
  return jnp.where(valid, loss, jnp.nan)


def class_similarity_distillation(
    student_logits: jax.Array,
    teacher_classifier_weights: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = 1.0,
) -> jax.Array:
  r"""KD-sim: distil the teacher's class-similarity structure.

  ``Ŵ`` are the teacher's last-layer class vectors (the columns of a Flax
  ``Dense`` kernel of shape ``[D, C]``), each L2-normalised. The target for an
  example of class ``y`` is the row of the class-similarity matrix
  ``ρ = softmax(ŵ_yᵀ Ŵ / τ)``, and the loss is ``τ² · KL(ρ ‖ softmax(s/τ))``
  (a KL like :func:`kl_distillation`; the cross-entropy form differs only by the
  student-independent ``τ² · H(ρ)``). Cosine similarities lie in ``[-1, 1]``, so
  small temperatures give a peaked target. A zero class vector is normalised
  with a floor of 1e-12 on its norm (it then has similarity 0 to every class).

  Args:
    student_logits: ``[..., C]`` student logits ``s``.
    teacher_classifier_weights: ``[D, C]`` teacher classifier kernel ``W``.
    labels: ``[...]`` integer ground-truth classes ``y``. A concrete label
      outside ``[0, C)`` raises ``ValueError`` (a traced one gives NaN).
    temperature: temperature τ > 0 of both the similarity softmax and the student.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for non-floating inputs, a kernel that is not ``[D, C]`` with the
      student's ``C``, non-integer or wrongly shaped ``labels``, or
      ``temperature <= 0``.

  References:
    Tang, Shivanna, Zhao, Lin, Singh, Chi & Jain, "Understanding and Improving
    Knowledge Distillation", arXiv:2002.03532, 2020 (§4, KD-sim).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import class_similarity_distillation
    >>> w = jnp.eye(3)  # orthogonal classes: target softmax([1, 0, 0])
    >>> s = jnp.array([[1.0, 0.0, 0.0]])
    >>> class_similarity_distillation(s, w, jnp.array([0]))
    Array([0.], dtype=float32)
  """
  _checks.check_min_rank(student_logits, 1, 'student_logits')
  _checks.check_rank(teacher_classifier_weights, 2, 'teacher_classifier_weights')
  _checks.check_positive(temperature, 'temperature')
  num_classes = jnp.shape(student_logits)[-1]
  if jnp.shape(teacher_classifier_weights)[1] != num_classes:
    raise ValueError(
        '`teacher_classifier_weights` must have shape [D, C] with C = '
        f'{num_classes} (the classes of `student_logits`), got '
        f'{jnp.shape(teacher_classifier_weights)}.')
  s = _checks.as_float(student_logits, 'student_logits')
  w = _checks.as_float(teacher_classifier_weights, 'teacher_classifier_weights')
  dtype = jnp.promote_types(s.dtype, w.dtype)
  s, w = s.astype(dtype), w.astype(dtype)
  labels = _checks.check_labels(labels, s, 'labels', 'student_logits')
  _, valid = _label_mask(labels, num_classes)
  # max() before sqrt keeps the gradient finite for an all-zero column.
  w_hat = w / jnp.sqrt(jnp.maximum(jnp.sum(w * w, axis=0), 1e-24))
  similarity = w_hat.T[jnp.clip(labels, 0, num_classes - 1)] @ w_hat  # [..., C]
  log_target = jax.nn.log_softmax(similarity / temperature, axis=-1)
  log_q = jax.nn.log_softmax(s / temperature, axis=-1)
  loss = temperature**2 * jnp.sum(_kl_terms(log_target, log_q), axis=-1)
  return jnp.where(valid, loss, jnp.nan)


# -------------------------------------------------------------------- DKD

def decoupled_kd(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> jax.Array:
  r"""Decoupled KD (DKD): ``α·τ²·TCKD + β·τ²·NCKD``.

  With ``p = softmax(z/τ)`` and ``y`` the true class:

  * TCKD is the KL between the binary target/non-target distributions
    ``b = [p_y, 1 − p_y]`` of teacher and student, ``KL(b_T ‖ b_S)``;
  * NCKD is the KL between the distributions over the non-target classes
    renormalised, ``p̂_c = p_c / (1 − p_y)`` for ``c ≠ y``, ``KL(p̂_T ‖ p̂_S)``.

  Classic KD decomposes as ``KL(p_T ‖ p_S) = TCKD + (1 − p_{T,y}) · NCKD``; DKD
  replaces the teacher-confidence weight ``1 − p_{T,y}`` by the constant β. As in
  the reference code, both terms are multiplied by τ², the non-target
  distributions are softmaxes with the target logit masked by a large negative,
  and ``log(1 − p_y)`` is a log-sum-exp over the non-target logits minus one over
  all logits (stable for confident predictions). The paper's warm-up of the DKD
  weight belongs to the train step's schedule.

  Args:
    student_logits: ``[..., C]`` student logits, ``C >= 2``.
    teacher_logits: ``[..., C]`` teacher logits.
    labels: ``[...]`` integer ground-truth classes. A concrete label outside
      ``[0, C)`` raises ``ValueError``; a traced one is not checked.
    alpha: weight ``>= 0`` of TCKD (paper: 1).
    beta: weight ``>= 0`` of NCKD (paper: 8 on CIFAR-100, 0.5 on ImageNet).
    temperature: softmax temperature τ > 0 (paper: 4; 1 on ImageNet).

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for mismatched shapes, non-floating logits, fewer than 2
      classes, bad ``labels``, ``temperature <= 0`` or negative weights.

  References:
    Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation",
    CVPR 2022, arXiv:2203.08679.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import decoupled_kd
    >>> s = jnp.array([[1.0, 2.0, 3.0]])
    >>> decoupled_kd(s, s, jnp.array([2]))
    Array([0.], dtype=float32)
    >>> t = jnp.array([[0.0, 0.0, 0.0]])  # p̂_T = [1/2, 1/2] off class 2
    >>> z = jnp.array([[0.0, jnp.log(3.0), 0.0]])  # p̂_S = [1/4, 3/4]
    >>> # NCKD only: 1/2·log(2) + 1/2·log(2/3)
    >>> decoupled_kd(z, t, jnp.array([2]), alpha=0.0, beta=1.0, temperature=1.0)
    Array([0.1438...], dtype=float32)
  """
  _check_nonnegative(alpha, 'alpha')
  _check_nonnegative(beta, 'beta')
  s, t = _student_teacher(student_logits, teacher_logits, temperature)
  _check_two_classes(s, 'student_logits')
  labels = _checks.check_labels(labels, s, 'labels', 'student_logits')
  is_label, valid = _label_mask(labels, s.shape[-1])
  zs, zt = s / temperature, t / temperature

  def binary_log_probs(z):
    log_p = jax.nn.log_softmax(z, axis=-1)
    log_target = jnp.sum(jnp.where(is_label, log_p, 0.0), axis=-1)
    return jnp.stack([log_target, _log_mass(z, ~is_label)], axis=-1)

  tckd = jnp.sum(_kl_terms(binary_log_probs(zt), binary_log_probs(zs)), axis=-1)
  fill = _neg_fill(zs.dtype)
  log_hat_t = jax.nn.log_softmax(jnp.where(is_label, fill, zt), axis=-1)
  log_hat_s = jax.nn.log_softmax(jnp.where(is_label, fill, zs), axis=-1)
  nckd = jnp.sum(jnp.where(is_label, 0.0, _kl_terms(log_hat_t, log_hat_s)), axis=-1)
  loss = temperature**2 * (alpha * tckd + beta * nckd)
  return jnp.where(valid, loss, jnp.nan)


# -------------------------------------------------------------------- DML

def mutual_kl(
    peer_logits: jax.Array,
    *,
    temperature: float = 1.0,
    target_logits: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Deep mutual learning: each peer's mean KL to the other peers.

  For ``K`` peers with predictions ``q_k = softmax(peer_k/τ)`` and targets
  ``p_l = softmax(target_l/τ)`` (``target_logits`` defaults to ``peer_logits``),
  entry ``k`` is ``1/(K−1) · Σ_{l≠k} τ² · KL(p_l ‖ q_k)``. Peer k's full DML
  objective is ``cross_entropy(peer_k, y) + mutual_kl(...)[k]``.

  In DML each peer treats the others' predictions as constant targets. This loss
  does not call ``stop_gradient``: the step decides. Pass
  ``target_logits=jax.lax.stop_gradient(peer_logits)`` so that the sum of all
  entries gives each peer exactly the gradient of its own objective (peer ``k``
  receives gradient only through its own logits). With ``target_logits=None``
  gradients also flow into the targets, i.e. into the other peers.

  The K×K pairs are formed explicitly (``[K, K, ..., C]`` intermediates), which is
  exact for confident peers and cheap for the few peers of a cohort.

  Args:
    peer_logits: ``[K, ..., C]`` logits of ``K >= 2`` peers (stacked on axis 0).
    temperature: softmax temperature τ > 0 (DML uses 1).
    target_logits: optional ``[K, ..., C]`` logits defining the targets ``p_l``.

  Returns:
    ``[K, ...]`` per-peer, per-example loss, in at least float32.

  Raises:
    ValueError: for non-floating inputs, ``peer_logits`` with fewer than 2 peers
      or no class axis, ``target_logits`` of another shape, or
      ``temperature <= 0``.

  References:
    Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018,
    arXiv:1706.00384.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import kl_distillation, mutual_kl
    >>> a, b = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[3.0, 2.0, 1.0]])
    >>> out = mutual_kl(jnp.stack([a, b]), temperature=2.0)
    >>> out.shape
    (2, 1)
    >>> bool(jnp.allclose(out[0], kl_distillation(a, b, temperature=2.0)))
    True
  """
  _checks.check_min_rank(peer_logits, 2, 'peer_logits')
  num_peers = jnp.shape(peer_logits)[0]
  if num_peers < 2:
    raise ValueError(
        f'`peer_logits` must stack K >= 2 peers on axis 0, got shape {jnp.shape(peer_logits)}.')
  _checks.check_positive(temperature, 'temperature')
  x = _checks.as_float(peer_logits, 'peer_logits')
  if target_logits is None:
    y = x
  else:
    _checks.check_same_shape(target_logits, peer_logits, 'target_logits', 'peer_logits')
    y = _checks.as_float(target_logits, 'target_logits')
    dtype = jnp.promote_types(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
  log_q = jax.nn.log_softmax(x / temperature, axis=-1)
  log_p = jax.nn.log_softmax(y / temperature, axis=-1)
  pair_kl = jnp.sum(_kl_terms(log_p[:, None], log_q[None, :]), axis=-1)  # [L, K, ...]
  others = ~jnp.eye(num_peers, dtype=jnp.bool_).reshape(
      (num_peers, num_peers) + (1,) * (pair_kl.ndim - 2))
  total = jnp.sum(jnp.where(others, pair_kl, 0.0), axis=0)
  return temperature**2 * total / (num_peers - 1)


# ------------------------------------------------------------------- DIST

def _safe_norm(x: jax.Array, axis: int) -> jax.Array:
  """L2 norm with a zero (not NaN) gradient at the zero vector."""
  sq = jnp.sum(x * x, axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _pearson(a: jax.Array, b: jax.Array, axis: int, eps: float) -> jax.Array:
  a = a - jnp.mean(a, axis=axis, keepdims=True)
  b = b - jnp.mean(b, axis=axis, keepdims=True)
  return jnp.sum(a * b, axis=axis) / (_safe_norm(a, axis) * _safe_norm(b, axis) + eps)


def dist_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    eps: float = 1e-8,
) -> jax.Array:
  r"""DIST: match inter- and intra-class relations by Pearson correlation.

  With ``P_S = softmax(s/τ)`` and ``P_T = softmax(t/τ)`` (both ``[B, C]``):

  * inter-class relation: ``mean_i (1 − ρ(P_S[i, :], P_T[i, :]))``, per example
    across classes;
  * intra-class relation: ``mean_c (1 − ρ(P_S[:, c], P_T[:, c]))``, per class
    across the batch;

  where ``ρ(a, b) = ⟨a − ā, b − b̄⟩ / (‖a − ā‖‖b − b̄‖ + eps)``. The loss is
  ``τ² · (β · inter + γ · intra)``, as in the paper's reference code (the ``eps``
  also follows it). This is a **batch-level** loss: the intra-class term couples
  the examples, so it returns a scalar and the batch is part of its definition.
  A constant column (e.g. a batch of one) has correlation 0, i.e. relation 1.

  Args:
    student_logits: ``[B, C]`` student logits.
    teacher_logits: ``[B, C]`` teacher logits.
    beta: weight ``>= 0`` of the inter-class term (paper: 1).
    gamma: weight ``>= 0`` of the intra-class term (paper: 1).
    temperature: softmax temperature τ > 0 (paper: 1 on ImageNet, 4 on CIFAR).
    eps: ``> 0`` added to the product of norms in the Pearson denominator.

  Returns:
    A scalar loss, in at least float32.

  Raises:
    ValueError: for inputs that are not both ``[B, C]`` with the same shape,
      non-floating inputs, ``temperature <= 0``, ``eps <= 0`` or negative weights.

  References:
    Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger
    Teacher", NeurIPS 2022, arXiv:2205.10536.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import dist_loss
    >>> t = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> float(dist_loss(t, t)) < 1e-5
    True
    >>> dist_loss(t[:, ::-1], t)  # every row and column anti-correlated
    Array(4., dtype=float32)
  """
  _checks.check_same_shape(student_logits, teacher_logits, 'student_logits', 'teacher_logits')
  _checks.check_rank(student_logits, 2, 'student_logits')
  _checks.check_positive(temperature, 'temperature')
  _checks.check_positive(eps, 'eps')
  _check_nonnegative(beta, 'beta')
  _check_nonnegative(gamma, 'gamma')
  s = _checks.as_float(student_logits, 'student_logits')
  t = _checks.as_float(teacher_logits, 'teacher_logits')
  dtype = jnp.promote_types(s.dtype, t.dtype)
  p_s = jax.nn.softmax(s.astype(dtype) / temperature, axis=-1)
  p_t = jax.nn.softmax(t.astype(dtype) / temperature, axis=-1)
  inter = jnp.mean(1.0 - _pearson(p_s, p_t, axis=1, eps=eps))
  intra = jnp.mean(1.0 - _pearson(p_s, p_t, axis=0, eps=eps))
  return temperature**2 * (beta * inter + gamma * intra)
