"""Deterministic, vectorised augmentation in NumPy.

A view is a pure function of the example and of ``(seed, epoch, id)``: the
pipeline computes one 64-bit key per example with :func:`example_keys` and
every random draw of that example is a counter-based hash of its key
(SplitMix64). So the same example in the same epoch of the same run gets the
same view whatever batch it lands in, in any process, after a resume, or when
a teacher cache recomputes it; and a whole batch is augmented in a few array
operations (no per-example generator, which costs ~50 us each).

Transforms act on standardised batches (``'x'`` already normalised), so image
padding fills with 0, i.e. the per-channel mean.

A view is computed in two parts: its *draws* (gather indices and noise, a few
integers per example, from the keys on the host) and :func:`apply_draws`, the
same gathers in NumPy or ``jax.numpy``. So device-resident data
(:class:`kdjax.data.DeviceData`) augments inside the compiled step, bitwise
equal to the host pipeline.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np


Batch = Mapping[str, Any]
Transform = Callable[[Batch, np.ndarray], dict]

# Datasets whose labels survive a horizontal flip (digits do not).
_FLIP_INVARIANT = frozenset({'cifar10', 'cifar100', 'fashion_mnist'})

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
  """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
  z = (z ^ (z >> np.uint64(30))) * _M1
  z = (z ^ (z >> np.uint64(27))) * _M2
  return z ^ (z >> np.uint64(31))


def example_keys(seed: int, epoch: int, ids: Any) -> np.ndarray:
  """One 64-bit key per example, a hash of ``(seed, epoch, id)``.

  Args:
    seed: run seed (the pipeline's ``seed``), ``>= 0``.
    epoch: epoch number, ``>= 0``.
    ids: ``[...]`` example ids, ``>= 0``.

  Returns:
    ``[...]`` uint64 keys; equal inputs give equal keys, any change of
    ``seed``, ``epoch`` or ``id`` gives an unrelated key.

  Raises:
    ValueError: for a negative seed, epoch or id.

  Examples:
    >>> from kdjax.data import example_keys
    >>> k = example_keys(0, 1, [3, 4])
    >>> k.dtype, bool(k[0] != k[1]), bool((k == example_keys(0, 1, [3, 4])).all())
    (dtype('uint64'), True, True)
  """
  ids = np.asarray(ids)
  if int(seed) < 0 or int(epoch) < 0 or (ids.size and ids.min() < 0):
    raise ValueError(f'`seed`, `epoch` and `ids` must be >= 0, got {seed}, {epoch}, {ids}.')
  with np.errstate(over='ignore'):
    h = _mix(np.uint64(seed) + _GOLDEN)
    h = _mix(h ^ (np.uint64(epoch) + _GOLDEN))
    return _mix(h ^ (ids.astype(np.uint64) + _GOLDEN))


def uniforms(keys: np.ndarray, num: int, *, offset: int = 0) -> np.ndarray:
  """``num`` uniform draws in ``[0, 1)`` per key (counter-based).

  Draw ``k`` of a key is ``SplitMix64(key + (offset + k + 1) * golden)``
  scaled to 53 bits, so distinct offsets give independent streams.

  Args:
    keys: ``[...]`` uint64 keys from :func:`example_keys`.
    num: draws per key.
    offset: first counter, to keep separate uses of a key independent.

  Returns:
    ``[..., num]`` float64 in ``[0, 1)``.

  Examples:
    >>> from kdjax.data import example_keys, uniforms
    >>> u = uniforms(example_keys(0, 0, [0, 1]), 3)
    >>> u.shape, bool(((0 <= u) & (u < 1)).all())
    ((2, 3), True)
  """
  keys = np.asarray(keys, np.uint64)[..., None]
  counters = np.arange(offset + 1, offset + num + 1, dtype=np.uint64)
  with np.errstate(over='ignore'):
    bits = _mix(keys + counters * _GOLDEN)
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _normals(keys: np.ndarray, num: int, *, offset: int) -> np.ndarray:
  """Standard normal draws via Box-Muller from ``2 * num`` uniforms."""
  u = uniforms(keys, 2 * num, offset=offset)
  radius = np.sqrt(-2.0 * np.log1p(-u[..., :num]))
  return radius * np.cos(2.0 * np.pi * u[..., num:])


def random_crop_flip(
    images: np.ndarray,
    keys: np.ndarray,
    *,
    padding: int = 4,
    flip: bool = True,
) -> np.ndarray:
  """Zero-pads images by ``padding``, crops back to ``H x W``, maybe flips.

  Per example, the crop offset is uniform in ``[0, 2 * padding]`` along each
  axis (draws 0 and 1 of its key) and, when ``flip``, a horizontal flip
  happens with probability 1/2 (draw 2).

  Args:
    images: ``[B, H, W]`` or ``[B, H, W, C]``.
    keys: ``[B]`` uint64 example keys (:func:`example_keys`).
    padding: pixels of zero padding on each side, ``>= 0``.
    flip: whether to flip horizontally with probability 1/2.

  Returns:
    An array with the shape and dtype of ``images``.

  Raises:
    ValueError: for a negative ``padding`` or mismatched leading sizes.

  Examples:
    >>> import numpy as np
    >>> from kdjax.data import example_keys, random_crop_flip
    >>> imgs = np.arange(32.0).reshape(2, 4, 4, 1)
    >>> out = random_crop_flip(imgs, example_keys(0, 0, [0, 1]), padding=0, flip=False)
    >>> bool((out == imgs).all())
    True
  """
  images = np.asarray(images)
  keys = np.asarray(keys)
  if padding < 0:
    raise ValueError(f'`padding` must be >= 0, got {padding}.')
  if images.ndim < 3 or keys.shape != images.shape[:1]:
    raise ValueError(f'`images` must be [B, H, W(, C)] and `keys` [B]; got '
                     f'{images.shape} and {keys.shape}.')
  return apply_draws(images, crop_flip_draws(keys, images.shape, padding=padding, flip=flip))


def crop_flip_draws(keys: np.ndarray, shape, *, padding: int = 4,
                    flip: bool = True) -> dict[str, np.ndarray]:
  """The source pixels of :func:`random_crop_flip`'s views, as gather indices.

  Args:
    keys: ``[B]`` uint64 example keys.
    shape: the images' shape ``[B, H, W(, C)]``.
    padding: zero padding on each side.
    flip: whether to flip horizontally with probability 1/2.

  Returns:
    ``{'rows': [B, H], 'cols': [B, W]}`` int32 source coordinates; those
    outside the image read as 0 (the zero padding). See :func:`apply_draws`.

  Examples:
    >>> from kdjax.data import crop_flip_draws, example_keys
    >>> d = crop_flip_draws(example_keys(0, 0, [0]), (1, 4, 4), padding=0, flip=False)
    >>> d['rows'].tolist(), d['cols'].tolist()
    ([[0, 1, 2, 3]], [[0, 1, 2, 3]])
  """
  b, h, w = shape[:3]
  u = uniforms(keys, 3)
  span = 2 * padding + 1
  dy = np.minimum((u[:, 0] * span).astype(np.int64), span - 1)
  dx = np.minimum((u[:, 1] * span).astype(np.int64), span - 1)
  cols = np.broadcast_to(np.arange(w)[None, :], (b, w))
  if flip:
    cols = np.where((u[:, 2] < 0.5)[:, None], w - 1 - cols, cols)
  rows = dy[:, None] + np.arange(h)[None, :] - padding
  cols = dx[:, None] + cols - padding
  return {'rows': rows.astype(np.int32), 'cols': cols.astype(np.int32)}


def shift_draws(keys: np.ndarray, shape, *, max_shift: int = 2, noise_std: float = 0.0,
                dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """The source positions (and noise) of :func:`random_shift`'s views.

  Args:
    keys: ``[B]`` uint64 example keys.
    shape: the sequences' shape ``[B, L(, C)]``.
    max_shift: largest circular shift.
    noise_std: standard deviation of the added Gaussian noise.
    dtype: dtype of the noise (the sequences').

  Returns:
    ``{'src': [B, L] int32}`` and, with ``noise_std > 0``, ``'noise'`` of
    ``shape`` in ``dtype``. See :func:`apply_draws`.

  Examples:
    >>> from kdjax.data import example_keys, shift_draws
    >>> sorted(shift_draws(example_keys(0, 0, [0, 1]), (2, 6), noise_std=0.1))
    ['noise', 'src']
  """
  length = shape[1]
  span = 2 * max_shift + 1
  shift = np.minimum((uniforms(keys, 1)[:, 0] * span).astype(np.int64), span - 1) - max_shift
  draws = {'src': ((np.arange(length)[None, :] - shift[:, None]) % length).astype(np.int32)}
  if noise_std > 0:
    size = int(np.prod(shape[1:]))
    noise = _normals(keys, size, offset=1).reshape(tuple(shape))
    draws['noise'] = (noise_std * noise).astype(dtype)
  return draws


def apply_draws(x, draws: Mapping[str, Any], xp: Any = np):
  """Applies a view's draws to a batch, in NumPy (host) or ``jax.numpy`` (device).

  The same draws give bitwise the same view with either ``xp``: both are
  gathers plus, with noise, one addition in ``x``'s dtype.

  Args:
    x: ``[B, ...]`` batch.
    draws: from :func:`crop_flip_draws` (``'rows'``, ``'cols'``) or
      :func:`shift_draws` (``'src'``, optional ``'noise'``).
    xp: ``numpy`` or ``jax.numpy``.

  Returns:
    The augmented batch, with the shape and dtype of ``x``.

  Examples:
    >>> import numpy as np, jax.numpy as jnp
    >>> from kdjax.data import apply_draws
    >>> x = np.arange(6.0, dtype=np.float32).reshape(1, 6)
    >>> draws = {'src': np.array([[5, 0, 1, 2, 3, 4]], np.int32)}
    >>> apply_draws(x, draws).tolist(), apply_draws(jnp.asarray(x), draws, jnp).tolist()
    ([[5.0, 0.0, 1.0, 2.0, 3.0, 4.0]], [[5.0, 0.0, 1.0, 2.0, 3.0, 4.0]])
  """
  batch = xp.arange(x.shape[0])
  if 'rows' in draws:
    h, w = x.shape[1:3]
    rows, cols = draws['rows'], draws['cols']
    inside = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
    out = x[batch[:, None, None], xp.clip(rows, 0, h - 1)[:, :, None],
            xp.clip(cols, 0, w - 1)[:, None, :]]
    x = xp.where(inside.reshape(inside.shape + (1,) * (x.ndim - 3)), out, xp.zeros((), x.dtype))
  if 'src' in draws:
    x = x[batch[:, None], draws['src']]
  if 'noise' in draws:
    x = x + draws['noise']
  return x


def random_shift(
    x: np.ndarray,
    keys: np.ndarray,
    *,
    max_shift: int = 2,
    noise_std: float = 0.0,
) -> np.ndarray:
  """Circularly shifts sequences and optionally adds Gaussian noise.

  Per example, the shift is uniform in ``[-max_shift, max_shift]`` positions
  along axis 1 (draw 0 of its key); the noise is i.i.d. ``N(0, noise_std^2)``
  per value (Box-Muller on later draws). Meant for MNIST-1D, whose inputs have
  unit standard deviation, so ``noise_std`` is relative to that.

  Args:
    x: ``[B, L]`` or ``[B, L, C]`` sequences.
    keys: ``[B]`` uint64 example keys (:func:`example_keys`).
    max_shift: largest shift in positions, ``>= 0``.
    noise_std: standard deviation of the added noise, ``>= 0``.

  Returns:
    An array with the shape and dtype of ``x``.

  Raises:
    ValueError: for negative options or mismatched leading sizes.

  Examples:
    >>> import numpy as np
    >>> from kdjax.data import example_keys, random_shift
    >>> x = np.arange(12.0).reshape(2, 6)
    >>> y = random_shift(x, example_keys(0, 0, [0, 1]), max_shift=2)
    >>> bool((np.sort(y, axis=1) == x).all())
    True
  """
  x = np.asarray(x)
  keys = np.asarray(keys)
  if max_shift < 0 or noise_std < 0:
    raise ValueError(f'`max_shift` and `noise_std` must be >= 0, got {max_shift}, {noise_std}.')
  if x.ndim < 2 or keys.shape != x.shape[:1]:
    raise ValueError(f'`x` must be [B, L(, C)] and `keys` [B]; got {x.shape} and {keys.shape}.')
  return apply_draws(x, shift_draws(keys, x.shape, max_shift=max_shift, noise_std=noise_std,
                                    dtype=x.dtype))


@dataclasses.dataclass(frozen=True)
class ImageAugment:
  """Pipeline transform: :func:`random_crop_flip` on ``batch['x']``.

  Examples:
    >>> import numpy as np
    >>> from kdjax.data import ImageAugment, example_keys
    >>> out = ImageAugment(padding=1)({'x': np.ones((2, 8, 8, 1))}, example_keys(0, 0, [0, 1]))
    >>> out['x'].shape
    (2, 8, 8, 1)
  """

  padding: int = 4
  flip: bool = True

  def __call__(self, batch: Batch, keys: np.ndarray) -> dict:
    out = dict(batch)
    out['x'] = random_crop_flip(batch['x'], keys, padding=self.padding, flip=self.flip)
    return out

  def draws(self, keys: np.ndarray, shape, dtype) -> dict[str, np.ndarray]:
    """The view's gather indices (for device-resident data, see :func:`apply_draws`)."""
    del dtype
    return crop_flip_draws(keys, shape, padding=self.padding, flip=self.flip)


@dataclasses.dataclass(frozen=True)
class SequenceAugment:
  """Pipeline transform: :func:`random_shift` on ``batch['x']``.

  Examples:
    >>> import numpy as np
    >>> from kdjax.data import SequenceAugment, example_keys
    >>> out = SequenceAugment(noise_std=0.1)({'x': np.zeros((2, 40))}, example_keys(0, 0, [0, 1]))
    >>> out['x'].shape
    (2, 40)
  """

  max_shift: int = 2
  noise_std: float = 0.0

  def __call__(self, batch: Batch, keys: np.ndarray) -> dict:
    out = dict(batch)
    out['x'] = random_shift(batch['x'], keys, max_shift=self.max_shift,
                            noise_std=self.noise_std)
    return out

  def draws(self, keys: np.ndarray, shape, dtype) -> dict[str, np.ndarray]:
    """The view's gather indices and noise (see :func:`apply_draws`)."""
    return shift_draws(keys, shape, max_shift=self.max_shift, noise_std=self.noise_std,
                       dtype=dtype)


def augmentation(name: str, **options: Any) -> Transform:
  """The default augmentation transform for a dataset.

  * sequences (``mnist1d``): :class:`SequenceAugment` (circular shift of up to
    2 positions, no noise unless ``noise_std`` is given);
  * images: :class:`ImageAugment` with ``padding = max(1, H // 8)`` (4 for
    32x32, 3 for 28x28, 1 for 8x8 digits) and a horizontal flip only for
    ``cifar10``, ``cifar100`` and ``fashion_mnist``.

  Args:
    name: dataset name (see ``kdjax.data.dataset_info``).
    **options: fields overriding the defaults (``padding``, ``flip``,
      ``max_shift``, ``noise_std``).

  Returns:
    A transform ``(batch, keys) -> batch`` for ``make_pipeline``.

  Examples:
    >>> from kdjax.data import augmentation
    >>> augmentation('cifar10')
    ImageAugment(padding=4, flip=True)
    >>> augmentation('mnist1d', noise_std=0.05)
    SequenceAugment(max_shift=2, noise_std=0.05)
  """
  from kdjax.data._sources import dataset_info  # pylint: disable=import-outside-toplevel

  meta = dataset_info(name)
  if meta.kind == 'sequence':
    return SequenceAugment(**options)
  defaults = {'padding': max(1, meta.input_shape[0] // 8),
              'flip': meta.name in _FLIP_INVARIANT}
  return ImageAugment(**{**defaults, **options})
