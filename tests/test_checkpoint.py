"""Tests for kdjax.checkpoint and the resume path of kdjax.train.fit."""

import json
import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import checkpoint
from kdjax import models
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


def _state(seed=0, tx=None):
  module = models.MLP(hidden=(8,), num_classes=3)
  variables = models.init_variables(module, jax.random.key(seed), jnp.ones((1, 4)))
  return TrainState.create(apply_fn=module, variables=variables, tx=tx or optax.adam(1e-2))


class _Batches:
  """A deterministic iterator with a checkpointable position."""

  def __init__(self, seed=0, n=6):
    self.seed, self.n, self.i = seed, n, 0

  def __next__(self):
    rng = np.random.default_rng([self.seed, self.i])
    self.i += 1
    return {'x': rng.normal(size=(self.n, 4)).astype(np.float32),
            'label': rng.integers(0, 3, size=self.n).astype(np.int32)}

  def get_state(self):
    return {'i': self.i}

  def set_state(self, state):
    self.i = state['i']


def test_train_state_round_trip(tmp_path):
  state = _state()
  state, _ = jax.jit(steps.make_train_step())(state, None, next(_Batches()), jax.random.key(0))
  with checkpoint.Checkpointer(tmp_path / 'ckpt') as ckpt:
    ckpt.save(1, state, data_state={'i': 1}, meta={'teacher': '/some/where'})
    ckpt.wait()
    restored, data = ckpt.restore(_state(seed=1))
    assert ckpt.restore_meta() == {'teacher': '/some/where'}
  chex.assert_trees_all_equal(restored.params, state.params)
  chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
  assert int(restored.step) == 1 and data == {'i': 1}
  assert restored.apply_fn is not None


def test_keeps_last_n_and_best(tmp_path):
  with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, 0.2)]:
      ckpt.save(step, {'w': jnp.full(2, step)}, metrics={'accuracy': acc})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]
    assert ckpt.best_step() == 2


def test_restore_from_empty_directory_fails_clearly(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(FileNotFoundError, match='No checkpoint'):
      ckpt.restore({'w': jnp.zeros(2)})


def test_load_variables_gives_a_usable_teacher(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(7, state)
  variables = checkpoint.load_variables(tmp_path)
  chex.assert_trees_all_equal(variables['params'], jax.device_get(state.params))
  x = jnp.ones((2, 4))
  np.testing.assert_array_equal(
      state.apply_fn(variables, x, train=False).logits,
      state.apply_fn(state.variables, x, train=False).logits)


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='Train the teacher first'):
    checkpoint.load_variables(tmp_path / 'nope')


def test_fit_resumes_bitwise_identically(tmp_path):
  step = jax.jit(steps.make_train_step())
  rng = jax.random.key(3)
  full = train.fit(_state(), step, _Batches(), num_steps=12, rng=rng, progress=False,
                   log_every=4)
  ckpt_dir = tmp_path / 'run'
  with checkpoint.Checkpointer(ckpt_dir) as ckpt:
    train.fit(_state(), step, _Batches(), num_steps=8, rng=rng, checkpointer=ckpt,
              checkpoint_every=4, progress=False, log_every=4)
  with checkpoint.Checkpointer(ckpt_dir) as ckpt:
    resumed = train.fit(_state(), step, _Batches(), num_steps=12, rng=rng, checkpointer=ckpt,
                        checkpoint_every=4, progress=False, log_every=4)
  assert resumed.resumed_from == 8
  chex.assert_trees_all_equal(resumed.state.params, full.state.params)
  chex.assert_trees_all_equal(resumed.state.opt_state, full.state.opt_state)


def test_fit_raises_after_repeated_nonfinite_updates():
  class NaNs(_Batches):
    def __next__(self):
      b = super().__next__()
      b['x'][:] = np.nan
      return b

  with pytest.raises(train.NonFiniteError, match='non-finite'):
    train.fit(_state(), jax.jit(steps.make_train_step()), NaNs(), num_steps=10,
              rng=jax.random.key(0), progress=False, log_every=5, max_consecutive_skips=5)


def test_fit_logs_csv_and_tensorboard(tmp_path):
  step = jax.jit(steps.make_train_step())
  eval_step = jax.jit(steps.make_eval_step(_state().apply_fn))
  batches = [next(_Batches(seed=9))]
  with train.MetricWriter(tmp_path) as writer:
    result = train.fit(_state(), step, _Batches(), num_steps=4, rng=jax.random.key(0),
                       progress=False, log_every=2, writer=writer,
                       eval_fn=lambda s: train.evaluate(eval_step, s.variables, batches))
  lines = open(tmp_path / 'metrics.csv').read().splitlines()
  assert lines[0] == 'step,split,name,value'
  assert any(l.startswith('2,train,loss,') for l in lines)
  assert any(l.startswith('4,eval,accuracy,') for l in lines)
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  assert [h['step'] for h in result.history] == [2, 4]
  assert result.eval_history[-1]['step'] == 4


def test_keep_steps_survive_and_early_teacher_loads(tmp_path):
  step = jax.jit(steps.make_train_step())
  with checkpoint.Checkpointer(tmp_path, max_to_keep=1, keep_steps=(3,)) as ckpt:
    result = train.fit(_state(), step, _Batches(), num_steps=10, rng=jax.random.key(0),
                       checkpointer=ckpt, checkpoint_every=5, save_steps=(3,), progress=False,
                       log_every=5)
    assert ckpt.all_steps() == [3, 10]
  early = checkpoint.load_variables(tmp_path, step=3)
  final = checkpoint.load_variables(tmp_path)
  assert not np.allclose(early['params']['dense1']['kernel'],
                         final['params']['dense1']['kernel'])
  chex.assert_trees_all_equal(final['params'], jax.device_get(result.state.params))


# ------------------------------------------------------------- corrupted checkpoints

# A failed tensorstore read leaves orbax callbacks on a closed asyncio loop; pytest
# reports them as "unraisable" exceptions. They are noise, not the tested behaviour.
_orbax_read_noise = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _corrupt(path, how):
  """Damages a real file that orbax wrote: truncated to 0 bytes or half, or overwritten."""
  raw = open(path, 'rb').read()
  new = {'empty': b'', 'half': raw[:len(raw) // 2],
         'garbage': np.random.default_rng(0).bytes(len(raw)),
         'one_digit': raw.replace(b'4', b'5', 1)}[how]
  assert new != raw
  with open(path, 'wb') as f:
    f.write(new)


def _item_file(step_dir, item):
  """The file of ``item`` in a step directory: the arrays, or a JSON record."""
  if item == 'arrays':
    (name,) = os.listdir(step_dir / 'state' / 'd')
    return step_dir / 'state' / 'd' / name
  return step_dir / {'tree': 'state/_METADATA', 'data': 'data/metadata',
                     'meta': 'meta/metadata'}[item]


def _two_steps(directory):
  states = {1: _state(seed=1), 2: _state(seed=2)}
  with checkpoint.Checkpointer(directory) as ckpt:
    for s, state in states.items():
      ckpt.save(s, state, data_state={'i': s * 2}, meta={'teacher': f'/t/{s * 2}'})
  return states


@_orbax_read_noise
@pytest.mark.parametrize('item', ['arrays', 'tree', 'data', 'meta'])
@pytest.mark.parametrize('how', ['empty', 'half', 'garbage'])
def test_restore_skips_a_corrupt_newest_step_with_a_warning(tmp_path, item, how):
  states = _two_steps(tmp_path)
  _corrupt(_item_file(tmp_path / '2', item), how)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 2  # committed by orbax: only reading it back tells
    with pytest.warns(checkpoint.CorruptCheckpointWarning,
                      match=rf'corrupt checkpoint {re.escape(str(tmp_path))}/2 .*restored step 1'):
      restored, data = ckpt.restore(_state(seed=0))
    assert ckpt.all_steps() == [1] and ckpt.restore_meta() == {'teacher': '/t/2'}
  chex.assert_trees_all_equal(restored.params, states[1].params)
  chex.assert_trees_all_equal(restored.opt_state, states[1].opt_state)
  assert data == {'i': 2}
  assert sorted(os.listdir(tmp_path)) == ['1', '2.corrupt']  # moved aside, not deleted


@pytest.mark.parametrize('item,changed', [('data', {'i': 5}), ('meta', {'teacher': '/t/5'})])
def test_a_changed_value_in_a_json_record_fails_its_digest(tmp_path, item, changed):
  _two_steps(tmp_path)
  path = _item_file(tmp_path / '2', item)
  _corrupt(path, 'one_digit')  # still valid JSON, with one value changed
  assert changed.items() <= json.loads(path.read_text()).items()
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.warns(checkpoint.CorruptCheckpointWarning, match='SHA-256 digest'):
      _, data = ckpt.restore(_state())
  assert data == {'i': 2}


@_orbax_read_noise
def test_fit_resumes_from_the_newest_intact_checkpoint(tmp_path):
  step = jax.jit(steps.make_train_step())
  rng = jax.random.key(5)
  full = train.fit(_state(), step, _Batches(), num_steps=12, rng=rng, progress=False,
                   log_every=4)
  with checkpoint.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
    train.fit(_state(), step, _Batches(), num_steps=8, rng=rng, checkpointer=ckpt,
              checkpoint_every=4, progress=False, log_every=4)
  _corrupt(_item_file(tmp_path / '8', 'arrays'), 'half')
  with checkpoint.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
    with pytest.warns(checkpoint.CorruptCheckpointWarning, match=rf'{re.escape(str(tmp_path))}/8 '):
      resumed = train.fit(_state(), step, _Batches(), num_steps=12, rng=rng,
                          checkpointer=ckpt, checkpoint_every=4, progress=False, log_every=4)
    assert ckpt.all_steps() == [4, 8, 12]  # step 8 saved again, from the resumed run
  assert resumed.resumed_from == 4
  chex.assert_trees_all_equal(resumed.state.params, full.state.params)
  chex.assert_trees_all_equal(resumed.state.opt_state, full.state.opt_state)
  assert (tmp_path / '8.corrupt').is_dir()


@_orbax_read_noise
def test_every_step_corrupt_is_a_clear_error_and_renames_nothing(tmp_path):
  _two_steps(tmp_path)
  _corrupt(_item_file(tmp_path / '1', 'arrays'), 'empty')
  _corrupt(_item_file(tmp_path / '2', 'data'), 'half')
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match=rf'Every checkpoint .*steps \[2, 1\].*{re.escape(str(tmp_path))}/2,'):
      ckpt.restore(_state())
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoint.CorruptCheckpointError, match='start the run over'):
      train.fit(_state(), jax.jit(steps.make_train_step()), _Batches(), num_steps=4,
                rng=jax.random.key(0), checkpointer=ckpt, progress=False, log_every=2)
  assert sorted(os.listdir(tmp_path)) == ['1', '2']


@_orbax_read_noise
def test_a_corrupt_explicit_step_or_teacher_is_not_replaced(tmp_path):
  _two_steps(tmp_path)
  _corrupt(_item_file(tmp_path / '2', 'arrays'), 'garbage')
  names_it = rf'{re.escape(str(tmp_path))}/2 cannot'
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoint.CorruptCheckpointError, match=names_it):
      ckpt.restore(_state(), step=2)
  with pytest.raises(checkpoint.CorruptCheckpointError, match=names_it):
    checkpoint.load_variables(tmp_path)
  checkpoint.load_variables(tmp_path, step=1)
  assert sorted(os.listdir(tmp_path)) == ['1', '2']


@_orbax_read_noise
def test_a_template_that_does_not_fit_is_not_mistaken_for_corruption(tmp_path):
  _two_steps(tmp_path)
  module = models.MLP(hidden=(5,), num_classes=3)
  other = TrainState.create(
      apply_fn=module, tx=optax.adam(1e-2),
      variables=models.init_variables(module, jax.random.key(0), jnp.ones((1, 4))))
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError) as e:
      ckpt.restore(other)
  assert not isinstance(e.value, checkpoint.CorruptCheckpointError)
  assert sorted(os.listdir(tmp_path)) == ['1', '2']
