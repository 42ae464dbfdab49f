"""Tests for kdjax.gan: Fréchet distance, the critic's gradient penalty, the distillation step.

Tiny generators and critics (widths 1-4) on random 8x8 images: compilation is
the cost, so the jitted steps are built once per module (fixtures) and the
error checks run under ``jax.eval_shape`` (tracing only).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import linalg

from kdjax import _adversarial
from kdjax import checkpoint
from kdjax import gan
from kdjax import models
from kdjax import train
from kdjax._adversarial import AdversarialState
from kdjax.state import TrainState
from tests.batches import CyclingBatches


Z = 4  # noise size of the tiny generators
CPU = jax.devices()[0]
KEY = jax.random.key(1, impl='unsafe_rbg')  # cheaper initialiser compilation on CPU


def tree_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


# --------------------------------------------------------------- Fréchet distance

def _random_gaussian(rng, d):
  a = rng.normal(size=(d, d))
  return rng.normal(size=d), a @ a.T + 0.1 * np.eye(d)


def _reference_frechet(mu1, s1, mu2, s2):
  """The symmetric form ``Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)``: square roots of SPD matrices only."""
  r1 = linalg.sqrtm(s1).real
  cross = linalg.sqrtm(r1 @ s2 @ r1).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


@pytest.mark.parametrize('d', [5, 6, 8])
def test_frechet_distance_matches_a_float64_scipy_reference(d):
  rng = np.random.default_rng(d)
  (mu1, s1), (mu2, s2) = _random_gaussian(rng, d), _random_gaussian(rng, d)
  want = _reference_frechet(mu1, s1, mu2, s2)
  assert want > 1.0
  assert gan.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9, abs=1e-9)
  assert gan.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=1e-9, abs=1e-9)
  assert abs(gan.frechet_distance(mu1, s1, mu1, s1)) < 1e-9
  # From samples: the Gaussians of the empirical mean and unbiased covariance.
  fa, fb = rng.normal(size=(50, d)), 2.0 + rng.normal(size=(40, d)) @ rng.normal(size=(d, d))
  ref = _reference_frechet(fa.mean(0), np.cov(fa.T), fb.mean(0), np.cov(fb.T))
  assert gan.feature_frechet_distance(fa, fb) == pytest.approx(ref, rel=1e-9)
  with pytest.raises(ValueError, match='sigma'):
    gan.frechet_distance(mu1, s1, mu2, s2[:-1, :-1])


# ------------------------------------------------------------ conditional accuracy

def test_conditional_accuracy_by_hand():
  # Classes 0, 1, 2 (3 never generated). Predicted 0 1 | 1 2 0 | 2: right 1 0 | 1 0 0 | 1.
  logits = np.array([[5, 1, 0, 0], [0, 2, 1, 0], [0, 3, 1, 0], [0, 1, 4, 0], [9, 0, 0, 0],
                     [0, 0, 1, 0]], np.float64)
  labels = np.array([0, 0, 1, 1, 1, 2])
  out = gan.conditional_accuracy(logits, labels, num_classes=4)
  assert out['accuracy'] == pytest.approx(3 / 6)
  np.testing.assert_allclose(out['per_class'][:3], [1 / 2, 1 / 3, 1.0])
  assert np.isnan(out['per_class'][3])
  with pytest.raises(ValueError, match='`logits`'):
    gan.conditional_accuracy(logits[:, 0], labels)


# ---------------------------------------------------------- the gradient penalty

def test_critic_update_gradient_penalty_matches_an_independent_reference():
  critic = models.GanCritic(widths=(2,), num_classes=3)
  x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
  y = jnp.array([0, 2, 1])
  variables = jax.jit(lambda k: models.init_variables(critic, k, {'image': x, 'label': y}))(
      KEY)
  lr, lam = 0.1, 10.0
  state = TrainState.create(apply_fn=critic, variables=variables, tx=optax.sgd(lr))
  score = lambda p, v: _adversarial.critic_scores(state, p, {'image': v, 'label': y})  # noqa
  # real == fake: every interpolate is x whatever the draws, and the Wasserstein
  # term D(fake) − D(real) is 0 with a zero gradient, so the update is −lr·λ·∇GP.

  def one_score(params, image, label):  # a single example through the raw module
    return critic.apply({'params': params}, {'image': image[None], 'label': label[None]})[0]

  def reference_gp(params):
    grads = jax.vmap(jax.grad(one_score, argnums=1), (None, 0, 0))(params, x, y)
    norms = jnp.sqrt(jnp.sum(grads ** 2, axis=(1, 2, 3)))
    return jnp.mean((norms - 1.0) ** 2)

  h = 1e-2
  shifts = jnp.eye(64).reshape(64, 8, 8, 1) * h

  @jax.jit
  def compute(state):  # one compilation for the update and every reference
    new, metrics = _adversarial.critic_update(state, score, x, x, jax.random.key(3),
                                              gp_weight=lam)
    gp, gp_grad = jax.value_and_grad(reference_gp)(state.params)
    batched = jax.vmap(one_score, (None, 0, None))
    plus = batched(state.params, x[0] + shifts, y[0])
    minus = batched(state.params, x[0] - shifts, y[0])
    grad0 = jax.grad(one_score, argnums=1)(state.params, x[0], y[0])
    return new, metrics, gp, gp_grad, plus, minus, grad0

  new, metrics, gp, gp_grad, plus, minus, grad0 = compute(state)
  assert float(metrics['critic/loss/gp']) == pytest.approx(float(gp), rel=1e-5)
  assert float(metrics['critic/loss/wasserstein']) == pytest.approx(0.0, abs=1e-6)
  assert float(metrics['critic/loss']) == pytest.approx(lam * float(gp), rel=1e-5)
  # The input gradient of example 0 against central finite differences.
  fd = (np.asarray(plus, np.float64) - np.asarray(minus, np.float64)) / (2 * h)
  np.testing.assert_allclose(np.asarray(grad0).ravel(), fd, rtol=0.02, atol=2e-3)
  # The update applied: params − lr·λ·∇_params GP.
  want = jax.tree.map(lambda p, g: p - lr * lam * g, state.params, gp_grad)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new.params, want)
  assert int(new.step) == 1


# ------------------------------------------------------------- distillation step

@pytest.fixture(scope='module')
def tiny():
  teacher, student = models.GanGenerator(width=4), models.GanGenerator(width=1)
  critic = models.GanCritic(widths=(2,))
  batch = {'x': jax.random.uniform(jax.random.key(0), (6, 8, 8, 1)),
           'label': jnp.arange(6) % 10}

  @jax.jit
  def init(key):  # one compilation for every initialiser
    k = jax.random.split(key, 5)
    inputs = gan.generator_inputs(batch['label'], k[0], Z)
    t_vars = models.init_variables(teacher, k[1], inputs)
    s_vars = models.init_variables(student, k[2], inputs)
    c_vars = models.init_variables(critic, k[3], {'image': batch['x'], 'label': batch['label']})
    aux = gan.init_feature_adapters(models.as_forward(student)(s_vars, inputs, train=False),
                                    models.as_forward(teacher)(t_vars, inputs, train=False),
                                    k[4])
    return t_vars, s_vars, c_vars, aux

  t_vars, s_vars, c_vars, aux = init(KEY)
  g_fwd, c_fwd = models.linen_forward(student), models.linen_forward(critic)

  def make(with_aux=True):
    return AdversarialState(
        TrainState.create(apply_fn=g_fwd, variables=s_vars, tx=optax.adam(1e-2),
                          aux_params=aux if with_aux else None),
        TrainState.create(apply_fn=c_fwd, variables=c_vars, tx=optax.adam(1e-3, b1=0.5,
                                                                          b2=0.9)))

  kw = dict(output_weight=1.0, feature_weight=1.0, adversarial_weight=1.0, noise_dim=Z)
  return dict(teacher=teacher, student=student, batch=batch, t_vars=jax.device_put(t_vars, CPU),
              make=make, raw=gan.make_gan_distill_step(teacher, **kw),
              frozen=jax.jit(gan.make_gan_distill_step(teacher, train_critic=False, **kw)))


def test_distill_step_build_errors_name_the_argument(tiny):
  t = tiny['teacher']
  for kwargs, match in [({'output_weight': -1.0}, 'output_weight'),
                        ({'output_loss': 'l3'}, 'output_loss'),
                        ({'noise_dim': 0}, 'noise_dim'),
                        ({'critic_steps': 0}, 'critic_steps'),
                        ({'gp_weight': -1.0}, 'gp_weight'),
                        ({'feature_weight': 1.0, 'features': ()}, 'features')]:
    with pytest.raises(ValueError, match=match):
      gan.make_gan_distill_step(t, **kwargs)
  with pytest.raises(ValueError, match='output_weight.*teacher'):
    gan.make_gan_distill_step(None, output_weight=1.0)


def test_distill_step_trace_errors_name_the_argument(tiny):
  state, batch, rng, t_vars = tiny['make'](), tiny['batch'], jax.random.key(0), tiny['t_vars']
  step = tiny['raw']
  inputs = gan.generator_inputs(batch['label'], rng, Z)
  trace = lambda *a: jax.eval_shape(*a)  # noqa: E731 (tracing only, no compilation)
  cases = [
      (lambda: trace(step, state, t_vars, {'x': batch['x']}, rng), "`batch` must hold 'x'"),
      (lambda: trace(step, state, t_vars, {**batch, 'x': batch['x'][..., 0]}, rng),
       r"`batch\['x'\]` must be real images"),
      (lambda: trace(step, state, t_vars, {**batch, 'label': batch['label'][:3]}, rng),
       r"`batch\['label'\]` must be \[B\]"),
      (lambda: trace(step, state, t_vars, {**batch, 'x': jnp.zeros((6, 16, 16, 1))}, rng),
       r"teacher's images and `batch\['x'\]`"),
      (lambda: trace(step, state, None, batch, rng), '`teacher_variables`'),
      (lambda: trace(step, tiny['make'](with_aux=False), t_vars, batch, rng),
       r"`state.aux_params\['adapters'\]`"),
      (lambda: trace(step, state.student, t_vars, batch, rng), 'AdversarialState'),
      (lambda: trace(gan.make_gan_distill_step(tiny['teacher'], feature_weight=1.0,
                                               features=('stage9',), noise_dim=Z),
                     state, t_vars, batch, rng), r"no adapter for feature 'stage9'"),
      (lambda: trace(lambda s, t: gan.init_feature_adapters(
          models.as_forward(tiny['student'])(s, inputs, train=False),
          models.as_forward(tiny['teacher'])(t, inputs, train=False), rng,
          features=('stage9',)), state.student.variables, t_vars),
       "`features`: the student has no feature 'stage9'"),
  ]
  for run, match in cases:
    with pytest.raises(ValueError, match=match):
      run()


def test_frozen_critic_is_bitwise_unchanged_and_the_teacher_is_not_optimised(tiny):
  state, batch, t_vars = tiny['make'](), tiny['batch'], tiny['t_vars']
  before = jax.tree.map(np.asarray, state)
  new = state
  for i in range(2):
    new, metrics = tiny['frozen'](new, t_vars, batch, jax.random.key(i))
  assert int(new.student.step) == 2 and int(metrics['skipped']) == 0
  assert tree_equal(new.critic, before.critic)  # params, optimizer state and step
  assert not tree_equal(new.student.params, before.student.params)
  assert not tree_equal(new.student.aux_params, before.student.aux_params)
  assert {'loss/output', 'loss/feature', 'loss/adversarial', 'distance/teacher'} <= set(metrics)
  assert not any(k.startswith('critic/') for k in metrics)
  # The optimizer sees the student's params and adapters, never the teacher's variables.
  trainable = jax.tree.structure({'params': before.student.params,
                                  'aux': before.student.aux_params})
  adam = new.student.opt_state[0]
  assert jax.tree.structure(adam.mu) == trainable and jax.tree.structure(adam.nu) == trainable
  n_opt = sum(np.size(v) for v in jax.tree.leaves(new.student.opt_state))
  n_trainable = sum(np.size(v) for v in jax.tree.leaves(state.student.trainable))
  assert n_opt == 2 * n_trainable + 1  # mu, nu and Adam's count
  teacher_shapes = {np.shape(v) for v in jax.tree.leaves(t_vars)}
  student_shapes = {np.shape(v) for v in jax.tree.leaves(state.student.trainable)}
  extra = teacher_shapes - student_shapes
  assert extra and not extra & {np.shape(v) for v in jax.tree.leaves(new.student.opt_state)}


@pytest.mark.long  # ~16 CPU s: a compile of the two-player step and three checkpointed fits
def test_two_player_fit_checkpoint_resumes_bitwise(tiny, tmp_path):
  """GAN training (both players update) through fit: stopped at 2, resumed to 4 = straight 4."""
  data = [{k: v[i:i + 3] for k, v in tiny['batch'].items()} for i in (0, 3)]
  step = gan.make_gan_step(noise_dim=Z)

  def run(num_steps, directory=None):
    ckpt = None if directory is None else checkpoint.Checkpointer(directory)
    result = train.fit(jax.device_put(tiny['make'](), CPU), step, CyclingBatches(data),
                       num_steps=num_steps, rng=jax.random.key(7), checkpointer=ckpt,
                       checkpoint_every=2, log_every=2, progress=False, compiled=False)
    if ckpt is not None:
      ckpt.close()
    return result

  straight = run(4)
  start = tiny['make']()
  assert int(straight.state.student.step) == int(straight.state.critic.step) == 4
  assert all(h['skipped'] == 0 for h in straight.history)
  assert not tree_equal(straight.state.critic.params, start.critic.params)
  assert not tree_equal(straight.state.student.params, start.student.params)
  first = run(2, directory=tmp_path / 'run')
  assert first.resumed_from is None
  resumed = run(4, directory=tmp_path / 'run')
  assert resumed.resumed_from == 2
  assert tree_equal(resumed.state, straight.state)
  # The checkpoint holds both players with their optimizer states (and the adapters).
  restored, _ = checkpoint.Checkpointer(tmp_path / 'run').restore(start)
  assert isinstance(restored, AdversarialState) and int(restored.critic.step) == 4
  assert tree_equal(restored, resumed.state)


@pytest.mark.long
def test_distillation_brings_the_student_to_the_teacher():
  """300 updates: distilled (L1 + features + adversarial) vs alone, same init, data and noise."""
  teacher, student = models.GanGenerator(width=8), models.GanGenerator(width=2)
  critic = models.GanCritic(widths=(4, 8))
  real = jax.random.uniform(jax.random.key(0), (64, 8, 8, 1)) ** 3
  labels = jnp.arange(64) % 10

  @jax.jit
  def init(key):
    k = jax.random.split(key, 5)
    inputs = gan.generator_inputs(labels, k[0], Z)
    t_vars = models.init_variables(teacher, k[1], inputs)  # a fixed random teacher
    s_vars = models.init_variables(student, k[2], inputs)
    c_vars = models.init_variables(critic, k[3], {'image': real, 'label': labels})
    aux = gan.init_feature_adapters(models.as_forward(student)(s_vars, inputs, train=False),
                                    models.as_forward(teacher)(t_vars, inputs, train=False),
                                    k[4])
    return t_vars, s_vars, c_vars, aux

  t_vars, s_vars, c_vars, aux = init(KEY)
  # A random teacher's images are ~0.5 everywhere, like the student's at init: a 30x output
  # kernel makes them varied patterns (std 0.15 over pixels) the student must learn to match.
  t_vars = {'params': {**t_vars['params'], 'out': {**t_vars['params']['out'], 'kernel': 30.0
                                                   * t_vars['params']['out']['kernel']}}}
  data = [{'x': real[i:i + 16], 'label': labels[i:i + 16]} for i in range(0, 64, 16)]

  def train_student(step, aux_params):
    state = AdversarialState(
        TrainState.create(apply_fn=student, variables=s_vars, tx=optax.adam(3e-3),
                          aux_params=aux_params),
        TrainState.create(apply_fn=critic, variables=c_vars, tx=optax.adam(1e-3, b1=0.5,
                                                                           b2=0.9)))
    return train.fit(state, step, CyclingBatches(data), num_steps=300, rng=jax.random.key(6),
                     teacher_variables=t_vars, log_every=100, progress=False,
                     compiled=False).state.student.variables

  distilled = train_student(gan.make_gan_distill_step(teacher, output_weight=10.0,
                                                      feature_weight=1.0, noise_dim=Z), aux)
  alone = train_student(gan.make_gan_step(noise_dim=Z), None)
  eval_labels, key = jnp.arange(200) % 10, jax.random.key(99)  # fresh noise
  make = jax.jit(lambda m, v: gan.generate(m, v, eval_labels, key, noise_dim=Z),
                 static_argnums=0)
  t_img = make(teacher, t_vars)

  def distance(variables):
    return float(jnp.mean(jnp.abs(make(student, variables) - t_img)))

  d_distilled, d_alone, d_init = distance(distilled), distance(alone), distance(s_vars)
  # Measured: 0.111 distilled, 0.497 alone, 0.137 at init (the alone student moves to the data).
  assert d_init > 0.1, d_init
  assert d_distilled < 0.5 * d_alone, (d_distilled, d_alone, d_init)
  assert d_distilled < 0.9 * d_init, (d_distilled, d_alone, d_init)


def test_fit_auto_mode_runs_a_convolutional_generator_one_call_per_step(tiny):
  """A generator does not read ``batch['x']``: fit judges it by tracing the step (no compile)."""
  data = CyclingBatches([{k: v[:3] for k, v in tiny['batch'].items()}])
  state = tiny['make']()
  assert train._student_convolves_on_cpu(state, data, gan.make_gan_step(noise_dim=Z), None)
  assert data.position == 0  # the peeked batch was put back
  assert not train._student_convolves_on_cpu(state, data)  # without the step: no verdict
