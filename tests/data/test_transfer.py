"""Tests for kdjax.data.transfer_set."""

import numpy as np
import pytest

from kdjax import data as kd
from tests.data.conftest import SMALL


def test_generated_transfer_set_is_unlabeled_and_disjoint(data_dir):
  src = kd.transfer_set(num_samples=500, seed=7, labeled_config=SMALL, data_dir=data_dir)
  assert len(src) == 500 and not src.labeled
  assert sorted(src[0]) == ['id', 'x']
  x = src.arrays()['x']
  test_x = kd.load('mnist1d', 'test', data_dir=data_dir, config=SMALL).arrays()['x']
  # Independent check: no input equals a test input up to the set's affine normalisation.
  def standardise(v):
    v = v.astype(np.float64) - v.mean(1, keepdims=True)
    return v / v.std(1, keepdims=True)
  d2 = ((standardise(x)[:, None] - standardise(test_x)[None]) ** 2).sum(-1)
  assert d2.min() > 0.1
  # Same distribution as the labeled inputs (both standardised by the generator).
  assert abs(x.mean()) < 0.05 and abs(x.std() - 1.0) < 0.05
  # Cached on disk: a second call reads the same data.
  again = kd.transfer_set(num_samples=500, seed=7, labeled_config=SMALL, data_dir=data_dir)
  np.testing.assert_array_equal(again.arrays()['x'], x)


def test_transfer_pipeline_batches_have_no_label(data_dir):
  src = kd.transfer_set(num_samples=500, seed=7, labeled_config=SMALL, data_dir=data_dir)
  batch = next(iter(kd.make_pipeline(src, batch_size=50, seed=0)))
  assert sorted(batch) == ['epoch', 'id', 'mask', 'x']
  assert batch['x'].shape == (50, 40)


def test_labeled_transfer_set_is_the_same_inputs_with_the_generator_labels(data_dir):
  src = kd.transfer_set(num_samples=500, seed=7, labeled_config=SMALL, data_dir=data_dir)
  labeled = kd.transfer_set(num_samples=500, seed=7, labeled_config=SMALL, data_dir=data_dir,
                            labeled=True)
  assert labeled.labeled and sorted(labeled[0]) == ['id', 'label', 'x']
  np.testing.assert_array_equal(labeled.arrays()['x'], src.arrays()['x'])
  y = labeled.arrays()['label']
  # The generator makes num_samples // 10 examples of each class.
  np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, 50))
  train = kd.transfer_set('mnist1d', kind='train', labeled_config=SMALL, data_dir=data_dir,
                          labeled=True)
  np.testing.assert_array_equal(
      train.arrays()['label'],
      kd.load('mnist1d', 'train', data_dir=data_dir, config=SMALL).arrays()['label'])


def test_train_kind_is_training_inputs_without_labels(data_dir, small_train):
  src = kd.transfer_set('mnist1d', kind='train', labeled_config=SMALL, data_dir=data_dir)
  assert len(src) == len(small_train) and not src.labeled
  np.testing.assert_array_equal(src.arrays()['x'], small_train.arrays()['x'])
  digits = kd.transfer_set('digits', kind='train', data_dir=data_dir)
  assert len(digits) == 1437 and 'label' not in digits[0]
  batch = next(iter(kd.make_pipeline(digits, batch_size=8, seed=0,
                                     transform=kd.augmentation('digits'))))
  assert batch['x'].shape == (8, 8, 8, 1) and 'label' not in batch


def test_transfer_set_errors():
  with pytest.raises(ValueError, match='kind'):
    kd.transfer_set(kind='other')
  with pytest.raises(ValueError, match="'digits'"):
    kd.transfer_set('digits')
  with pytest.raises(ValueError, match='seed'):
    kd.transfer_set(seed=42)
