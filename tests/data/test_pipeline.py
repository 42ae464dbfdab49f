"""Tests for kdjax.data.make_pipeline: order, epochs, padding, checkpointed state."""

import itertools
import json

import grain
import numpy as np
import pytest

from kdjax import data as kd


def _toy(n, dim=3):
  """A plain list source whose inputs encode the id, so rows can be traced."""
  return [{'x': np.full((dim,), i, np.float32), 'label': np.int32(i % 4), 'id': np.int32(i)}
          for i in range(n)]


def _take(ds, k):
  return list(itertools.islice(iter(ds), k))


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# ------------------------------------------------------------- order & epochs

def test_each_epoch_is_a_permutation_with_its_own_order(small_train):
  n, bs = len(small_train), 32
  ds = kd.make_pipeline(small_train, batch_size=bs, seed=3, num_epochs=3)
  batches = list(ds)
  steps = kd.batches_per_epoch(n, bs)
  assert len(batches) == 3 * steps == 15
  epochs = [np.concatenate([b['id'] for b in batches[e * steps:(e + 1) * steps]])
            for e in range(3)]
  for e, ids in enumerate(epochs):
    assert len(np.unique(ids)) == len(ids) == steps * bs  # no repeats within an epoch
    assert all((b['epoch'] == e).all() for b in batches[e * steps:(e + 1) * steps])
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])
  for b in batches:
    assert b['mask'].all()
    # Rows stay whole: input, label and id come from the same example.
    for row in range(bs):
      ex = small_train.read_batch(np.nonzero(_ids(small_train) == b['id'][row])[0])
      np.testing.assert_array_equal(b['x'][row], ex['x'][0])
      assert b['label'][row] == ex['label'][0]


def _ids(src):
  return src.read_batch(np.arange(len(src)))['id']


def test_order_matches_documented_permutation():
  src = _toy(10)
  ds = kd.make_pipeline(src, batch_size=5, seed=9, num_epochs=2)
  ids = np.concatenate([b['id'] for b in ds])
  expected = np.concatenate([np.random.default_rng([9, e]).permutation(10) for e in range(2)])
  np.testing.assert_array_equal(ids, expected)
  np.testing.assert_array_equal(kd.epoch_order(10, 9, 1), expected[10:])


def test_same_seed_same_order_different_seed_different_order(small_train):
  def ids(seed):
    return np.concatenate([b['id'] for b in _take(
        kd.make_pipeline(small_train, batch_size=16, seed=seed), 12)])
  np.testing.assert_array_equal(ids(0), ids(0))
  assert not np.array_equal(ids(0), ids(1))
  # Epoch e of seed s is not epoch e+1 of seed s-1 (no shared orders across runs).
  seed1_epoch0 = _take(kd.make_pipeline(_toy(16), batch_size=16, seed=1), 1)[0]['id']
  seed0_epoch1 = _take(kd.make_pipeline(_toy(16), batch_size=16, seed=0), 2)[1]['id']
  assert not np.array_equal(seed1_epoch0, seed0_epoch1)


def test_no_shuffle_keeps_source_order_and_infinite_repeat():
  ds = kd.make_pipeline(_toy(6), batch_size=4, seed=0, shuffle=False)
  batches = _take(ds, 4)  # drop_remainder: 1 batch per epoch
  for e, b in enumerate(batches):
    np.testing.assert_array_equal(b['id'], [0, 1, 2, 3])
    assert (b['epoch'] == e).all()


# ---------------------------------------------------------- remainder & mask

def test_padding_and_mask_count_every_example_once():
  n, bs = 11, 4
  src = _toy(n)
  batches = list(kd.make_pipeline(src, batch_size=bs, seed=5, drop_remainder=False,
                                  num_epochs=1))
  assert len(batches) == kd.batches_per_epoch(n, bs, drop_remainder=False) == 3
  for b in batches:
    assert {k: v.shape[0] for k, v in b.items()} == dict.fromkeys(b, bs)
  last = batches[-1]
  np.testing.assert_array_equal(last['mask'], [True, True, True, False])
  assert last['id'][3] == -1 and last['label'][3] == 0 and not last['x'][3].any()
  ids = np.concatenate([b['id'][b['mask']] for b in batches])
  np.testing.assert_array_equal(np.sort(ids), np.arange(n))
  # A masked mean over the padded batches equals the plain mean over the set.
  values = np.concatenate([b['x'][:, 0] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_allclose(np.sum(values * mask) / mask.sum(), np.mean(np.arange(n)))


def test_drop_remainder_drops_partial_batch_per_epoch():
  batches = list(kd.make_pipeline(_toy(11), batch_size=4, seed=5, num_epochs=2))
  assert len(batches) == 4
  for b in batches:
    assert b['mask'].all() and len(np.unique(b['id'])) == 4
  assert [int(b['epoch'][0]) for b in batches] == [0, 0, 1, 1]


def test_padding_in_every_epoch():
  batches = list(kd.make_pipeline(_toy(5), batch_size=3, seed=0, drop_remainder=False,
                                  num_epochs=2))
  assert [b['mask'].sum() for b in batches] == [3, 2, 3, 2]


# --------------------------------------------------------- checkpointed state

def test_resume_from_state_gives_exact_next_batches(small_train):
  ds = kd.make_pipeline(small_train, batch_size=32, seed=11,
                        transform=kd.augmentation('mnist1d', noise_std=0.1))
  it = iter(ds)
  _take(it, 7)  # crosses an epoch boundary (5 batches per epoch)
  state = it.get_state()
  expected = _take(it, 6)
  fresh = iter(kd.make_pipeline(small_train, batch_size=32, seed=11,
                                transform=kd.augmentation('mnist1d', noise_std=0.1)))
  fresh.set_state(json.loads(json.dumps(state)))
  _assert_batches_equal(_take(fresh, 6), expected)


def test_state_is_json_serialisable_and_synchronous_reads_agree():
  ds = kd.make_pipeline(_toy(20), batch_size=3, seed=2, drop_remainder=False, num_epochs=2)
  it = iter(ds)
  _take(it, 4)
  state = it.get_state()
  assert json.loads(json.dumps(state)) == state
  sync = kd.make_pipeline(_toy(20), batch_size=3, seed=2, drop_remainder=False, num_epochs=2,
                          read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  _assert_batches_equal(list(ds), list(sync))
  it2 = iter(sync)
  it2.set_state(state)
  _assert_batches_equal(list(it2), list(ds)[4:])


def test_orbax_saves_and_restores_the_iterator(tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  ds = kd.make_pipeline(_toy(30), batch_size=4, seed=4)
  it = iter(ds)
  _take(it, 9)
  checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  checkpointer.save(tmp_path / 'data', args=grain.checkpoint.CheckpointSave(it))
  expected = _take(it, 3)
  restored = iter(kd.make_pipeline(_toy(30), batch_size=4, seed=4))
  checkpointer.restore(tmp_path / 'data', args=grain.checkpoint.CheckpointRestore(restored))
  _assert_batches_equal(_take(restored, 3), expected)


# ----------------------------------------------------------------- transforms

def test_transform_gets_keys_of_seed_epoch_id():
  seen = []

  def transform(batch, keys):
    seen.append((batch['id'].copy(), keys.copy()))
    return batch

  sync = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)  # calls in batch order
  batches = list(kd.make_pipeline(_toy(6), batch_size=4, seed=8, num_epochs=2,
                                  drop_remainder=False, transform=transform, read_options=sync))
  assert len(seen) == len(batches) == 4
  for b, (ids, keys) in zip(batches, seen):
    assert len(ids) == b['mask'].sum()  # padded rows are not transformed
    np.testing.assert_array_equal(keys, kd.example_keys(8, int(b['epoch'][0]), ids))


def test_augmented_view_depends_only_on_seed_epoch_id(small_train):
  aug = kd.augmentation('mnist1d', max_shift=3, noise_std=0.1)

  def views(batch_size, seed):
    out = {}
    for b in kd.make_pipeline(small_train, batch_size=batch_size, seed=seed, num_epochs=2,
                              transform=aug):
      for row in range(batch_size):
        out[(int(b['epoch'][row]), int(b['id'][row]))] = b['x'][row]
    return out

  a, b = views(16, 0), views(40, 0)  # different batch compositions
  common = sorted(set(a) & set(b))
  assert len(common) > 100
  for key in common:
    np.testing.assert_array_equal(a[key], b[key])
  c = views(16, 1)
  differ = [not np.array_equal(a[k], c[k]) for k in sorted(set(a) & set(c))]
  assert np.mean(differ) > 0.9
  ep0 = {k[1]: v for k, v in a.items() if k[0] == 0}
  ep1 = {k[1]: v for k, v in a.items() if k[0] == 1}
  assert np.mean([not np.array_equal(ep0[i], ep1[i]) for i in set(ep0) & set(ep1)]) > 0.9


# --------------------------------------------------------------------- errors

@pytest.mark.parametrize('kwargs, match', [
    (dict(batch_size=0, seed=0), 'batch_size'),
    (dict(batch_size=2, seed=-1), 'seed'),
    (dict(batch_size=2, seed=0, num_epochs=0), 'num_epochs'),
    (dict(batch_size=9, seed=0), 'batch_size'),
])
def test_make_pipeline_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    kd.make_pipeline(_toy(8), **kwargs)
  with pytest.raises(ValueError, match='empty'):
    kd.make_pipeline([], batch_size=1, seed=0)
