"""FCOS-style assignment of ground-truth boxes to the locations of a dense head."""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from kdjax.dense import _boxes


class DenseTargets(NamedTuple):
  """Per-location training targets of a single-level dense detector.

  Attributes:
    classes: ``[..., H', W']`` int32 class target: 0 for background, ``label +
      1`` for a location assigned to an object of class ``label`` (the
      detector's class head has ``num_classes + 1`` logits, background first).
    distances: ``[..., H', W', 4]`` float32 (left, top, right, bottom) distances
      from the location to the assigned box's sides, in units of the stride,
      clipped to ``[0, num_bins - 1 - 0.01]`` so a distribution over the bins
      ``0 .. num_bins - 1`` can represent them; 0 at background locations.
    boxes: ``[..., H', W', 4]`` float32 assigned box (normalised), 0 at
      background locations.
    positive: ``[..., H', W']`` bool, True where a box is assigned.
    box_index: ``[..., H', W']`` int32 slot of the assigned box, -1 at
      background locations.
  """

  classes: jax.Array
  distances: jax.Array
  boxes: jax.Array
  positive: jax.Array
  box_index: jax.Array


def assign_targets(
    boxes: jax.Array,
    labels: jax.Array,
    *,
    image_size: int | Sequence[int],
    stride: int,
    num_bins: int,
    num_classes: Optional[int] = None,
    valid: Optional[jax.Array] = None,
    center_radius: Optional[float] = None,
) -> DenseTargets:
  """Assigns ground-truth boxes to the locations of a stride-``s`` grid (FCOS).

  A location is a candidate for an object when its centre (see
  :func:`kdjax.dense.location_centers`) lies strictly inside the object's box
  and, with ``center_radius = r``, also within ``r·s`` pixels of the box
  centre along both axes (FCOS centre sampling; the paper's improved setting
  uses r = 1.5). A location that is a candidate for several objects takes the
  one with the smallest area (ties: the lowest slot). Locations without a
  candidate are background. There is a single feature level, so FCOS's
  per-level scale ranges do not apply; instead distances beyond the last bin
  are clipped, as in GFL.

  An image without any valid box (an empty image) gives all-background
  targets: ``classes`` 0, ``positive`` False, ``box_index`` -1, zero
  distances. Leading axes are batch axes; the function is jit-compatible
  (the number of slots ``M`` is static, padding is masked by ``valid``).

  Args:
    boxes: ``[..., M, 4]`` normalised ``[ymin, xmin, ymax, xmax]`` boxes.
    labels: ``[..., M]`` int object classes ``0 .. num_classes - 1``.
    image_size: ``H`` or ``(H, W)`` in pixels.
    stride: the head's stride ``s`` in pixels.
    num_bins: bins of the edge distributions (``n_bins`` of the detector).
    num_classes: if given, concrete labels of valid slots are checked to be
      in ``[0, num_classes)``.
    valid: ``[..., M]`` bool mask of the real objects; default ``labels >= 0``.
    center_radius: optional centre-sampling radius ``r`` in strides.

  Returns:
    A :class:`DenseTargets` on the ``grid_shape(image_size, stride)`` grid.

  Raises:
    ValueError: for concrete boxes outside ``[0, 1]`` or with ``ymin > ymax`` /
      ``xmin > xmax`` (naming ``boxes``), labels out of range (naming
      ``labels``), mismatched shapes, ``num_bins < 2`` or a non-positive
      ``center_radius``.

  References:
    Tian, Shen, Chen & He, "FCOS: Fully Convolutional One-Stage Object
    Detection", ICCV 2019, arXiv:1904.01355.
    Li et al., "Generalized Focal Loss", NeurIPS 2020, arXiv:2006.04388.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.dense import assign_targets
    >>> boxes = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    >>> labels = jnp.array([3, -1])  # the second slot is padding
    >>> t = assign_targets(boxes, labels, image_size=8, stride=2, num_bins=4)
    >>> t.classes
    Array([[4, 4, 0, 0],
           [4, 4, 0, 0],
           [0, 0, 0, 0],
           [0, 0, 0, 0]], dtype=int32)
    >>> t.distances[0, 0]  # centre (1, 1) px: 1 px = 0.5 stride to the left and top
    Array([0.5, 0.5, 1.5, 1.5], dtype=float32)
  """
  _boxes.check_boxes(boxes, labels, num_classes=num_classes, valid=valid)
  if int(num_bins) < 2:
    raise ValueError(f'`num_bins` must be >= 2, got {num_bins}.')
  if center_radius is not None and not center_radius > 0:
    raise ValueError(f'`center_radius` must be None or > 0, got {center_radius}.')
  h, w = _boxes._pair(image_size, 'image_size')  # pylint: disable=protected-access
  return _assign(jnp.asarray(boxes), jnp.asarray(labels), valid, image_size=(h, w),
                 stride=int(stride), num_bins=int(num_bins),
                 center_radius=None if center_radius is None else float(center_radius))


@functools.partial(jax.jit, static_argnames=('image_size', 'stride', 'num_bins',
                                             'center_radius'))
def _assign(boxes, labels, valid, *, image_size, stride, num_bins, center_radius):
  """The compiled body of :func:`assign_targets`."""
  h, w = image_size
  centers = _boxes.location_centers((h, w), stride)
  gh, gw = centers.shape[:2]
  lead = jnp.shape(labels)[:-1]
  num_slots = jnp.shape(labels)[-1]
  if num_slots == 0:
    zeros = jnp.zeros(lead + (gh, gw), jnp.int32)
    return DenseTargets(zeros, jnp.zeros(lead + (gh, gw, 4), jnp.float32),
                        jnp.zeros(lead + (gh, gw, 4), jnp.float32), zeros.astype(bool),
                        zeros - 1)
  b = jnp.asarray(boxes, jnp.float32)
  is_valid = _boxes.default_valid(labels, valid)
  scale = jnp.array([h, w, h, w], jnp.float32)
  px = b * scale                                            # [..., M, 4] pixels
  cy = centers[..., 0].reshape(-1)[:, None]                 # [P, 1]
  cx = centers[..., 1].reshape(-1)[:, None]
  ymin, xmin, ymax, xmax = (px[..., None, :, k] for k in range(4))  # [..., 1, M]
  dist = jnp.stack([cx - xmin, cy - ymin, xmax - cx, ymax - cy], axis=-1)  # [..., P, M, 4]
  inside = (jnp.min(dist, axis=-1) > 0) & is_valid[..., None, :]
  if center_radius is not None:
    radius = center_radius * stride
    inside &= jnp.abs(cy - (ymin + ymax) / 2) < radius
    inside &= jnp.abs(cx - (xmin + xmax) / 2) < radius
  area = _boxes.box_area(px)[..., None, :]                  # [..., 1, M]
  cost = jnp.where(inside, area, jnp.inf)
  index = jnp.argmin(cost, axis=-1)                         # [..., P]
  positive = jnp.any(inside, axis=-1)
  picked = jnp.take_along_axis(dist, index[..., None, None], axis=-2)[..., 0, :]
  distances = jnp.where(positive[..., None],
                        jnp.clip(picked / stride, 0.0, num_bins - 1 - 0.01), 0.0)
  lab = jnp.take_along_axis(labels, index, axis=-1)
  classes = jnp.where(positive, lab + 1, 0).astype(jnp.int32)
  assigned = jnp.take_along_axis(b, index[..., None], axis=-2)
  assigned = jnp.where(positive[..., None], assigned, 0.0)
  box_index = jnp.where(positive, index, -1).astype(jnp.int32)
  grid = lambda x, *tail: x.reshape(lead + (gh, gw) + tail)
  return DenseTargets(grid(classes), grid(distances, 4), grid(assigned, 4), grid(positive),
                      grid(box_index))
