"""Tests for weight distillation: pairing, the generator ``W_S = P·W_T·Q``, both phases.

References are float64 NumPy products written from the generator's formula
(Lin et al. 2020, §3) and the chain rule for its gradients:
``∂L/∂P = G·(W_T·Q)ᵀ`` and ``∂L/∂Q = (P·W_T)ᵀ·G + b_Tᵀ·g_b`` with
``G = ∂L/∂W_S`` and ``g_b = ∂L/∂b_S``.
"""

import flax.linen as nn
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import losses
from kdjax import models
from kdjax import steps
from kdjax.schemes import _weight_distillation as wd
from kdjax.state import TrainState


B, D, C = 6, 7, 4


def _x(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _fill(model, x, seed):
  """Variables of ``model`` filled from NumPy (random biases too)."""
  shapes = jax.eval_shape(lambda v: models.init_variables(model, jax.random.key(0), v),
                          jax.ShapeDtypeStruct(np.shape(x), jnp.float32))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.4 * rng.normal(size=s.shape), s.dtype), shapes)


def _random_generator_params(gen_params, seed):
  rng = np.random.default_rng(seed)
  return {**gen_params,
          'P': {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32)
                for k, v in gen_params['P'].items()},
          'Q': {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32)
                for k, v in gen_params['Q'].items()}}


def _f64(a):
  return np.asarray(a, np.float64)


# ------------------------------------------------------------------ pairing

@hypothesis.given(st.integers(1, 12), st.integers(1, 12))
def test_uniform_selection_properties(n_s, n_t):
  idx = wd.uniform_selection(n_s, n_t)
  assert len(idx) == n_s
  assert all(0 <= i < n_t for i in idx)
  assert list(idx) == sorted(idx)
  assert idx[-1] == n_t - 1
  if n_s > 1:
    assert idx[0] == 0
  if n_s <= n_t:
    assert len(set(idx)) == n_s  # a deeper teacher: distinct layers, none reused
  if n_s == n_t:
    assert idx == tuple(range(n_t))
  # uniform: gaps between selected layers differ by at most one
  gaps = np.diff(idx)
  if gaps.size:
    assert gaps.max() - gaps.min() <= 1


def test_uniform_selection_rejects_zero():
  with pytest.raises(ValueError, match='num_student'):
    wd.uniform_selection(0, 3)


class _Reversed(nn.Module):
  """Layers named against alphabetical order: call order must win over key order."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(5, name='z_first')(x))
    x = nn.relu(nn.Dense(6, name='m_second')(x))
    return nn.Dense(C, name='a_last')(x)


def test_layer_order_follows_calls():
  assert wd.layer_order(_Reversed(), jnp.zeros((1, D))) == ('z_first', 'm_second', 'a_last')
  assert wd.layer_order(models.CNN1D(channels=3), jnp.zeros((1, 40))) == (
      'conv1', 'conv2', 'conv3', 'classifier')


def test_pair_layers_uniform_by_kind():
  student = models.MLP(hidden=(4, 4, 4), num_classes=C)
  teacher = models.MLP(hidden=(8,) * 5, num_classes=C)
  # dense kind: 4 student layers over 6 teacher layers -> 0, 2, 3, 5
  assert wd.pair_layers(student, teacher, jnp.zeros((1, D))) == {
      'dense1': 'dense1', 'dense2': 'dense3', 'dense3': 'dense4', 'classifier': 'classifier'}
  # a CNN: convs pair with convs, the Dense head with the Dense head
  pairs = wd.pair_layers(models.CNN1D(channels=2, kernel_sizes=(5, 3)),
                         models.CNN1D(channels=8), jnp.zeros((1, 40)))
  assert pairs == {'conv1': 'conv1', 'conv2': 'conv3', 'classifier': 'classifier'}
  # 3 student layers over 4 teacher layers: 0, round(1.5) = 2 (half up), 3
  pairs = wd.pair_layers(_Reversed(), models.MLP(hidden=(8, 8, 8), num_classes=C),
                         jnp.zeros((1, D)))
  assert pairs == {'z_first': 'dense1', 'm_second': 'dense3', 'a_last': 'classifier'}
  with pytest.raises(ValueError, match='conv1d'):
    wd.pair_layers(models.CNN1D(channels=2), models.MLP(hidden=(8,)), jnp.zeros((1, 40)))


# ---------------------------------------------------------------- generator

@pytest.mark.parametrize('kind', ['mlp', 'cnn'])
def test_generated_shapes_and_values_match_reference(kind):
  if kind == 'mlp':
    student = models.MLP(hidden=(3,), num_classes=C)
    teacher = models.MLP(hidden=(9, 9), num_classes=C)
    x = _x((B, D))
  else:
    student = models.CNN1D(num_classes=C, channels=2)
    teacher = models.CNN1D(num_classes=C, channels=5)
    x = _x((B, 40))
  sv, tv = _fill(student, x, 0), _fill(teacher, x, 1)
  gen = wd.weight_generator(student, teacher, x[:1])
  g = _random_generator_params(gen.init(sv['params'], tv['params']), seed=2)
  out = jax.jit(gen.generate)(g, tv['params'])
  # the generated params have exactly the student's structure and shapes
  assert jax.tree.map(jnp.shape, out) == jax.tree.map(jnp.shape, sv['params'])
  assert g['free'] == {}
  for s, t in gen.pairs:
    p, q = _f64(g['P'][s]), _f64(g['Q'][s])
    w_t = _f64(tv['params'][t]['kernel'])
    ref = np.stack([p @ w @ q for w in w_t.reshape((-1,) + w_t.shape[-2:])])
    np.testing.assert_allclose(out[s]['kernel'], ref.reshape(out[s]['kernel'].shape),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[s]['bias'], _f64(tv['params'][t]['bias']) @ q,
                               rtol=1e-5, atol=1e-5)


def test_identity_generator_reproduces_teacher():
  x = _x((B, 40))
  model = models.CNN1D(num_classes=C, channels=3)
  tv = _fill(model, x, 1)
  sv = _fill(model, x, 2)
  gen = wd.weight_generator(model, model, x[:1])
  out = gen.generate(gen.init(sv['params'], tv['params']), tv['params'])
  jax.tree.map(np.testing.assert_array_equal, out, tv['params'])
  # a narrower student starts as the teacher's leading slice
  small = models.MLP(hidden=(3,), num_classes=C)
  big = models.MLP(hidden=(8,), num_classes=C)
  xs = _x((B, D))
  tv, sv = _fill(big, xs, 3), _fill(small, xs, 4)
  gen = wd.weight_generator(small, big, xs[:1])
  out = gen.generate(gen.init(sv['params'], tv['params']), tv['params'])
  np.testing.assert_array_equal(out['dense1']['kernel'], tv['params']['dense1']['kernel'][:, :3])
  np.testing.assert_array_equal(out['classifier']['kernel'],
                                tv['params']['classifier']['kernel'][:3])
  np.testing.assert_array_equal(out['dense1']['bias'], tv['params']['dense1']['bias'][:3])
  # a CNN's flattened head [L·C, K]: the leading channel slice at every position
  small, big = models.CNN1D(num_classes=C, channels=2), models.CNN1D(num_classes=C, channels=5)
  tv, sv = _fill(big, x, 5), _fill(small, x, 6)
  gen = wd.weight_generator(small, big, x[:1])
  out = gen.generate(gen.init(sv['params'], tv['params']), tv['params'])
  head = np.asarray(tv['params']['classifier']['kernel']).reshape(5, 5, C)  # [L, C_T, K]
  np.testing.assert_array_equal(out['classifier']['kernel'], head[:, :2].reshape(10, C))
  np.testing.assert_array_equal(out['conv2']['kernel'], tv['params']['conv2']['kernel'][:, :2, :2])


def test_learned_bias_and_random_init():
  student, teacher = models.MLP(hidden=(3,), num_classes=C), models.MLP(hidden=(6,), num_classes=C)
  x = _x((B, D))
  sv, tv = _fill(student, x, 0), _fill(teacher, x, 1)
  gen = wd.weight_generator(student, teacher, x[:1], bias='learned')
  assert gen.project_biases == ()
  g = gen.init(sv['params'], tv['params'], init='random', rng=jax.random.key(0))
  assert sorted(g['free']) == ['classifier/bias', 'dense1/bias']
  np.testing.assert_allclose(g['free']['dense1/bias'],
                             _f64(tv['params']['dense1']['bias']) @ _f64(g['Q']['dense1']),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.var(g['P']['dense1']) * D, 1.0, rtol=0.9)  # variance 1/in_T
  out = gen.generate(g, tv['params'])
  np.testing.assert_array_equal(out['dense1']['bias'], g['free']['dense1/bias'])


def test_generator_errors():
  student, teacher = models.CNN1D(channels=2, kernel_sizes=(3, 3, 3)), models.CNN1D(channels=4)
  x = _x((2, 40))
  sv, tv = _fill(student, x, 0), _fill(teacher, x, 1)
  gen = wd.weight_generator(student, teacher, x[:1])
  with pytest.raises(ValueError, match='last two'):  # window 3 vs 5
    gen.init(sv['params'], tv['params'])
  with pytest.raises(ValueError, match='rng'):
    generator = wd.WeightGenerator(pairs=(('conv2', 'conv2'),))
    generator.init(sv['params'], tv['params'], init='random')
  with pytest.raises(ValueError, match='init'):
    gen.init(sv['params'], tv['params'], init='zeros')
  with pytest.raises(ValueError, match='twice'):
    wd.WeightGenerator(pairs=(('a', 'b'), ('a', 'c')))
  with pytest.raises(ValueError, match='bias'):
    wd.weight_generator(student, teacher, x[:1], bias='zero')
  with pytest.raises(ValueError, match='no kernel'):
    wd.WeightGenerator(pairs=(('nope', 'conv1'),)).init(sv['params'], tv['params'])


# ------------------------------------------------------------------ phases

STUDENT = models.MLP(hidden=(3,), num_classes=C)
TEACHER = models.MLP(hidden=(8, 8), num_classes=C)


def _phase1():
  x = _x((B, D))
  sv, tv = _fill(STUDENT, x, 0), _fill(TEACHER, x, 1)
  gen = wd.weight_generator(STUDENT, TEACHER, x[:1])
  state = gen.create_state(STUDENT, sv, tv['params'], optax.sgd(1.0))
  state = state.replace(params=_random_generator_params(state.params, seed=5))
  return gen, state, tv, x


def test_phase1_trains_only_p_and_q_with_chain_rule_gradients():
  gen, state, tv, x = _phase1()
  assert set(state.params) == {'P', 'Q', 'free'} and state.params['free'] == {}
  assert state.aux_params == {}
  batch = {'x': x}
  step = jax.jit(steps.make_distill_step([steps.soft_kd(1.0, temperature=2.0)], TEACHER))
  new, metrics = step(state, tv, batch, jax.random.key(0))
  assert int(metrics['skipped']) == 0
  # the teacher's weights ride along untouched; nothing else is trainable
  jax.tree.map(np.testing.assert_array_equal, new.model_state[wd.TEACHER_WEIGHTS], tv['params'])
  # reference: G = dL/dW_S of the student at the generated weights, then the chain rule
  student_params = gen.generate(state.params, tv['params'])
  t_logits = TEACHER.apply(tv, x)

  def student_loss(p):
    return jnp.mean(losses.kl_distillation(STUDENT.apply({'params': p}, x), t_logits,
                                           temperature=2.0))

  g_student = jax.grad(student_loss)(student_params)
  for s, t in gen.pairs:
    p, q = _f64(state.params['P'][s]), _f64(state.params['Q'][s])
    w_t, b_t = _f64(tv['params'][t]['kernel']), _f64(tv['params'][t]['bias'])
    g_w, g_b = _f64(g_student[s]['kernel']), _f64(g_student[s]['bias'])
    grad_p = g_w @ (w_t @ q).T
    grad_q = (p @ w_t).T @ g_w + np.outer(b_t, g_b)
    # SGD with lr 1: old - new = gradient
    np.testing.assert_allclose(_f64(state.params['P'][s]) - _f64(new.params['P'][s]), grad_p,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_f64(state.params['Q'][s]) - _f64(new.params['Q'][s]), grad_q,
                               rtol=1e-4, atol=1e-6)
    assert np.abs(grad_p).sum() > 0 and np.abs(grad_q).sum() > 0


def test_phase2_starts_from_exactly_the_generated_weights():
  gen, state, tv, x = _phase1()
  generated = gen.generate(state.params, tv['params'])
  fine = gen.finetune_state(state, STUDENT, optax.sgd(0.1))
  assert isinstance(fine, TrainState)
  assert wd.TEACHER_WEIGHTS not in fine.model_state
  jax.tree.map(np.testing.assert_array_equal, fine.params, generated)
  # the plain student computes what the phase-1 forward computed, bit for bit
  phase1_logits = jax.jit(lambda v: state.apply_fn(v, x, train=False).logits)(state.variables)
  phase2_logits = jax.jit(lambda v: fine.apply_fn(v, x, train=False).logits)(fine.variables)
  np.testing.assert_array_equal(phase1_logits, phase2_logits)
  # and trains as a normal student: its own weights now move
  fine2, _ = jax.jit(steps.make_train_step())(
      fine, None, {'x': x, 'label': np.arange(B) % C}, jax.random.key(0))
  assert not np.array_equal(fine2.params['dense1']['kernel'], generated['dense1']['kernel'])
  jax.tree.map(np.testing.assert_array_equal, gen.student_variables(state.variables)['params'],
               generated)


# ------------------------------------------------------------- experiment

@pytest.mark.long
@pytest.mark.slow
def test_experiment_quick(tmp_path, monkeypatch):
  from experiments import common
  from experiments import weight_distillation as experiment
  from experiments.configs import weight_distillation as config_module
  monkeypatch.setattr(common, 'RESULTS', str(tmp_path / 'results'))
  config = config_module.get_config('quick')
  config.workdir = str(tmp_path / 'runs')
  rows = experiment.run(config)
  assert [r['run'] for r in rows] == ['teacher', 'scratch', 'KD', 'slice init + KD',
                                      'WD: phase 1 only', 'WD: phase 1 + phase 2']
  out = tmp_path / 'results' / config.results
  for name in ('results.md', 'results.csv', 'records.json', 'weight_distillation.png'):
    assert (out / name).exists(), name
