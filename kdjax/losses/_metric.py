"""Metric-learning distillation: the triplet loss with a student anchor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.losses import _checks


_DISTANCES = ('euclidean', 'squared_euclidean', 'cosine')


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt(x)`` for ``x >= 0`` whose derivative at 0 is taken as 0, not ``inf``."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _distance(a: jax.Array, b: jax.Array, kind: str) -> jax.Array:
  if kind == 'cosine':
    eps = jnp.finfo(a.dtype).tiny ** 0.5
    norm_a = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(a), axis=-1), eps**2))
    norm_b = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(b), axis=-1), eps**2))
    return 1.0 - jnp.sum(a * b, axis=-1) / (norm_a * norm_b)
  sq = jnp.sum(jnp.square(a - b), axis=-1)
  return sq if kind == 'squared_euclidean' else _safe_sqrt(sq)


def triplet_distillation(
    student_embeddings: jax.Array,
    teacher_positive: jax.Array,
    teacher_negative: jax.Array,
    *,
    margin: float = 1.0,
    distance: str = 'euclidean',
) -> jax.Array:
  r"""Triplet distillation: pull the student to the teacher, away from other classes.

  ``L = max(d(a, p) − d(a, n) + m, 0)`` where the anchor ``a`` is the student
  embedding of an input, the positive ``p`` the teacher embedding of the same
  input and the negative ``n`` the teacher embedding of an input of another
  class (Oki et al. 2020). Choosing the negatives (and any weighting against a
  hard-label loss) is the caller's.

  Distances, over the last axis:

  * ``'euclidean'``: ``‖a − b‖₂``. Its derivative at ``a = b`` is taken as 0
    (the subgradient), so a student that matches the teacher exactly gives
    finite gradients.
  * ``'squared_euclidean'``: ``‖a − b‖₂²``.
  * ``'cosine'``: ``1 − aᵀb / (‖a‖ ‖b‖)``, norms clamped away from 0.

  Args:
    student_embeddings: ``[..., D]`` student embeddings (anchors).
    teacher_positive: ``[..., D]`` teacher embeddings of the same inputs.
    teacher_negative: ``[..., D]`` teacher embeddings of other-class inputs.
    margin: scalar margin ``m >= 0``.
    distance: one of ``'euclidean'``, ``'squared_euclidean'``, ``'cosine'``.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for mismatched shapes, rank-0 or non-floating inputs, a
      negative or non-scalar ``margin``, or an unknown ``distance``.

  References:
    Oki, Abe, Miyao & Kurita, "Triplet Loss for Knowledge Distillation",
    IJCNN 2020, arXiv:2004.08116.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import triplet_distillation
    >>> a = jnp.array([[0.0, 0.0], [0.0, 0.0]])
    >>> p = jnp.array([[3.0, 4.0], [0.0, 1.0]])
    >>> n = jnp.array([[0.0, 1.0], [6.0, 8.0]])
    >>> triplet_distillation(a, p, n, margin=1.0)
    Array([5., 0.], dtype=float32)
  """
  if distance not in _DISTANCES:
    raise ValueError(f'`distance` must be one of {_DISTANCES}, got {distance!r}.')
  _checks.check_same_shape(
      student_embeddings, teacher_positive, 'student_embeddings', 'teacher_positive')
  _checks.check_same_shape(
      student_embeddings, teacher_negative, 'student_embeddings', 'teacher_negative')
  _checks.check_min_rank(student_embeddings, 1, 'student_embeddings')
  if jnp.ndim(margin) != 0:
    raise ValueError(f'`margin` must be a scalar, got shape {jnp.shape(margin)}.')
  if not _checks.is_traced(margin) and not np.asarray(margin) >= 0:
    raise ValueError(f'`margin` must be >= 0, got {margin}.')
  a = _checks.as_float(student_embeddings, 'student_embeddings')
  p = _checks.as_float(teacher_positive, 'teacher_positive')
  n = _checks.as_float(teacher_negative, 'teacher_negative')
  dtype = jnp.promote_types(jnp.promote_types(a.dtype, p.dtype), n.dtype)
  a, p, n = a.astype(dtype), p.astype(dtype), n.astype(dtype)
  return jnp.maximum(_distance(a, p, distance) - _distance(a, n, distance) + margin, 0.0)
