"""Tests for the deterministic, vectorised augmentations."""

import numpy as np
import pytest
from scipy import stats

from kdjax import data as kd


def _images(b=6, h=8, w=8, c=3, seed=0):
  return np.random.default_rng(seed).normal(size=(b, h, w, c)).astype(np.float32)


# ------------------------------------------------------------------------ keys

def test_keys_are_deterministic_and_distinct():
  ids = np.arange(1000)
  k = kd.example_keys(0, 0, ids)
  np.testing.assert_array_equal(k, kd.example_keys(0, 0, ids))
  others = [k, kd.example_keys(1, 0, ids), kd.example_keys(0, 1, ids)]
  assert len(np.unique(np.concatenate(others))) == 3000
  # One example's key does not depend on its neighbours.
  assert kd.example_keys(0, 0, [5])[0] == k[5]
  with pytest.raises(ValueError):
    kd.example_keys(0, 0, [-1])


def test_uniforms_are_uniform_and_independent_across_counters():
  u = kd.uniforms(kd.example_keys(3, 2, np.arange(20000)), 2)
  assert u.min() >= 0 and u.max() < 1
  for col in range(2):
    assert stats.kstest(u[:, col], 'uniform').pvalue > 1e-3
  assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
  shifted = kd.uniforms(kd.example_keys(3, 2, np.arange(20000)), 1, offset=1)
  np.testing.assert_array_equal(shifted[:, 0], u[:, 1])


# ------------------------------------------------------------------- crop/flip

def _reference_crop_flip(image, u, padding, flip):
  """Per-example slicing reference from the documented draws."""
  span = 2 * padding + 1
  dy, dx = min(int(u[0] * span), span - 1), min(int(u[1] * span), span - 1)
  h, w = image.shape[:2]
  padded = np.zeros((h + 2 * padding, w + 2 * padding) + image.shape[2:], image.dtype)
  padded[padding:padding + h, padding:padding + w] = image
  out = padded[dy:dy + h, dx:dx + w]
  return out[:, ::-1] if flip and u[2] < 0.5 else out


@pytest.mark.parametrize('padding, flip', [(4, True), (2, False), (0, True)])
def test_crop_flip_matches_per_example_reference(padding, flip):
  images = _images(b=40, h=8, w=6, c=2)
  keys = kd.example_keys(5, 1, np.arange(40))
  got = kd.random_crop_flip(images, keys, padding=padding, flip=flip)
  assert got.shape == images.shape and got.dtype == images.dtype
  u = kd.uniforms(keys, 3)
  for i in range(40):
    np.testing.assert_array_equal(got[i], _reference_crop_flip(images[i], u[i], padding, flip))


def test_crop_flip_covers_all_offsets_and_flips():
  images = np.zeros((4000, 3, 3, 1), np.float32)
  images[:, 1, 1] = 1.0  # a centre pixel: its position after the crop shows the offset
  keys = kd.example_keys(0, 0, np.arange(4000))
  out = kd.random_crop_flip(images, keys, padding=1, flip=False)
  where = out[..., 0].reshape(4000, -1).argmax(axis=1)
  counts = np.bincount(where, minlength=9)
  assert counts.min() > 300  # all 9 offsets, roughly 444 each
  flipped = kd.random_crop_flip(_images(b=2000, h=2, w=2, c=1), keys[:2000], padding=0)
  original = _images(b=2000, h=2, w=2, c=1)
  rate = np.mean([np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, original)])
  assert 0.45 < rate < 0.55


def test_crop_flip_rejects_bad_input():
  with pytest.raises(ValueError, match='padding'):
    kd.random_crop_flip(_images(), kd.example_keys(0, 0, range(6)), padding=-1)
  with pytest.raises(ValueError, match='keys'):
    kd.random_crop_flip(_images(), kd.example_keys(0, 0, range(5)))


# ------------------------------------------------------------------ sequences

def test_shift_is_a_circular_shift_within_range():
  x = np.random.default_rng(1).normal(size=(300, 40)).astype(np.float32)
  keys = kd.example_keys(0, 3, np.arange(300))
  got = kd.random_shift(x, keys, max_shift=3)
  assert got.shape == x.shape and got.dtype == x.dtype
  shifts = []
  for i in range(300):
    matches = [s for s in range(-3, 4) if np.array_equal(got[i], np.roll(x[i], s))]
    assert len(matches) == 1
    shifts.append(matches[0])
  assert set(shifts) == set(range(-3, 4))


def test_shift_noise_has_requested_scale():
  x = np.zeros((2000, 40), np.float32)
  got = kd.random_shift(x, kd.example_keys(0, 0, np.arange(2000)), max_shift=0, noise_std=0.1)
  assert abs(got.mean()) < 0.002
  assert abs(got.std() - 0.1) < 0.002
  assert stats.kstest(got.ravel()[:20000] / 0.1, 'norm').pvalue > 1e-3


def test_shift_handles_channels():
  x = np.random.default_rng(2).normal(size=(5, 10, 2))
  got = kd.random_shift(x, kd.example_keys(0, 0, range(5)), max_shift=2)
  for i in range(5):
    assert any(np.array_equal(got[i], np.roll(x[i], s, axis=0)) for s in range(-2, 3))


# ------------------------------------------------------------ transforms

def test_views_deterministic_and_change_with_seed_or_epoch():
  x = np.random.default_rng(3).normal(size=(64, 40)).astype(np.float32)
  aug = kd.augmentation('mnist1d', noise_std=0.05)
  ids = np.arange(64)

  def view(seed, epoch):
    return aug({'x': x, 'id': ids}, kd.example_keys(seed, epoch, ids))['x']

  np.testing.assert_array_equal(view(0, 0), view(0, 0))
  for other in (view(1, 0), view(0, 1)):
    assert np.mean([not np.array_equal(a, b) for a, b in zip(view(0, 0), other)]) > 0.95
  # The view of a row does not depend on the rest of the batch.
  sub = aug({'x': x[10:12], 'id': ids[10:12]}, kd.example_keys(0, 0, ids[10:12]))['x']
  np.testing.assert_array_equal(sub, view(0, 0)[10:12])


@pytest.mark.parametrize('name, expected', [
    ('cifar10', kd.ImageAugment(padding=4, flip=True)),
    ('mnist', kd.ImageAugment(padding=3, flip=False)),
    ('digits', kd.ImageAugment(padding=1, flip=False)),
    ('mnist1d', kd.SequenceAugment(max_shift=2, noise_std=0.0)),
])
def test_default_augmentations(name, expected):
  assert kd.augmentation(name) == expected
  meta = kd.dataset_info(name)
  batch = {'x': np.ones((3,) + meta.input_shape, np.float32), 'id': np.arange(3)}
  out = kd.augmentation(name)(batch, kd.example_keys(0, 0, batch['id']))
  assert out['x'].shape == batch['x'].shape and out['x'].dtype == np.float32
  assert out['id'] is batch['id']
