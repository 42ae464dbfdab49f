"""Tests for triplet distillation against a float64 reference from Oki et al. 2020."""

import functools

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from kdjax import losses


RTOL = 1e-5
DISTANCES = ['euclidean', 'squared_euclidean', 'cosine']


def _randn(seed, shape, scale=1.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


def ref_distance(a, b, kind):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if kind == 'euclidean':
    return np.linalg.norm(a - b, axis=-1)
  if kind == 'squared_euclidean':
    return np.sum((a - b)**2, axis=-1)
  # Norms clamped away from 0 as documented: a zero vector has cosine 0 to anything.
  eps = np.finfo(np.float32).tiny ** 0.5
  norm = lambda x: np.maximum(np.linalg.norm(x, axis=-1), eps)
  return 1.0 - np.sum(a * b, -1) / (norm(a) * norm(b))


def ref_triplet(a, p, n, margin, kind):
  """max(d(anchor, positive) - d(anchor, negative) + margin, 0), float64."""
  return np.maximum(ref_distance(a, p, kind) - ref_distance(a, n, kind) + margin, 0.0)


@pytest.mark.parametrize('distance', DISTANCES)
@pytest.mark.parametrize('shape', [(5,), (2, 3, 5)])
def test_triplet_matches_reference(distance, shape):
  a, p, n = _randn(0, shape), _randn(1, shape), _randn(2, shape)
  margin = 0.5 if distance == 'cosine' else 1.0
  fn = jax.jit(functools.partial(losses.triplet_distillation, margin=margin, distance=distance))
  got = fn(a, p, n)
  assert got.shape == shape[:-1] and got.dtype == jnp.float32
  expected = ref_triplet(a, p, n, margin, distance)
  np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)


def test_triplet_both_hinge_branches_occur():
  a, p, n = _randn(3, (32, 4)), _randn(4, (32, 4)), _randn(5, (32, 4))
  out = np.asarray(losses.triplet_distillation(a, p, n, margin=0.5))
  assert 0 < np.count_nonzero(out) < out.size
  np.testing.assert_allclose(out, ref_triplet(a, p, n, 0.5, 'euclidean'), rtol=RTOL, atol=1e-6)


def test_triplet_default_is_euclidean_with_margin_one():
  a, p, n = _randn(6, (4, 3)), _randn(7, (4, 3)), _randn(8, (4, 3))
  np.testing.assert_allclose(losses.triplet_distillation(a, p, n),
                             ref_triplet(a, p, n, 1.0, 'euclidean'), rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize('distance', DISTANCES)
def test_triplet_leading_dims_behave_like_vmap(distance):
  a, p, n = _randn(9, (2, 3, 4)), _randn(10, (2, 3, 4)), _randn(11, (2, 3, 4))
  fn = functools.partial(losses.triplet_distillation, margin=0.3, distance=distance)
  np.testing.assert_allclose(jax.jit(fn)(a, p, n), jax.jit(jax.vmap(jax.vmap(fn)))(a, p, n),
                             rtol=1e-6)


@pytest.mark.parametrize('distance', DISTANCES)
def test_triplet_grads_away_from_kinks(distance):
  a, p, n = _randn(12, (16, 3)), _randn(13, (16, 3)), _randn(14, (16, 3))
  margin = 1.0
  value = ref_distance(a, p, distance) - ref_distance(a, n, distance) + margin
  keep = np.abs(value) > 0.2  # away from the hinge; random points are away from d = 0
  assert keep.sum() >= 4 and np.any(value[keep] > 0)
  args = tuple(x[keep] for x in (a, p, n))
  fn = lambda a, p, n: jnp.sum(losses.triplet_distillation(a, p, n, margin=margin,
                                                           distance=distance))
  check_grads(jax.jit(fn), args, order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_triplet_euclidean_gradient_is_finite_when_student_equals_teacher():
  a = _randn(15, (3, 4))
  n = _randn(16, (3, 4)) * 0.1 + a  # close negatives keep the hinge active
  fn = lambda a, p: losses.triplet_distillation(a, p, n, margin=1.0).sum()
  val, (g_a, g_p) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(a, a)
  np.testing.assert_allclose(val, ref_triplet(a, a, n, 1.0, 'euclidean').sum(), rtol=RTOL)
  assert np.all(np.isfinite(g_a)) and np.all(np.isfinite(g_p))
  # At d(a, p) = 0 the positive term's subgradient is 0: only the negative term pushes.
  g_neg_only = jax.grad(lambda a: -jnp.sum(jnp.linalg.norm(a - n, axis=-1)))(a)
  np.testing.assert_allclose(g_a, g_neg_only, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(g_p, 0.0)


def test_triplet_cosine_zero_vector_is_finite():
  a = np.zeros((1, 3), np.float32)
  p, n = _randn(17, (1, 3)), _randn(18, (1, 3))
  fn = lambda a: losses.triplet_distillation(a, p, n, distance='cosine').sum()
  val, g = jax.jit(jax.value_and_grad(fn))(a)
  assert np.isfinite(val) and np.all(np.isfinite(g))


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize('distance', DISTANCES)
def test_triplet_low_precision_computes_in_float32(dtype, distance):
  a, p, n = (jnp.asarray(_randn(k, (4, 6), 50.0), dtype) for k in (19, 20, 21))
  out = losses.triplet_distillation(a, p, n, margin=0.5, distance=distance)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(out))  # fp16 squares would overflow
  expected = ref_triplet(*(np.asarray(x, np.float32) for x in (a, p, n)), 0.5, distance)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=1e-5)


_emb = hnp.arrays(np.float32, (3, 4), elements=st.floats(-10, 10, width=32))


@hypothesis.given(_emb, _emb, _emb, st.floats(0, 2, width=32), st.sampled_from(DISTANCES))
def test_triplet_properties(a, p, n, margin, distance):
  out = np.asarray(losses.triplet_distillation(a, p, n, margin=margin, distance=distance))
  assert np.all(out >= 0)
  # Swapping positive and negative: the two hinge arguments sum to 2m, so one of them is >= m.
  swapped = np.asarray(losses.triplet_distillation(a, n, p, margin=margin, distance=distance))
  scale = 1 + np.maximum(ref_distance(a, p, distance), ref_distance(a, n, distance))
  assert np.all(out + swapped >= 2 * margin - 1e-5 * scale)
  # A student on its positive, with the negative equally far, pays exactly the margin.
  np.testing.assert_allclose(
      losses.triplet_distillation(a, p, p, margin=margin, distance=distance), margin,
      rtol=1e-5, atol=1e-5)


def test_triplet_unknown_distance_names_argument():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match='distance'):
    losses.triplet_distillation(z, z, z, distance='manhattan')


@pytest.mark.parametrize('margin', [-1.0, np.ones(2)])
def test_triplet_bad_margin(margin):
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match='margin'):
    losses.triplet_distillation(z, z, z, margin=margin)


def test_triplet_bad_inputs():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match='teacher_negative'):
    losses.triplet_distillation(z, z, jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match='teacher_positive'):
    losses.triplet_distillation(z, jnp.zeros((3, 3)), z)
  with pytest.raises(ValueError, match='student_embeddings'):
    losses.triplet_distillation(jnp.zeros((), jnp.float32), jnp.zeros(()), jnp.zeros(()))
  with pytest.raises(ValueError, match='student_embeddings'):
    losses.triplet_distillation(jnp.zeros((2, 3), jnp.int32), z, z)
