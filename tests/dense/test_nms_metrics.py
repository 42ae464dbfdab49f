"""Tests for NMS, detection post-processing, COCO mAP and segmentation metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import dense


def _ref_nms(boxes, scores, thr, classes=None):
  """Plain greedy NMS in NumPy (float64 IoU)."""
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  keep = []
  for i in order:
    ok = True
    for j in keep:
      same = classes is None or classes[i] == classes[j]
      if same and _iou(boxes[i], boxes[j]) > thr:
        ok = False
        break
    if ok:
      keep.append(i)
  return keep


def _iou(p, q):
  ih = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
  iw = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
  inter = ih * iw
  return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)


# -------------------------------------------------------------------------- NMS

def test_nms_hand_cases():
  a = [0.0, 0.0, 1.0, 1.0]
  near = [0.0, 0.0, 1.0, 0.9]       # IoU 0.9 with a
  half = [0.0, 0.0, 1.0, 0.5]       # IoU exactly 0.5 with a (binary fractions)
  far = [2.0, 2.0, 3.0, 3.0]
  boxes = jnp.array([near, a, far], jnp.float32)
  scores = jnp.array([0.8, 0.9, 0.1])
  # Overlapping boxes: the lower-scored one goes; order is by score.
  np.testing.assert_array_equal(dense.nms(boxes, scores, max_outputs=3), [1, 2, -1])
  # Different classes never suppress each other.
  np.testing.assert_array_equal(
      dense.nms(boxes, scores, max_outputs=3, classes=jnp.array([0, 1, 1])), [1, 0, 2])
  # IoU equal to the threshold is kept; just above it is suppressed.
  pair, s2 = jnp.array([a, half], jnp.float32), jnp.array([0.9, 0.8])
  assert float(dense.box_iou(pair[:1], pair[1:])[0, 0]) == 0.5
  np.testing.assert_array_equal(dense.nms(pair, s2, max_outputs=2, iou_threshold=0.5), [0, 1])
  np.testing.assert_array_equal(dense.nms(pair, s2, max_outputs=2, iou_threshold=0.49), [0, -1])
  # Score threshold, validity mask and truncation to max_outputs.
  np.testing.assert_array_equal(
      dense.nms(boxes, scores, max_outputs=3, score_threshold=0.5), [1, -1, -1])
  np.testing.assert_array_equal(
      dense.nms(boxes, scores, max_outputs=3, valid=jnp.array([True, False, True])), [0, 2, -1])
  np.testing.assert_array_equal(dense.nms(boxes, scores, max_outputs=1), [1])
  with pytest.raises(ValueError, match='scores'):
    dense.nms(boxes, scores[:2], max_outputs=2)
  with pytest.raises(ValueError, match='max_outputs'):
    dense.nms(boxes, scores, max_outputs=0)


def test_nms_matches_greedy_reference_under_jit_and_vmap():
  rng = np.random.default_rng(0)
  lo = rng.uniform(0, 0.6, size=(2, 30, 2))
  boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, size=(2, 30, 2))], -1).astype(np.float32)
  scores = rng.uniform(size=(2, 30)).astype(np.float32)
  classes = rng.integers(0, 3, size=(2, 30))
  one = lambda b, s, c: dense.nms(b, s, max_outputs=30, iou_threshold=0.3, classes=c)
  run = jax.jit(jax.vmap(one))
  got = np.asarray(run(boxes, scores, classes))
  for i in range(2):
    want = _ref_nms(boxes[i].astype(np.float64), scores[i], 0.3, classes[i])
    np.testing.assert_array_equal(got[i][got[i] >= 0], want)


def test_detect_keeps_one_box_per_object():
  # 8x8 image, stride 4: a 2x2 grid. Two locations confidently see class 5 with the same box.
  cls = np.zeros((1, 2, 2, 11), np.float32)
  cls[0, 0, 0, 6] = cls[0, 0, 1, 6] = 8.0
  cls[0, 0, 1, 6] = 7.0
  edges = np.full((1, 2, 2, 4, 4), -1e9, np.float32)
  edges[0, 0, 0, np.arange(4), [0, 0, 1, 1]] = 0.0   # location (2, 2): box 2..6 x 2..6 px
  edges[0, 0, 1, np.arange(4), [1, 0, 0, 1]] = 0.0   # location (2, 6): the same box
  d = dense.detect(cls, edges, stride=4, image_size=8, max_detections=3, score_threshold=0.3)
  assert d.boxes.shape == (1, 3, 4) and d.valid.tolist() == [[True, False, False]]
  np.testing.assert_array_equal(d.classes, [[5, -1, -1]])
  np.testing.assert_allclose(d.boxes[0, 0], [0.25, 0.25, 0.75, 0.75], atol=1e-6)
  assert float(d.scores[0, 0]) > 0.9 and float(d.scores[0, 1]) == 0.0


# ---------------------------------------------------------------------- COCO mAP

def _map(pred, scores, pred_cls, gt, gt_cls):
  arr = lambda x, dt=np.float32: np.asarray(x, dt)[None]
  return dense.coco_map(arr(pred), arr(scores), arr(pred_cls, np.int64), arr(gt),
                        arr(gt_cls, np.int64), image_size=48)


GT = [[0.0, 0.0, 10 / 48, 10 / 48]]   # a 10x10 px box


def test_coco_map_hand_computed_cases():
  # One perfect detection: AP 1 at every IoU threshold.
  # (pycocotools averages 101 precision values, so 1 comes back as 1 - 1e-16.)
  assert _map(GT, [0.9], [3], GT, [3]) == pytest.approx({'mAP': 1, 'mAP@.5': 1, 'mAP@.75': 1})
  # IoU 0.62 (6.2 of 10 rows): a true positive at thresholds .50, .55, .60 only, so
  # AP@.5 = 1, AP@.75 = 0 and mAP@[.5:.95] = 3/10.
  got = _map([[0.0, 0.0, 6.2 / 48, 10 / 48]], [0.9], [3], GT, [3])
  assert got['mAP@.5'] == pytest.approx(1.0) and got['mAP@.75'] == 0.0
  assert got['mAP'] == pytest.approx(0.3)
  # A false positive scored above the true positive: precision 1/2 at recall 1, and
  # the interpolated precision is 1/2 at every recall, so AP = 0.5 at every threshold.
  fp = [0.5, 0.5, 0.9, 0.9]
  got = _map([fp, GT[0]], [0.9, 0.8], [3, 3], GT, [3])
  assert got == pytest.approx({'mAP': 0.5, 'mAP@.5': 0.5, 'mAP@.75': 0.5})
  # A duplicate scored below the true positive does not lower AP (precision 1 at recall 1).
  assert _map([GT[0], GT[0]], [0.9, 0.8], [3, 3], GT, [3])['mAP'] == pytest.approx(1.0)
  # Two classes, one found and one missed: the mean over classes is 1/2. A class
  # detected but absent from the ground truth does not enter the mean.
  two = [GT[0], [0.5, 0.5, 0.8, 0.8]]
  assert _map([GT[0]], [0.9], [3], two, [3, 7])['mAP'] == pytest.approx(0.5)
  got = _map([GT[0], two[1]], [0.9, 0.2], [3, 1], [GT[0], [0] * 4], [3, -1])
  assert got['mAP'] == pytest.approx(1.0)


def test_coco_map_edge_cases_and_bad_inputs():
  none = np.zeros((1, 0, 4), np.float32)
  empty_scores, empty_cls = np.zeros((1, 0)), np.zeros((1, 0), np.int64)
  got = dense.coco_map(none, empty_scores, empty_cls, np.array([GT]), np.array([[3]]),
                       image_size=48)
  assert got == {'mAP': 0.0, 'mAP@.5': 0.0, 'mAP@.75': 0.0}
  got = dense.coco_map(none, empty_scores, empty_cls, np.zeros((1, 2, 4)), np.full((1, 2), -1),
                       image_size=48)
  assert np.isnan(got['mAP'])
  with pytest.raises(ValueError, match='`pred_boxes` must be normalised'):
    _map([[0.0, 0.0, 2.0, 0.5]], [0.9], [3], GT, [3])
  with pytest.raises(ValueError, match='`gt_boxes` must have ymin <= ymax'):
    _map(GT, [0.9], [3], [[0.5, 0.0, 0.1, 0.5]], [3])
  with pytest.raises(ValueError, match=r'`gt_labels` must be in \[0, 10\)'):
    dense.coco_map(np.array([GT]), np.array([[0.9]]), np.array([[3]]), np.array([GT]),
                   np.array([[12]]), image_size=48, num_classes=10)
  with pytest.raises(ValueError, match='pred_scores'):
    dense.coco_map(np.array([GT]), np.array([[0.9, 0.1]]), np.array([[3]]), np.array([GT]),
                   np.array([[3]]), image_size=48)


# ------------------------------------------------------------------ segmentation

def test_segmentation_metrics_hand_case():
  pred = jnp.array([[0, 1], [1, 1]])
  target = jnp.array([[0, 0], [1, 1]])
  conf = dense.confusion_matrix(pred, target, num_classes=3)
  np.testing.assert_array_equal(conf, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
  m = dense.segmentation_metrics(conf)
  # IoU_0 = 1 / (1 + 1), IoU_1 = 2 / (2 + 1); class 2 occurs nowhere and is left out.
  np.testing.assert_allclose(m['iou'][:2], [0.5, 2 / 3], rtol=1e-6)
  assert np.isnan(m['iou'][2])
  assert float(m['miou']) == pytest.approx((0.5 + 2 / 3) / 2)
  assert float(m['pixel_accuracy']) == pytest.approx(0.75)
  # Masking the wrong pixel makes both perfect; jit gives the same counts.
  where = jnp.array([[True, False], [True, True]])
  masked = dense.segmentation_metrics(dense.confusion_matrix(pred, target, num_classes=3,
                                                             where=where))
  assert float(masked['miou']) == 1.0 and float(masked['pixel_accuracy']) == 1.0
  jitted = jax.jit(lambda p, t: dense.confusion_matrix(p, t, num_classes=3))(pred, target)
  np.testing.assert_array_equal(jitted, conf)
  empty = dense.segmentation_metrics(jnp.zeros((3, 3), jnp.int32))
  assert np.isnan(float(empty['miou'])) and np.isnan(float(empty['pixel_accuracy']))


def test_segmentation_metrics_reject_bad_inputs():
  t = jnp.array([0, 255, 1])
  with pytest.raises(ValueError, match=r'`targets` must be in \[0, 3\)'):
    dense.confusion_matrix(jnp.array([0, 1, 1]), t, num_classes=3)
  conf = dense.confusion_matrix(jnp.array([0, 1, 1]), t, num_classes=3, where=t != 255)
  assert int(conf.sum()) == 2
  with pytest.raises(ValueError, match='`predictions` must be integer'):
    dense.confusion_matrix(jnp.zeros(3), t, num_classes=3)
  with pytest.raises(ValueError, match='same shape'):
    dense.confusion_matrix(jnp.zeros(2, int), t, num_classes=3)
  with pytest.raises(ValueError, match='confusion'):
    dense.segmentation_metrics(jnp.zeros((2, 3)))
