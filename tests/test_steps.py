"""Tests for kdjax.state and kdjax.steps: gradients, teachers, adapters, guards."""

import chex
from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import losses
from kdjax import models
from kdjax import schemes
from kdjax import steps
from kdjax.state import TrainState


B, D, C = 8, 5, 4


def _linear(p, x):
  return x @ p['w'] + p['b'], {'embedding': jnp.tanh(x @ p['w'])}


def _params(seed, d=D, c=C):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {'w': jax.random.normal(k1, (d, c)), 'b': 0.1 * jax.random.normal(k2, (c,))}


def _batch(seed=0, n=B):
  rng = np.random.default_rng(seed)
  return {'x': rng.normal(size=(n, D)).astype(np.float32),
          'label': rng.integers(0, C, size=n).astype(np.int32)}


@pytest.fixture
def student():
  fwd = models.function_forward(_linear)
  return TrainState.create(apply_fn=fwd, variables={'params': _params(0)}, tx=optax.sgd(0.1))


@pytest.fixture
def teacher():
  return models.function_forward(_linear), {'params': _params(1)}


def test_distill_step_matches_manual_sgd_update(student, teacher):
  t_fwd, t_vars = teacher
  alpha, tau = 0.3, 2.0
  step = jax.jit(steps.make_distill_step(
      [steps.task_ce(alpha), steps.soft_kd(1 - alpha, temperature=tau)], t_fwd))
  batch = _batch()
  new, metrics = step(student, t_vars, batch, jax.random.key(0))

  def manual_loss(p):
    s, _ = _linear(p, batch['x'])
    t, _ = _linear(t_vars['params'], batch['x'])
    return jnp.mean(losses.hinton_kd(s, t, batch['label'], temperature=tau, alpha=alpha))

  loss, grads = jax.value_and_grad(manual_loss)(student.params)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, student.params, grads)
  chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  assert int(new.step) == 1 and int(metrics['skipped']) == 0


def test_teacher_is_frozen_and_not_differentiated(student, teacher):
  t_fwd, t_vars = teacher
  step = steps.make_distill_step([steps.soft_kd()], t_fwd)
  t_before = jax.tree.map(np.array, t_vars)
  # The gradient of the step's loss with respect to the teacher is zero.
  def loss_wrt_teacher(tv):
    new, m = step(student, tv, _batch(), jax.random.key(0))
    return jnp.sum(new.params['w'])
  g = jax.grad(loss_wrt_teacher)(t_vars)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(g))
  new, _ = jax.jit(step)(student, t_vars, _batch(), jax.random.key(0))
  chex.assert_trees_all_equal(t_vars, t_before)
  # The optimizer state covers the student and adapters only.
  assert set(new.trainable) == {'params', 'aux'}


def test_metrics_are_flat_scalars_with_agreement_and_kl(student, teacher):
  t_fwd, t_vars = teacher
  step = jax.jit(steps.make_distill_step([steps.task_ce(0.5), steps.soft_kd(0.5)], t_fwd))
  _, m = step(student, t_vars, _batch(), jax.random.key(0))
  assert {'loss', 'loss/ce', 'loss/kd', 'ce', 'accuracy', 'agreement/teacher', 'kl/teacher',
          'grad_norm', 'skipped'} <= set(m)
  assert all(np.ndim(v) == 0 for v in m.values())
  s, _ = _linear(student.params, _batch()['x'])
  t, _ = _linear(t_vars['params'], _batch()['x'])
  np.testing.assert_allclose(m['agreement/teacher'], np.mean(s.argmax(-1) == t.argmax(-1)))
  np.testing.assert_allclose(m['kl/teacher'], np.mean(losses.kl_distillation(s, t)), rtol=1e-5)


def test_several_teachers(student):
  fwd = models.function_forward(_linear)
  step = jax.jit(steps.make_distill_step(
      [steps.soft_kd(0.5, teacher_name='a', name='kd_a'),
       steps.soft_kd(0.5, teacher_name='b', name='kd_b')], {'a': fwd, 'b': fwd}))
  tv = {'a': {'params': _params(1)}, 'b': {'params': _params(2)}}
  _, m = step(student, tv, _batch(), jax.random.key(0))
  assert {'loss/kd_a', 'loss/kd_b', 'agreement/a', 'agreement/b'} <= set(m)
  np.testing.assert_allclose(m['loss'], 0.5 * m['loss/kd_a'] + 0.5 * m['loss/kd_b'], rtol=1e-6)


def test_ambiguous_or_unknown_teacher_is_an_error():
  fwd = models.function_forward(_linear)
  with pytest.raises(ValueError, match='teacher_name'):
    steps.make_distill_step([steps.soft_kd()], {'a': fwd, 'b': fwd})
  with pytest.raises(ValueError, match="'c'"):
    steps.make_distill_step([steps.soft_kd(teacher_name='c')], {'a': fwd})


def test_duplicate_term_names_rejected():
  with pytest.raises(ValueError, match='unique'):
    steps.make_distill_step([steps.task_ce(), steps.task_ce()])


def test_nonfinite_update_is_skipped_and_reported(student, teacher):
  t_fwd, t_vars = teacher
  step = jax.jit(steps.make_distill_step([steps.task_ce(), steps.soft_kd()], t_fwd))
  batch = _batch()
  batch['x'][3, 1] = np.nan
  new, m = step(student, t_vars, batch, jax.random.key(0))
  assert int(m['skipped']) == 1
  chex.assert_trees_all_equal(new.params, student.params)
  chex.assert_trees_all_equal(new.opt_state, student.opt_state)
  assert int(new.step) == 0


@pytest.mark.parametrize('skip_nonfinite', [True, False])
def test_ok_false_keeps_the_state_in_the_same_guard(student, teacher, skip_nonfinite):
  t_fwd, t_vars = teacher
  step = jax.jit(steps.make_distill_step([steps.task_ce(), steps.soft_kd()], t_fwd,
                                         skip_nonfinite=skip_nonfinite))
  batch, key = _batch(), jax.random.key(0)
  kept, m = step(student, t_vars, batch, key, ok=jnp.asarray(False))
  assert int(m['skipped']) == 1 and int(kept.step) == 0
  chex.assert_trees_all_equal(kept.params, student.params)
  chex.assert_trees_all_equal(kept.opt_state, student.opt_state)
  # ok=True is the unguarded update, bit for bit.
  applied, m = step(student, t_vars, batch, key, ok=jnp.asarray(True))
  plain, _ = step(student, t_vars, batch, key)
  assert int(m['skipped']) == 0 and int(applied.step) == 1
  chex.assert_trees_all_equal(applied.params, plain.params)
  assert np.any(np.asarray(applied.params['w']) != np.asarray(student.params['w']))


def test_guard_skips_an_inf_gradient_and_an_overflowing_norm(student):
  step = jax.jit(steps.make_train_step())
  for scale in (np.inf, 1e30):  # 1e30 is finite, its square is not: no usable update
    batch = _batch()
    batch['x'] = (batch['x'] * scale).astype(np.float32)
    new, m = step(student, None, batch, jax.random.key(0))
    assert int(m['skipped']) == 1, scale
    chex.assert_trees_all_equal(new.params, student.params)
  _, m = step(student, None, _batch(), jax.random.key(0))
  assert int(m['skipped']) == 0 and np.isfinite(float(m['grad_norm']))


def test_out_of_range_labels_are_excluded_and_counted(student):
  step = jax.jit(steps.make_train_step())
  batch = _batch()
  batch['label'][0], batch['label'][2] = C, -1  # out of range
  new, m = step(student, None, batch, jax.random.key(0))
  assert int(m['invalid_labels']) == 2 and int(m['invalid_label']) == C
  assert int(m['skipped']) == 0
  # The same update as with the two rows masked out.
  masked = dict(batch, label=np.where(batch['label'] < 0, 0, batch['label'] % C),
                mask=np.array([i not in (0, 2) for i in range(len(batch['label']))]))
  ref, m_ref = step(student, None, masked, jax.random.key(0))
  chex.assert_trees_all_close(new.params, ref.params, rtol=1e-6, atol=1e-7)
  assert int(m_ref['invalid_labels']) == 0
  np.testing.assert_allclose(float(m['loss']), float(m_ref['loss']), rtol=1e-6)


def test_mismatched_logit_shapes_name_the_arguments(student):
  wide_teacher = models.function_forward(lambda p, x: x @ p['w'])
  step = steps.make_distill_step([steps.soft_kd()], wide_teacher)
  with pytest.raises(ValueError, match='teacher_logits'):
    step(student, {'params': {'w': jnp.ones((D, C + 1))}}, _batch(), jax.random.key(0))


def test_bad_temperature_is_rejected_when_building_the_term():
  with pytest.raises(ValueError, match='temperature'):
    steps.soft_kd(temperature=0.0)


def test_unknown_feature_lists_available(student, teacher):
  t_fwd, t_vars = teacher
  step = steps.make_distill_step([steps.hint('nope', 'embedding')], t_fwd)
  with pytest.raises(ValueError, match="embedding"):
    step(student, t_vars, _batch(), jax.random.key(0))


def test_transfer_batch_without_labels_rejects_ce_term(student, teacher):
  t_fwd, t_vars = teacher
  step = steps.make_distill_step([steps.task_ce(), steps.soft_kd()], t_fwd)
  batch = {'x': _batch()['x']}
  with pytest.raises(ValueError, match='label'):
    step(student, t_vars, batch, jax.random.key(0))
  _, m = jax.jit(steps.make_distill_step([steps.soft_kd()], t_fwd))(
      student, t_vars, batch, jax.random.key(0))
  assert 'accuracy' not in m and np.isfinite(m['loss'])


def test_hint_with_adapter_trains_the_adapter(teacher):
  t_fwd, t_vars = teacher
  fwd = models.function_forward(lambda p, x: (x @ p['w'], {'embedding': x @ p['v']}))
  params = {'w': _params(3)['w'], 'v': jax.random.normal(jax.random.key(4), (D, 2))}
  terms = [steps.task_ce(), steps.hint('embedding', 'embedding', 0.5, adapter=nn.Dense(C))]
  out = fwd({'params': params}, _batch()['x'], train=False)
  aux = steps.init_adapters(terms, out, jax.random.key(5))
  assert aux['hint/embedding']['kernel'].shape == (2, C)
  state = TrainState.create(apply_fn=fwd, variables={'params': params}, tx=optax.sgd(0.1),
                            aux_params=aux)
  step = jax.jit(steps.make_distill_step(terms, t_fwd))
  new, m = step(state, t_vars, _batch(), jax.random.key(0))
  assert 'loss/hint/embedding' in m
  kernel = 'hint/embedding'
  assert not np.allclose(new.aux_params[kernel]['kernel'], aux[kernel]['kernel'])
  # The hint value is hint_l2(adapter(student_embedding), teacher_embedding).
  s = nn.Dense(C).apply({'params': aux['hint/embedding']}, out.features['embedding'])
  t = _linear(t_vars['params'], _batch()['x'])[1]['embedding']
  np.testing.assert_allclose(m['loss/hint/embedding'], np.mean(losses.hint_l2(s, t)), rtol=1e-5)


def test_weight_schedule_turns_the_kd_term_off(student, teacher):
  t_fwd, t_vars = teacher
  off_after_one = lambda step: jnp.where(step < 1, 1.0, 0.0)
  step = jax.jit(steps.make_distill_step(
      [steps.task_ce(), steps.soft_kd(off_after_one)], t_fwd))
  s1, m1 = step(student, t_vars, _batch(), jax.random.key(0))
  _, m2 = step(s1, t_vars, _batch(), jax.random.key(0))
  np.testing.assert_allclose(m1['loss'], m1['loss/ce'] + m1['loss/kd'], rtol=1e-6)
  np.testing.assert_allclose(m2['loss'], m2['loss/ce'], rtol=1e-6)


def test_mask_excludes_padded_rows(student, teacher):
  t_fwd, t_vars = teacher
  step = jax.jit(steps.make_distill_step([steps.task_ce(), steps.soft_kd()], t_fwd))
  batch = _batch(n=B)
  masked = dict(batch, mask=np.arange(B) < 5)
  sliced = {k: v[:5] for k, v in batch.items()}
  a, ma = step(student, t_vars, masked, jax.random.key(0))
  b, mb = step(student, t_vars, sliced, jax.random.key(0))
  chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6)
  for k in ('loss', 'accuracy', 'agreement/teacher'):
    np.testing.assert_allclose(ma[k], mb[k], rtol=1e-5)


def test_linen_model_with_batchnorm_updates_batch_stats():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      h = nn.BatchNorm(use_running_average=not train)(nn.Dense(6)(x))
      self.sow('intermediates', 'embedding', h)
      return nn.Dense(C)(nn.relu(h))

  variables = models.init_variables(Net(), jax.random.key(0), jnp.ones((1, D)))
  state = TrainState.create(apply_fn=Net(), variables=variables, tx=optax.adam(1e-2))
  new, _ = jax.jit(steps.make_train_step())(state, None, _batch(), jax.random.key(0))
  before = state.model_state['batch_stats']['BatchNorm_0']['mean']
  after = new.model_state['batch_stats']['BatchNorm_0']['mean']
  assert not np.allclose(before, after)


def test_nnx_model_as_student_and_teacher():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.fc = nnx.Linear(D, 6, rngs=rngs)
      self.bn = nnx.BatchNorm(6, rngs=rngs)
      self.out = nnx.Linear(6, C, rngs=rngs)

    def __call__(self, x):
      h = nnx.relu(self.bn(self.fc(x)))
      return self.out(h), {'embedding': h}

  graphdef, params, rest = nnx.split(Net(nnx.Rngs(0)), nnx.Param, ...)
  fwd = models.nnx_forward(graphdef)
  t_graphdef, t_params, t_rest = nnx.split(Net(nnx.Rngs(1)), nnx.Param, ...)
  t_vars = {'params': t_params, 'state': t_rest}
  state = TrainState.create(apply_fn=fwd, variables={'params': params, 'state': rest},
                            tx=optax.sgd(0.1))
  step = jax.jit(steps.make_distill_step(
      [steps.task_ce(0.5), steps.soft_kd(0.5), steps.hint('embedding', 'embedding', 0.1)],
      models.nnx_forward(t_graphdef)))
  new, m = step(state, t_vars, _batch(), jax.random.key(0))
  assert np.isfinite(m['loss']) and int(m['skipped']) == 0
  assert not np.allclose(new.params['fc']['kernel'][...], params['fc']['kernel'][...])
  # BatchNorm statistics of the student moved; the teacher's did not.
  assert not np.allclose(new.model_state['state']['bn']['mean'][...],
                         rest['bn']['mean'][...])
  assert np.allclose(t_vars['state']['bn']['mean'][...], 0.0)


def test_step_compiles_once(student, teacher):
  t_fwd, t_vars = teacher
  step = steps.make_distill_step([steps.task_ce(), steps.soft_kd()], t_fwd)
  traced = chex.assert_max_traces(step, n=1)
  jitted = jax.jit(traced)
  state = student
  for i in range(3):
    state, _ = jitted(state, t_vars, _batch(i), jax.random.key(i))
  assert int(state.step) == 3


def test_eval_step_sums_are_exact_with_padding():
  eval_step = jax.jit(steps.make_eval_step(models.function_forward(_linear)))
  p = _params(0)
  batch = _batch(n=B)
  padded = dict(batch, mask=np.arange(B) < 6)
  sums = eval_step({'params': p}, padded)
  logits = np.asarray(_linear(p, batch['x'])[0])[:6]
  assert float(sums['count']) == 6
  assert float(sums['correct']) == float(np.sum(logits.argmax(-1) == batch['label'][:6]))
  np.testing.assert_allclose(
      sums['loss_sum'], np.sum(losses.cross_entropy(logits, batch['label'][:6])), rtol=1e-5)


def test_the_kd_terms_are_hinton_kd(student):
  """``schemes.kd_terms`` in a step is the batch mean of ``losses.hinton_kd``: one objective."""
  teacher_params = _params(1)
  batch = _batch(3)
  alpha, tau = 0.3, 2.5
  step = jax.jit(steps.make_distill_step(schemes.kd_terms(alpha, temperature=tau),
                                         models.function_forward(_linear)))
  new, metrics = step(student, {'params': teacher_params}, batch, jax.random.key(0))

  def hinton(params):
    s = _linear(params, batch['x'])[0]
    t = _linear(teacher_params, batch['x'])[0]
    return jnp.mean(losses.hinton_kd(s, t, batch['label'], temperature=tau, alpha=alpha))

  value, grads = jax.value_and_grad(hinton)(student.params)
  np.testing.assert_allclose(float(metrics['loss']), float(value), rtol=1e-6)
  chex.assert_trees_all_close(new.params, jax.tree.map(lambda p, g: p - 0.1 * g,
                                                       student.params, grads),
                              rtol=1e-6, atol=1e-7)
