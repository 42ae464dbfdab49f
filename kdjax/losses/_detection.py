"""Object-detection distillation losses (classification head, box regression, LD).

All three are per-example (per anchor / region): they map ``[..., C]``,
``[..., 4]`` or ``[..., 4, n_bins]`` to ``[...]`` and never reduce over regions.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.losses import _checks
from kdjax.losses._logits import kl_distillation


def _check_nonnegative(value, name: str) -> None:
  """Raises a ``ValueError`` if a concrete scalar option is negative or not a scalar."""
  if _checks.is_traced(value):
    if jnp.ndim(value) != 0:
      raise ValueError(f'`{name}` must be a scalar, got shape {jnp.shape(value)}.')
    return
  value = np.asarray(value)
  if value.ndim != 0:
    raise ValueError(f'`{name}` must be a scalar, got shape {value.shape}.')
  if not value >= 0:
    raise ValueError(f'`{name}` must be >= 0, got {value}.')


def weighted_soft_cross_entropy(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    class_weights: jax.Array,
    temperature: float = 1.0,
) -> jax.Array:
  r"""Class-weighted soft cross-entropy of a detector's classification head.

  ``L_soft = -\sum_c w_c P_{T,c} \log P_{S,c}`` with
  ``P = softmax(z / τ)`` for teacher and student (Chen et al. 2017, Eq. 3).
  The weights counter the foreground/background imbalance of region proposals;
  the paper uses ``w = 1.5`` for the background class and ``1`` elsewhere.

  This is a cross-entropy, not a KL: it does not vanish when student and
  teacher agree (its minimum over the student is then the weighted teacher
  entropy, which carries no gradient). No ``τ²`` factor is applied, as in the
  paper, which combines it with the hard-label loss through its own weight
  ``μ``; multiply by ``τ²`` yourself to keep gradient magnitudes comparable
  across temperatures.

  Args:
    student_logits: ``[..., C]`` student class logits (background included).
    teacher_logits: ``[..., C]`` teacher class logits.
    class_weights: ``[C]`` non-negative per-class weights ``w_c``.
    temperature: softmax temperature τ > 0 applied to both distributions.

  Returns:
    ``[...]`` per-region loss, in at least float32.

  Raises:
    ValueError: for mismatched shapes, non-floating logits, ``class_weights``
      that are not ``[C]`` or are negative, or ``temperature <= 0``.

  References:
    Chen, Choi, Yu, Han & Chandraker, "Learning Efficient Object Detection
    Models with Knowledge Distillation", NeurIPS 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import weighted_soft_cross_entropy
    >>> z = jnp.array([[0.0, 0.0]])
    >>> weighted_soft_cross_entropy(z, z, class_weights=jnp.array([1.5, 1.0]))
    Array([0.8664...], dtype=float32)
  """
  _checks.check_same_shape(student_logits, teacher_logits, 'student_logits', 'teacher_logits')
  _checks.check_min_rank(student_logits, 1, 'student_logits')
  _checks.check_positive(temperature, 'temperature')
  s = _checks.as_float(student_logits, 'student_logits')
  t = _checks.as_float(teacher_logits, 'teacher_logits')
  dtype = jnp.promote_types(s.dtype, t.dtype)
  num_classes = s.shape[-1]
  w = jnp.asarray(class_weights)
  if w.shape != (num_classes,):
    raise ValueError(
        f'`class_weights` must have shape ({num_classes},) (the class axis of '
        f'`student_logits`), got {w.shape}.')
  if not (jnp.issubdtype(w.dtype, jnp.floating) or jnp.issubdtype(w.dtype, jnp.integer)):
    raise ValueError(f'`class_weights` must be numeric, got dtype {w.dtype}.')
  if not _checks.is_traced(w) and np.any(np.asarray(w) < 0):
    raise ValueError(f'`class_weights` must be >= 0, got {w}.')
  w = w.astype(dtype)
  log_q = jax.nn.log_softmax(s.astype(dtype) / temperature, axis=-1)
  p = jax.nn.softmax(t.astype(dtype) / temperature, axis=-1)
  return -jnp.sum(w * p * log_q, axis=-1)


def bounded_regression(
    student_boxes: jax.Array,
    teacher_boxes: jax.Array,
    targets: jax.Array,
    *,
    margin: float = 0.0,
) -> jax.Array:
  r"""Teacher-bounded L2 box regression (Chen et al. 2017, Eq. 4).

  ``L_b = ‖R_S − y‖²`` if ``‖R_S − y‖² + m > ‖R_T − y‖²``, else ``0``.
  The teacher's squared error is an upper bound the student has to reach
  (within margin ``m``); once it does, the region contributes nothing. The
  condition is a step in ``teacher_boxes``, so no gradient reaches the teacher
  through it. (Some write-ups carry a leading minus sign; that is a typo: the
  loss is non-negative.) The paper adds this term to the ordinary smooth-L1
  regression loss on the ground truth; that combination is the caller's.

  Args:
    student_boxes: ``[..., 4]`` student regression outputs ``R_S`` (any
      coordinate encoding; the last axis may have any size, 4 for boxes).
    teacher_boxes: ``[..., 4]`` teacher regression outputs ``R_T``.
    targets: ``[..., 4]`` ground-truth regression targets ``y``.
    margin: scalar margin ``m >= 0``.

  Returns:
    ``[...]`` per-region loss, in at least float32.

  Raises:
    ValueError: for mismatched shapes, non-floating inputs, rank 0 inputs, or a
      negative or non-scalar ``margin``.

  References:
    Chen, Choi, Yu, Han & Chandraker, "Learning Efficient Object Detection
    Models with Knowledge Distillation", NeurIPS 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import bounded_regression
    >>> y = jnp.zeros((2, 4))
    >>> r_s = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]])
    >>> r_t = jnp.full((2, 4), 0.25)
    >>> bounded_regression(r_s, r_t, y)
    Array([1., 0.], dtype=float32)
  """
  _checks.check_same_shape(student_boxes, teacher_boxes, 'student_boxes', 'teacher_boxes')
  _checks.check_same_shape(student_boxes, targets, 'student_boxes', 'targets')
  _checks.check_min_rank(student_boxes, 1, 'student_boxes')
  _check_nonnegative(margin, 'margin')
  r_s = _checks.as_float(student_boxes, 'student_boxes')
  r_t = _checks.as_float(teacher_boxes, 'teacher_boxes')
  y = _checks.as_float(targets, 'targets')
  dtype = jnp.promote_types(jnp.promote_types(r_s.dtype, r_t.dtype), y.dtype)
  r_s, r_t, y = r_s.astype(dtype), r_t.astype(dtype), y.astype(dtype)
  student_err = jnp.sum(jnp.square(r_s - y), axis=-1)
  teacher_err = jnp.sum(jnp.square(r_t - y), axis=-1)
  return jnp.where(student_err + margin > teacher_err, student_err, 0.0)


def localization_distillation(
    student_edge_logits: jax.Array,
    teacher_edge_logits: jax.Array,
    *,
    temperature: float = 10.0,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Localization distillation: KL between per-edge box distributions.

  Each of the 4 box edges is a discrete distribution over ``n_bins`` positions
  (the General Focal Loss box head). The loss is
  ``\sum_{e=1}^{4} τ²·KL(softmax(e_T/τ) ‖ softmax(e_S/τ))`` (Zheng et al. 2022,
  Eq. 5-6), with the ``τ²`` factor of the authors' implementation; the paper's
  reference temperature is τ = 10.

  Args:
    student_edge_logits: ``[..., 4, n_bins]`` student edge logits.
    teacher_edge_logits: ``[..., 4, n_bins]`` teacher edge logits.
    temperature: softmax temperature τ > 0.
    where: optional boolean mask broadcastable to ``[...]`` selecting the
      regions to distil (e.g. the paper's main or valuable localization
      regions). Unselected regions give exactly 0 and no gradient, so
      ``loss[where]`` equals the loss of the sliced inputs.

  Returns:
    ``[...]`` per-region loss, in at least float32.

  Raises:
    ValueError: for mismatched shapes, an edge axis (second to last) other than
      4, non-floating inputs, a bad mask, or ``temperature <= 0``.

  References:
    Zheng, Ye, Wang, Ren, Zuo, Hou & Cheng, "Localization Distillation for Dense
    Object Detection", CVPR 2022, arXiv:2102.12252.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import localization_distillation
    >>> e = jnp.zeros((3, 4, 8))
    >>> localization_distillation(e, e)
    Array([0., 0., 0.], dtype=float32)
  """
  _checks.check_same_shape(
      student_edge_logits, teacher_edge_logits, 'student_edge_logits', 'teacher_edge_logits')
  _checks.check_min_rank(student_edge_logits, 2, 'student_edge_logits')
  if jnp.shape(student_edge_logits)[-2] != 4:
    raise ValueError(
        '`student_edge_logits` must have shape [..., 4, n_bins] (one distribution per '
        f'box edge), got {jnp.shape(student_edge_logits)}.')
  _checks.check_positive(temperature, 'temperature')
  s = _checks.as_float(student_edge_logits, 'student_edge_logits')
  t = _checks.as_float(teacher_edge_logits, 'teacher_edge_logits')
  where = _checks.check_where(where, s.shape[:-2])
  edge_where = None if where is None else where[..., None, None]
  per_edge = kl_distillation(s, t, temperature=temperature, where=edge_where)
  return jnp.sum(per_edge, axis=-1)


def softmax_focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    gamma: float = 2.0,
) -> jax.Array:
  r"""Focal loss of a softmax class head: ``−(1 − p_y)^γ \log p_y``.

  The focal loss (Lin et al. 2017) down-weights the easy (mostly background)
  locations of a dense head by ``(1 − p_y)^γ``. kdjax's dense detector has a
  softmax head with the background as class 0 (so that the soft-label KD of
  Chen et al. 2017 applies), hence the softmax form rather than the paper's
  per-class sigmoids. ``γ = 0`` is the cross-entropy. Normalising (the paper
  divides the sum over locations by the number of positives) is the caller's.

  Args:
    logits: ``[..., C]`` class logits (background included).
    labels: ``[...]`` integer targets in ``[0, C)``.
    gamma: focusing parameter ``γ >= 0`` (paper: 2).

  Returns:
    ``[...]`` per-location loss, in at least float32.

  Raises:
    ValueError: for non-floating logits, labels that do not match, or
      ``gamma < 0``.

  References:
    Lin, Goyal, Girshick, He & Dollár, "Focal Loss for Dense Object
    Detection", ICCV 2017, arXiv:1708.02002.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import softmax_focal_loss
    >>> z = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1]]))
    >>> softmax_focal_loss(z, jnp.array([0, 0]))  # 0.25·log 2 and 0.01·log(1/0.9)
    Array([0.1732..., 0.0010...], dtype=float32)
  """
  _checks.check_min_rank(logits, 1, 'logits')
  _check_nonnegative(gamma, 'gamma')
  z = _checks.as_float(logits, 'logits')
  labels = jnp.asarray(labels)
  if labels.shape != z.shape[:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'`labels` must be integers of shape {z.shape[:-1]} (the logits without '
                     f'the class axis), got {labels.dtype} {labels.shape}.')
  log_p = jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), labels[..., None], axis=-1)[..., 0]
  if not _checks.is_traced(gamma) and float(gamma) == 0.0:
    return -log_p  # the cross-entropy, without 0^0's NaN gradient at p_y = 1
  return -jnp.power(-jnp.expm1(log_p), gamma) * log_p


def distribution_focal_loss(edge_logits: jax.Array, distances: jax.Array) -> jax.Array:
  r"""Distribution focal loss of a distributional box head (GFL, Eq. 6).

  Each edge distance ``y`` (in bins) lies between the bins ``y_l = ⌊y⌋`` and
  ``y_r = y_l + 1``; the loss is the cross-entropy towards those two bins,
  weighted by their closeness: ``−((y_r − y) \log S_l + (y − y_l) \log S_r)``,
  with ``S = softmax(e)``. It is minimised by the distribution whose
  expectation (:func:`kdjax.dense.edge_expectation`) is ``y``.

  Args:
    edge_logits: ``[..., 4, n_bins]`` edge logits (left, top, right, bottom).
    distances: ``[..., 4]`` target distances in ``[0, n_bins − 1)`` (e.g.
      ``kdjax.dense.assign_targets(...).distances``); values outside are
      clipped.

  Returns:
    ``[..., 4]`` per-edge loss, in at least float32.

  Raises:
    ValueError: for an edge axis other than 4, fewer than 2 bins, or
      distances that do not match.

  References:
    Li, Wang, Wu, Chen, Hu, Li, Tang & Yang, "Generalized Focal Loss: Learning
    Qualified and Distributed Bounding Boxes for Dense Object Detection",
    NeurIPS 2020, arXiv:2006.04388.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import distribution_focal_loss
    >>> e = jnp.log(jnp.array([[0.5, 0.5, 1e-9]] * 4))
    >>> distribution_focal_loss(e, jnp.full((4,), 0.5))  # log 2 on every edge
    Array([0.6931..., 0.6931..., 0.6931..., 0.6931...], dtype=float32)
  """
  _checks.check_min_rank(edge_logits, 2, 'edge_logits')
  shape = jnp.shape(edge_logits)
  if shape[-2] != 4 or shape[-1] < 2:
    raise ValueError(f'`edge_logits` must have shape [..., 4, n_bins] with n_bins >= 2, got '
                     f'{shape}.')
  if jnp.shape(distances) != shape[:-1]:
    raise ValueError(f'`distances` must have shape {shape[:-1]}, got {jnp.shape(distances)}.')
  e = _checks.as_float(edge_logits, 'edge_logits')
  d = jnp.clip(jnp.asarray(distances, e.dtype), 0.0, shape[-1] - 1 - 1e-3)
  lo = jnp.floor(d).astype(jnp.int32)
  log_p = jax.nn.log_softmax(e, axis=-1)
  take = lambda i: jnp.take_along_axis(log_p, i[..., None], axis=-1)[..., 0]  # noqa: E731
  return -((lo + 1 - d) * take(lo) + (d - lo) * take(lo + 1))
