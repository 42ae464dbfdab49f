"""Tests for kdjax.losses logit losses against float64 references."""

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
from tests.losses import refs

RTOL = 1e-5


def _logits(seed, shape, scale=3.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


# ----------------------------------------------------------------- cross_entropy

def test_cross_entropy_matches_reference():
  z, y = _logits(0, (6, 5)), np.arange(6) % 5
  np.testing.assert_allclose(
      jax.jit(losses.cross_entropy)(z, y), refs.cross_entropy(z, y), rtol=RTOL)


def test_cross_entropy_label_smoothing_matches_reference():
  z, y, eps = _logits(1, (4, 3)), np.array([0, 1, 2, 0]), 0.1
  target = (1 - eps) * np.eye(3)[y] + eps / 3
  expected = -np.sum(target * np.log(refs.softmax(z)), axis=-1)
  got = jax.jit(functools.partial(losses.cross_entropy, label_smoothing=eps))(z, y)
  np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_cross_entropy_out_of_range_labels_are_nan():
  out = losses.cross_entropy(jnp.zeros((3, 4)), jnp.array([0, 4, -1]))
  assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2])


@pytest.mark.parametrize('labels, match', [
    (np.zeros((3, 1), np.int32), 'labels'),
    (np.zeros((3,), np.float32), 'labels'),
])
def test_cross_entropy_bad_labels(labels, match):
  with pytest.raises(ValueError, match=match):
    losses.cross_entropy(jnp.zeros((3, 4)), labels)


# --------------------------------------------------------------- kl_distillation

@pytest.mark.parametrize('tau', [0.5, 1.0, 4.0])
@pytest.mark.parametrize('shape', [(7,), (5, 7), (2, 3, 7)])
def test_kl_distillation_matches_reference(tau, shape):
  s, t = _logits(0, shape), _logits(1, shape)
  expected = tau**2 * refs.kl(refs.softmax(t, tau), refs.softmax(s, tau))
  got = jax.jit(functools.partial(losses.kl_distillation, temperature=tau))(s, t)
  assert got.shape == shape[:-1]
  np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)


def test_kl_distillation_leading_dims_behave_like_vmap():
  s, t = _logits(2, (3, 4, 6)), _logits(3, (3, 4, 6))
  fn = functools.partial(losses.kl_distillation, temperature=2.0)
  np.testing.assert_allclose(fn(s, t), jax.vmap(jax.vmap(fn))(s, t), rtol=1e-6)


def test_kl_distillation_class_mask_equals_slicing():
  s, t = _logits(4, (5, 8)), _logits(5, (5, 8))
  keep = np.array([1, 0, 1, 1, 0, 1, 1, 0], bool)
  masked = losses.kl_distillation(s, t, temperature=2.0, where=keep)
  sliced = losses.kl_distillation(s[:, keep], t[:, keep], temperature=2.0)
  np.testing.assert_allclose(masked, sliced, rtol=1e-6)


def test_kl_distillation_position_mask_zeroes_rows():
  s, t = _logits(6, (4, 5)), _logits(7, (4, 5))
  rows = np.array([True, False, True, False])
  out = losses.kl_distillation(s, t, where=rows[:, None])
  np.testing.assert_allclose(out[rows], losses.kl_distillation(s[rows], t[rows]), rtol=1e-6)
  np.testing.assert_array_equal(out[~rows], 0.0)


def test_kl_distillation_grads():
  s, t = _logits(8, (3, 5), 1.0), _logits(9, (3, 5), 1.0)
  fn = lambda s, t: jnp.sum(losses.kl_distillation(s, t, temperature=2.0))
  check_grads(fn, (s, t), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_kl_distillation_low_precision_computes_in_float32(dtype):
  s, t = _logits(10, (4, 6)), _logits(11, (4, 6))
  out = losses.kl_distillation(s.astype(dtype), t.astype(dtype), temperature=4.0)
  assert out.dtype == jnp.float32
  ref = losses.kl_distillation(
      jnp.asarray(s.astype(dtype), jnp.float32), jnp.asarray(t.astype(dtype), jnp.float32),
      temperature=4.0)
  np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_kl_distillation_large_logits_are_finite():
  s = jnp.array([[1e4, -1e4, 0.0]])
  t = jnp.array([[-1e4, 1e4, 0.0]])
  val, grad = jax.value_and_grad(lambda s: losses.kl_distillation(s, t).sum())(s)
  assert np.isfinite(val) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(val, 2e4, rtol=1e-5)


@pytest.mark.parametrize('kwargs, match', [
    (dict(temperature=0.0), 'temperature'),
    (dict(temperature=-1.0), 'temperature'),
])
def test_kl_distillation_bad_temperature(kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.kl_distillation(jnp.zeros((2, 3)), jnp.zeros((2, 3)), **kwargs)


def test_kl_distillation_shape_mismatch_names_arguments():
  with pytest.raises(ValueError, match='teacher_logits'):
    losses.kl_distillation(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_kl_distillation_integer_input_rejected():
  with pytest.raises(ValueError, match='student_logits'):
    losses.kl_distillation(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)))


_finite_logits = hnp.arrays(
    np.float32, (3, 5), elements=st.floats(-30, 30, width=32))


@hypothesis.given(_finite_logits, _finite_logits, st.floats(-50, 50, width=32),
                  st.sampled_from([0.5, 1.0, 4.0]))
def test_kl_distillation_properties(s, t, shift, tau):
  kl = np.asarray(losses.kl_distillation(s, t, temperature=tau))
  assert np.all(kl >= -1e-5)
  np.testing.assert_allclose(losses.kl_distillation(s, s, temperature=tau), 0.0, atol=1e-5)
  shifted = losses.kl_distillation(s + shift, t - shift, temperature=tau)
  np.testing.assert_allclose(shifted, kl, rtol=1e-3, atol=1e-3 * tau**2)


# --------------------------------------------------------------------- hinton_kd

def test_hinton_kd_matches_reference():
  s, t, y = _logits(12, (6, 4)), _logits(13, (6, 4)), np.array([0, 1, 2, 3, 0, 1])
  tau, alpha = 4.0, 0.3
  expected = (alpha * refs.cross_entropy(s, y)
              + (1 - alpha) * tau**2 * refs.kl(refs.softmax(t, tau), refs.softmax(s, tau)))
  got = jax.jit(functools.partial(losses.hinton_kd, temperature=tau, alpha=alpha))(s, t, y)
  np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_hinton_kd_grads():
  s, t, y = _logits(14, (3, 4), 1.0), _logits(15, (3, 4), 1.0), np.array([0, 1, 3])
  check_grads(lambda s: losses.hinton_kd(s, t, y).sum(), (s,), order=1, modes=['rev'],
              atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize('kwargs, match', [
    (dict(alpha=1.5), 'alpha'), (dict(temperature=0.0), 'temperature')])
def test_hinton_kd_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.hinton_kd(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), **kwargs)


def test_hinton_kd_labels_of_wrong_rank():
  with pytest.raises(ValueError, match='labels'):
    losses.hinton_kd(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))
