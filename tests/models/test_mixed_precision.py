"""bfloat16 compute (models.mixed_precision): float32 state, float32 losses, close to float32."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import models
from kdjax import steps
from kdjax.state import TrainState


def _batches(shape, n=8, b=32, c=10):
  rng = np.random.default_rng(0)
  return [{'x': rng.normal(size=(b, *shape)).astype(np.float32),
           'label': rng.integers(0, c, size=b).astype(np.int32)} for _ in range(n)]


def _train(student, teacher, batches, dtype):
  x0 = batches[0]['x'][:1]
  s_vars = models.init_variables(student, jax.random.key(0), x0)
  t_vars = models.init_variables(teacher, jax.random.key(1), x0)
  wrap = (lambda m: models.mixed_precision(m, dtype)) if dtype else models.as_forward
  state = TrainState.create(apply_fn=wrap(student), variables=s_vars,
                            tx=optax.sgd(0.05, momentum=0.9))
  step = jax.jit(steps.make_distill_step(
      (steps.task_ce(0.1), steps.soft_kd(0.9, temperature=4.0)), wrap(teacher)))
  history = []
  for batch in batches:
    state, metrics = step(state, t_vars, batch, jax.random.key(2))
    history.append(metrics)
  jaxpr = str(jax.make_jaxpr(step)(state, t_vars, batches[0], jax.random.key(2)))
  return state, history, jaxpr


# Relative error of the total parameter update. bfloat16 keeps 8 mantissa bits:
# the MLP's gradients are off by ~2% at step 1, the randomly initialised
# ResNet's (BatchNorm normalising in bfloat16) by ~12%, measured.
@pytest.mark.parametrize('student, teacher, shape, update_rtol', [
    (models.MLP(hidden=(64, 64), num_classes=10), models.create('cnn1d', 10), (40,), 0.05),
    pytest.param(models.create('resnet8', 10), models.create('resnet8', 10), (8, 8, 3), 0.2,
                 marks=pytest.mark.long),  # a ResNet's compile: in `make test-long`
])
def test_bf16_compute_matches_float32_within_tolerance(student, teacher, shape, update_rtol):
  batches = _batches(shape)
  ref, ref_hist, ref_jaxpr = _train(student, teacher, batches, None)
  got, hist, jaxpr = _train(student, teacher, batches, jnp.bfloat16)
  assert 'bf16' in jaxpr and 'bf16' not in ref_jaxpr
  # Stored state stays float32: parameters, optimizer moments, BatchNorm statistics.
  for leaf in jax.tree.leaves((got.params, got.opt_state, got.model_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  for m in hist:
    assert m['loss'].dtype == jnp.float32 and int(m['skipped']) == 0
  # Losses agree to bfloat16 precision (8 mantissa bits) over the whole run.
  np.testing.assert_allclose([float(m['loss']) for m in hist],
                             [float(m['loss']) for m in ref_hist], rtol=3e-2)
  # The parameters' total update agrees to a few percent (SGD: linear in the gradients).
  init = models.init_variables(student, jax.random.key(0), batches[0]['x'][:1])['params']
  flat = lambda tree: np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree)])  # noqa: E731
  moved_ref, moved = flat(ref.params) - flat(init), flat(got.params) - flat(init)
  assert np.linalg.norm(moved - moved_ref) < update_rtol * np.linalg.norm(moved_ref)
  if got.model_state:
    chex.assert_trees_all_close(got.model_state, ref.model_state, rtol=5e-2, atol=5e-3)


def test_integer_inputs_are_not_cast():
  fwd = models.mixed_precision(models.function_forward(
      lambda p, x: p['emb'][x].sum(-2)))
  out = fwd({'params': {'emb': jnp.ones((5, 3))}}, jnp.array([[0, 4]]), train=False)
  assert out.logits.dtype == jnp.float32
  np.testing.assert_array_equal(out.logits, [[2.0, 2.0, 2.0]])


def test_train_and_evaluate_in_bf16_learns_like_float32():
  from kdjax import runs
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=300)
  x = (rng.normal(size=(300, 8)) + 2.0 * np.eye(3, 8)[labels]).astype(np.float32)
  src = [{'x': x[i], 'label': np.int32(labels[i]), 'id': np.int32(i)} for i in range(300)]
  train, test = src[:200], src[200:]
  results = {}
  for dtype in (None, jnp.bfloat16):
    results[dtype] = runs.train_and_evaluate(
        models.MLP(hidden=(32,), num_classes=3), train_data=train, eval_data=test,
        num_steps=60, batch_size=50, learning_rate=1e-2, progress=False, compute_dtype=dtype)
  f32, bf16 = results[None], results[jnp.bfloat16]
  assert f32.metrics['accuracy'] > 0.8
  assert abs(bf16.metrics['accuracy'] - f32.metrics['accuracy']) <= 0.05
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(bf16.state.params))
