"""Every feature and relational loss as a term of a real training step (kdjax._terms).

One convolutional teacher is trained once on scikit-learn's digits (via
kdjax.data) and shared. For each factory a small student trains with
``task_ce + term`` through ``kdjax.train.fit``, and three things are checked:

* the term's own value, on a fixed held-out batch, falls by a stated factor;
* the student's held-out accuracy ends far above its accuracy at init;
* for the terms without trainable parts, the term's value ends far below its
  value after training with the cross-entropy alone (the term, not the task
  loss, moved it). Terms with heads pass the first check only by training
  their heads, which the cross-entropy never touches.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import checkpoint
from kdjax import data
from kdjax import losses
from kdjax import models
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


BATCH, STEPS, LR = 64, 150, 3e-3


class Net(nn.Module):
  """Three 3×3 conv layers on ``[B, 8, 8, 1]`` digits; the last one strided."""
  channels: tuple = (16, 16, 32)

  @nn.compact
  def __call__(self, x, train=False):
    del train
    for i, (c, stride) in enumerate(zip(self.channels, (1, 1, 2)), start=1):
      x = nn.relu(nn.Conv(c, (3, 3), strides=stride, name=f'conv{i}')(x))
      models.sow_feature(self, f'stage{i}', x)
    x = x.reshape(x.shape[0], -1)
    models.sow_feature(self, 'embedding', x)
    return nn.Dense(10, name='classifier')(x)


TEACHER = Net((16, 16, 32))
# Spatial terms: AT/NST on stage3 ([B, 4, 4, 8] vs the teacher's 32 channels); FSP needs the
# teacher's channels in its block pair (stage1, stage2: [B, 8, 8, 16]).
CNN = Net((16, 16, 8))
MLP = models.MLP(hidden=(32,), num_classes=10)   # embedding terms: [B, 32] vs the teacher's 512


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  source = data.load('digits', 'train', data_dir=data_dir)
  test = data.load('digits', 'test', data_dir=data_dir)
  x = np.stack([test[i]['x'] for i in range(len(test))])
  y = np.array([test[i]['label'] for i in range(len(test))], np.int32)
  return source, x, y


@pytest.fixture(scope='module')
def teacher(digits):
  source, x, y = digits
  variables = _init(TEACHER, 0, x)
  state = TrainState.create(apply_fn=TEACHER, variables=variables, tx=optax.adam(1e-2))
  result = train.fit(state, steps.make_train_step(), data.DeviceData(source, batch_size=BATCH,
                                                                     seed=0),
                     num_steps=150, rng=jax.random.key(1), progress=False, log_every=150)
  variables = result.state.variables
  assert _accuracy(TEACHER, variables, x, y) > 0.9
  return variables


@functools.lru_cache(maxsize=None)
def _forward(model):
  """The model's jitted eval-mode forward (eager Flax calls compile op by op: slow)."""
  forward = models.as_forward(model)
  return jax.jit(lambda variables, x: forward(variables, x, train=False))


def _init(model, seed, x):
  """He-normal kernels and zero biases drawn with NumPy.

  Only the shapes come from Flax (``eval_shape``): XLA:CPU takes seconds to
  compile each random initializer of a real ``init``.
  """
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), x[:1]))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == 'bias':
      return jnp.zeros(leaf.shape, leaf.dtype)
    scale = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    return jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _accuracy(model, variables, x, y) -> float:
  return float(np.mean(np.argmax(_forward(model)(variables, x).logits, -1) == y))


def _init_state(model, term, x, teacher_variables, seed=10):
  variables = _init(model, seed, x)
  init = steps.init_terms([term], _forward(model)(variables, x[:BATCH]), jax.random.key(3),
                          _forward(TEACHER)(teacher_variables, x[:BATCH]))
  return TrainState.create(apply_fn=model, variables=variables, tx=optax.adam(LR), **init)


def _term_value_fn(term, teacher_variables, x, y):
  """``state -> the term's value`` on a fixed held-out batch (student in eval mode)."""
  batch = {'x': x[:128], 'label': y[:128], 'id': np.arange(128, dtype=np.int32)}
  objective = steps.make_objective([term], ['teacher'])
  t_out = _forward(TEACHER)(teacher_variables, batch['x'])

  @jax.jit
  def value(state):
    s_out = state.apply_fn(state.variables, batch['x'], train=False)
    _, parts, _ = objective(s_out, {'teacher': t_out}, state.aux_params, batch, state.step,
                            term_state=state.term_state, rng=jax.random.key(5))
    return parts[term.name]

  return lambda state: float(value(state))


def _fit(state, terms, source, teacher_variables, num_steps=STEPS):
  return train.fit(state, steps.make_distill_step(terms, TEACHER),
                   data.DeviceData(source, batch_size=BATCH, seed=1), num_steps=num_steps,
                   rng=jax.random.key(2), teacher_variables=teacher_variables, progress=False,
                   log_every=num_steps)


@pytest.fixture(scope='module')
def ce_only(digits, teacher):
  """Students trained with the cross-entropy alone, one per architecture (built on demand)."""
  source, x, _ = digits
  cache = {}

  def get(model):
    if model not in cache:
      state = _init_state(model, steps.task_ce(), x, teacher)
      cache[model] = _fit(state, [steps.task_ce()], source, teacher).state
    return cache[model]

  return get


# name: (factory call of n = the training set's size, student, the factor by which the term's
# value must fall, the factor by which it must end below the CE-only student's value or None
# for terms with trainable parts). Weights put each term on the scale of the cross-entropy
# (the paper's where it has one: RKD-D 25, RKD-A 50). VID's value is a Gaussian negative
# log-likelihood that may cross zero, so it must fall by 0.15 nats instead of by a factor.
CASES = {
    'at': (lambda n: steps.attention_transfer('stage3', 'stage3', 100.0), CNN, 10.0, 5.0),
    'nst': (lambda n: steps.nst('stage3', 'stage3', 20.0), CNN, 2.0, 2.0),
    'fsp': (lambda n: steps.fsp(('stage1', 'stage2'), ('stage1', 'stage2'), 10.0), CNN, 2.5,
            5.0),
    'sp': (lambda n: steps.similarity_preserving('embedding', 'embedding', 100.0), MLP, 2.0,
           1.5),
    'rkd_distance': (lambda n: steps.rkd_distance(weight=25.0), MLP, 2.5, 1.5),
    'rkd_angle': (lambda n: steps.rkd_angle(weight=50.0), MLP, 2.5, 1.5),
    'pkt': (lambda n: steps.pkt(weight=3e4), MLP, 2.5, 1.5),
    'cc': (lambda n: steps.correlation_congruence(weight=1000.0), MLP, 4.0, 3.0),
    'crd': (lambda n: steps.crd(weight=0.5, num_examples=n, embed_dim=16, num_negatives=64,
                                temperature=0.1), MLP, 2.0, None),
    'vid': (lambda n: steps.vid('embedding', 'embedding', 1.0), MLP, None, None),
    'ft': (lambda n: steps.factor_transfer('embedding', 'embedding', 1.0), MLP, 2.0, None),
    'triplet': (lambda n: steps.triplet(weight=0.1, student_head=True), MLP, 10.0, None),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_term_trains_the_student(case, digits, teacher, ce_only):
  make, model, factor, versus_ce = CASES[case]
  source, x, y = digits
  term = make(len(source))
  state = _init_state(model, term, x, teacher)
  term_value = _term_value_fn(term, teacher, x, y)
  value_0, accuracy_0 = term_value(state), _accuracy(model, state.variables, x, y)
  result = _fit(state, [steps.task_ce(), term], source, teacher)
  trained = result.state
  value, accuracy = term_value(trained), _accuracy(model, trained.variables, x, y)
  if factor is None:
    assert value < value_0 - 0.15, (value_0, value)
  else:
    assert value < value_0 / factor, (value_0, value)
  assert accuracy > max(0.85, accuracy_0 + 0.5), (accuracy_0, accuracy)
  if versus_ce is not None:
    baseline = term_value(ce_only(model))
    assert value < baseline / versus_ce, (baseline, value)
  metrics = result.history[-1]
  if case == 'ft':  # the paraphraser's reconstruction is reported and added to the term
    recon = metrics[f'loss/{term.name}/reconstruction']
    assert 0 < recon < 1
    np.testing.assert_allclose(
        metrics['loss'], metrics['loss/ce'] + metrics[f'loss/{term.name}'] + recon, rtol=1e-5)
  if case == 'crd':  # the banks moved inside the jitted step and hold unit vectors
    banks, before = trained.term_state[term.name], state.term_state[term.name]
    assert not np.allclose(banks['teacher_bank'], before['teacher_bank'])
    np.testing.assert_allclose(np.linalg.norm(banks['teacher_bank'], axis=-1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- term state

_crd_teacher = models.function_forward(
    lambda p, x: (x @ p['w'], {'embedding': jnp.tanh(x @ p['v'])}))


@pytest.fixture(scope='module')
def crd_setup():
  """A CRD term on a tiny MLP student and a function teacher, with its jitted step."""
  num_examples, batch = 32, 8
  student = models.MLP(hidden=(6,), num_classes=3)
  rng = np.random.default_rng(0)
  t_vars = {'params': {'w': rng.normal(size=(5, 3)).astype(np.float32),
                       'v': rng.normal(size=(5, 7)).astype(np.float32)}}
  term = steps.crd(num_examples=num_examples, embed_dim=4, num_negatives=5)
  x = rng.normal(size=(num_examples, 5)).astype(np.float32)
  batches = [{'x': x[i:i + batch], 'label': rng.integers(0, 3, batch).astype(np.int32),
              'id': np.arange(i, i + batch, dtype=np.int32), 'mask': np.ones(batch, bool)}
             for i in range(0, num_examples, batch)]

  def fresh(seed=0):
    variables = _init(student, seed, x)
    init = steps.init_terms([term], _forward(student)(variables, x[:2]),
                            jax.random.key(seed + 1), _crd_teacher(t_vars, x[:2], train=False))
    return TrainState.create(apply_fn=student, variables=variables, tx=optax.sgd(0.1), **init)

  step = jax.jit(steps.make_distill_step([steps.task_ce(), term], _crd_teacher))
  return term, fresh, step, t_vars, batches


def test_crd_memory_bank_round_trips_through_a_checkpoint(tmp_path, crd_setup):
  term, fresh, step, t_vars, batches = crd_setup
  state = fresh()
  for i, batch in enumerate(batches[:2]):
    state, _ = step(state, t_vars, batch, jax.random.key(i))
  banks = state.term_state[term.name]
  assert set(banks) == {'student_bank', 'teacher_bank'}
  # Only the rows of the batches seen so far were written.
  before = fresh().term_state[term.name]['teacher_bank']
  assert not np.allclose(banks['teacher_bank'][:16], before[:16])
  np.testing.assert_array_equal(banks['teacher_bank'][16:], before[16:])
  with checkpoint.Checkpointer(tmp_path / 'ckpt') as ckpt:
    ckpt.save(2, state)
    ckpt.wait()
    restored, _ = ckpt.restore(fresh(seed=7))
  chex.assert_trees_all_equal(restored.term_state, state.term_state)
  chex.assert_trees_all_equal(restored.aux_params, state.aux_params)
  # The resumed run continues exactly.
  a, ma = step(state, t_vars, batches[2], jax.random.key(2))
  b, mb = step(restored, t_vars, batches[2], jax.random.key(2))
  chex.assert_trees_all_equal(a.term_state, b.term_state)
  chex.assert_trees_all_equal(a.params, b.params)
  assert float(ma['loss/' + term.name]) == float(mb['loss/' + term.name])


def test_crd_bank_skips_padding_and_nonfinite_updates(crd_setup):
  term, fresh, step, t_vars, batches = crd_setup
  state = fresh()
  padded = dict(batches[0], mask=np.arange(8) < 4,
                id=np.where(np.arange(8) < 4, batches[0]['id'], -1))  # as kdjax.data pads
  new, m = step(state, t_vars, padded, jax.random.key(0))
  bank, old = new.term_state[term.name]['teacher_bank'], state.term_state[term.name]['teacher_bank']
  assert not np.allclose(bank[:4], old[:4])
  np.testing.assert_array_equal(bank[4:], old[4:])
  bad = dict(batches[1], x=np.where(np.arange(8)[:, None] == 0, np.nan,
                                    batches[1]['x']).astype(np.float32))
  skipped, m = step(new, t_vars, bad, jax.random.key(1))
  assert int(m['skipped']) == 1
  chex.assert_trees_all_equal(skipped.term_state, new.term_state)


def test_crd_under_a_device_axis_keeps_replicas_identical(crd_setup):
  """Two shards of a batch under ``vmap(axis_name=...)`` write the same banks as one device."""
  term, fresh, step, t_vars, batches = crd_setup
  state = fresh()
  single, _ = step(state, t_vars, batches[0], jax.random.key(0))
  sharded_step = jax.vmap(
      steps.make_distill_step([steps.task_ce(), term], _crd_teacher, axis_name='d'),
      in_axes=(None, None, 0, None), axis_name='d')
  shards = jax.tree.map(lambda v: v.reshape((2, -1) + v.shape[1:]), batches[0])
  replicas, metrics = jax.jit(sharded_step)(state, t_vars, shards, jax.random.key(0))
  for name in ('student_bank', 'teacher_bank'):
    bank = replicas.term_state[term.name][name]
    np.testing.assert_array_equal(bank[0], bank[1])
    np.testing.assert_allclose(bank[0], single.term_state[term.name][name], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(jax.tree.map(lambda v: v[0], replicas.params),
                              jax.tree.map(lambda v: v[1], replicas.params))
  assert np.all(np.isfinite(metrics['loss'])) and int(metrics['skipped'][0]) == 0


def test_triplet_mining_picks_the_closest_other_class_negative():
  s = jnp.array([[0.0], [1.0], [2.0], [10.0]])
  t = jnp.array([[0.5], [1.5], [9.0], [2.5]])
  ctx = steps.TermContext(labels=jnp.array([0, 1, 0, 1]), mask=jnp.array([1, 1, 1, 0], bool),
                          ids=None, axis_name=None)
  a, p, n = steps.TripletMining().apply({}, s, t, ctx)
  # Row 3 (label 1) is padding, never a negative: rows 0, 2 (label 0) can only use row 1;
  # rows 1, 3 take the label-0 teacher embedding closest to their anchor.
  assert n[:, 0].tolist() == [1.5, 0.5, 1.5, 9.0]
  np.testing.assert_allclose(losses.triplet_distillation(a, p, n, margin=1.0),
                             [0.0, 1.0, 7.5, 7.5])


# ---------------------------------------------------------------- validation

def _outputs():
  s = models.ModelOutput(jnp.zeros((4, 3)), {'embedding': jnp.ones((4, 6)),
                                             'stage1': jnp.ones((4, 8, 8, 2)),
                                             'stage2': jnp.ones((4, 4, 4, 2))}, {})
  t = models.ModelOutput(jnp.zeros((4, 3)), {'embedding': jnp.ones((4, 5)),
                                             'stage1': jnp.ones((4, 8, 8, 3)),
                                             'stage2': jnp.ones((4, 8, 8, 3))}, {})
  return s, t


@pytest.mark.parametrize('make, message, by_module', [
    (lambda: steps.attention_transfer('embedding', 'stage1'),
     r"Term 'at/embedding' \(student 'embedding'.*`student` must be a feature map", True),
    (lambda: steps.attention_transfer('stage2', 'stage1'),
     r"Term 'at/stage2'.*must agree on all but the channel axis", False),
    (lambda: steps.fsp(('stage1', 'stage2'), ('stage1', 'stage2')),
     r"Term 'fsp/stage1-stage2'.*`student_in` and `student_out` must agree", False),
    (lambda: steps.similarity_preserving('embedding', 'stage1'), None, False),  # any shapes
    (lambda: steps.vid('stage2', 'stage1'),
     r"Term 'vid/stage2'.*`student` and `teacher` features must agree", True),
    (lambda: steps.factor_transfer('embedding', 'stage1'),
     r"Term 'ft/embedding'.*`student` and `teacher` must be .* the same rank", True),
    (lambda: steps.triplet(),
     r"Term 'triplet/embedding'.*width 6 and the `teacher` embedding 5.*student_head=True", True),
    (lambda: steps.rkd_distance(student_feature='nope'), r"The student has no feature 'nope'",
     True),
    (lambda: steps.pkt(teacher_feature='nope'), r"Teacher 'teacher' has no feature 'nope'", True),
])
def test_bad_features_raise_at_trace_time_naming_the_term(make, message, by_module):
  s, t = _outputs()
  term = make()
  objective = steps.make_objective([term], ['teacher'])
  batch = {'label': jnp.arange(4) % 3}
  if message is None:
    assert np.isfinite(objective(s, {'teacher': t}, {}, batch, jnp.array(0))[0])
    return
  if by_module:  # the module's own check already fires when its params are created
    with pytest.raises(ValueError, match=message):
      steps.init_terms([term], s, jax.random.key(0), t)
  with pytest.raises(ValueError, match=message):
    objective(s, {'teacher': t}, {}, batch, jnp.array(0), rng=jax.random.key(0))


@pytest.mark.parametrize('make, message', [
    (lambda: steps.crd(num_examples=1), r'`num_examples` must be an int >= 2'),
    (lambda: steps.crd(num_examples=10, momentum=1.0), r'`momentum` must be in \[0, 1\)'),
    (lambda: steps.crd(num_examples=10, temperature=0.0), r'`temperature` must be > 0'),
    (lambda: steps.attention_transfer('a', 'b', p=0.5), r'`p` must be >= 1'),
    (lambda: steps.nst('a', 'b', kernel='rbf'), r'`kernel` must be'),
    (lambda: steps.fsp('ab', ('a', 'b')), r'`student_features` must be a pair'),
    (lambda: steps.fsp(('a', 'b'), ('a',)), r'`teacher_features` must be a pair'),
    (lambda: steps.vid('a', 'b', init_variance=0.0), r'`init_variance` must be >'),
    (lambda: steps.factor_transfer('a', 'b', p=3), r'`p` must be 1 or 2'),
    (lambda: steps.triplet(mining='semi'), r'`mining` must be one of'),
    (lambda: steps.triplet(margin=-1.0), r'`margin` must be >= 0'),
    (lambda: steps.correlation_congruence(order=-1), r'`order` must be an int >= 0'),
    (lambda: steps.crd(0.8, student_feature=0.8, num_examples=10),
     r'`student_feature` must be a feature name'),
    (lambda: steps.Term('x', losses.hint_l2, adapter=nn.Dense(2), module=steps.Embed()),
     r'`adapter` or a `module`, not both'),
    (lambda: steps.Term('x', losses.hint_l2, student=('a', 'b'), adapter=nn.Dense(2)),
     r'an `adapter` takes one student feature'),
])
def test_bad_options_raise_when_building_the_term(make, message):
  with pytest.raises((ValueError, TypeError), match=message):
    make()


def test_stateful_terms_need_their_state():
  s, t = _outputs()
  term = steps.crd(num_examples=10, embed_dim=4, num_negatives=3)
  with pytest.raises(ValueError, match='init_terms'):
    steps.init_adapters([term], s, jax.random.key(0), t)
  with pytest.raises(ValueError, match='teacher_outputs'):
    steps.init_terms([term], s, jax.random.key(0))
  init = steps.init_terms([term], s, jax.random.key(0), t)
  objective = steps.make_objective([term], ['teacher'])
  batch = {'id': jnp.arange(4)}
  with pytest.raises(ValueError, match=r"Term 'crd/embedding'.*init_terms"):
    objective(s, {'teacher': t}, init['aux_params'], batch, jnp.array(0), rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"Term 'crd/embedding'.*`batch\['id'\]`"):
    objective(s, {'teacher': t}, init['aux_params'], {}, jnp.array(0),
              term_state=init['term_state'], rng=jax.random.key(0))
