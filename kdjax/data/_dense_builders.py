"""Local TFDS builders for dense prediction: digit canvases for detection and segmentation.

Each example is a grey canvas (48x48 by default) holding 1 to 4 of
scikit-learn's 8x8 digits, each upscaled (bilinear) to a random square size
(10 to 20 px by default) and pasted at a random position; two digits overlap
by at most ``max_overlap`` IoU. Ink is composed by the pixel-wise maximum.
Train canvases draw their digits from the train images of
:func:`kdjax.data.digits_split` and test canvases from its test images, so the
two splits share no source digit.

``digits_detection`` and ``digits_segmentation`` render the *same* canvases
(same config, split and ``id`` give the same image); they differ in their
targets. Like the other local builders they write array_record files, read
through ``tfds.data_source`` without TensorFlow, and are served by
``kdjax.data.load``.

Features are fixed-size arrays (no ``tfds.features.Sequence``), so examples
stack into batches and jit without ragged shapes: an image has
``max_objects`` object slots, the first ``num_objects`` real, the rest
padding (label -1, box zeros).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from kdjax.data import _builders


DENSE_NAMES = ('digits_detection', 'digits_segmentation')
INK_THRESHOLD = 0.25  # a pixel belongs to a digit where the digit's ink is >= this
NUM_DIGIT_CLASSES = 10
_SPLIT_CODES = {'train': 0, 'test': 1}


@dataclasses.dataclass(eq=False)
class DenseDigitsConfig(tfds.core.BuilderConfig):
  """Configuration of the digit-canvas builders.

  Attributes:
    num_train: canvases in ``train``.
    num_test: canvases in ``test``.
    seed: generator seed; example ``i`` of a split is drawn from
      ``np.random.default_rng([seed, split_code, i])``, so a smaller config
      with the same other fields holds the first canvases of a larger one.
    image_size: canvas height and width in pixels.
    min_objects: fewest digits per canvas (>= 1).
    max_objects: most digits per canvas; also the number of object slots.
    min_size: smallest digit size in pixels.
    max_size: largest digit size in pixels (<= ``image_size``).
    max_overlap: largest IoU allowed between two digits' boxes; a digit that
      cannot be placed in 50 tries is left out (so a canvas may hold fewer
      than it drew, never fewer than one).
  """

  num_train: int = 2000
  num_test: int = 500
  seed: int = 0
  image_size: int = 48
  min_objects: int = 1
  max_objects: int = 4
  min_size: int = 10
  max_size: int = 20
  max_overlap: float = 0.2


_DEFAULT = DenseDigitsConfig(
    name='default',
    description='2000 train / 500 test canvases of 48x48 with 1-4 digits of 10-20 px, seed 0.')


def dense_digits_config(
    num_train: int = 2000,
    num_test: int = 500,
    seed: int = 0,
    **kwargs,
) -> DenseDigitsConfig:
  """Returns the digit-canvas config for the given parameters.

  The default parameters return the predefined ``default`` config; others get a
  config whose name encodes them, so each lives in its own directory.

  Args:
    num_train: canvases in ``train``.
    num_test: canvases in ``test``.
    seed: generator seed.
    **kwargs: further :class:`DenseDigitsConfig` fields (``image_size``,
      ``min_objects``, ``max_objects``, ``min_size``, ``max_size``,
      ``max_overlap``).

  Returns:
    A :class:`DenseDigitsConfig`.

  Raises:
    ValueError: for an unknown field or inconsistent sizes and counts.

  Examples:
    >>> from kdjax.data import dense_digits_config
    >>> dense_digits_config().name
    'default'
    >>> dense_digits_config(40, 10, image_size=32, max_size=14).name
    'n40_10_s0_image_size32_max_size14'
  """
  fields = {f.name for f in dataclasses.fields(DenseDigitsConfig)} - {
      f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f'Unknown digit-canvas config field(s) {sorted(unknown)}; known: '
                     f'{sorted(fields)}.')
  values = dict(num_train=num_train, num_test=num_test, seed=seed, **kwargs)
  if all(getattr(_DEFAULT, k) == v for k, v in values.items()):
    return _DEFAULT
  name = f'n{num_train}_{num_test}_s{seed}' + ''.join(
      f'_{k}{str(v).replace(".", "p")}' for k, v in sorted(kwargs.items())
      if getattr(_DEFAULT, k) != v)
  config = DenseDigitsConfig(name=name, **values)
  _check_config(config)
  return config


def _check_config(c: DenseDigitsConfig) -> None:
  if min(c.num_train, c.num_test) < 0 or c.num_train + c.num_test == 0:
    raise ValueError(f'`num_train` and `num_test` must be >= 0 and not both 0, got '
                     f'{c.num_train} and {c.num_test}.')
  if not 1 <= c.min_objects <= c.max_objects:
    raise ValueError(f'Need 1 <= `min_objects` <= `max_objects`, got {c.min_objects} and '
                     f'{c.max_objects}.')
  if not 2 <= c.min_size <= c.max_size <= c.image_size:
    raise ValueError(f'Need 2 <= `min_size` <= `max_size` <= `image_size`, got {c.min_size}, '
                     f'{c.max_size} and {c.image_size}.')
  if not 0.0 <= c.max_overlap <= 1.0:
    raise ValueError(f'`max_overlap` must be in [0, 1], got {c.max_overlap}.')


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` bilinear interpolation weights (half-pixel centres, edge clamp)."""
  pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = pos - lo
  m = np.zeros((n_out, n_in))
  m[np.arange(n_out), lo] += 1 - frac
  m[np.arange(n_out), hi] += frac
  return m


def _pair_iou(a: np.ndarray, b: np.ndarray) -> float:
  ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ih * iw
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def generate_digit_canvases(
    num_examples: int,
    split: str = 'train',
    config: Optional[DenseDigitsConfig] = None,
) -> dict[str, np.ndarray]:
  """Renders digit canvases with their boxes, labels and class maps.

  Box ``m`` is the tight box of digit ``m``'s ink (pixels where its own
  upscaled image is ``>= 0.25``), before other digits are drawn over it:
  ``[ymin, xmin, ymax, xmax]`` = ``[r0, c0, r1 + 1, c1 + 1] / image_size`` for
  its first/last ink rows ``r0, r1`` and columns ``c0, c1`` (pixel ``(r, c)``
  covers ``[r, r + 1)``). The class map holds, per pixel, 0 for background or
  ``label + 1`` of the digit with the most ink there if that ink is
  ``>= 0.25``.

  Args:
    num_examples: canvases to render (ids ``0 .. num_examples - 1``).
    split: ``'train'`` or ``'test'``: which source digits of
      :func:`kdjax.data.digits_split` to draw from (and the RNG stream).
    config: a :class:`DenseDigitsConfig` (default: the ``default`` config).

  Returns:
    A dict with ``image`` ``[N, S, S, 1]`` float32 in ``[0, 1]``, ``boxes``
    ``[N, M, 4]`` float32, ``labels`` ``[N, M]`` int64 (-1 in padding slots),
    ``num_objects`` ``[N]`` int64, ``digit_ids`` ``[N, M]`` int64 (index into
    ``sklearn.datasets.load_digits()``, -1 in padding) and ``segmentation``
    ``[N, S, S]`` uint8 in ``[0, 10]``, with ``S = image_size`` and
    ``M = max_objects``.

  Raises:
    ValueError: for an unknown split or a bad config.

  Examples:
    >>> from kdjax.data import generate_digit_canvases
    >>> d = generate_digit_canvases(2)
    >>> d['image'].shape, d['boxes'].shape, int(d['segmentation'].max()) <= 10
    ((2, 48, 48, 1), (2, 4, 4), True)
  """
  from sklearn import datasets  # pylint: disable=import-outside-toplevel

  c = _DEFAULT if config is None else config
  _check_config(c)
  if split not in _SPLIT_CODES:
    raise ValueError(f'`split` must be one of {tuple(_SPLIT_CODES)}, got {split!r}.')
  digits = datasets.load_digits()
  pool = _builders.digits_split()[split]
  sources = digits.images / 16.0
  s, m_slots = c.image_size, c.max_objects
  out = {
      'image': np.zeros((num_examples, s, s, 1), np.float32),
      'boxes': np.zeros((num_examples, m_slots, 4), np.float32),
      'labels': np.full((num_examples, m_slots), -1, np.int64),
      'num_objects': np.zeros((num_examples,), np.int64),
      'digit_ids': np.full((num_examples, m_slots), -1, np.int64),
      'segmentation': np.zeros((num_examples, s, s), np.uint8),
  }
  resize = {}
  for i in range(num_examples):
    rng = np.random.default_rng([c.seed, _SPLIT_CODES[split], i])
    want = int(rng.integers(c.min_objects, c.max_objects + 1))
    ink = np.zeros((0, s, s))
    boxes = []
    for _ in range(want):
      digit = int(rng.choice(pool))
      size = int(rng.integers(c.min_size, c.max_size + 1))
      if size not in resize:
        resize[size] = _resize_matrix(8, size)
      patch = resize[size] @ sources[digit] @ resize[size].T
      rows = np.flatnonzero((patch >= INK_THRESHOLD).any(1))
      cols = np.flatnonzero((patch >= INK_THRESHOLD).any(0))
      for _ in range(50):
        y, x = (int(v) for v in rng.integers(0, s - size + 1, size=2))
        box = np.array([y + rows[0], x + cols[0], y + rows[-1] + 1, x + cols[-1] + 1]) / s
        if all(_pair_iou(box, b) <= c.max_overlap for b in boxes):
          break
      else:
        continue
      layer = np.zeros((1, s, s))
      layer[0, y:y + size, x:x + size] = patch
      ink = np.concatenate([ink, layer])
      k = len(boxes)
      boxes.append(box)
      out['boxes'][i, k] = box
      out['labels'][i, k] = digits.target[digit]
      out['digit_ids'][i, k] = digit
    n = len(boxes)
    out['num_objects'][i] = n
    out['image'][i, ..., 0] = np.clip(ink.max(0), 0.0, 1.0)
    owner = ink.argmax(0)
    covered = ink.max(0) >= INK_THRESHOLD
    out['segmentation'][i] = np.where(covered, out['labels'][i, owner] + 1, 0)
  return out


def check_dense_arrays(arrays: dict[str, np.ndarray], *, where: str = '') -> None:
  """Checks the targets of digit-canvas examples (at generation and at load).

  Args:
    arrays: any of ``boxes [N, M, 4]`` with ``labels [N, M]`` and
      ``num_objects [N]``, and/or ``segmentation [N, H, W]``.
    where: what the arrays are (for the message).

  Raises:
    ValueError: naming ``boxes``, ``labels``, ``num_objects`` or
      ``segmentation`` when a box of a real object is outside ``[0, 1]`` or has
      ``ymin > ymax`` / ``xmin > xmax``, a label is outside ``[0, 10)`` (or a
      padding slot's label is not -1), ``num_objects`` is outside
      ``[0, max_objects]``, or a class map value is outside ``[0, 10]``.

  Examples:
    >>> import numpy as np
    >>> from kdjax.data import check_dense_arrays
    >>> check_dense_arrays({'segmentation': np.full((1, 2, 2), 11)})
    Traceback (most recent call last):
    ...
    ValueError: `segmentation` values must be in [0, 10] (0 background, ...), got [11].
  """
  from kdjax import dense  # pylint: disable=import-outside-toplevel

  prefix = f'{where}: ' if where else ''
  if 'boxes' in arrays:
    boxes, labels = np.asarray(arrays['boxes']), np.asarray(arrays['labels'])
    count = np.asarray(arrays['num_objects']).reshape(-1)
    m = boxes.shape[1] if boxes.ndim == 3 else -1
    if np.any((count < 0) | (count > m)):
      raise ValueError(f'{prefix}`num_objects` must be in [0, {m}], got '
                       f'{np.unique(count[(count < 0) | (count > m)])[:10].tolist()}.')
    real = np.arange(m)[None, :] < count[:, None]
    if np.any(labels[~real] != -1):
      raise ValueError(f'{prefix}`labels` of padding slots (after `num_objects`) must be -1.')
    try:
      dense.check_boxes(boxes, labels.astype(np.int64), num_classes=NUM_DIGIT_CLASSES,
                        valid=real)
    except ValueError as e:
      raise ValueError(f'{prefix}{e}') from None
  if 'segmentation' in arrays:
    seg = np.asarray(arrays['segmentation'])
    bad = (seg < 0) | (seg > NUM_DIGIT_CLASSES)
    if bad.any():
      raise ValueError(
          f'{prefix}`segmentation` values must be in [0, {NUM_DIGIT_CLASSES}] (0 background, '
          f'label + 1 for a digit), got {np.unique(seg[bad])[:10].tolist()}.')


_LocalBuilder = _builders._LocalBuilder  # pylint: disable=protected-access


class _DigitCanvases(_LocalBuilder, skip_registration=True):
  """Shared generation of the two digit-canvas builders."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Canvases of sklearn digits; splits from kdjax.data.digits_split.'}
  BUILDER_CONFIGS = [_DEFAULT]
  _KEYS: tuple[str, ...] = ()

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated from scikit-learn's bundled digits.
    c = self.builder_config
    sizes = {'train': c.num_train, 'test': c.num_test}
    return {split: self._generate_examples(split, n) for split, n in sizes.items() if n}

  def _generate_examples(self, split: str, n: int) -> Iterator[tuple[int, dict]]:
    arrays = generate_digit_canvases(n, split, self.builder_config)
    check_dense_arrays(arrays, where=f'{self.name}/{self.builder_config.name} {split}')
    for i in range(n):
      example = {k: arrays[k][i] for k in self._KEYS}
      example['id'] = i
      yield i, example


class DigitsDetection(_DigitCanvases, skip_registration=True):
  """Digit canvases with boxes: ``digits_detection``.

  Features (``S = image_size``, ``M = max_objects``; defaults 48 and 4):

  * ``image``: float32 ``[S, S, 1]`` in ``[0, 1]``;
  * ``boxes``: float32 ``[M, 4]`` normalised ``[ymin, xmin, ymax, xmax]``
    (zeros in padding slots);
  * ``labels``: int64 ``[M]`` digit classes ``0 .. 9``, -1 in padding slots;
  * ``num_objects``: int64, the number of real slots (they come first);
  * ``digit_ids``: int64 ``[M]`` source index into ``load_digits()``, -1 in
    padding slots;
  * ``id``: int64, the index within the split as generated.

  Splits: ``train`` and ``test`` (``num_train`` / ``num_test`` canvases) from
  disjoint source digits.
  """

  _KEYS = ('image', 'boxes', 'labels', 'num_objects', 'digit_ids')

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s, m = c.image_size, c.max_objects
    return tfds.core.DatasetInfo(
        builder=self,
        description='Canvases of 1-4 upscaled sklearn digits with their boxes (detection).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(s, s, 1), dtype=np.float32),
            'boxes': tfds.features.Tensor(shape=(m, 4), dtype=np.float32),
            'labels': tfds.features.Tensor(shape=(m,), dtype=np.int64),
            'num_objects': tfds.features.Scalar(dtype=np.int64),
            'digit_ids': tfds.features.Tensor(shape=(m,), dtype=np.int64),
            'id': tfds.features.Scalar(dtype=np.int64),
        }),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )


class DigitsSegmentation(_DigitCanvases, skip_registration=True):
  """The same digit canvases with per-pixel classes: ``digits_segmentation``.

  Features (``S = image_size``, default 48):

  * ``image``: float32 ``[S, S, 1]`` in ``[0, 1]`` (identical to
    ``digits_detection``'s image of the same config, split and ``id``);
  * ``segmentation``: uint8 ``[S, S]``: 0 background, ``label + 1`` (1..10)
    for a digit pixel; 11 classes in all;
  * ``id``: int64, the index within the split as generated.

  Splits: ``train`` and ``test``, as for ``digits_detection``.
  """

  _KEYS = ('image', 'segmentation')

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description='Canvases of 1-4 upscaled sklearn digits with class maps (segmentation).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(s, s, 1), dtype=np.float32),
            'segmentation': tfds.features.Tensor(shape=(s, s), dtype=np.uint8),
            'id': tfds.features.Scalar(dtype=np.int64),
        }),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )


BUILDERS = {'digits_detection': DigitsDetection, 'digits_segmentation': DigitsSegmentation}
