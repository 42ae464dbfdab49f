"""Tests for the local TFDS builders (MNIST-1D, digits) and their helpers."""

import os
import threading
from unittest import mock

from mnist1d import data as mnist1d_data
import numpy as np
import pytest
from sklearn import datasets

from kdjax import data as kd
from kdjax.data import _builders
from tests.data.conftest import SMALL


def _reference_mnist1d(num_samples, seed, train_split=0.8):
  """The package's own generator, called directly (the RNG state is restored)."""
  args = mnist1d_data.get_dataset_args()
  args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
  state = np.random.get_state()
  d = mnist1d_data.make_dataset(args)
  np.random.set_state(state)
  return d


def _brute_force_duplicates(a, b, atol):
  def standardise(x):
    x = np.asarray(x, np.float64)
    x = x - x.mean(1, keepdims=True)
    return x / x.std(1, keepdims=True)
  a, b = standardise(a), standardise(b)
  d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
  return np.nonzero(d2.min(1) < atol)[0]


# ------------------------------------------------------------------ generation

def test_generate_mnist1d_matches_package_and_restores_global_rng():
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  got = kd.generate_mnist1d(300, seed=7)
  np.testing.assert_array_equal(np.random.get_state()[1], before)
  ref = _reference_mnist1d(300, 7)
  np.testing.assert_allclose(got['x'], ref['x'], rtol=1e-6)
  np.testing.assert_array_equal(got['y_test'], ref['y_test'])
  assert got['x'].dtype == np.float32 and got['y'].dtype == np.int64
  assert got['x'].shape == (240, 40) and got['x_test'].shape == (60, 40)


def test_generate_mnist1d_rejects_bad_arguments():
  with pytest.raises(ValueError, match='num_samples'):
    kd.generate_mnist1d(5)
  with pytest.raises(ValueError, match='train_split'):
    kd.generate_mnist1d(100, train_split=0.0)


def test_near_duplicates_matches_brute_force():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(300, 40)), rng.normal(size=(200, 40))
  # Affine copies of rows of b (what re-normalising a regenerated signal does).
  a[[3, 150, 299]] = 2.5 * b[[7, 0, 199]] - 1.0
  a[42] = b[5] + 1e-9 * rng.normal(size=40)
  expected = _brute_force_duplicates(a, b, 1e-6)
  np.testing.assert_array_equal(expected, [3, 42, 150, 299])
  np.testing.assert_array_equal(kd.near_duplicates(a, b), expected)
  assert kd.near_duplicates(a[:0], b).shape == (0,)


# --------------------------------------------------------------------- configs

def test_mnist1d_config_names_and_predefined():
  assert kd.mnist1d_config() is kd.mnist1d_config(5000, 42)
  assert kd.mnist1d_config(50_000, 1, transfer=True).name == 'transfer'
  assert kd.mnist1d_config(500, train_split=0.5).name == 'n500_s42_split500'
  with pytest.raises(ValueError, match='seed'):
    kd.mnist1d_config(100, 42, transfer=True)


def test_local_builder_rejects_bad_names(tmp_path):
  with pytest.raises(ValueError, match='cifar10'):
    _builders.local_builder('cifar10', data_dir=tmp_path)
  with pytest.raises(ValueError, match='nope'):
    _builders.local_builder('mnist1d/nope', data_dir=tmp_path)
  with pytest.raises(ValueError, match='digits'):
    _builders.local_builder('digits', data_dir=tmp_path, config='default')


# --------------------------------------------------------------------- mnist1d

def test_small_mnist1d_builder_matches_generator(data_dir):
  builder = _builders.prepare_local('mnist1d', data_dir=data_dir, config=SMALL)
  assert builder.info.splits['train'].num_examples == 160
  assert builder.info.splits['test'].num_examples == 40
  assert str(builder.data_dir).startswith(str(data_dir))
  ref = _reference_mnist1d(200, 42)
  expected = {'train': (ref['x'], ref['y']), 'test': (ref['x_test'], ref['y_test'])}
  for split, (x, y) in expected.items():
    records = builder.as_data_source(split=split)
    ex = records[0]
    assert ex['x'].dtype == np.float32 and ex['x'].shape == (40,)
    ids = np.array([records[i]['id'] for i in range(len(records))])
    np.testing.assert_array_equal(np.sort(ids), np.arange(len(y)))
    for i in range(len(records)):
      r = records[i]
      np.testing.assert_allclose(r['x'], x[r['id']], rtol=1e-6)
      assert r['label'] == y[r['id']]


def test_default_mnist1d_is_the_package_default(tmp_path):
  builder = _builders.prepare_local('mnist1d', data_dir=tmp_path)
  assert builder.builder_config.name == 'default'
  assert builder.info.splits['train'].num_examples == 4000
  assert builder.info.splits['test'].num_examples == 1000
  assert builder.info.features['label'].num_classes == 10
  # A second call reuses the files.
  assert _builders.prepare_local('mnist1d', data_dir=tmp_path).is_prepared()


def test_concurrent_first_use_builds_once(tmp_path):
  config = kd.mnist1d_config(100, seed=3)
  errors, paths = [], []

  def run():
    try:
      paths.append(kd.prepare('mnist1d', data_dir=tmp_path, config=config))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=run) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and len(set(paths)) == 1
  assert len(kd.load('mnist1d', 'train', data_dir=tmp_path, config=config)) == 80
  leftovers = [p for p in os.listdir(os.path.dirname(paths[0])) if p.startswith('incomplete')]
  assert not leftovers


def test_transfer_config_is_disjoint_from_labeled_set(data_dir):
  config = kd.mnist1d_config(300, seed=5, transfer=True, labeled_num_samples=200)
  builder = _builders.prepare_local('mnist1d', data_dir=data_dir, config=config)
  assert list(builder.info.splits.keys()) == ['train']
  records = builder.as_data_source(split='train')
  x = np.stack([records[i]['x'] for i in range(len(records))])
  labeled = _reference_mnist1d(200, 42)
  assert len(x) == 300
  assert not len(_brute_force_duplicates(x, labeled['x_test'], 1e-6))
  assert not len(_brute_force_duplicates(x, labeled['x'], 1e-6))


def test_transfer_config_detects_overlap(tmp_path):
  # Same seed as the labeled set: the first signals of each class repeat. Build
  # the config by hand, since mnist1d_config refuses it.
  config = kd.Mnist1dConfig(name='bad', num_samples=400, seed=42, transfer=True,
                            labeled_num_samples=200, labeled_seed=42)
  with pytest.raises(ValueError, match='labeled seed'):
    _builders.prepare_local('mnist1d', data_dir=tmp_path, config=config)
  # Same raw signals under another name/seed bookkeeping: the content check fires.
  config = kd.Mnist1dConfig(name='bad2', num_samples=400, seed=42, transfer=True,
                            labeled_num_samples=200, labeled_seed=43)
  builder = _builders.local_builder('mnist1d', data_dir=tmp_path, config=config)
  ref = kd.generate_mnist1d(400, 42, 1.0)
  labeled = kd.generate_mnist1d(200, 42)
  assert len(kd.near_duplicates(ref['x'], np.concatenate([labeled['x'], labeled['x_test']])))
  real = kd.generate_mnist1d
  with mock.patch.object(_builders, 'generate_mnist1d',
                         lambda n, s, split=0.8: real(n, 42 if s == 43 else s, split)):
    with pytest.raises(ValueError, match='repeat signals'):
      builder.download_and_prepare()


# ---------------------------------------------------------------------- digits

def test_digits_split_is_fixed_stratified_and_documented():
  split = kd.digits_split()
  labels = datasets.load_digits().target
  assert len(split['train']) == 1437 and len(split['test']) == 360
  assert not np.intersect1d(split['train'], split['test']).size
  np.testing.assert_array_equal(np.union1d(split['train'], split['test']), np.arange(1797))
  per_class = np.bincount(labels)
  test_counts = np.bincount(labels[split['test']], minlength=10)
  assert np.all(np.abs(test_counts - per_class / 5) <= 1)
  # The documented rule, recomputed.
  order = np.random.default_rng(0).permutation(1797)
  order = order[np.argsort(labels[order], kind='stable')]
  np.testing.assert_array_equal(split['test'], np.sort(order[::5]))


def test_digits_builder_matches_sklearn(data_dir):
  builder = _builders.prepare_local('digits', data_dir=data_dir)
  d = datasets.load_digits()
  split = kd.digits_split()
  for name in ('train', 'test'):
    records = builder.as_data_source(split=name)
    assert len(records) == len(split[name])
    for i in range(0, len(records), 7):
      r = records[i]
      assert r['image'].shape == (8, 8, 1) and r['image'].dtype == np.float32
      original = split[name][r['id']]
      np.testing.assert_allclose(r['image'][..., 0], d.images[original] / 16.0, rtol=1e-6)
      assert r['label'] == d.target[original]


def test_digits_normalisation_statistics_match_train_split():
  meta = kd.dataset_info('digits')
  x = datasets.load_digits().images[kd.digits_split()['train']] / 16.0
  np.testing.assert_allclose(meta.mean, [x.mean()], atol=1e-4)
  np.testing.assert_allclose(meta.std, [x.std()], atol=1e-4)
