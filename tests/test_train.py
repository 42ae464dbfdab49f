"""Tests for the compiled training loop (kdjax.train.fit) and device-resident data."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import checkpoint
from kdjax import data as kdata
from kdjax import models
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


C = 3


def _source(n=50, seed=0, num_classes=C):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, size=n).astype(np.int32)
  centres = rng.normal(size=(num_classes, 4)).astype(np.float32)
  x = centres[labels] + 0.5 * rng.normal(size=(n, 4)).astype(np.float32)
  return [{'x': x[i], 'label': labels[i], 'id': np.int32(i)} for i in range(n)]


def _state(seed=0):
  module = models.MLP(hidden=(8,), num_classes=C)
  variables = models.init_variables(module, jax.random.key(seed), jnp.ones((1, 4)))
  return TrainState.create(apply_fn=module, variables=variables, tx=optax.adam(1e-2))


def _kd_step():
  teacher = models.MLP(hidden=(16,), num_classes=C)
  teacher_vars = models.init_variables(teacher, jax.random.key(5), jnp.ones((1, 4)))
  step = steps.make_distill_step((steps.task_ce(0.5), steps.soft_kd(0.5, temperature=2.0)),
                                 teacher)
  return jax.jit(step), teacher_vars


def _host(src, seed=1, **kwargs):
  return iter(kdata.make_pipeline(src, batch_size=8, seed=seed, **kwargs))


def _fit(data, num_steps=30, **kwargs):
  step, teacher_vars = _kd_step()
  kwargs = {'log_every': 10, 'progress': False, **kwargs}
  return train.fit(_state(), step, data, num_steps=num_steps, rng=jax.random.key(2),
                   teacher_variables=teacher_vars, **kwargs)


def _assert_same_state(a, b):
  chex.assert_trees_all_equal(a.state.params, b.state.params)
  chex.assert_trees_all_equal(a.state.opt_state, b.state.opt_state)
  assert int(a.state.step) == int(b.state.step)


@pytest.mark.parametrize('drop_remainder', [True, False])
def test_device_data_batches_equal_the_host_pipeline(drop_remainder):
  src = _source(n=21)
  host = _host(src, drop_remainder=drop_remainder)
  resident = kdata.DeviceData(src, batch_size=8, seed=1, drop_remainder=drop_remainder)
  for k in range(3 * resident.steps_per_epoch):  # three epochs, different orders
    expected, got = next(host), jax.device_get(resident.batch(k))
    assert sorted(got) == sorted(expected)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=f'{key} of batch {k}')
      assert got[key].dtype == expected[key].dtype


def _image_source(n=21, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 6, 5, 2)).astype(np.float32)
  return [{'x': x[i], 'label': np.int32(i % C), 'id': np.int32(i)} for i in range(n)]


@pytest.mark.parametrize('source,transform', [
    (_image_source, kdata.ImageAugment(padding=2, flip=True)),
    (_source, kdata.SequenceAugment(max_shift=1, noise_std=0.3)),
], ids=['crop_flip', 'shift_noise'])
def test_device_augmentation_equals_the_host_pipeline_bitwise(source, transform):
  src = source(n=21)
  host = _host(src, drop_remainder=False, transform=transform)
  resident = kdata.DeviceData(src, batch_size=8, seed=1, drop_remainder=False,
                              transform=transform)
  plain = kdata.DeviceData(src, batch_size=8, seed=1, drop_remainder=False)
  changed = 0
  for k in range(3 * resident.steps_per_epoch):
    expected, got = next(host), jax.device_get(resident.batch(k))
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=f'{key} of batch {k}')
      assert got[key].dtype == expected[key].dtype
    changed += int(np.any(got['x'] != jax.device_get(plain.batch(k))['x']))
  assert changed == 3 * resident.steps_per_epoch  # every batch is a new view


def test_fit_augments_on_the_device_as_on_the_host():
  src = _source()
  transform = kdata.SequenceAugment(max_shift=1, noise_std=0.2)
  auto = kdata.training_data(src, batch_size=8, seed=1, transform=transform)
  assert isinstance(auto, kdata.DeviceData) and auto.transform is transform
  host = _fit(_host(src, transform=transform))
  resident = _fit(auto)
  _assert_same_state(resident, host)
  assert not isinstance(kdata.training_data(src, batch_size=8, seed=1,
                                            transform=lambda b, k: b), kdata.DeviceData)
  with pytest.raises(ValueError, match='`transform` .* has no `draws'):
    kdata.DeviceData(src, batch_size=8, seed=1, transform=lambda b, k: b)


def test_compiled_loop_equals_the_python_loop_and_both_data_paths_agree():
  src = _source()
  python = _fit(_host(src), compiled=False)
  host = _fit(_host(src))
  resident = _fit(kdata.DeviceData(src, batch_size=8, seed=1))
  _assert_same_state(host, python)
  _assert_same_state(resident, host)
  assert host.chunks == resident.chunks == 3
  assert [h['step'] for h in host.history] == [10, 20, 30]
  for a, b in zip(host.history, python.history):
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-6)


def test_steps_per_call_does_not_change_the_result():
  src = _source()
  long = _fit(kdata.DeviceData(src, batch_size=8, seed=1))
  short = _fit(kdata.DeviceData(src, batch_size=8, seed=1), steps_per_call=3)
  _assert_same_state(short, long)
  assert short.chunks == 12  # ends at 3, 6, 9, 10, 12, 15, 18, 20, 21, 24, 27, 30


def test_fit_leaves_the_callers_state_usable():
  state = _state()
  before = jax.device_get(state.params)
  step, teacher_vars = _kd_step()
  train.fit(state, step, kdata.DeviceData(_source(), batch_size=8, seed=1), num_steps=5,
            rng=jax.random.key(0), teacher_variables=teacher_vars, progress=False)
  chex.assert_trees_all_equal(jax.device_get(state.params), before)


@pytest.mark.parametrize('path', ['host', 'device'])
def test_resume_is_bitwise_on_both_data_paths(tmp_path, path):
  src = _source()

  def data():
    return _host(src) if path == 'host' else kdata.DeviceData(src, batch_size=8, seed=1)

  full = _fit(data(), num_steps=30)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    _fit(data(), num_steps=17, checkpointer=ckpt, checkpoint_every=10)
    assert ckpt.all_steps() == [10, 17]
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    resumed = _fit(data(), num_steps=30, checkpointer=ckpt, checkpoint_every=10)
  assert resumed.resumed_from == 17
  _assert_same_state(resumed, full)


def test_out_of_range_labels_stop_fit_naming_the_batch_and_values():
  src = _source(n=40)
  src[13] = dict(src[13], label=np.int32(7))
  with pytest.raises(train.InvalidLabelError, match=r'Batch \d+ \(step \d+\).*`labels`.*\[7\]'):
    _fit(kdata.DeviceData(src, batch_size=8, seed=1, shuffle=False), num_steps=10)


def test_data_running_out_is_a_clear_error():
  src = _source(n=16)
  with pytest.raises(ValueError, match='ran out'):
    _fit(_host(src, num_epochs=1), num_steps=5)
  with pytest.raises(ValueError, match='2 batches'):
    _fit(kdata.DeviceData(src, batch_size=8, seed=1, num_epochs=1), num_steps=5)


def test_chunk_ends_follow_absolute_steps():
  assert train.chunk_ends(0, 25, steps_per_call=10, periods=(None, 4)) == [
      4, 8, 10, 12, 16, 20, 24, 25]
  # A resumed run continues with the ends of the uninterrupted one.
  assert train.chunk_ends(12, 25, steps_per_call=10, periods=(4,)) == [16, 20, 24, 25]
  assert train.chunk_ends(5, 5, steps_per_call=10) == []
  with pytest.raises(ValueError, match='steps_per_call'):
    train.chunk_ends(0, 5, steps_per_call=0)


def test_device_data_rejects_bad_arguments():
  with pytest.raises(ValueError, match='source'):
    kdata.DeviceData([], batch_size=2, seed=0)
  with pytest.raises(ValueError, match='batch_size'):
    kdata.DeviceData(_source(n=4), batch_size=8, seed=0)
  with pytest.raises(ValueError, match='seed'):
    kdata.DeviceData(_source(n=4), batch_size=2, seed=-1)


def test_auto_mode_scans_dense_students_and_loops_convolutional_ones_on_cpu():
  assert jax.default_backend() == 'cpu'
  src = _source()
  resident = lambda: kdata.DeviceData(src, batch_size=8, seed=1)  # noqa: E731
  dense = _fit(resident(), num_steps=10)
  assert dense.compiled
  conv_teacher = models.CNN1D(channels=4, num_classes=C)
  conv_step = steps.make_distill_step([steps.soft_kd()], conv_teacher)
  t_vars = models.init_variables(conv_teacher, jax.random.key(3), jnp.ones((1, 4)))
  assert train.fit(_state(), conv_step, resident(), num_steps=5, rng=jax.random.key(0),
                   teacher_variables=t_vars, progress=False).compiled  # only its forward
  conv = models.CNN1D(channels=4, num_classes=C)
  variables = models.init_variables(conv, jax.random.key(0), jnp.ones((1, 4)))
  state = TrainState.create(apply_fn=conv, variables=variables, tx=optax.adam(1e-2))
  kw = dict(num_steps=10, rng=jax.random.key(2), progress=False, log_every=5)
  auto = train.fit(state, steps.make_train_step(), resident(), **kw)
  assert not auto.compiled and auto.chunks == 2
  scanned = train.fit(state, steps.make_train_step(), resident(), compiled=True, **kw)
  assert scanned.compiled
  chex.assert_trees_all_close(auto.state.params, scanned.state.params, rtol=1e-5, atol=1e-6)
  # A grain iterator is peeked at and rewound: the same choice, and no batch is lost.
  host_auto = train.fit(state, steps.make_train_step(), _host(src), **kw)
  host_loop = train.fit(state, steps.make_train_step(), _host(src), compiled=False, **kw)
  assert not host_auto.compiled
  chex.assert_trees_all_equal(host_auto.state.params, host_loop.state.params)
  # A plain iterator cannot be peeked at: it scans unless told otherwise.
  assert train.fit(state, steps.make_train_step(), (b for b in _host(src)), **kw).compiled
