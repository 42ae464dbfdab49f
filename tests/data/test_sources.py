"""Tests for dataset metadata, loading through tfds.data_source, and errors."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import data as kd
from tests.data.conftest import SMALL


# ------------------------------------------------------------------ metadata


@pytest.mark.parametrize('name, num_classes, shape, kind', [
    ('mnist1d', 10, (40,), 'sequence'),
    ('digits', 10, (8, 8, 1), 'image'),
    ('mnist', 10, (28, 28, 1), 'image'),
    ('fashion_mnist', 10, (28, 28, 1), 'image'),
    ('cifar10', 10, (32, 32, 3), 'image'),
    ('cifar100', 100, (32, 32, 3), 'image'),
])
def test_dataset_info_table(name, num_classes, shape, kind):
  meta = kd.dataset_info(name)
  assert (meta.num_classes, meta.input_shape, meta.kind) == (num_classes, shape, kind)
  channels = shape[-1] if kind == 'image' else 1
  assert len(meta.mean) == len(meta.std) == channels
  assert all(s > 0 for s in meta.std)


def test_dataset_info_agrees_with_tfds_features():
  for name in ('mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'svhn_cropped'):
    meta = kd.dataset_info(name)
    features = tfds.builder_cls(name)().info.features
    assert meta.num_classes == features['label'].num_classes
    assert meta.input_shape == features['image'].shape


def test_dataset_info_derived_from_tfds_for_unlisted_image_dataset():
  meta = kd.dataset_info('kmnist')
  assert (meta.num_classes, meta.input_shape, meta.scale) == (10, (28, 28, 1), 255.0)
  assert meta.mean == (0.0,) and meta.std == (1.0,) and not meta.local


def test_dataset_info_errors_name_the_dataset():
  with pytest.raises(ValueError, match="'no_such_dataset'"):
    kd.dataset_info('no_such_dataset')
  with pytest.raises(ValueError, match="'imdb_reviews'"):
    kd.dataset_info('imdb_reviews')


def test_transfer_config_has_only_train_split():
  assert kd.dataset_info('mnist1d/transfer').splits == ('train',)
  assert kd.dataset_info('mnist1d').splits == ('train', 'test')


def test_normalize_per_channel_formula():
  meta = kd.dataset_info('cifar10')
  raw = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
  expected = (raw.astype(np.float64) / 255.0 - np.array(meta.mean)) / np.array(meta.std)
  got = meta.normalize(raw)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- local loads

def test_load_local_source_standardises(small_train, data_dir):
  src = small_train
  assert len(src) == 160 and src.labeled and src.in_memory
  ex = src[0]
  assert sorted(ex) == ['id', 'label', 'x']
  assert ex['x'].dtype == np.float32 and ex['x'].shape == (40,)
  assert ex['label'].dtype == np.int32 and ex['id'].dtype == np.int32
  # Same content as the raw TFDS records, whatever the storage.
  raw = kd.load('mnist1d', 'train', data_dir=data_dir, config=SMALL, raw=True)
  lazy = kd.load('mnist1d', 'train', data_dir=data_dir, config=SMALL, in_memory=False)
  assert not lazy.in_memory
  for i in (0, 17, 159):
    np.testing.assert_array_equal(src[i]['x'], raw[i]['x'])
    assert src[i]['id'] == raw[i]['id'] and src[i]['label'] == raw[i]['label']
    np.testing.assert_array_equal(lazy[i]['x'], src[i]['x'])
  batch = src.read_batch([3, 1, 2])
  np.testing.assert_array_equal(batch['id'], [src[3]['id'], src[1]['id'], src[2]['id']])
  with pytest.raises(IndexError):
    src.read_batch([160])


def test_arrays_ordered_by_id_and_unlabeled(small_test):
  arrays = small_test.arrays()
  np.testing.assert_array_equal(arrays['id'], np.arange(40))
  ref = kd.generate_mnist1d(200, 42)
  np.testing.assert_allclose(arrays['x'], ref['x_test'], rtol=1e-6)
  np.testing.assert_array_equal(arrays['label'], ref['y_test'])
  unlabeled = small_test.unlabeled()
  assert not unlabeled.labeled and 'label' not in unlabeled[0]
  np.testing.assert_array_equal(unlabeled[5]['x'], small_test[5]['x'])


def test_digits_source_is_normalised(data_dir):
  src = kd.load('digits', 'test', data_dir=data_dir)
  meta = kd.dataset_info('digits')
  raw = kd.load('digits', 'test', data_dir=data_dir, raw=True)
  ex = src[4]
  assert ex['x'].shape == (8, 8, 1)
  np.testing.assert_allclose(ex['x'], (raw[4]['image'] - meta.mean[0]) / meta.std[0], rtol=1e-5)


def test_prepare_builds_local_datasets_up_front(tmp_path):
  path = kd.prepare('digits', data_dir=tmp_path)
  assert path.startswith(str(tmp_path)) and path.endswith('1.0.0')
  assert (tmp_path / 'digits' / '1.0.0' / 'dataset_info.json').exists()


def test_load_rejects_bad_arguments(data_dir):
  with pytest.raises(ValueError, match="'no_such_dataset'"):
    kd.load('no_such_dataset', 'train', data_dir=data_dir)
  with pytest.raises(ValueError, match='download'):
    kd.load('cifar10', 'train', data_dir=data_dir, download='yes')
  with pytest.raises(ValueError, match='config'):
    kd.load('cifar10', 'train', data_dir=data_dir, config='x')


# ------------------------------------------------------- non-local (TFDS) path

@pytest.mark.parametrize('name', ['cifar10', 'mnist'])
def test_missing_tfds_dataset_fails_fast_with_instructions(tmp_path, name):
  start = time.perf_counter()
  with pytest.raises(kd.DatasetNotPreparedError) as info:
    kd.load(name, 'train', data_dir=tmp_path)
  assert time.perf_counter() - start < 10.0
  assert isinstance(info.value, FileNotFoundError)
  message = str(info.value)
  assert f'tfds build {name}' in message and 'download=True' in message
  with pytest.raises(kd.DatasetNotPreparedError):
    kd.prepare(name, data_dir=tmp_path)


@pytest.mark.parametrize('name, shape, num_classes', [
    ('cifar10', (32, 32, 3), 10),
    ('mnist', (28, 28, 1), 10),
])
def test_mocked_tfds_dataset_through_data_source(name, shape, num_classes):
  meta = kd.dataset_info(name)
  with tfds.testing.mock_data(num_examples=13):
    src = kd.load(name, 'train')
    raw = kd.load(name, 'train', raw=True)
    assert len(src) == 13 and not src.in_memory
    # Normalisation applied: recompute from the raw uint8 image in float64.
    for i in (0, 12):
      image = raw[i]['image']
      assert image.dtype == np.uint8 and image.shape == shape
      expected = (image / 255.0 - np.array(meta.mean)) / np.array(meta.std)
      np.testing.assert_allclose(src[i]['x'], expected, rtol=1e-5, atol=1e-6)
      assert src[i]['label'] == raw[i]['label']
    batches = list(kd.make_pipeline(src, batch_size=5, seed=0, num_epochs=1,
                                    drop_remainder=False))
  assert len(batches) == 3
  for b in batches:
    assert b['x'].shape == (5,) + shape and b['x'].dtype == np.float32
    assert b['label'].dtype == np.int32 and b['id'].dtype == np.int32
    assert np.all((b['label'] >= 0) & (b['label'] < num_classes))
  ids = np.concatenate([b['id'][b['mask']] for b in batches])
  np.testing.assert_array_equal(np.sort(ids), np.arange(13))  # record positions
  assert batches[-1]['mask'].tolist() == [True, True, True, False, False]


def test_mocked_tfds_dataset_in_memory_matches_lazy():
  with tfds.testing.mock_data(num_examples=6):
    lazy = kd.load('cifar10', 'test')
    cached = lazy.cached()
    assert cached.in_memory
    np.testing.assert_array_equal(cached.read_batch([5, 0])['x'], lazy.read_batch([5, 0])['x'])


# ---------------------------------------------------------- TensorFlow path

def test_load_tf_without_tensorflow_raises_clear_error(data_dir):
  if kd.tensorflow_available():
    pytest.skip('TensorFlow is installed; the ImportError path does not apply.')
  with pytest.raises(ImportError, match='kdjax\\[tf\\]'):
    kd.load_tf('mnist1d', 'train', data_dir=data_dir, config=SMALL)


@pytest.mark.skipif(not kd.tensorflow_available(),
                    reason='TensorFlow is not installed (optional extra kdjax[tf]).')
def test_load_tf_matches_data_source(data_dir, small_test):
  ds = kd.load_tf('mnist1d', 'test', data_dir=data_dir, config=SMALL)
  got = next(iter(ds.batch(40).as_numpy_iterator()))
  ref = small_test.arrays()
  np.testing.assert_array_equal(got['id'], ref['id'])
  np.testing.assert_allclose(got['x'], ref['x'])
  with tfds.testing.mock_data(num_examples=4):
    ex = next(iter(kd.load_tf('cifar10', 'train').as_numpy_iterator()))
  assert ex['x'].shape == (32, 32, 3) and ex['x'].dtype == np.float32
