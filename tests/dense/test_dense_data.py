"""Tests for the digit-canvas builders (digits_detection, digits_segmentation)."""

from unittest import mock

import numpy as np
import pytest
from sklearn import datasets

from kdjax import data as kd
from kdjax import dense
from kdjax.data import _builders
from kdjax.data import _dense_builders
from kdjax.data import _sources


SMALL = kd.dense_digits_config(24, 8)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds_dense'))


@pytest.fixture(scope='module')
def canvases():
  return {split: kd.generate_digit_canvases(n, split, SMALL)
          for split, n in (('train', 24), ('test', 8))}


def _pair_ious(boxes):
  iou = np.asarray(dense.box_iou(boxes, boxes))
  return iou[np.triu_indices(len(boxes), 1)]


# ------------------------------------------------------------------- generation

def test_canvases_are_valid_and_consistent(canvases):
  split = kd.digits_split()
  targets = datasets.load_digits().target
  for name, d in canvases.items():
    n = len(d['num_objects'])
    kd.check_dense_arrays(d)  # boxes in [0, 1], ordered, labels in range, padding -1
    assert d['image'].shape == (n, 48, 48, 1) and d['image'].dtype == np.float32
    assert 0.0 <= d['image'].min() and d['image'].max() <= 1.0
    assert set(d['num_objects'].tolist()) <= {1, 2, 3, 4}
    for i in range(n):
      k = int(d['num_objects'][i])
      boxes, labels = d['boxes'][i, :k], d['labels'][i, :k]
      assert (d['labels'][i, k:] == -1).all() and (d['digit_ids'][i, k:] == -1).all()
      assert (d['boxes'][i, k:] == 0).all()
      # Boxes are 4..20 px and overlap by at most max_overlap.
      size = (boxes[:, 2:] - boxes[:, :2]) * 48
      assert size.min() >= 3 and size.max() <= 20
      assert (_pair_ious(boxes) <= SMALL.max_overlap + 1e-6).all()
      # Every inked or labelled pixel lies in a box; a pixel of class c + 1 in a box of class c.
      seg = d['segmentation'][i]
      inside = np.zeros((48, 48), bool)
      for b, lab in zip(np.round(boxes * 48).astype(int), labels):
        inside[b[0]:b[2], b[1]:b[3]] = True
        assert (seg[b[0]:b[2], b[1]:b[3]] == lab + 1).any()
      assert not (d['image'][i, ..., 0] >= _dense_builders.INK_THRESHOLD)[~inside].any()
      assert (seg[~inside] == 0).all()
      assert set(np.unique(seg)) <= {0} | set((labels + 1).tolist())
      # The labels are the source digits' classes.
      np.testing.assert_array_equal(labels, targets[d['digit_ids'][i, :k]])
    # Train canvases use train digits only, test canvases test digits only.
    ids = d['digit_ids'][d['digit_ids'] >= 0]
    assert np.isin(ids, split[name]).all()


def test_generation_is_deterministic_and_prefix_stable(canvases):
  again = kd.generate_digit_canvases(10, 'train', kd.dense_digits_config(10, 8))
  for k, v in again.items():
    np.testing.assert_array_equal(v, canvases['train'][k][:10])
  other = kd.generate_digit_canvases(4, 'train', kd.dense_digits_config(24, 8, seed=1))
  assert not np.array_equal(other['image'], canvases['train']['image'][:4])


def test_configs_are_named_and_validated():
  assert kd.dense_digits_config() is kd.dense_digits_config(2000, 500, 0)
  assert kd.dense_digits_config(10, 2, max_overlap=0.5).name == 'n10_2_s0_max_overlap0p5'
  small = kd.dense_digits_config(3, 1, image_size=24, max_size=12, max_objects=2)
  d = kd.generate_digit_canvases(3, 'test', small)
  assert d['image'].shape == (3, 24, 24, 1) and d['boxes'].shape == (3, 2, 4)
  with pytest.raises(ValueError, match='max_size'):
    kd.dense_digits_config(10, 2, max_size=60)
  with pytest.raises(ValueError, match='min_objects'):
    kd.dense_digits_config(10, 2, min_objects=0)
  with pytest.raises(ValueError, match='Unknown digit-canvas config'):
    kd.dense_digits_config(10, 2, colour=True)
  with pytest.raises(ValueError, match='`split`'):
    kd.generate_digit_canvases(2, 'validation')


# ---------------------------------------------------------------- builders, load

def test_builders_serve_the_canvases_through_load(data_dir, canvases):
  det = kd.load('digits_detection', 'train', data_dir=data_dir, config=SMALL)
  seg = kd.load('digits_segmentation', 'train', data_dir=data_dir, config=SMALL)
  assert len(det) == len(seg) == 24
  assert det.info.task == 'detection' and seg.info.num_classes == 11
  a, b = det.arrays(), seg.arrays()
  assert sorted(a) == ['boxes', 'id', 'labels', 'num_objects', 'x']
  assert sorted(b) == ['id', 'segmentation', 'x']
  np.testing.assert_array_equal(a['id'], np.arange(24))
  ref = canvases['train']
  np.testing.assert_array_equal(a['x'], ref['image'])      # not standardised: in [0, 1]
  np.testing.assert_array_equal(b['x'], ref['image'])      # the same canvases
  np.testing.assert_array_equal(a['boxes'], ref['boxes'])
  assert a['boxes'].dtype == np.float32 and a['labels'].dtype == np.int32
  np.testing.assert_array_equal(a['labels'], ref['labels'])
  np.testing.assert_array_equal(b['segmentation'], ref['segmentation'])
  # The raw records keep the source digit ids; the test split uses other digits.
  raw = kd.load('digits_detection', 'test', data_dir=data_dir, config=SMALL, raw=True)
  test_ids = {int(v) for i in range(len(raw)) for v in raw[i]['digit_ids'] if v >= 0}
  assert not test_ids & set(ref['digit_ids'][ref['digit_ids'] >= 0].tolist())
  # Named configs and bad configs.
  with pytest.raises(ValueError, match='Unknown digits_detection config'):
    _builders.local_builder('digits_detection/nope', data_dir=data_dir)
  with pytest.raises(ValueError, match='DenseDigitsConfig'):
    _builders.local_builder('digits_detection', data_dir=data_dir, config=kd.mnist1d_config(200))


def test_pipeline_batches_assign_with_padding(data_dir):
  src = kd.load('digits_detection', 'test', data_dir=data_dir, config=SMALL)
  batches = list(kd.make_pipeline(src, batch_size=5, seed=0, drop_remainder=False, num_epochs=1))
  last = batches[-1]
  assert last['boxes'].shape == (5, 4, 4) and last['mask'].tolist() == [True] * 3 + [False] * 2
  assert (last['labels'][3:] == -1).all()  # padded rows hold no object
  t = dense.assign_targets(last['boxes'], last['labels'], image_size=48, stride=4, num_bins=8,
                           num_classes=10)
  assert t.classes.shape == (5, 12, 12)
  assert t.positive[:3].any(axis=(1, 2)).all() and not t.positive[3:].any()
  # Device-resident batches carry the same targets and padding.
  resident = kd.DeviceData(src, batch_size=5, seed=0, drop_remainder=False, num_epochs=1)
  on_device = resident.batch(len(batches) - 1)
  for k, v in last.items():
    np.testing.assert_array_equal(on_device[k], v)


# -------------------------------------------------------------------- bad inputs

def test_bad_targets_fail_at_generation_and_at_load(tmp_path, canvases):
  good = {k: v[:4].copy() for k, v in canvases['train'].items()}
  cases = {
      'boxes` must be normalised': ('boxes', lambda x: x.__setitem__((0, 0, 2), 1.5)),
      'ymin <= ymax': ('boxes', lambda x: x.__setitem__((0, 0, 0), 0.99)),
      r'`labels` must be in \[0, 10\)': ('labels', lambda x: x.__setitem__((0, 0), 10)),
      '`num_objects` must be in': ('num_objects', lambda x: x.__setitem__(0, 9)),
      'padding slots': ('labels', lambda x: x.__setitem__((0, 3), 2)),
      r'`segmentation` values must be in \[0, 10\]': (
          'segmentation', lambda x: x.__setitem__((0, 0, 0), 11)),
  }
  for message, (key, corrupt) in cases.items():
    bad = {k: v.copy() for k, v in good.items()}
    bad['num_objects'][0], bad['labels'][0], bad['boxes'][0] = 3, [1, 2, 3, -1], 0
    bad['boxes'][0, :3] = [0.1, 0.1, 0.3, 0.3]
    kd.check_dense_arrays(bad)
    corrupt(bad[key])
    with pytest.raises(ValueError, match=message):
      kd.check_dense_arrays(bad)
  # At generation: the builder refuses to write corrupt canvases.
  bad = {k: v.copy() for k, v in good.items()}
  bad['boxes'][1, 0] = [0.5, 0.2, 0.4, 0.6]
  config = kd.dense_digits_config(4, 0, seed=7)
  with mock.patch.object(_dense_builders, 'generate_digit_canvases', lambda *a: bad):
    with pytest.raises(ValueError, match=r'digits_detection/n4_0_s7 train: `boxes` must have'):
      _builders.prepare_local('digits_detection', data_dir=tmp_path, config=config)
  # At load: a source whose stored targets are out of range.
  meta = kd.dataset_info('digits_segmentation')
  records = [{'image': good['image'][i], 'segmentation': good['segmentation'][i] + 11,
              'id': i} for i in range(2)]
  with pytest.raises(ValueError, match=r"'digits_segmentation' split 'train'.*`segmentation`"):
    _sources._check_targets(_sources.Source(records, meta, split='train', in_memory=True))


def test_empty_canvas_targets_are_background():
  # No object at all (every slot padding): all-background targets, documented behaviour.
  t = dense.assign_targets(np.zeros((2, 4, 4), np.float32), np.full((2, 4), -1), image_size=48,
                           stride=4, num_bins=8, num_classes=10)
  assert not t.positive.any() and (t.classes == 0).all()
