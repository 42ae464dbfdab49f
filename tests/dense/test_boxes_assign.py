"""Tests for box validation, IoU, decoding and FCOS target assignment (kdjax.dense)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import dense


def _random_boxes(seed, n):
  rng = np.random.default_rng(seed)
  lo = rng.uniform(0, 0.7, size=(n, 2))
  size = rng.uniform(0.05, 0.3, size=(n, 2))
  return np.concatenate([lo, lo + size], axis=1).astype(np.float32)


def _ref_iou(a, b):
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      ih = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      iw = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      inter = ih * iw
      union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
      out[i, j] = inter / union if union > 0 else 0.0
  return out


# ------------------------------------------------------------------------ boxes

def test_box_iou_matches_reference_and_broadcasts():
  a, b = _random_boxes(0, 7), _random_boxes(1, 5)
  np.testing.assert_allclose(dense.box_iou(a, b), _ref_iou(a, b), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(dense.box_iou(a, a).diagonal(), 1.0, rtol=1e-6)
  batched = dense.box_iou(np.stack([a, a[::-1]]), b)
  assert batched.shape == (2, 7, 5)
  np.testing.assert_allclose(batched[1], _ref_iou(a[::-1], b), rtol=1e-5, atol=1e-7)
  zero = np.zeros((1, 4), np.float32)
  assert float(dense.box_iou(zero, zero)[0, 0]) == 0.0  # empty union, no nan
  with pytest.raises(ValueError, match='boxes_b'):
    dense.box_iou(a, b[:, :3])


def test_check_boxes_names_the_argument():
  good = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0]])
  dense.check_boxes(good, np.array([0, 9]), num_classes=10)
  with pytest.raises(ValueError, match=r'`boxes` must be normalised to \[0, 1\]'):
    dense.check_boxes(good * 2)
  with pytest.raises(ValueError, match=r'`boxes` must have ymin <= ymax'):
    dense.check_boxes(good[:, [2, 1, 0, 3]])
  with pytest.raises(ValueError, match=r'`labels` must be in \[0, 10\)'):
    dense.check_boxes(good, np.array([0, 10]), num_classes=10)
  with pytest.raises(ValueError, match='`labels` must be integers'):
    dense.check_boxes(good, np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match=r'`boxes` must have shape \[..., M, 4\]'):
    dense.check_boxes(good[:, :3])
  with pytest.raises(ValueError, match='`boxes` must be finite'):
    dense.check_boxes(np.array([[0.1, np.nan, 0.2, 0.3]]))
  # Padding slots (label -1, or valid False) may hold anything.
  junk = np.array([[0.1, 0.2, 0.3, 0.4], [5.0, 5.0, -1.0, -1.0]])
  dense.check_boxes(junk, np.array([3, -1]), num_classes=10)
  dense.check_boxes(junk, valid=np.array([True, False]))


def test_decode_inverts_one_hot_edges():
  # A location at pixel (6, 10) of a stride-4 grid on 16x16 images (i=1, j=2).
  edges = np.full((4, 4, 4, 8), -1e9, np.float32)
  edges[1, 2, np.arange(4), [1, 2, 3, 0]] = 0.0   # left 1, top 2, right 3, bottom 0 strides
  np.testing.assert_allclose(dense.edge_expectation(edges)[1, 2], [1, 2, 3, 0])
  box = dense.decode_boxes(edges, stride=4, image_size=16)[1, 2]
  # ymin = 6 - 8, xmin = 10 - 4, ymax = 6 + 0, xmax = 10 + 12 pixels, clipped to the image.
  np.testing.assert_allclose(box, [0.0, 6 / 16, 6 / 16, 1.0], atol=1e-6)
  unclipped = dense.decode_boxes(edges, stride=4, image_size=16, clip=False)[1, 2]
  np.testing.assert_allclose(unclipped, np.array([-2, 6, 6, 22]) / 16, atol=1e-6)
  with pytest.raises(ValueError, match='distances'):
    dense.distances_to_boxes(np.zeros((3, 3, 4)), stride=4, image_size=16)


# ------------------------------------------------------------------- assignment

def test_assignment_hand_case_smallest_box_wins():
  # 16x16 image, stride 4: centres at 2, 6, 10, 14 px.
  big = [0.0, 0.0, 1.0, 1.0]            # every location
  small = [0.25, 0.25, 0.75, 0.75]      # pixels 4..12: centres 6 and 10
  boxes = np.array([big, small, [0, 0, 0, 0]], np.float32)
  labels = np.array([1, 7, -1])
  t = dense.assign_targets(boxes, labels, image_size=16, stride=4, num_bins=8)
  expected = np.full((4, 4), 2)
  expected[1:3, 1:3] = 8
  np.testing.assert_array_equal(t.classes, expected)
  assert t.positive.all()
  np.testing.assert_array_equal(t.box_index[1:3, 1:3], 1)
  np.testing.assert_array_equal(t.box_index[0], 0)
  # Location (1, 1) at pixel (6, 6) in the small box 4..12: l, t = 2 px, r, b = 6 px.
  np.testing.assert_allclose(t.distances[1, 1], [0.5, 0.5, 1.5, 1.5])
  np.testing.assert_allclose(t.boxes[1, 1], small)
  # Positive distances decode back to the assigned boxes.
  decoded = dense.distances_to_boxes(t.distances, stride=4, image_size=16)
  np.testing.assert_allclose(decoded, t.boxes, atol=1e-6)


def test_assignment_clips_to_the_last_bin_and_samples_centres():
  boxes = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)  # 32x32 image, 30 px from the far side
  t = dense.assign_targets(boxes, np.array([0]), image_size=32, stride=4, num_bins=4)
  assert float(t.distances.max()) == pytest.approx(3 - 0.01)
  c = dense.assign_targets(boxes, np.array([0]), image_size=32, stride=4, num_bins=4,
                           center_radius=1.5)
  # Box centre at pixel 16: |centre - 16| < 6 keeps the centres 14 and 18 (i = 3, 4).
  expected = np.zeros((8, 8), bool)
  expected[3:5, 3:5] = True
  np.testing.assert_array_equal(c.positive, expected)


def test_empty_image_gives_all_background():
  for boxes, labels in ((np.zeros((3, 4), np.float32), np.full((3,), -1)),
                        (np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))):
    t = dense.assign_targets(boxes, labels, image_size=16, stride=4, num_bins=8)
    assert t.classes.shape == (4, 4) and t.distances.shape == (4, 4, 4)
    assert not t.positive.any() and (t.classes == 0).all() and (t.box_index == -1).all()
    assert (t.distances == 0).all() and (t.boxes == 0).all()


def test_assignment_batches_and_jits_like_single_images():
  boxes = np.stack([_random_boxes(s, 4) for s in range(3)])
  labels = np.array([[0, 1, 2, -1], [3, -1, -1, -1], [-1, -1, -1, -1]])
  kw = dict(image_size=48, stride=4, num_bins=8)
  batched = dense.assign_targets(boxes, labels, **kw)
  jitted = jax.jit(lambda b, l: dense.assign_targets(b, l, **kw))(boxes, labels)
  for i in range(3):
    single = dense.assign_targets(boxes[i], labels[i], **kw)
    for got, want, jit_got in zip(batched, single, jitted):
      np.testing.assert_array_equal(got[i], want)
      np.testing.assert_allclose(jit_got[i], want, atol=1e-5)  # XLA may fuse differently
  assert batched.positive[:2].any(axis=(1, 2)).all() and not batched.positive[2].any()


def test_assignment_rejects_bad_inputs():
  kw = dict(image_size=16, stride=4, num_bins=8, num_classes=10)
  good = np.array([[0.1, 0.1, 0.5, 0.5]], np.float32)
  with pytest.raises(ValueError, match='`boxes`'):
    dense.assign_targets(good + 0.8, np.array([1]), **kw)
  with pytest.raises(ValueError, match='ymin <= ymax'):
    dense.assign_targets(good[:, [2, 1, 0, 3]], np.array([1]), **kw)
  with pytest.raises(ValueError, match='`labels`'):
    dense.assign_targets(good, np.array([10]), **kw)
  with pytest.raises(ValueError, match='num_bins'):
    dense.assign_targets(good, np.array([1]), image_size=16, stride=4, num_bins=1)
  with pytest.raises(ValueError, match='center_radius'):
    dense.assign_targets(good, np.array([1]), center_radius=0.0, **kw)
  # Under jit values are unknown: no value check, shapes still checked.
  with pytest.raises(ValueError, match='`labels` must have shape'):
    jax.jit(lambda b: dense.assign_targets(b, jnp.zeros((2,), jnp.int32), **kw))(good)
