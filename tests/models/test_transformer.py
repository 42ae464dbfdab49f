"""The zoo's transformer encoder: shapes, sown features, attention rows, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models


def _features(model, x):
  variables = models.init_variables(model, jax.random.key(0), x)
  logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(
      variables, x)
  return variables, logits, models.get_features(state['intermediates'])


def test_tokens_of():
  x = jnp.arange(2 * 64.0).reshape(2, 64)
  np.testing.assert_array_equal(models.tokens_of(x, 8), x.reshape(2, 8, 8))
  img = x.reshape(2, 8, 8, 1)
  np.testing.assert_array_equal(models.tokens_of(img, 4), x.reshape(2, 8, 8))
  assert models.tokens_of(jnp.zeros((2, 6, 5)), 4).shape == (2, 6, 5)


@pytest.mark.parametrize('shape, patch, tokens', [((3, 40), 4, 10), ((3, 8, 8, 1), 4, 8)])
def test_shapes_and_features(shape, patch, tokens):
  model = models.Transformer(width=8, depth=2, heads=2, patch=patch, num_classes=7)
  x = jax.random.normal(jax.random.key(1), shape)
  variables, logits, feats = _features(model, x)
  assert logits.shape == (3, 7)
  assert sorted(feats) == ['attention1', 'attention2', 'embedding', 'hidden0', 'hidden1',
                           'hidden2']
  assert feats['attention1'].shape == (3, 2, tokens, tokens)
  assert feats['hidden2'].shape == (3, tokens, 8) and feats['hidden0'].shape == (3, tokens, 8)
  assert feats['embedding'].shape == (3, 8)
  assert set(variables['params']) == {'embed', 'pos_embed', 'block1', 'block2', 'ln_final',
                                      'classifier'}
  assert 'intermediates' not in variables


def test_attention_rows_are_distributions():
  model = models.Transformer(width=8, depth=2, heads=4, patch=4)
  _, _, feats = _features(model, 3.0 * jax.random.normal(jax.random.key(2), (5, 40)))
  for name in ('attention1', 'attention2'):
    a = np.asarray(feats[name])
    assert (a >= 0).all()
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)


def test_hidden_is_the_residual_stream():
  """hidden{i} is block i's output: re-running block 2 on hidden1 gives hidden2."""
  model = models.Transformer(width=8, depth=2, heads=2, patch=4)
  x = jax.random.normal(jax.random.key(3), (2, 40))
  variables, _, feats = _features(model, x)
  block = models.EncoderBlock(heads=2)
  out, probs = block.apply({'params': variables['params']['block2']}, feats['hidden1'])
  np.testing.assert_allclose(out, feats['hidden2'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(probs, feats['attention2'], rtol=1e-5, atol=1e-6)


def test_registry_teacher_and_student():
  teacher, student = models.create('transformer_teacher'), models.create('transformer_student')
  assert (teacher.width, teacher.depth, teacher.heads) == (128, 4, 4)
  assert (student.width, student.depth, student.heads) == (32, 4, 4)
  assert models.create('transformer', 5, width=16).num_classes == 5
  x = jnp.zeros((1, 40))
  t = jax.eval_shape(lambda: models.init_variables(teacher, jax.random.key(0), x))
  s = jax.eval_shape(lambda: models.init_variables(student, jax.random.key(0), x))
  assert models.count_params(s['params']) < models.count_params(t['params']) / 8


def test_bad_inputs():
  model = models.Transformer(width=8, depth=1, heads=3, patch=4)
  with pytest.raises(ValueError, match='heads'):
    model.init(jax.random.key(0), jnp.zeros((2, 40)))
  model = models.Transformer(width=8, depth=1, heads=2, patch=3)
  with pytest.raises(ValueError, match='patch'):
    model.init(jax.random.key(0), jnp.zeros((2, 40)))
  with pytest.raises(ValueError, match='`x`'):
    model.init(jax.random.key(0), jnp.zeros((40,)))
