"""Fixed-size, jit-compatible non-maximum suppression and dense-head post-processing."""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from kdjax.dense import _boxes


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    *,
    max_outputs: int,
    iou_threshold: float = 0.5,
    classes: Optional[jax.Array] = None,
    score_threshold: Optional[float] = None,
    valid: Optional[jax.Array] = None,
) -> jax.Array:
  """Greedy non-maximum suppression with a fixed-size output.

  Candidates are visited by decreasing score (ties: lower index first); a
  candidate is kept unless a kept candidate of the same class overlaps it with
  IoU **strictly greater** than ``iou_threshold`` (an IoU equal to the
  threshold is kept, as in torchvision). Candidates of different ``classes``
  never suppress each other. The output has a static size, so the function
  runs under ``jax.jit`` and ``jax.vmap`` (one image at a time; vmap for a
  batch).

  Args:
    boxes: ``[N, 4]`` boxes ``[ymin, xmin, ymax, xmax]``.
    scores: ``[N]`` scores.
    max_outputs: ``K``, the static number of returned slots.
    iou_threshold: suppression threshold.
    classes: optional ``[N]`` int classes for per-class suppression.
    score_threshold: optional; candidates with a lower score are dropped.
    valid: optional ``[N]`` bool mask; False candidates are dropped.

  Returns:
    ``[K]`` int32 indices into ``boxes`` of the kept candidates by decreasing
    score, padded with -1.

  Raises:
    ValueError: for mismatched shapes or a non-positive ``max_outputs``.

  References:
    Neubeck & Van Gool, "Efficient Non-Maximum Suppression", ICPR 2006.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.dense import nms
    >>> boxes = jnp.array([[0, 0, 1, 1], [0, 0, 1, 0.9], [2, 2, 3, 3]], jnp.float32)
    >>> nms(boxes, jnp.array([0.9, 0.8, 0.7]), max_outputs=3)
    Array([ 0,  2, -1], dtype=int32)
  """
  n = jnp.shape(scores)[0] if jnp.ndim(scores) == 1 else None
  if n is None or jnp.shape(boxes) != (n, 4):
    raise ValueError(f'`boxes` must be [N, 4] and `scores` [N], got {jnp.shape(boxes)} and '
                     f'{jnp.shape(scores)}.')
  if int(max_outputs) < 1:
    raise ValueError(f'`max_outputs` must be positive, got {max_outputs}.')
  for x, name in ((classes, 'classes'), (valid, 'valid')):
    if x is not None and jnp.shape(x) != (n,):
      raise ValueError(f'`{name}` must have shape ({n},), got {jnp.shape(x)}.')
  # Defaults as arrays, so every call with the same N and K shares one compilation.
  classes = jnp.zeros((n,), jnp.int32) if classes is None else classes
  valid = jnp.ones((n,), bool) if valid is None else valid
  score_threshold = -jnp.inf if score_threshold is None else score_threshold
  return _nms(boxes, scores, classes, valid, score_threshold, iou_threshold,
              max_outputs=int(max_outputs))


@functools.partial(jax.jit, static_argnames=('max_outputs',))
def _nms(boxes, scores, classes, valid, score_threshold, iou_threshold, *, max_outputs):
  """The compiled body of :func:`nms` (one XLA program instead of many eager ops)."""
  n = scores.shape[0]
  scores = jnp.asarray(scores, jnp.float32)
  candidate = jnp.asarray(valid, bool) & ~jnp.isnan(scores) & (scores >= score_threshold)
  order = jnp.argsort(jnp.where(candidate, -scores, jnp.inf), stable=True)
  candidate = candidate[order]
  sorted_boxes = jnp.asarray(boxes, jnp.float32)[order]
  suppresses = _boxes.box_iou(sorted_boxes, sorted_boxes) > iou_threshold
  c = jnp.asarray(classes)[order]
  suppresses &= c[:, None] == c[None, :]

  def visit(i, keep):
    return keep.at[i].set(candidate[i] & ~jnp.any(keep & suppresses[:, i]))

  keep = jax.lax.fori_loop(0, n, visit, jnp.zeros((n,), bool))
  (positions,) = jnp.nonzero(keep, size=max_outputs, fill_value=n)
  picked = jnp.concatenate([order, jnp.array([-1], order.dtype)])[positions]
  return picked.astype(jnp.int32)


class Detections(NamedTuple):
  """A fixed number ``K`` of detections per image.

  Attributes:
    boxes: ``[..., K, 4]`` normalised ``[ymin, xmin, ymax, xmax]`` (0 in empty slots).
    scores: ``[..., K]`` class probabilities (0 in empty slots).
    classes: ``[..., K]`` int32 object classes ``0 .. num_classes - 1`` (-1 in
      empty slots).
    valid: ``[..., K]`` bool, True for a real detection.
  """

  boxes: jax.Array
  scores: jax.Array
  classes: jax.Array
  valid: jax.Array


def detect(
    class_logits: jax.Array,
    edge_logits: jax.Array,
    *,
    stride: int,
    image_size: int | Sequence[int],
    max_detections: int = 20,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.6,
    pre_nms_top_k: int = 200,
) -> Detections:
  """Post-processes a dense detector's outputs into a fixed number of detections.

  Class probabilities are the softmax over the ``num_classes + 1`` logits,
  background first; every (location, object class) pair is a candidate
  scored by its probability (FCOS/GFL keep several classes per location).
  The ``pre_nms_top_k`` best candidates above ``score_threshold`` go through
  per-class :func:`nms`; boxes are decoded from the edge distributions with
  :func:`kdjax.dense.decode_boxes`.

  Args:
    class_logits: ``[B, H', W', num_classes + 1]`` class logits, background at 0.
    edge_logits: ``[B, H', W', 4, n_bins]`` box-edge logits.
    stride: the head's stride in pixels.
    image_size: ``H`` or ``(H, W)`` in pixels.
    max_detections: ``K`` detections kept per image.
    score_threshold: candidates with a lower probability are dropped.
    iou_threshold: NMS threshold.
    pre_nms_top_k: candidates per image entering NMS.

  Returns:
    :class:`Detections` with ``[B, K]`` leading shape, best score first.

  Raises:
    ValueError: for logits of mismatched grids or ranks.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.dense import detect
    >>> cls = jnp.zeros((1, 2, 2, 3)).at[0, 0, 0, 2].set(9.0)  # class 1 at (0, 0)
    >>> edges = jnp.full((1, 2, 2, 4, 3), -1e9).at[..., 1].set(0.0)
    >>> d = detect(cls, edges, stride=4, image_size=8, max_detections=2,
    ...            score_threshold=0.5)
    >>> d.classes, d.valid
    (Array([[ 1, -1]], dtype=int32), Array([[ True, False]], dtype=bool))
    >>> d.boxes[0, 0]
    Array([0.  , 0.  , 0.75, 0.75], dtype=float32)
  """
  if jnp.ndim(class_logits) != 4 or jnp.ndim(edge_logits) != 5:
    raise ValueError(f'`class_logits` must be [B, H, W, C + 1] and `edge_logits` '
                     f'[B, H, W, 4, n_bins], got {jnp.shape(class_logits)} and '
                     f'{jnp.shape(edge_logits)}.')
  if jnp.shape(class_logits)[:3] != jnp.shape(edge_logits)[:3]:
    raise ValueError(f'`class_logits` and `edge_logits` must share [B, H, W], got '
                     f'{jnp.shape(class_logits)} and {jnp.shape(edge_logits)}.')
  h, w = _boxes._pair(image_size, 'image_size')  # pylint: disable=protected-access
  return _detect(class_logits, edge_logits, score_threshold, iou_threshold, stride=int(stride),
                 image_size=(h, w), max_detections=int(max_detections),
                 pre_nms_top_k=int(pre_nms_top_k))


@functools.partial(jax.jit, static_argnames=('stride', 'image_size', 'max_detections',
                                             'pre_nms_top_k'))
def _detect(class_logits, edge_logits, score_threshold, iou_threshold, *, stride, image_size,
            max_detections, pre_nms_top_k):
  """The compiled body of :func:`detect`."""
  batch = jnp.shape(class_logits)[0]
  num_classes = jnp.shape(class_logits)[-1] - 1
  boxes = _boxes.decode_boxes(edge_logits, stride=stride, image_size=image_size)
  boxes = boxes.reshape(batch, -1, 4)
  probs = jax.nn.softmax(jnp.asarray(class_logits, jnp.float32), axis=-1)[..., 1:]
  probs = probs.reshape(batch, -1)                        # [B, P * C]
  top_k = min(int(pre_nms_top_k), probs.shape[-1])
  k = int(max_detections)

  def one(p, b):
    scores, flat = jax.lax.top_k(p, top_k)
    location, cls = flat // num_classes, flat % num_classes
    cand = b[location]
    keep = _nms(cand, scores, cls, jnp.ones_like(scores, bool), score_threshold, iou_threshold,
                max_outputs=k)
    ok = keep >= 0
    safe = jnp.maximum(keep, 0)
    return Detections(jnp.where(ok[:, None], cand[safe], 0.0), jnp.where(ok, scores[safe], 0.0),
                      jnp.where(ok, cls[safe], -1).astype(jnp.int32), ok)

  return jax.vmap(one)(probs, boxes)
