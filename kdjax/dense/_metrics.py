"""Dense-prediction metrics: COCO mAP (through pycocotools) and segmentation mIoU."""

from __future__ import annotations

import contextlib
import functools
import io
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.dense import _boxes


def coco_map(
    pred_boxes,
    pred_scores,
    pred_classes,
    gt_boxes,
    gt_labels,
    *,
    image_size: int | Sequence[int],
    pred_valid=None,
    gt_valid=None,
    num_classes: Optional[int] = None,
) -> dict[str, float]:
  """COCO box mAP of a set of images, computed by the official ``pycocotools``.

  The normalised boxes are converted to pixel ``[x, y, w, h]`` with
  ``image_size`` (COCO's small/medium/large area ranges are in pixels), put in
  an in-memory COCO ground truth (no crowd boxes) and evaluated by
  ``COCOeval`` with its default parameters: IoU thresholds 0.50:0.05:0.95,
  101-point interpolated precision, at most 100 detections per image. A
  detection matches a ground truth of its class when their IoU is ``>=`` the
  threshold. Classes without ground truth are left out of the mean.

  Args:
    pred_boxes: ``[N, K, 4]`` normalised detections (e.g. :class:`Detections`).
    pred_scores: ``[N, K]`` scores.
    pred_classes: ``[N, K]`` int object classes.
    gt_boxes: ``[N, M, 4]`` normalised ground-truth boxes.
    gt_labels: ``[N, M]`` int ground-truth classes (-1 for padding).
    image_size: ``H`` or ``(H, W)`` in pixels.
    pred_valid: ``[N, K]`` bool mask of real detections; default
      ``pred_classes >= 0``.
    gt_valid: ``[N, M]`` bool mask of real objects; default ``gt_labels >= 0``.
    num_classes: if given, classes are checked to be in ``[0, num_classes)``.

  Returns:
    ``{'mAP': AP@[.5:.95], 'mAP@.5': AP@.5, 'mAP@.75': AP@.75}`` as floats;
    ``nan`` when there is no ground-truth object at all.

  Raises:
    ValueError: for bad shapes, boxes outside ``[0, 1]`` or flipped, or
      classes out of range (naming the argument).

  References:
    Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014,
    arXiv:1405.0312.

  Examples:
    >>> import numpy as np
    >>> from kdjax.dense import coco_map
    >>> box = np.array([[[0.1, 0.1, 0.5, 0.5]]])
    >>> coco_map(box, np.array([[0.9]]), np.array([[2]]), box, np.array([[2]]),
    ...          image_size=48)
    {'mAP': 1.0, 'mAP@.5': 1.0, 'mAP@.75': 1.0}
  """
  from pycocotools import coco as coco_api  # pylint: disable=import-outside-toplevel
  from pycocotools import cocoeval  # pylint: disable=import-outside-toplevel

  pred_boxes, gt_boxes = np.asarray(pred_boxes, np.float64), np.asarray(gt_boxes, np.float64)
  pred_scores = np.asarray(pred_scores, np.float64)
  pred_classes, gt_labels = np.asarray(pred_classes), np.asarray(gt_labels)
  if pred_boxes.ndim != 3 or gt_boxes.ndim != 3 or len(pred_boxes) != len(gt_boxes):
    raise ValueError(f'`pred_boxes` must be [N, K, 4] and `gt_boxes` [N, M, 4] for the same N '
                     f'images, got {pred_boxes.shape} and {gt_boxes.shape}.')
  if pred_scores.shape != pred_boxes.shape[:2]:
    raise ValueError(f'`pred_scores` must have shape {pred_boxes.shape[:2]}, got '
                     f'{pred_scores.shape}.')
  pred_valid = (pred_classes >= 0 if pred_valid is None
                else np.broadcast_to(np.asarray(pred_valid, bool), pred_scores.shape))
  _boxes.check_boxes(gt_boxes, gt_labels, num_classes=num_classes, valid=gt_valid,
                     name='gt_boxes', labels_name='gt_labels')
  _boxes.check_boxes(pred_boxes, pred_classes, num_classes=num_classes, valid=pred_valid,
                     name='pred_boxes', labels_name='pred_classes')
  gt_valid = np.asarray(_boxes.default_valid(gt_labels, gt_valid))
  h, w = _boxes._pair(image_size, 'image_size')  # pylint: disable=protected-access
  scale = np.array([h, w, h, w], np.float64)

  def xywh(b):
    y0, x0, y1, x1 = b * scale
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]

  images, annotations, results = [], [], []
  for i in range(len(gt_boxes)):
    images.append({'id': i + 1, 'height': h, 'width': w})
    for m in np.flatnonzero(gt_valid[i]):
      bb = xywh(gt_boxes[i, m])
      annotations.append({'id': len(annotations) + 1, 'image_id': i + 1,
                          'category_id': int(gt_labels[i, m]) + 1, 'bbox': bb,
                          'area': bb[2] * bb[3], 'iscrowd': 0})
    for k in np.flatnonzero(pred_valid[i]):
      results.append({'image_id': i + 1, 'category_id': int(pred_classes[i, k]) + 1,
                      'bbox': xywh(pred_boxes[i, k]), 'score': float(pred_scores[i, k])})
  if not annotations:
    return {'mAP': float('nan'), 'mAP@.5': float('nan'), 'mAP@.75': float('nan')}
  if not results:
    return {'mAP': 0.0, 'mAP@.5': 0.0, 'mAP@.75': 0.0}
  labels = sorted({a['category_id'] for a in annotations} | {r['category_id'] for r in results})
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
    gt = coco_api.COCO()
    gt.dataset = {'images': images, 'annotations': annotations,
                  'categories': [{'id': c, 'name': str(c - 1)} for c in labels]}
    gt.createIndex()
    dt = gt.loadRes(results)
    ev = cocoeval.COCOeval(gt, dt, iouType='bbox')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return {'mAP': float(ev.stats[0]), 'mAP@.5': float(ev.stats[1]),
          'mAP@.75': float(ev.stats[2])}


def confusion_matrix(
    predictions: jax.Array,
    targets: jax.Array,
    *,
    num_classes: int,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  """Pixel confusion matrix of a segmentation (rows: target, columns: prediction).

  Sum it over batches to evaluate a whole split, then read the metrics with
  :func:`segmentation_metrics`. Jit-compatible.

  Args:
    predictions: ``[...]`` int predicted classes (e.g. ``logits.argmax(-1)``).
    targets: ``[...]`` int target classes.
    num_classes: ``C``.
    where: optional bool mask broadcastable to ``[...]`` of the pixels to count
      (e.g. not the ignore label, not padded examples).

  Returns:
    ``[C, C]`` int32 counts.

  Raises:
    ValueError: for mismatched shapes, non-integer inputs, or concrete classes
      outside ``[0, num_classes)`` on counted pixels (naming the argument).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.dense import confusion_matrix
    >>> confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 0, 1]), num_classes=2)
    Array([[1, 1],
           [0, 1]], dtype=int32)
  """
  if jnp.shape(predictions) != jnp.shape(targets):
    raise ValueError(f'`predictions` and `targets` must have the same shape, got '
                     f'{jnp.shape(predictions)} and {jnp.shape(targets)}.')
  for x, name in ((predictions, 'predictions'), (targets, 'targets')):
    if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
      raise ValueError(f'`{name}` must be integer classes, got dtype {jnp.result_type(x)}.')
  mask = (jnp.ones(jnp.shape(targets), bool) if where is None
          else jnp.broadcast_to(jnp.asarray(where, bool), jnp.shape(targets)))
  if not any(isinstance(x, jax.core.Tracer) for x in (predictions, targets, mask)):
    m = np.asarray(mask)
    for x, name in ((predictions, 'predictions'), (targets, 'targets')):
      v = np.asarray(x)[m]
      bad = (v < 0) | (v >= num_classes)
      if bad.any():
        raise ValueError(f'`{name}` must be in [0, {num_classes}) on counted pixels, got '
                         f'{np.unique(v[bad])[:10].tolist()}; mask ignored pixels with `where`.')
  return _confusion(jnp.asarray(predictions), jnp.asarray(targets), mask,
                    num_classes=int(num_classes))


@functools.partial(jax.jit, static_argnames=('num_classes',))
def _confusion(predictions, targets, mask, *, num_classes):
  """The compiled body of :func:`confusion_matrix`."""
  p = jnp.clip(predictions, 0, num_classes - 1).reshape(-1)
  t = jnp.clip(targets, 0, num_classes - 1).reshape(-1)
  counts = jnp.bincount(t * num_classes + p, weights=mask.reshape(-1).astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def segmentation_metrics(confusion: jax.Array) -> dict[str, jax.Array]:
  """Mean IoU and pixel accuracy from a confusion matrix.

  ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; the mean runs over the classes
  that occur in the targets or the predictions (a class absent from both has
  no IoU). Pixel accuracy is ``trace / total``.

  Args:
    confusion: ``[C, C]`` counts, rows target, columns prediction (see
      :func:`confusion_matrix`).

  Returns:
    ``{'miou': [], 'pixel_accuracy': [], 'iou': [C]}`` float32 (``iou`` is nan
    for absent classes; ``miou`` and ``pixel_accuracy`` are nan for an empty
    matrix).

  References:
    Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic
    Segmentation", CVPR 2015 (§5, the metrics).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.dense import segmentation_metrics
    >>> m = segmentation_metrics(jnp.array([[1, 1], [0, 1]]))
    >>> m['iou'], m['miou'], m['pixel_accuracy']
    (Array([0.5, 0.5], dtype=float32), Array(0.5, dtype=float32), Array(0.6666667, dtype=float32))
  """
  c = jnp.asarray(confusion, jnp.float32)
  if c.ndim != 2 or c.shape[0] != c.shape[1]:
    raise ValueError(f'`confusion` must be a square [C, C] matrix, got {c.shape}.')
  return _segmentation_metrics(c)


@jax.jit
def _segmentation_metrics(c: jax.Array) -> dict[str, jax.Array]:
  """The compiled body of :func:`segmentation_metrics`."""
  tp = jnp.diagonal(c)
  union = c.sum(0) + c.sum(1) - tp
  present = union > 0
  iou = jnp.where(present, tp / jnp.where(present, union, 1.0), jnp.nan)
  n_present = present.sum()
  miou = jnp.where(n_present > 0, jnp.nansum(iou) / jnp.maximum(n_present, 1), jnp.nan)
  total = c.sum()
  accuracy = jnp.where(total > 0, tp.sum() / jnp.maximum(total, 1.0), jnp.nan)
  return {'miou': miou, 'pixel_accuracy': accuracy, 'iou': iou}
