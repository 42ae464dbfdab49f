"""Boxes: validation, IoU, location grids and decoding of distributional box edges.

Conventions used by every dense utility:

* A box is ``[ymin, xmin, ymax, xmax]`` normalised by the image height and
  width, so a valid box lies in ``[0, 1]`` with ``ymin <= ymax`` and
  ``xmin <= xmax`` (the TFDS ``BBoxFeature`` order). Pixel ``(r, c)`` covers
  ``[r, r + 1) x [c, c + 1)`` in pixel units.
* Images hold a fixed number ``M`` of object slots: ``boxes [..., M, 4]`` and
  ``labels [..., M]`` (object classes ``0 .. num_classes - 1``), with a
  ``valid [..., M]`` mask; by default a slot is valid when its label is
  ``>= 0`` (padding slots carry label ``-1``).
* A dense head predicts on the grid of a stride-``s`` feature map; location
  ``(i, j)`` sits at pixel ``((i + 0.5) s, (j + 0.5) s)`` (FCOS, Tian et al.
  2019). Box edges are distances from the location to the **left, top, right
  and bottom** sides, in units of the stride, in that order (GFL, Li et al.
  2020).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _is_concrete(*xs) -> bool:
  return not any(isinstance(x, jax.core.Tracer) for x in xs)


def default_valid(labels, valid=None):
  """``valid`` if given, else ``labels >= 0`` (padding slots carry label -1)."""
  if valid is None:
    return jnp.asarray(labels) >= 0
  return jnp.broadcast_to(jnp.asarray(valid, bool), jnp.shape(labels))


def check_boxes(
    boxes,
    labels=None,
    *,
    num_classes: Optional[int] = None,
    valid=None,
    name: str = 'boxes',
    labels_name: str = 'labels',
) -> None:
  """Checks concrete boxes (and labels) and raises a ``ValueError`` naming the argument.

  Only the valid slots are checked: padding may hold anything. Traced inputs
  (under ``jax.jit``) are only shape-checked, since their values are unknown.

  Args:
    boxes: ``[..., M, 4]`` normalised ``[ymin, xmin, ymax, xmax]`` boxes.
    labels: optional ``[..., M]`` integer object classes.
    num_classes: if given, labels of valid slots must be in
      ``[0, num_classes)``.
    valid: optional ``[..., M]`` boolean mask of the real objects; default
      ``labels >= 0`` when ``labels`` is given, else every slot.
    name: name of ``boxes`` in the message.
    labels_name: name of ``labels`` in the message.

  Raises:
    ValueError: for a shape that is not ``[..., M, 4]``, non-finite
      coordinates, coordinates outside ``[0, 1]``, ``ymin > ymax`` or
      ``xmin > xmax``, labels that are not integers, do not match the boxes,
      or lie outside ``[0, num_classes)``.

  Examples:
    >>> import numpy as np
    >>> from kdjax.dense import check_boxes
    >>> check_boxes(np.array([[0.1, 0.1, 0.5, 0.6]]), np.array([3]), num_classes=10)
    >>> check_boxes(np.array([[0.5, 0.1, 0.2, 0.6]]))
    Traceback (most recent call last):
    ...
    ValueError: `boxes` must have ymin <= ymax and xmin <= xmax; 1 box(es) do not, ...
  """
  shape = jnp.shape(boxes)
  if len(shape) < 2 or shape[-1] != 4:
    raise ValueError(f'`{name}` must have shape [..., M, 4] ([ymin, xmin, ymax, xmax]), '
                     f'got {shape}.')
  if labels is not None:
    if jnp.shape(labels) != shape[:-1]:
      raise ValueError(f'`{labels_name}` must have shape {shape[:-1]} (one per box of '
                       f'`{name}`), got {jnp.shape(labels)}.')
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
      raise ValueError(f'`{labels_name}` must be integers, got dtype {jnp.result_type(labels)}.')
  if not _is_concrete(boxes, labels, valid):
    return
  b = np.asarray(boxes)
  if labels is not None:
    v = np.asarray(default_valid(labels, valid))
  elif valid is not None:
    v = np.broadcast_to(np.asarray(valid, bool), shape[:-1])
  else:
    v = np.ones(shape[:-1], bool)
  real = b[v]
  if not np.all(np.isfinite(real)):
    raise ValueError(f'`{name}` must be finite, got {real[~np.isfinite(real).all(-1)][0]}.')
  outside = np.any((real < 0.0) | (real > 1.0), axis=-1)
  if outside.any():
    raise ValueError(
        f'`{name}` must be normalised to [0, 1] ([ymin, xmin, ymax, xmax] divided by the '
        f'image height and width); {int(outside.sum())} box(es) are not, e.g. '
        f'{real[outside][0]}.')
  flipped = (real[:, 0] > real[:, 2]) | (real[:, 1] > real[:, 3])
  if flipped.any():
    raise ValueError(
        f'`{name}` must have ymin <= ymax and xmin <= xmax; {int(flipped.sum())} box(es) '
        f'do not, e.g. {real[flipped][0]}.')
  if labels is not None and num_classes is not None:
    lab = np.asarray(labels)[v]
    bad = (lab < 0) | (lab >= num_classes)
    if bad.any():
      raise ValueError(
          f'`{labels_name}` must be in [0, {num_classes}) for real objects, got '
          f'{np.unique(lab[bad])[:10].tolist()}.')


def box_area(boxes: jax.Array) -> jax.Array:
  """Area ``[...]`` of ``[..., 4]`` ``[ymin, xmin, ymax, xmax]`` boxes (0 if flipped).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.dense import box_area
    >>> box_area(jnp.array([[0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.1, 0.9]]))
    Array([0.25, 0.  ], dtype=float32)
  """
  boxes = jnp.asarray(boxes)
  h = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  w = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return h * w


def box_iou(boxes_a: jax.Array, boxes_b: jax.Array) -> jax.Array:
  """Pairwise intersection over union of two sets of boxes.

  Args:
    boxes_a: ``[..., N, 4]`` boxes ``[ymin, xmin, ymax, xmax]`` (any unit).
    boxes_b: ``[..., M, 4]`` boxes, leading axes broadcastable with ``boxes_a``.

  Returns:
    ``[..., N, M]`` IoU in ``[0, 1]``; 0 where the union is empty (two
    zero-area boxes).

  Raises:
    ValueError: if the last axis is not 4 or a set is not at least ``[N, 4]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.dense import box_iou
    >>> a = jnp.array([[0.0, 0.0, 1.0, 1.0]])
    >>> b = jnp.array([[0.0, 0.0, 1.0, 0.5], [2.0, 2.0, 3.0, 3.0]])
    >>> box_iou(a, b)
    Array([[0.5, 0. ]], dtype=float32)
  """
  for x, n in ((boxes_a, 'boxes_a'), (boxes_b, 'boxes_b')):
    if jnp.ndim(x) < 2 or jnp.shape(x)[-1] != 4:
      raise ValueError(f'`{n}` must have shape [..., N, 4], got {jnp.shape(x)}.')
  a = jnp.asarray(boxes_a, jnp.promote_types(jnp.result_type(boxes_a), jnp.float32))
  b = jnp.asarray(boxes_b, jnp.promote_types(jnp.result_type(boxes_b), jnp.float32))
  return _iou(a, b)


@jax.jit
def _iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """The compiled body of :func:`box_iou`."""
  a, b = a[..., :, None, :], b[..., None, :, :]
  lo = jnp.maximum(a[..., :2], b[..., :2])
  hi = jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.maximum(hi - lo, 0.0), axis=-1)
  union = box_area(a) + box_area(b) - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def _pair(value, name: str) -> tuple[int, int]:
  if isinstance(value, (int, np.integer)):
    value = (int(value), int(value))
  value = tuple(int(v) for v in value)
  if len(value) != 2 or min(value) < 1:
    raise ValueError(f'`{name}` must be a positive int or a pair of them, got {value!r}.')
  return value


def grid_shape(image_size: int | Sequence[int], stride: int) -> tuple[int, int]:
  """The ``(H', W') = (ceil(H / s), ceil(W / s))`` grid of a stride-``s`` feature map.

  Examples:
    >>> from kdjax.dense import grid_shape
    >>> grid_shape(48, 4), grid_shape((48, 30), 8)
    ((12, 12), (6, 4))
  """
  h, w = _pair(image_size, 'image_size')
  if int(stride) < 1:
    raise ValueError(f'`stride` must be a positive int, got {stride!r}.')
  return -(-h // int(stride)), -(-w // int(stride))


def location_centers(image_size: int | Sequence[int], stride: int) -> jax.Array:
  """Pixel coordinates ``(y, x)`` of the locations of a stride-``s`` grid.

  Location ``(i, j)`` sits at ``((i + 0.5) s, (j + 0.5) s)`` pixels (Tian et
  al. 2019, FCOS §3.1).

  Args:
    image_size: ``H`` or ``(H, W)`` in pixels.
    stride: the feature map's stride ``s``.

  Returns:
    ``[H', W', 2]`` float32 centres, ``(H', W')`` from :func:`grid_shape`.

  Examples:
    >>> from kdjax.dense import location_centers
    >>> location_centers(8, 4)[..., 1]
    Array([[2., 6.],
           [2., 6.]], dtype=float32)
  """
  gh, gw = grid_shape(image_size, stride)
  ys = (jnp.arange(gh, dtype=jnp.float32) + 0.5) * stride
  xs = (jnp.arange(gw, dtype=jnp.float32) + 0.5) * stride
  return jnp.stack(jnp.meshgrid(ys, xs, indexing='ij'), axis=-1)


def edge_expectation(edge_logits: jax.Array) -> jax.Array:
  r"""Expected bin of each box edge: ``\sum_k k·softmax(e)_k`` (GFL's integral).

  Args:
    edge_logits: ``[..., 4, n_bins]`` logits of the discrete distribution of
      each edge over the bins ``0 .. n_bins - 1``.

  Returns:
    ``[..., 4]`` expected edge distances in bins (units of the stride), in
    ``[0, n_bins - 1]``.

  References:
    Li, Wang, Wu, Chen, Hu, Li, Tang & Yang, "Generalized Focal Loss: Learning
    Qualified and Distributed Bounding Boxes for Dense Object Detection",
    NeurIPS 2020, arXiv:2006.04388 (Eq. 5).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.dense import edge_expectation
    >>> e = jnp.log(jnp.array([[0.5, 0.5, 0.0]] * 4))  # half on bin 0, half on bin 1
    >>> edge_expectation(e)
    Array([0.5, 0.5, 0.5, 0.5], dtype=float32)
  """
  if jnp.ndim(edge_logits) < 2 or jnp.shape(edge_logits)[-2] != 4:
    raise ValueError(f'`edge_logits` must have shape [..., 4, n_bins], got '
                     f'{jnp.shape(edge_logits)}.')
  e = jnp.asarray(edge_logits)
  e = e.astype(jnp.promote_types(e.dtype, jnp.float32))
  bins = jnp.arange(e.shape[-1], dtype=e.dtype)
  return jnp.sum(jax.nn.softmax(e, axis=-1) * bins, axis=-1)


def distances_to_boxes(
    distances: jax.Array,
    *,
    stride: int,
    image_size: int | Sequence[int],
    clip: bool = True,
) -> jax.Array:
  """Turns per-location edge distances into normalised boxes.

  Args:
    distances: ``[..., H', W', 4]`` distances (left, top, right, bottom) in
      units of the stride, on the grid of :func:`location_centers`.
    stride: the grid's stride ``s`` in pixels.
    image_size: ``H`` or ``(H, W)`` in pixels.
    clip: clip the boxes to the image (``[0, 1]``).

  Returns:
    ``[..., H', W', 4]`` boxes ``[ymin, xmin, ymax, xmax]`` normalised by
    ``(H, W)``.

  Raises:
    ValueError: if the grid axes do not match ``grid_shape(image_size, stride)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.dense import distances_to_boxes
    >>> d = jnp.ones((1, 1, 4))  # one location at pixel (2, 2), 4 px to each side
    >>> distances_to_boxes(d, stride=4, image_size=4, clip=False)
    Array([[[-0.5, -0.5,  1.5,  1.5]]], dtype=float32)
  """
  h, w = _pair(image_size, 'image_size')
  centers = location_centers((h, w), stride)
  if jnp.shape(distances)[-3:] != centers.shape[:2] + (4,):
    raise ValueError(
        f'`distances` must have shape [..., {centers.shape[0]}, {centers.shape[1]}, 4] for '
        f'image_size {(h, w)} and stride {stride}, got {jnp.shape(distances)}.')
  d = jnp.asarray(distances) * stride
  cy, cx = centers[..., 0], centers[..., 1]
  boxes = jnp.stack([(cy - d[..., 1]) / h, (cx - d[..., 0]) / w,
                     (cy + d[..., 3]) / h, (cx + d[..., 2]) / w], axis=-1)
  return jnp.clip(boxes, 0.0, 1.0) if clip else boxes


def decode_boxes(
    edge_logits: jax.Array,
    *,
    stride: int,
    image_size: int | Sequence[int],
    clip: bool = True,
) -> jax.Array:
  """Decodes a distributional box head to boxes (expectation over bins).

  Args:
    edge_logits: ``[..., H', W', 4, n_bins]`` edge logits (left, top, right,
      bottom) of a GFL-style head, e.g. ``features['box_logits']`` of
      :class:`kdjax.models.DenseDetector`.
    stride: the grid's stride in pixels.
    image_size: ``H`` or ``(H, W)`` in pixels.
    clip: clip the boxes to the image.

  Returns:
    ``[..., H', W', 4]`` normalised boxes ``[ymin, xmin, ymax, xmax]``.

  References:
    Li et al., "Generalized Focal Loss", NeurIPS 2020, arXiv:2006.04388.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.dense import decode_boxes
    >>> e = jnp.full((1, 2, 2, 4, 3), -1e9).at[..., 1].set(0.0)  # every edge at bin 1
    >>> decode_boxes(e, stride=4, image_size=8)[0, 0, 0]
    Array([0. , 0. , 0.75, 0.75], dtype=float32)
  """
  return distances_to_boxes(edge_expectation(edge_logits), stride=stride,
                            image_size=image_size, clip=clip)
