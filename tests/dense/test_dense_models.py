"""Tests for the dense detector and U-Net of the zoo, and how they meet the dense utilities."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import dense
from kdjax import losses
from kdjax import models


X = jnp.zeros((2, 48, 48, 1))


def _shapes(name, num_classes, x=X):
  """Output and parameter shapes of a zoo model, without compiling anything."""
  model = models.create(name, num_classes=num_classes)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), x))
  out = jax.eval_shape(lambda v: models.linen_forward(model)(v, x, train=True), variables)
  return model, variables, out


def test_detectors_teacher_and_student_share_the_grid():
  outs = {}
  for size in ('teacher', 'student'):
    model, variables, out = _shapes(f'dense_detector_{size}', 10)
    assert model.stride == 4
    assert out.logits.shape == (2, 12, 12, 11)
    assert out.features['box_logits'].shape == (2, 12, 12, 4, 8)
    assert {'stage1', 'stage2', 'stage3', 'backbone', 'cls_tower', 'reg_tower'} <= set(
        out.features)
    assert 'batch_stats' in out.model_state  # BatchNorm statistics update in training
    outs[size] = (out, models.count_params(variables['params']))
  (t, t_params), (s, s_params) = outs['teacher'], outs['student']
  assert t_params > 3 * s_params
  assert t.features['backbone'].shape == (2, 12, 12, 64)
  assert s.features['backbone'].shape == (2, 12, 12, 32)
  # Localization distillation and the soft class loss apply location by location.
  ld = jax.eval_shape(lambda a, b: losses.localization_distillation(a, b),
                      s.features['box_logits'], t.features['box_logits'])
  assert ld.shape == (2, 12, 12)
  w = jnp.ones((11,)).at[0].set(1.5)
  ce = jax.eval_shape(lambda a, b: losses.weighted_soft_cross_entropy(a, b, class_weights=w),
                      s.logits, t.logits)
  assert ce.shape == (2, 12, 12)
  assert dense.grid_shape(48, 4) == (12, 12)
  # Odd input sizes round up like grid_shape.
  _, _, odd = _shapes('dense_detector_student', 3, jnp.zeros((1, 30, 21, 1)))
  assert odd.logits.shape == (1,) + dense.grid_shape((30, 21), 4) + (4,)


def test_unets_expose_pairable_features():
  outs = {}
  for size in ('teacher', 'student'):
    _, _, out = _shapes(f'unet_{size}', 11)
    assert out.logits.shape == (2, 48, 48, 11)
    assert {'enc1', 'enc2', 'enc3', 'bottleneck', 'dec1', 'dec2', 'features'} <= set(out.features)
    outs[size] = out
  t, s = outs['teacher'], outs['student']
  assert t.features['bottleneck'].shape == (2, 12, 12, 64)
  assert s.features['bottleneck'].shape == (2, 12, 12, 32)
  pa = jax.eval_shape(lambda a, b: losses.pairwise_similarity_kd(a, b),
                      s.features['bottleneck'], t.features['bottleneck'])
  assert pa.shape == (2,)
  pa = jax.eval_shape(lambda a, b: losses.pairwise_similarity_kd(a, b, pool_size=4),
                      s.features['features'], t.features['features'])
  assert pa.shape == (2,)
  px = jax.eval_shape(losses.pixelwise_kd, s.logits, t.logits)
  assert px.shape == (2,)
  _, _, odd = _shapes('unet_student', 11, jnp.zeros((1, 29, 35, 1)))
  assert odd.logits.shape == (1, 29, 35, 11)


def test_detector_runs_trains_and_decodes():
  model = models.create('dense_detector_student', num_classes=10)
  forward = models.linen_forward(model)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 48, 48, 1)), jnp.float32)
  boxes = jnp.array([[[0.1, 0.1, 0.4, 0.35], [0.5, 0.5, 0.9, 0.8]],
                     [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
  labels = jnp.array([[3, 7], [-1, -1]])               # the second image is empty
  targets = dense.assign_targets(boxes, labels, image_size=48, stride=model.stride,
                                 num_bins=model.num_bins, num_classes=10)

  def loss_fn(params, state):
    out = forward({'params': params, **state}, x, train=True)
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, targets.classes).mean()
    # Distribution focal loss (GFL, Eq. 6) on the positives: the two bins around the target.
    d = targets.distances
    lo = jnp.floor(d).astype(jnp.int32)
    logp = jax.nn.log_softmax(out.features['box_logits'], axis=-1)
    take = lambda i: jnp.take_along_axis(logp, i[..., None], axis=-1)[..., 0]
    dfl = -((lo + 1 - d) * take(lo) + (d - lo) * take(lo + 1)).sum(-1)
    dfl = jnp.where(targets.positive, dfl, 0.0).sum() / jnp.maximum(targets.positive.sum(), 1)
    return ce + dfl, out

  @jax.jit
  def step(variables):
    params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state)
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    return {'params': params, **out.model_state}, loss, out, grads

  # An 'unsafe_rbg' key: compiling the initialisers' threefry draws costs ~5x more here.
  key = jax.random.key(0, impl='unsafe_rbg')
  variables = jax.jit(lambda k: models.init_variables(model, k, x))(key)
  variables, loss0, out, grads = step(variables)
  assert np.isfinite(float(loss0))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # The class head starts at background probability 0.99 (prior initialisation).
  p_bg = jax.nn.softmax(out.logits, -1)[..., 0]
  np.testing.assert_allclose(p_bg, 0.99, atol=0.01)
  for _ in range(5):
    variables, loss, out, _ = step(variables)
  assert float(loss) < float(loss0)
  d = dense.detect(out.logits, out.features['box_logits'], stride=4, image_size=48,
                   max_detections=5, score_threshold=0.0)
  assert d.boxes.shape == (2, 5, 4) and d.valid.all()
  assert ((d.boxes >= 0) & (d.boxes <= 1)).all()


def test_dense_models_reject_bad_inputs_and_are_registered():
  assert {'dense_detector_teacher', 'dense_detector_student', 'unet_teacher',
          'unet_student'} <= set(models.list_models())
  with pytest.raises(ValueError, match='`x` must have rank 4'):
    _shapes('dense_detector_student', 10, jnp.zeros((48, 48, 1)))
  with pytest.raises(ValueError, match='`x` must have rank 4'):
    _shapes('unet_student', 11, jnp.zeros((48, 48)))
  with pytest.raises(ValueError, match='num_bins'):
    model = models.DenseDetector(num_bins=1)
    jax.eval_shape(lambda: model.init(jax.random.key(0), X))
