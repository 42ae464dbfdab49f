"""Tests for kdjax.checkpoint and the resume path of kdjax.train.fit."""

import os

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
