"""Tests for the transformer losses against float64 references from MobileBERT (Sun et al. 2020)."""

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest
from scipy import special

from kdjax import losses


RTOL = 1e-5


def _randn(seed, shape, scale=1.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


def _attention(seed, shape, scale=2.0, padded_keys=0):
  """Row-stochastic ``[..., heads, queries, keys]`` with exact zeros on the last padded keys."""
  logits = _randn(seed, shape, scale).astype(np.float64)
  if padded_keys:
    logits[..., -padded_keys:] = -np.inf
  return special.softmax(logits, axis=-1).astype(np.float32)


# ------------------------------------------------------------ float64 references

def ref_attention_kl(q, p, where=None):
  """Mean over heads and valid queries of KL(p_row || q_row), 0 log 0 = 0."""
  q, p = np.asarray(q, np.float64), np.asarray(p, np.float64)
  rows = np.sum(special.rel_entr(p, q), axis=-1)  # [..., heads, queries]
  if where is None:
    return rows.mean(axis=(-2, -1))
  where = np.broadcast_to(np.asarray(where)[..., None, :], rows.shape)
  total = np.sum(np.where(where, rows, 0.0), axis=(-2, -1))
  count = np.sum(where, axis=(-2, -1))
  return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def ref_hidden_mse(h_s, h_t, where=None):
  sq = (np.asarray(h_s, np.float64) - np.asarray(h_t, np.float64))**2
  if where is None:
    return sq.mean(axis=(-2, -1))
  w = np.broadcast_to(np.asarray(where)[..., None], sq.shape)
  count = w.sum(axis=(-2, -1))
  return np.where(count > 0, np.sum(sq * w, axis=(-2, -1)) / np.maximum(count, 1), 0.0)


# ------------------------------------------------------------------ attention_kl

@pytest.mark.parametrize('shape', [(2, 3, 4), (2, 2, 3, 4), (2, 2, 2, 3, 5)])
def test_attention_kl_matches_reference(shape):
  q, p = _attention(0, shape), _attention(1, shape)
  got = jax.jit(losses.attention_kl)(q, p)
  assert got.shape == shape[:-3] and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_attention_kl(q, p), rtol=RTOL)


def test_attention_kl_padded_keys_with_exact_zeros():
  q, p = _attention(2, (2, 2, 4, 6), padded_keys=2), _attention(3, (2, 2, 4, 6), padded_keys=2)
  assert np.all(q[..., -2:] == 0) and np.all(p[..., -2:] == 0)
  fn = jax.jit(jax.value_and_grad(lambda q, p: losses.attention_kl(q, p).sum(), argnums=(0, 1)))
  val, grads = fn(q, p)
  assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_allclose(losses.attention_kl(q, p), ref_attention_kl(q, p), rtol=RTOL)
  # Equals the loss on the unpadded keys only.
  np.testing.assert_allclose(losses.attention_kl(q, p),
                             ref_attention_kl(q[..., :-2], p[..., :-2]), rtol=RTOL)


def test_attention_kl_student_zero_under_teacher_mass_is_finite():
  p = np.array([[[[0.5, 0.5]]]], np.float32)
  q = np.array([[[[1.0, 0.0]]]], np.float32)
  val, g = jax.jit(jax.value_and_grad(lambda q: losses.attention_kl(q, p).sum()))(q)
  assert np.isfinite(val) and val > 40 and np.all(np.isfinite(g))


@pytest.mark.parametrize('where_shape', [(2, 5), (5,)])
def test_attention_kl_query_mask_equals_slicing(where_shape):
  q, p = _attention(4, (2, 3, 5, 4)), _attention(5, (2, 3, 5, 4))
  keep = np.array([True, False, True, True, False])
  where = np.broadcast_to(keep, where_shape)
  got = jax.jit(losses.attention_kl)(q, p, where=where)
  np.testing.assert_allclose(got, losses.attention_kl(q[..., keep, :], p[..., keep, :]), rtol=1e-6)
  np.testing.assert_allclose(got, ref_attention_kl(q, p, where), rtol=RTOL)


def test_attention_kl_per_example_mask_and_fully_masked_example():
  q, p = _attention(6, (3, 2, 4, 3)), _attention(7, (3, 2, 4, 3))
  where = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
  got = losses.attention_kl(q, p, where=where)
  np.testing.assert_allclose(got, ref_attention_kl(q, p, where), rtol=RTOL)
  np.testing.assert_allclose(got[0], losses.attention_kl(q[:1, :, :2], p[:1, :, :2])[0], rtol=1e-6)
  assert got[2] == 0.0


def test_attention_kl_leading_dims_behave_like_vmap():
  q, p = _attention(8, (2, 3, 2, 4, 5)), _attention(9, (2, 3, 2, 4, 5))
  np.testing.assert_allclose(jax.jit(losses.attention_kl)(q, p),
                             jax.jit(jax.vmap(jax.vmap(losses.attention_kl)))(q, p), rtol=1e-6)


def test_attention_kl_grads():
  # Mild logits keep probabilities away from 0, where finite differences of log q break down.
  q, p = _attention(10, (2, 2, 3, 4), 0.5), _attention(11, (2, 2, 3, 4), 0.5)
  where = np.array([[True, False, True], [True, True, True]])
  fn = lambda q, p: jnp.sum(losses.attention_kl(q, p, where=where))
  check_grads(jax.jit(fn), (q, p), order=1, modes=['rev'], atol=1e-2, rtol=1e-2, eps=1e-3)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_attention_kl_low_precision_computes_in_float32(dtype):
  q, p = (jnp.asarray(_attention(k, (2, 2, 3, 4)), dtype) for k in (12, 13))
  out = losses.attention_kl(q, p)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
      out, ref_attention_kl(np.asarray(q, np.float32), np.asarray(p, np.float32)), rtol=RTOL)


_attn_logits = hnp.arrays(np.float32, (2, 2, 3, 4), elements=st.floats(-20, 20, width=32))


@hypothesis.given(_attn_logits, _attn_logits)
def test_attention_kl_properties(zq, zp):
  q, p = np.asarray(jax.nn.softmax(zq)), np.asarray(jax.nn.softmax(zp))
  out = np.asarray(losses.attention_kl(q, p))
  assert np.all(np.isfinite(out)) and np.all(out >= -1e-5)
  np.testing.assert_allclose(losses.attention_kl(p, p), 0.0, atol=1e-5)


def test_attention_kl_bad_inputs():
  z = jnp.full((2, 3, 4), 0.25)
  with pytest.raises(ValueError, match='student_attention_probs'):
    losses.attention_kl(jnp.full((3, 4), 0.25), jnp.full((3, 4), 0.25))
  with pytest.raises(ValueError, match='teacher_attention_probs'):
    losses.attention_kl(z, jnp.full((2, 3, 5), 0.2))
  with pytest.raises(ValueError, match='student_attention_probs'):
    losses.attention_kl(jnp.zeros((2, 3, 4), jnp.int32), z)
  with pytest.raises(ValueError, match='where'):
    losses.attention_kl(z, z, where=np.ones(4, bool))  # keys, not queries
  with pytest.raises(ValueError, match='where'):
    losses.attention_kl(z, z, where=np.ones(3, np.int32))


# -------------------------------------------------------------- hidden_state_mse

@pytest.mark.parametrize('shape', [(5, 4), (2, 5, 4), (2, 3, 5, 4)])
def test_hidden_mse_matches_reference(shape):
  h_s, h_t = _randn(20, shape), _randn(21, shape)
  got = jax.jit(losses.hidden_state_mse)(h_s, h_t)
  assert got.shape == shape[:-2] and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_hidden_mse(h_s, h_t), rtol=RTOL)


def test_hidden_mse_token_mask_equals_slicing():
  h_s, h_t = _randn(22, (3, 6, 4)), _randn(23, (3, 6, 4))
  keep = np.array([True, True, False, True, False, True])
  got = jax.jit(losses.hidden_state_mse)(h_s, h_t, where=keep)
  np.testing.assert_allclose(got, losses.hidden_state_mse(h_s[:, keep], h_t[:, keep]), rtol=1e-6)
  per_example = np.random.default_rng(3).random((3, 6)) < 0.5
  per_example[2] = False
  got = losses.hidden_state_mse(h_s, h_t, where=per_example)
  np.testing.assert_allclose(got, ref_hidden_mse(h_s, h_t, per_example), rtol=RTOL)
  assert got[2] == 0.0


def test_hidden_mse_leading_dims_behave_like_vmap():
  h_s, h_t = _randn(24, (2, 3, 4, 5)), _randn(25, (2, 3, 4, 5))
  np.testing.assert_allclose(jax.jit(losses.hidden_state_mse)(h_s, h_t),
                             jax.jit(jax.vmap(jax.vmap(losses.hidden_state_mse)))(h_s, h_t),
                             rtol=1e-6)


def test_hidden_mse_grads():
  h_s, h_t = _randn(26, (2, 3, 4)), _randn(27, (2, 3, 4))
  where = np.array([[True, True, False], [False, True, True]])
  fn = lambda s, t: jnp.sum(losses.hidden_state_mse(s, t, where=where))
  check_grads(jax.jit(fn), (h_s, h_t), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_hidden_mse_low_precision_computes_in_float32(dtype):
  h_s, h_t = (jnp.asarray(_randn(k, (2, 3, 4), 100.0), dtype) for k in (28, 29))
  out = losses.hidden_state_mse(h_s, h_t)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(out))  # 1e4-sized squares overflow fp16
  np.testing.assert_allclose(
      out, ref_hidden_mse(np.asarray(h_s, np.float32), np.asarray(h_t, np.float32)), rtol=RTOL)


_hidden = hnp.arrays(np.float32, (2, 3, 4), elements=st.floats(-100, 100, width=32))


@hypothesis.given(_hidden, _hidden)
def test_hidden_mse_properties(h_s, h_t):
  out = np.asarray(losses.hidden_state_mse(h_s, h_t))
  assert np.all(out >= 0)
  np.testing.assert_array_equal(losses.hidden_state_mse(h_s, h_s), 0.0)
  np.testing.assert_allclose(losses.hidden_state_mse(h_t, h_s), out, rtol=1e-6)


def test_hidden_mse_bad_inputs():
  with pytest.raises(ValueError, match='student_hidden'):
    losses.hidden_state_mse(jnp.zeros(4), jnp.zeros(4))
  with pytest.raises(ValueError, match='teacher_hidden'):
    losses.hidden_state_mse(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 5)))
  with pytest.raises(ValueError, match='teacher_hidden'):
    losses.hidden_state_mse(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4), jnp.int32))
  with pytest.raises(ValueError, match='where'):
    losses.hidden_state_mse(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), where=np.ones(4, bool))


# --------------------------------------------------------------- shared: masks

@pytest.mark.parametrize('name', ['attention_kl', 'hidden_state_mse'])
def test_masked_queries_and_tokens_are_inert(name):
  # Garbage (inf, NaN) at masked queries/tokens changes neither the value nor any gradient.
  where = np.array([[True, False, True], [False, False, False]])  # [B, T]; example 1: none
  if name == 'attention_kl':
    fn, args = losses.attention_kl, [_attention(60 + i, (2, 2, 3, 4)) for i in range(2)]
    masked = ~where[:, None, :, None]
  else:
    fn, args = losses.hidden_state_mse, [_randn(62 + i, (2, 3, 4)) for i in range(2)]
    masked = ~where[:, :, None]
  loss = jax.jit(lambda a, b: fn(a, b, where=where))
  clean = loss(*args)
  assert clean[1] == 0.0
  dirty = [np.where(masked, np.float32(v), a) for a, v in zip(args, (np.nan, np.inf))]
  np.testing.assert_array_equal(loss(*dirty), clean)
  grads = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b, where=where)), argnums=(0, 1)))(*dirty)
  for g in grads:
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    np.testing.assert_array_equal(np.where(masked, g, 0.0), 0.0)
