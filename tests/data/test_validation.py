"""Tests for the validation set held out of a training split (validation_split, Source.subset)."""

import numpy as np
import pytest

from kdjax import data as kd
from kdjax import models
from kdjax import runs


@pytest.fixture(scope='module')
def digits_train(data_dir):
  return kd.load('digits', 'train', data_dir=data_dir)


def _labels_ids(src):
  a = src.read_batch(np.arange(len(src)))
  return a['label'], a['id']


@pytest.mark.parametrize('fraction', [0.1, 0.25])
def test_split_is_a_stratified_partition_of_train(digits_train, fraction):
  fit, val = kd.validation_split(digits_train, fraction=fraction, seed=0)
  n = len(digits_train)
  assert np.intersect1d(fit, val).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([fit, val])), np.arange(n))
  assert np.all(np.diff(fit) > 0) and np.all(np.diff(val) > 0)
  labels, _ = _labels_ids(digits_train)
  counts = np.bincount(labels, minlength=10)
  held = np.bincount(labels[val], minlength=10)
  # Within one example of the fraction in every class (the rule gives at most half).
  assert np.all(np.abs(held - fraction * counts) <= 0.5)
  assert np.all(held >= 1) and np.all(counts - held >= 1)


def test_split_is_deterministic_and_depends_on_seed(digits_train):
  a = kd.validation_split(digits_train, fraction=0.1, seed=0)
  b = kd.validation_split(digits_train, fraction=0.1, seed=0)
  c = kd.validation_split(digits_train, fraction=0.1, seed=1)
  np.testing.assert_array_equal(a[1], b[1])
  np.testing.assert_array_equal(a[0], b[0])
  assert len(c[1]) == len(a[1]) and not np.array_equal(c[1], a[1])


def test_split_follows_ids_not_record_order(digits_train):
  """The same examples are held out when the records are stored in another order."""
  n = len(digits_train)
  perm = np.random.default_rng(3).permutation(n)
  shuffled = digits_train.subset(perm)
  _, val = kd.validation_split(digits_train, fraction=0.1, seed=0)
  _, val_shuffled = kd.validation_split(shuffled, fraction=0.1, seed=0)
  _, ids = _labels_ids(digits_train)
  _, ids_shuffled = _labels_ids(shuffled)
  np.testing.assert_array_equal(np.sort(ids[val]), np.sort(ids_shuffled[val_shuffled]))


def test_split_on_mnist1d(small_train):
  fit, val = kd.validation_split(small_train, fraction=0.1, seed=0)
  labels, ids = _labels_ids(small_train)
  assert len(fit) + len(val) == len(small_train) == 160
  held = np.bincount(labels[val], minlength=10)
  assert np.all(np.abs(held - 0.1 * np.bincount(labels, minlength=10)) <= 0.5)
  assert not set(ids[fit].tolist()) & set(ids[val].tolist())


def test_split_rejects_bad_inputs(digits_train):
  for fraction in (0.0, 1.0, -0.1):
    with pytest.raises(ValueError, match='fraction'):
      kd.validation_split(digits_train, fraction=fraction)
  with pytest.raises(ValueError, match='no labels'):
    kd.validation_split(digits_train.unlabeled())
  with pytest.raises(ValueError, match='empty'):
    kd.validation_split([])
  one_per_class = [{'x': np.float32([i]), 'label': np.int32(i), 'id': np.int32(i)}
                   for i in range(3)]
  with pytest.raises(ValueError, match='leaves none'):
    kd.validation_split(one_per_class, fraction=0.5)
  dup = [{'x': np.float32([0]), 'label': np.int32(0), 'id': np.int32(0)}] * 4
  with pytest.raises(ValueError, match='duplicate'):
    kd.validation_split(dup)


def test_subset_keeps_examples_and_ids(data_dir, digits_train):
  fit, val = kd.validation_split(digits_train, fraction=0.1, seed=0)
  part = digits_train.subset(val, split='validation')
  assert len(part) == len(val) and part.split == 'validation' and part.in_memory
  whole = digits_train.read_batch(val)
  got = part.read_batch(np.arange(len(part)))
  for k in ('x', 'label', 'id'):
    np.testing.assert_array_equal(got[k], whole[k])
  # The same subset read from disk (not in memory) gives the same examples.
  on_disk = kd.load('digits', 'train', data_dir=data_dir, in_memory=False).subset(val)
  assert not on_disk.in_memory
  for k in ('x', 'label', 'id'):
    np.testing.assert_array_equal(on_disk.read_batch(np.arange(len(val)))[k], whole[k])
  assert '[subset of' in digits_train.subset(fit).split
  with pytest.raises(IndexError):
    digits_train.subset([len(digits_train)])


def test_subset_without_stored_ids_keeps_parent_positions():
  records = [{'x': np.float32([i]), 'label': np.int32(0)} for i in range(6)]
  src = kd.Source(records, kd.dataset_info('mnist1d'))
  part = src.subset([4, 1])
  np.testing.assert_array_equal(part.read_batch([0, 1])['id'], [4, 1])


def test_pipelines_read_only_the_subset(digits_train):
  fit, val = kd.validation_split(digits_train, fraction=0.1, seed=0)
  fit_src = digits_train.subset(fit)
  _, ids = _labels_ids(digits_train)
  val_ids = set(ids[val].tolist())
  host = kd.make_pipeline(fit_src, batch_size=64, seed=0, num_epochs=1, drop_remainder=False)
  seen = np.concatenate([b['id'][b['mask']] for b in host])
  assert sorted(seen.tolist()) == sorted(ids[fit].tolist())
  device = kd.DeviceData(fit_src, batch_size=64, seed=0, num_epochs=1)
  host_first = next(iter(kd.make_pipeline(fit_src, batch_size=64, seed=0)))
  np.testing.assert_array_equal(np.asarray(device.batch(0)['id']), host_first['id'])
  assert not set(np.asarray(device.arrays['id']).tolist()) & val_ids


def test_training_on_train_minus_validation(digits_train):
  """A model trained on the fit part is scored on the held-out part, above chance."""
  fit, val = kd.validation_split(digits_train, fraction=0.1, seed=0)
  res = runs.train_and_evaluate(
      models.create('mlp', 10, hidden=(16,)), train_data=digits_train.subset(fit),
      eval_data=digits_train.subset(val), num_steps=150, batch_size=64, learning_rate=1e-2,
      seed=0, progress=False)
  assert res.metrics['accuracy'] > 0.7
