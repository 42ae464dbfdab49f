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
from scipy import special

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


def test_out_of_range_labels_raise_when_concrete_and_are_nan_when_traced():
  labels = jnp.array([0, 4, -1])
  with pytest.raises(ValueError, match=r'`labels` must be class indices in \[0, 4\).*'
                                       r'got 4 at index \(1,\), -1 at index \(2,\)'):
    losses.cross_entropy(jnp.zeros((3, 4)), labels)
  out = jax.jit(losses.cross_entropy)(jnp.zeros((3, 4)), labels)
  assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2])


@pytest.mark.parametrize('loss', [
    lambda s, t, y: losses.hinton_kd(s, t, y),
    lambda s, t, y: losses.decoupled_kd(s, t, y),
    lambda s, t, y: losses.cross_entropy(s, y),
])
def test_label_losses_reject_a_concrete_out_of_range_label(loss):
  s, t = jax.random.normal(jax.random.key(0), (2, 4, 10))
  with pytest.raises(ValueError, match='`labels`.*got 12 at index'):
    loss(s, t, jnp.array([0, 1, 2, 12]))
  assert np.all(np.isfinite(loss(s, t, jnp.array([0, 1, 2, 9]))))


@pytest.mark.parametrize('labels, match', [
    (np.zeros((3, 1), np.int32), 'labels'),
    (np.zeros((3,), np.float32), 'labels'),
])
def test_cross_entropy_bad_labels(labels, match):
  with pytest.raises(ValueError, match=match):
    losses.cross_entropy(jnp.zeros((3, 4)), labels)


def test_cross_entropy_leading_dims_behave_like_vmap():
  z, y = _logits(200, (3, 4, 5)), np.random.default_rng(201).integers(0, 5, (3, 4))
  for eps in (0.0, 0.2):
    fn = functools.partial(losses.cross_entropy, label_smoothing=eps)
    got = jax.jit(fn)(z, y)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, jax.jit(jax.vmap(jax.vmap(fn)))(z, y), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(losses.cross_entropy)(z, y),
                             refs.cross_entropy(z, y), rtol=RTOL)


def test_cross_entropy_grads():
  z, y = _logits(202, (3, 5), 1.0), np.array([0, 4, 2])
  for eps in (0.0, 0.1):
    check_grads(jax.jit(lambda z: jnp.sum(losses.cross_entropy(z, y, label_smoothing=eps))),
                (z,), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_cross_entropy_gradient_is_softmax_minus_target():
  z, y, eps = _logits(203, (4, 5)), np.array([0, 1, 4, 2]), 0.2
  grad = jax.jit(jax.grad(lambda z: jnp.sum(losses.cross_entropy(z, y, label_smoothing=eps))))(z)
  target = (1 - eps) * np.eye(5)[y] + eps / 5
  np.testing.assert_allclose(grad, refs.softmax(z) - target, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_cross_entropy_low_precision_computes_in_float32(dtype):
  z, y = _logits(204, (4, 6)).astype(dtype), np.array([0, 5, 3, 1])
  z32 = np.asarray(z, np.float32)  # the values the loss actually sees
  out = jax.jit(losses.cross_entropy)(z, y)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, refs.cross_entropy(z32, y), rtol=1e-5, atol=1e-6)
  smoothed = jax.jit(functools.partial(losses.cross_entropy, label_smoothing=0.1))(z, y)
  target = 0.9 * np.eye(6)[y] + 0.1 / 6
  expected = -np.sum(target * special.log_softmax(np.float64(z32), axis=-1), axis=-1)
  np.testing.assert_allclose(smoothed, expected, rtol=1e-5, atol=1e-6)


def test_cross_entropy_large_logits_are_finite():
  z = jnp.array([[1e4, -1e4, 0.0], [0.0, 1e4, -1e4], [-1e4, -1e4, 1e4]])
  y = jnp.array([1, 1, 0])
  for eps in (0.0, 0.1):
    val = _assert_finite_value_and_grads(
        lambda z: losses.cross_entropy(z, y, label_smoothing=eps), z)
    log_p = special.log_softmax(np.asarray(z, np.float64), axis=-1)
    target = (1 - eps) * np.eye(3)[np.asarray(y)] + eps / 3
    np.testing.assert_allclose(val, -np.sum(target * log_p), rtol=1e-5)


def test_cross_entropy_traced_label_smoothing_matches_static():
  z, y = _logits(205, (2, 3, 5)), np.random.default_rng(206).integers(0, 5, (2, 3))
  traced = jax.jit(lambda z, y, eps: losses.cross_entropy(z, y, label_smoothing=eps))
  for eps in (0.0, 0.1, 0.5):
    static = jax.jit(functools.partial(losses.cross_entropy, label_smoothing=eps))(z, y)
    np.testing.assert_allclose(traced(z, y, eps), static, rtol=1e-6)
    target = (1 - eps) * np.eye(5)[y] + eps / 5
    expected = -np.sum(target * special.log_softmax(np.float64(z), axis=-1), axis=-1)
    np.testing.assert_allclose(traced(z, y, eps), expected, rtol=RTOL)
  # A traced 0 is exactly the plain cross-entropy, also with -inf logits (masked classes).
  z_inf = np.array([[0.0, -np.inf, 1.0]], np.float32)
  np.testing.assert_array_equal(traced(z_inf, np.array([2]), 0.0),
                                losses.cross_entropy(z_inf, np.array([2])))
  # A schedule: vmapped over smoothing values, and differentiable with respect to it.
  eps = jnp.array([0.0, 0.1, 0.5])
  batched = jax.jit(jax.vmap(lambda e: losses.cross_entropy(z, y, label_smoothing=e)))(eps)
  for i, e in enumerate((0.0, 0.1, 0.5)):
    np.testing.assert_allclose(batched[i], traced(z, y, e), rtol=1e-6)
  d_eps = jax.jit(jax.grad(
      lambda e: jnp.sum(losses.cross_entropy(z, y, label_smoothing=e))))(0.1)
  log_p = special.log_softmax(np.float64(z), axis=-1)
  nll = -np.take_along_axis(log_p, y[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(d_eps, np.sum(-nll - np.mean(log_p, axis=-1)), rtol=1e-5)


@pytest.mark.parametrize('eps', [-0.1, 1.0, 1.5, float('nan')])
def test_cross_entropy_bad_label_smoothing(eps):
  with pytest.raises(ValueError, match='label_smoothing'):
    losses.cross_entropy(jnp.zeros((3, 4)), jnp.zeros((3,), jnp.int32), label_smoothing=eps)


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


# ------------------------------------------------------- hard_label_distillation

def _ref_hard(s, t):
  """-log softmax(s)[argmax t], the first maximum on ties (float64)."""
  return refs.cross_entropy(s, np.argmax(np.asarray(t, np.float64), axis=-1))


@pytest.mark.parametrize('shape', [(7,), (5, 7), (2, 3, 7)])
def test_hard_label_distillation_matches_reference(shape):
  s, t = _logits(20, shape), _logits(21, shape)
  got = jax.jit(losses.hard_label_distillation)(s, t)
  assert got.shape == shape[:-1]
  np.testing.assert_allclose(got, _ref_hard(s, t), rtol=RTOL, atol=1e-6)


def test_hard_label_distillation_is_cross_entropy_on_the_teacher_argmax_with_ties_first():
  s = _logits(22, (4, 5))
  t = np.array([[1, 3, 3, 0, 0], [2, 2, 2, 2, 2], [0, 0, 0, 0, 9], [-1, 5, 0, 5, 5]], np.float32)
  np.testing.assert_allclose(losses.hard_label_distillation(s, t),
                             losses.cross_entropy(s, np.array([1, 0, 4, 1])), rtol=1e-6)


def test_hard_label_distillation_class_mask_equals_slicing():
  s, t = _logits(23, (6, 8)), _logits(24, (6, 8))
  keep = np.array([1, 0, 1, 1, 0, 1, 1, 0], bool)
  np.testing.assert_allclose(losses.hard_label_distillation(s, t, where=keep),
                             losses.hard_label_distillation(s[:, keep], t[:, keep]), rtol=1e-6)
  rows = np.array([True, False, True, True, False, True])
  out = losses.hard_label_distillation(s, t, where=rows[:, None])
  np.testing.assert_allclose(out[rows], losses.hard_label_distillation(s[rows], t[rows]),
                             rtol=1e-6)
  np.testing.assert_array_equal(out[~rows], 0.0)


def test_hard_label_distillation_grads_reach_the_student_only():
  s, t = _logits(25, (3, 5), 1.0), _logits(26, (3, 5), 1.0)
  check_grads(lambda s: jnp.sum(losses.hard_label_distillation(s, t)), (s,), order=2,
              modes=['rev'], atol=1e-2, rtol=1e-2)
  np.testing.assert_array_equal(
      jax.grad(lambda t: jnp.sum(losses.hard_label_distillation(s, t)))(t), 0.0)
  # d/ds = softmax(s) - onehot(argmax t).
  expected = special.softmax(np.float64(s), -1) - np.eye(5)[np.argmax(t, -1)]
  np.testing.assert_allclose(
      jax.grad(lambda s: jnp.sum(losses.hard_label_distillation(s, t)))(s), expected,
      rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_hard_label_distillation_low_precision_computes_in_float32(dtype):
  s, t = _logits(27, (4, 6)), _logits(28, (4, 6))
  out = losses.hard_label_distillation(s.astype(dtype), t.astype(dtype))
  assert out.dtype == jnp.float32


def test_hard_label_distillation_bad_inputs_name_the_argument():
  with pytest.raises(ValueError, match='teacher_logits'):
    losses.hard_label_distillation(jnp.zeros((3, 4)), jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match='student_logits'):
    losses.hard_label_distillation(jnp.zeros((3, 4), jnp.int32), jnp.zeros((3, 4)))


@hypothesis.given(_finite_logits, _finite_logits, st.floats(-50, 50, width=32),
                  st.sampled_from([0.25, 0.5, 2.0, 8.0]))
def test_hard_label_distillation_properties(s, t, shift, scale):
  loss = np.asarray(losses.hard_label_distillation(s, t))
  assert np.all(loss >= 0)
  # Invariant to shifting the student's logits and to scaling the teacher's (exactly, by a
  # power of two, so no two teacher logits merge in rounding).
  np.testing.assert_allclose(losses.hard_label_distillation(s + shift, t * scale),
                             loss, rtol=1e-3, atol=1e-3)
  # Never below the student's own CE on its argmax (the most likely class).
  np.testing.assert_array_less(losses.hard_label_distillation(s, s) - 1e-5, loss)


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


def _ref_hinton(s, t, y, tau, alpha):
  """Hinton et al. 2015: alpha CE(y, s) + (1 - alpha) tau^2 KL(p_T^tau || p_S^tau), in
  float64 and log space (so that +-1e4 logits do not overflow the reference)."""
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  log_q = special.log_softmax(s / tau, axis=-1)
  log_p = special.log_softmax(t / tau, axis=-1)
  kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
  ce = -np.take_along_axis(special.log_softmax(s, axis=-1), np.asarray(y)[..., None],
                           axis=-1)[..., 0]
  return alpha * ce + (1 - alpha) * tau**2 * kl


_hinton_jit = jax.jit(losses.hinton_kd)
_ce_jit = jax.jit(losses.cross_entropy)


def test_hinton_kd_leading_dims_behave_like_vmap():
  s, t = _logits(210, (3, 4, 6)), _logits(211, (3, 4, 6))
  y = np.random.default_rng(212).integers(0, 6, (3, 4))
  fn = functools.partial(losses.hinton_kd, temperature=2.0, alpha=0.3)
  got = jax.jit(fn)(s, t, y)
  assert got.shape == (3, 4)
  np.testing.assert_allclose(got, jax.jit(jax.vmap(jax.vmap(fn)))(s, t, y), rtol=1e-6)
  np.testing.assert_allclose(got, _ref_hinton(s, t, y, 2.0, 0.3), rtol=RTOL)


def test_hinton_kd_traced_alpha_matches_static():
  s, t, y = _logits(213, (5, 4)), _logits(214, (5, 4)), np.array([0, 1, 2, 3, 0])
  traced = jax.jit(lambda s, t, y, tau, alpha: losses.hinton_kd(
      s, t, y, temperature=tau, alpha=alpha))
  for tau, alpha in [(4.0, 0.0), (4.0, 0.5), (1.0, 0.9), (2.0, 1.0)]:
    static = jax.jit(functools.partial(losses.hinton_kd, temperature=tau, alpha=alpha))(s, t, y)
    np.testing.assert_allclose(traced(s, t, y, tau, alpha), static, rtol=1e-6)
    np.testing.assert_allclose(static, _ref_hinton(s, t, y, tau, alpha), rtol=RTOL)
  # An alpha schedule inside a jitted scan, and the derivative with respect to alpha.
  alphas = jnp.linspace(0.0, 1.0, 4)
  _, per_step = jax.jit(lambda a: jax.lax.scan(
      lambda c, a: (c, losses.hinton_kd(s, t, y, alpha=a)), 0.0, a))(alphas)
  for i, alpha in enumerate(np.asarray(alphas)):
    np.testing.assert_allclose(per_step[i], _ref_hinton(s, t, y, 4.0, float(alpha)), rtol=RTOL)
  d_alpha = jax.jit(jax.grad(lambda a: jnp.sum(losses.hinton_kd(s, t, y, alpha=a))))(0.3)
  np.testing.assert_allclose(
      d_alpha, np.sum(_ref_hinton(s, t, y, 4.0, 1.0) - _ref_hinton(s, t, y, 4.0, 0.0)),
      rtol=1e-5)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_hinton_kd_low_precision_computes_in_float32(dtype):
  s, t = _logits(215, (4, 6)).astype(dtype), _logits(216, (4, 6)).astype(dtype)
  y = np.array([0, 5, 2, 3])
  out = _hinton_jit(s, t, y, temperature=4.0, alpha=0.3)
  assert out.dtype == jnp.float32
  expected = _ref_hinton(np.float32(s), np.float32(t), y, 4.0, 0.3)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_hinton_kd_large_logits_are_finite():
  s = jnp.array([[1e4, -1e4, 0.0], [0.0, 1e4, -1e4]])
  t = jnp.array([[-1e4, 1e4, 0.0], [1e4, -1e4, 0.0]])
  y = jnp.array([1, 1])
  for tau, alpha in [(1.0, 0.5), (4.0, 0.1)]:
    val = _assert_finite_value_and_grads(
        lambda s, t: losses.hinton_kd(s, t, y, temperature=tau, alpha=alpha), s, t)
    np.testing.assert_allclose(val, np.sum(_ref_hinton(s, t, y, tau, alpha)), rtol=1e-5)


@hypothesis.given(_finite_logits, _finite_logits,
                  hnp.arrays(np.int32, (3,), elements=st.integers(0, 4)),
                  hnp.arrays(np.float32, (3, 1), elements=st.floats(-50, 50, width=32)),
                  hnp.arrays(np.float32, (3, 1), elements=st.floats(-50, 50, width=32)),
                  st.sampled_from([1.0, 4.0]), st.sampled_from([0.0, 0.3, 1.0]))
def test_hinton_kd_properties(s, t, y, shift_s, shift_t, tau, alpha):
  out = np.asarray(_hinton_jit(s, t, y, temperature=tau, alpha=alpha))
  assert np.all(out >= -1e-5 * tau**2)
  np.testing.assert_allclose(out, _ref_hinton(s, t, y, tau, alpha), rtol=1e-4,
                             atol=1e-4 * tau**2)
  # Softmaxes ignore a per-row shift of either logit tensor (of both, independently).
  np.testing.assert_allclose(
      _hinton_jit(s + shift_s, t + shift_t, y, temperature=tau, alpha=alpha), out,
      rtol=1e-3, atol=1e-3 * tau**2)
  # The two ends of the interpolation are the two terms of its definition.
  np.testing.assert_allclose(_hinton_jit(s, t, y, temperature=tau, alpha=0.0),
                             _kl_jit(s, t, temperature=tau), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(_hinton_jit(s, t, y, temperature=tau, alpha=1.0), _ce_jit(s, y),
                             rtol=1e-6, atol=1e-7)


# ================================================================ shared helpers
# Every call below goes through jax.jit: one compilation per shape instead of one
# per primitive keeps these tests fast. Temperatures and weights are traced
# arguments, so they do not trigger recompilation either.

_kl_jit = jax.jit(losses.kl_distillation)
_topk_jit = jax.jit(losses.topk_distillation, static_argnames='k')
_pt_jit = jax.jit(losses.teacher_label_smoothing)
_sim_jit = jax.jit(losses.class_similarity_distillation)
_dkd_jit = jax.jit(losses.decoupled_kd)
_mutual_jit = jax.jit(losses.mutual_kl)
_dist_jit = jax.jit(losses.dist_loss)


def _ints(seed, shape, high):
  return np.random.default_rng(seed).integers(0, high, size=shape).astype(np.int32)


def _ref_kl_loss(target, s, tau):
  """tau^2 KL(target || softmax(s/tau)) in float64, in log space for the student
  (so that +-1e4 logits do not underflow the reference itself)."""
  target = np.asarray(target, np.float64)
  log_q = special.log_softmax(np.asarray(s, np.float64) / tau, axis=-1)
  safe = np.where(target > 0, target, 1.0)
  return tau**2 * np.sum(np.where(target > 0, target * (np.log(safe) - log_q), 0.0), axis=-1)


def _assert_finite_value_and_grads(fn, *args):
  """fn(*args) summed is finite, and so are its gradients w.r.t. every argument."""
  argnums = tuple(range(len(args)))
  val, grads = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=argnums))(*args)
  assert np.all(np.isfinite(val))
  for g in grads:
    assert np.all(np.isfinite(g))
  return val


def _check_grads(fn, args):
  check_grads(jax.jit(fn), args, order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------- topk_distillation

@pytest.mark.parametrize('k', [1, 3, 7])
@pytest.mark.parametrize('shape', [(7,), (5, 7), (2, 3, 7)])
def test_topk_matches_reference(k, shape):
  s, t = _logits(20, shape), _logits(21, shape)
  for tau in (0.5, 2.0):
    expected = _ref_kl_loss(refs.topk_target(t, k, tau), s, tau)
    got = _topk_jit(s, t, k=k, temperature=tau)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)


def test_topk_ties_keep_lowest_index():
  t = np.array([[2.0, 3.0, 3.0, 3.0, 0.0]], np.float32)
  s = _logits(22, (1, 5))
  target = refs.topk_target(t, 2)
  # Classes 1 and 2 are kept; 3 (tied with them) shares the tail with 0 and 4.
  np.testing.assert_allclose(target[0, 3], target[0, 0])
  assert target[0, 1] > target[0, 3]
  np.testing.assert_allclose(_topk_jit(s, t, k=2), _ref_kl_loss(target, s, 1.0), rtol=RTOL)


def test_topk_gradient_is_tau_times_q_minus_target():
  s, t, tau = _logits(23, (3, 6)), _logits(24, (3, 6)), 2.0
  grad = jax.jit(jax.grad(lambda s: losses.topk_distillation(s, t, k=2, temperature=tau).sum()))(s)
  np.testing.assert_allclose(
      grad, tau * (refs.softmax(s, tau) - refs.topk_target(t, 2, tau)), rtol=1e-4, atol=1e-6)


def test_topk_leading_dims_behave_like_vmap():
  s, t = _logits(25, (3, 4, 6)), _logits(26, (3, 4, 6))
  fn = functools.partial(losses.topk_distillation, k=2, temperature=2.0)
  np.testing.assert_allclose(
      jax.jit(fn)(s, t), jax.jit(jax.vmap(jax.vmap(fn)))(s, t), rtol=1e-6)


def test_topk_class_mask_equals_slicing():
  s, t = _logits(27, (5, 7)), _logits(28, (5, 7))
  keep = np.array([1, 0, 1, 1, 0, 1, 0], bool)  # 4 classes remain
  for k in (1, 2, 4):
    masked = _topk_jit(s, t, k=k, temperature=2.0, where=keep)
    sliced = _topk_jit(s[:, keep], t[:, keep], k=k, temperature=2.0)
    np.testing.assert_allclose(masked, sliced, rtol=1e-5, atol=1e-6)
  # Fewer remaining classes than k: all of them are kept, i.e. plain KD on the slice.
  np.testing.assert_allclose(_topk_jit(s, t, k=6, temperature=2.0, where=keep),
                             _kl_jit(s[:, keep], t[:, keep], temperature=2.0),
                             rtol=1e-5, atol=1e-6)


def test_topk_position_mask_zeroes_rows():
  s, t = _logits(31, (4, 5)), _logits(32, (4, 5))
  rows = np.array([True, False, False, True])
  out = _topk_jit(s, t, k=2, where=rows[:, None])
  np.testing.assert_allclose(out[rows], _topk_jit(s[rows], t[rows], k=2), rtol=1e-6)
  np.testing.assert_array_equal(out[~rows], 0.0)
  _assert_finite_value_and_grads(
      lambda s, t: losses.topk_distillation(s, t, k=2, where=rows[:, None]), s, t)


def test_topk_grads():
  s, t = _logits(33, (3, 5), 1.0), _logits(34, (3, 5), 1.0)
  _check_grads(lambda s, t: jnp.sum(losses.topk_distillation(s, t, k=2, temperature=2.0)),
               (s, t))


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_topk_low_precision_computes_in_float32(dtype):
  s, t = _logits(35, (4, 6)).astype(dtype), _logits(36, (4, 6)).astype(dtype)
  out = _topk_jit(s, t, k=3, temperature=4.0)
  assert out.dtype == jnp.float32
  ref = _ref_kl_loss(refs.topk_target(np.float32(t), 3, 4.0), np.float32(s), 4.0)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_topk_large_logits_are_finite():
  s = jnp.array([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4]])
  t = jnp.array([[-1e4, 1e4, 0.0], [1e4, -1e4, 0.0]])
  for k in (1, 2, 3):
    val = _assert_finite_value_and_grads(
        lambda s, t: losses.topk_distillation(s, t, k=k), s, t)
    np.testing.assert_allclose(val, np.sum(_ref_kl_loss(refs.topk_target(t, k), s, 1.0)),
                               rtol=1e-5)


@pytest.mark.parametrize('k', [0, 6, -1, 2.0, True, None])
def test_topk_bad_k(k):
  with pytest.raises(ValueError, match='`k`'):
    losses.topk_distillation(jnp.zeros((2, 5)), jnp.zeros((2, 5)), k=k)


@pytest.mark.parametrize('args, kwargs, match', [
    ((jnp.zeros((2, 5)), jnp.zeros((2, 4))), dict(k=1), 'teacher_logits'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5))), dict(k=1, temperature=0.0), 'temperature'),
    ((jnp.zeros((2, 5), jnp.int32), jnp.zeros((2, 5))), dict(k=1), 'student_logits'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5))), dict(k=1, where=jnp.ones((3,), bool)), 'where'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5))), dict(k=1, where=jnp.ones((5,))), 'where'),
])
def test_topk_bad_inputs(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.topk_distillation(*args, **kwargs)


@hypothesis.given(_finite_logits, _finite_logits, st.floats(-50, 50, width=32),
                  st.sampled_from([0.5, 1.0, 4.0]), st.integers(1, 5))
def test_topk_properties(s, t, shift, tau, k):
  out = np.asarray(_topk_jit(s, t, k=k, temperature=tau))
  assert np.all(out >= -1e-5)
  shifted = _topk_jit(s + shift, t - shift, k=k, temperature=tau)
  np.testing.assert_allclose(shifted, out, rtol=1e-3, atol=1e-3 * tau**2)
  kl = _kl_jit(s, t, temperature=tau)
  for k_full in (4, 5):  # k = C and k = C - 1 both leave the teacher unchanged
    np.testing.assert_allclose(
        _topk_jit(s, t, k=k_full, temperature=tau), kl, rtol=1e-4, atol=1e-4 * tau**2)
  # A student that reproduces the target exactly has zero loss.
  target = refs.topk_target(t, k, tau)
  hypothesis.assume(np.all(target > 1e-30))
  s_star = (tau * np.log(target)).astype(np.float32)
  np.testing.assert_allclose(
      _topk_jit(s_star, t, k=k, temperature=tau), 0.0, atol=1e-4 * tau**2)


# ------------------------------------------------------- teacher_label_smoothing

@pytest.mark.parametrize('shape', [(6,), (4, 6), (2, 3, 6)])
def test_pt_matches_reference(shape):
  s, t, y = _logits(40, shape), _logits(41, shape), _ints(42, shape[:-1], shape[-1])
  for tau in (0.5, 1.0, 4.0):
    expected = _ref_kl_loss(refs.pt_target(t, y, tau), s, tau)
    got = _pt_jit(s, t, y, temperature=tau)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)


def test_pt_equals_cross_entropy_form_minus_target_entropy():
  s, t, y, tau = _logits(43, (5, 4)), _logits(44, (5, 4)), _ints(45, (5,), 4), 2.0
  target = refs.pt_target(t, y, tau)
  ce = -tau**2 * np.sum(target * np.log(refs.softmax(s, tau)), axis=-1)
  entropy = -tau**2 * np.sum(target * np.log(target), axis=-1)
  np.testing.assert_allclose(_pt_jit(s, t, y, temperature=tau), ce - entropy, rtol=1e-5)
  grad = jax.jit(jax.grad(
      lambda s: losses.teacher_label_smoothing(s, t, y, temperature=tau).sum()))(s)
  np.testing.assert_allclose(grad, tau * (refs.softmax(s, tau) - target), rtol=1e-4, atol=1e-6)


def test_pt_with_two_classes_equals_kl_distillation():
  s, t, y = _logits(46, (6, 2)), _logits(47, (6, 2)), _ints(48, (6,), 2)
  np.testing.assert_allclose(_pt_jit(s, t, y, temperature=2.0),
                             _kl_jit(s, t, temperature=2.0), rtol=1e-5, atol=1e-6)


def test_pt_leading_dims_behave_like_vmap():
  s, t, y = _logits(49, (3, 4, 5)), _logits(50, (3, 4, 5)), _ints(51, (3, 4), 5)
  fn = functools.partial(losses.teacher_label_smoothing, temperature=2.0)
  np.testing.assert_allclose(
      jax.jit(fn)(s, t, y), jax.jit(jax.vmap(jax.vmap(fn)))(s, t, y), rtol=1e-6)


def test_pt_out_of_range_labels_are_nan():
  out = _pt_jit(jnp.zeros((3, 4)), jnp.ones((3, 4)), jnp.array([0, 4, -1]))
  assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2])


def test_pt_grads():
  s, t, y = _logits(52, (3, 5), 1.0), _logits(53, (3, 5), 1.0), np.array([0, 4, 2])
  _check_grads(lambda s, t: jnp.sum(losses.teacher_label_smoothing(s, t, y, temperature=2.0)),
               (s, t))


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_pt_low_precision_computes_in_float32(dtype):
  s, t = _logits(54, (4, 6)).astype(dtype), _logits(55, (4, 6)).astype(dtype)
  y = _ints(56, (4,), 6)
  out = _pt_jit(s, t, y, temperature=4.0)
  assert out.dtype == jnp.float32
  ref = _ref_kl_loss(refs.pt_target(np.float32(t), y, 4.0), np.float32(s), 4.0)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_pt_large_logits_are_finite():
  s = jnp.array([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4]])
  t = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
  y = jnp.array([0, 2])  # row 0: teacher certain of the label, 1 - p_y underflows
  val = _assert_finite_value_and_grads(
      lambda s, t: losses.teacher_label_smoothing(s, t, y), s, t)
  np.testing.assert_allclose(val, np.sum(_ref_kl_loss(refs.pt_target(t, y), s, 1.0)), rtol=1e-5)


@pytest.mark.parametrize('args, kwargs, match', [
    ((jnp.zeros((2, 5)), jnp.zeros((2, 4)), jnp.zeros((2,), jnp.int32)), {}, 'teacher_logits'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5)), jnp.zeros((2, 5), jnp.int32)), {}, 'labels'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.float32)), {}, 'labels'),
    ((jnp.zeros((2, 1)), jnp.zeros((2, 1)), jnp.zeros((2,), jnp.int32)), {}, 'student_logits'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32)),
     dict(temperature=-1.0), 'temperature'),
])
def test_pt_bad_inputs(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.teacher_label_smoothing(*args, **kwargs)


@hypothesis.given(_finite_logits, _finite_logits,
                  hnp.arrays(np.int32, (3,), elements=st.integers(0, 4)),
                  st.floats(-50, 50, width=32), st.sampled_from([0.5, 1.0, 4.0]))
def test_pt_properties(s, t, y, shift, tau):
  out = np.asarray(_pt_jit(s, t, y, temperature=tau))
  assert np.all(out >= -1e-5)
  np.testing.assert_allclose(
      _pt_jit(s + shift, t - shift, y, temperature=tau), out, rtol=1e-3, atol=1e-3 * tau**2)
  target = refs.pt_target(t, y, tau)
  hypothesis.assume(np.all(target > 1e-30))
  s_star = (tau * np.log(target)).astype(np.float32)
  np.testing.assert_allclose(_pt_jit(s_star, t, y, temperature=tau), 0.0, atol=1e-4 * tau**2)


# ------------------------------------------------- class_similarity_distillation

@pytest.mark.parametrize('shape', [(5,), (4, 5), (2, 3, 5)])
def test_sim_matches_reference(shape):
  s, w, y = _logits(60, shape), _logits(61, (8, 5), 1.0), _ints(62, shape[:-1], 5)
  for tau in (0.1, 1.0, 4.0):
    expected = _ref_kl_loss(refs.sim_target(w, y, tau), s, tau)
    got = _sim_jit(s, w, y, temperature=tau)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)


def test_sim_gradient_is_tau_times_q_minus_target():
  s, w, y, tau = _logits(63, (4, 5)), _logits(64, (3, 5)), _ints(65, (4,), 5), 0.5
  grad = jax.jit(jax.grad(
      lambda s: losses.class_similarity_distillation(s, w, y, temperature=tau).sum()))(s)
  np.testing.assert_allclose(
      grad, tau * (refs.softmax(s, tau) - refs.sim_target(w, y, tau)), rtol=1e-4, atol=1e-6)


def test_sim_leading_dims_behave_like_vmap():
  s, w, y = _logits(66, (3, 4, 5)), _logits(67, (6, 5)), _ints(68, (3, 4), 5)
  fn = functools.partial(losses.class_similarity_distillation, temperature=0.5)
  vm = jax.vmap(jax.vmap(fn, in_axes=(0, None, 0)), in_axes=(0, None, 0))
  np.testing.assert_allclose(jax.jit(fn)(s, w, y), jax.jit(vm)(s, w, y), rtol=1e-6)


def test_sim_grads_and_zero_column():
  s, w, y = _logits(69, (3, 4), 1.0), _logits(70, (5, 4), 1.0), np.array([0, 3, 1])
  fn = lambda s, w: jnp.sum(losses.class_similarity_distillation(s, w, y, temperature=2.0))
  _check_grads(fn, (s, w))
  w0 = w.copy()
  w0[:, 2] = 0.0
  _assert_finite_value_and_grads(fn, s, w0)


def test_sim_out_of_range_labels_are_nan():
  out = _sim_jit(jnp.zeros((3, 4)), jnp.eye(4), jnp.array([1, 4, -1]))
  assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2])


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_sim_low_precision_computes_in_float32(dtype):
  s, w = _logits(71, (4, 5)).astype(dtype), _logits(72, (3, 5)).astype(dtype)
  y = _ints(73, (4,), 5)
  out = _sim_jit(s, w, y, temperature=0.5)
  assert out.dtype == jnp.float32
  ref = _ref_kl_loss(refs.sim_target(np.float32(w), y, 0.5), np.float32(s), 0.5)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_sim_large_logits_are_finite():
  s = jnp.array([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4]])
  w = jnp.array([[1e4, 1.0, -1e4], [0.0, 2.0, 1e4]])
  y = jnp.array([0, 2])
  for tau in (0.01, 1.0):
    val = _assert_finite_value_and_grads(
        lambda s, w: losses.class_similarity_distillation(s, w, y, temperature=tau), s, w)
    # At tau = 0.01 the true loss is ~2e-22 while the scaled logits reach 1e6 (float32
    # spacing 0.06): what float32 leaves is rounding noise, 2e-22 or 3e-10 depending on
    # XLA's code generation (LLVM optimisation level), so compare absolutely.
    np.testing.assert_allclose(
        val, np.sum(_ref_kl_loss(refs.sim_target(w, y, tau), s, tau)), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize('args, kwargs, match', [
    ((jnp.zeros((2, 5)), jnp.zeros((3, 4)), jnp.zeros((2,), jnp.int32)), {},
     'teacher_classifier_weights'),
    ((jnp.zeros((2, 5)), jnp.zeros((5,)), jnp.zeros((2,), jnp.int32)), {},
     'teacher_classifier_weights'),
    ((jnp.zeros((2, 5)), jnp.zeros((3, 5), jnp.int32), jnp.zeros((2,), jnp.int32)), {},
     'teacher_classifier_weights'),
    ((jnp.zeros((2, 5)), jnp.zeros((3, 5)), jnp.zeros((3,), jnp.int32)), {}, 'labels'),
    ((jnp.zeros((2, 5)), jnp.zeros((3, 5)), jnp.zeros((2,))), {}, 'labels'),
    ((jnp.zeros((2, 5), jnp.int32), jnp.zeros((3, 5)), jnp.zeros((2,), jnp.int32)), {},
     'student_logits'),
    ((jnp.zeros((2, 5)), jnp.zeros((3, 5)), jnp.zeros((2,), jnp.int32)),
     dict(temperature=0.0), 'temperature'),
])
def test_sim_bad_inputs(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.class_similarity_distillation(*args, **kwargs)


@hypothesis.given(_finite_logits,
                  hnp.arrays(np.float32, (4, 5), elements=st.floats(-3, 3, width=32)),
                  hnp.arrays(np.float32, (5,), elements=st.floats(0.125, 8, width=32)),
                  hnp.arrays(np.int32, (3,), elements=st.integers(0, 4)),
                  st.floats(-50, 50, width=32), st.sampled_from([0.1, 1.0, 4.0]))
def test_sim_properties(s, w, scale, y, shift, tau):
  hypothesis.assume(np.all(np.linalg.norm(w, axis=0) > 1e-2))
  out = np.asarray(_sim_jit(s, w, y, temperature=tau))
  assert np.all(out >= -1e-5)
  # Only the directions of the class vectors matter, and only logit differences.
  np.testing.assert_allclose(
      _sim_jit(s + shift, w * scale, y, temperature=tau), out, rtol=1e-3, atol=1e-3 * tau**2)


# ------------------------------------------------------------------ decoupled_kd

@pytest.mark.parametrize('shape', [(6,), (4, 6), (2, 3, 6)])
def test_dkd_matches_reference(shape):
  s, t, y = _logits(80, shape), _logits(81, shape), _ints(82, shape[:-1], shape[-1])
  for alpha, beta, tau in [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (1.0, 0.0, 2.0), (0.0, 1.0, 0.5)]:
    expected = refs.dkd(s, t, y, alpha, beta, tau)
    got = _dkd_jit(s, t, y, alpha=alpha, beta=beta, temperature=tau)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)


def test_dkd_leading_dims_behave_like_vmap():
  s, t, y = _logits(83, (3, 4, 5)), _logits(84, (3, 4, 5)), _ints(85, (3, 4), 5)
  fn = losses.decoupled_kd
  np.testing.assert_allclose(
      jax.jit(fn)(s, t, y), jax.jit(jax.vmap(jax.vmap(fn)))(s, t, y), rtol=1e-6)


def test_dkd_out_of_range_labels_are_nan():
  out = _dkd_jit(jnp.zeros((3, 4)), jnp.ones((3, 4)), jnp.array([3, 4, -1]))
  assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2])


def test_dkd_grads():
  s, t, y = _logits(86, (3, 5), 1.0), _logits(87, (3, 5), 1.0), np.array([0, 4, 2])
  _check_grads(lambda s, t: jnp.sum(losses.decoupled_kd(s, t, y, beta=2.0, temperature=2.0)),
               (s, t))


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_dkd_low_precision_computes_in_float32(dtype):
  s, t = _logits(88, (4, 6)).astype(dtype), _logits(89, (4, 6)).astype(dtype)
  y = _ints(90, (4,), 6)
  out = _dkd_jit(s, t, y)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
      out, refs.dkd(np.float32(s), np.float32(t), y, 1.0, 8.0, 4.0), rtol=1e-5, atol=1e-6)


def test_dkd_large_logits_are_finite():
  # Row 0: both models certain of the label (1 - p_y underflows in float32);
  # row 1: certain of different wrong classes.
  s = jnp.array([[1e4, -1e4, 0.0], [0.0, 1e4, -1e4]])
  t = jnp.array([[1e4, 0.0, -1e4], [1e4, -1e4, 0.0]])
  y = jnp.array([0, 2])
  fn = lambda s, t: losses.decoupled_kd(s, t, y, temperature=1.0)
  _assert_finite_value_and_grads(fn, s, t)
  # Closed form, tau = 1, beta = 8: TCKD ≈ 0 in both rows (p_y agree: 1 in row 0, 0 in
  # row 1). Row 0: non-target teacher (0, -1e4) is one-hot on class 1, where the student
  # (-1e4, 0) has log-prob -1e4, so NCKD = 1e4. Row 1: teacher (1e4, -1e4) is one-hot on
  # class 0, student (0, 1e4) gives it log-prob -1e4: NCKD = 1e4.
  np.testing.assert_allclose(jax.jit(fn)(s, t), [8e4, 8e4], rtol=1e-5)


@pytest.mark.parametrize('args, kwargs, match', [
    ((jnp.zeros((2, 5)), jnp.zeros((2, 4)), jnp.zeros((2,), jnp.int32)), {}, 'teacher_logits'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5)), jnp.zeros((2, 1), jnp.int32)), {}, 'labels'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.float32)), {}, 'labels'),
    ((jnp.zeros((2, 1)), jnp.zeros((2, 1)), jnp.zeros((2,), jnp.int32)), {}, 'student_logits'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32)),
     dict(temperature=0.0), 'temperature'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32)), dict(alpha=-1.0),
     'alpha'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32)), dict(beta=-0.1),
     'beta'),
])
def test_dkd_bad_inputs(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.decoupled_kd(*args, **kwargs)


@hypothesis.given(_finite_logits, _finite_logits,
                  hnp.arrays(np.int32, (3,), elements=st.integers(0, 4)),
                  st.floats(-50, 50, width=32), st.sampled_from([0.5, 1.0, 4.0]))
def test_dkd_properties(s, t, y, shift, tau):
  kw = dict(temperature=tau)
  out = np.asarray(_dkd_jit(s, t, y, **kw))
  assert np.all(out >= -1e-4)
  np.testing.assert_allclose(_dkd_jit(s, s, y, **kw), 0.0, atol=1e-4 * tau**2)
  np.testing.assert_allclose(
      _dkd_jit(s + shift, t - shift, y, **kw), out, rtol=1e-3, atol=1e-3 * tau**2)
  # KD = TCKD + (1 - p_T,y) NCKD (Zhao et al. 2022, Eq. 7).
  tckd = _dkd_jit(s, t, y, alpha=1.0, beta=0.0, **kw)
  nckd = _dkd_jit(s, t, y, alpha=0.0, beta=1.0, **kw)
  p_ty = np.take_along_axis(refs.softmax(t, tau), y[:, None], axis=-1)[:, 0]
  np.testing.assert_allclose(
      tckd + (1 - p_ty) * nckd, _kl_jit(s, t, temperature=tau), rtol=1e-3, atol=1e-3 * tau**2)


# --------------------------------------------------------------------- mutual_kl

@pytest.mark.parametrize('shape', [(2, 5), (3, 4, 5), (4, 2, 3, 5)])
def test_mutual_kl_matches_reference(shape):
  x = _logits(100, shape)
  for tau in (1.0, 3.0):
    got = _mutual_jit(x, temperature=tau)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(got, refs.mutual_kl(x, tau), rtol=RTOL, atol=1e-6)


def test_mutual_kl_with_target_logits_matches_reference():
  x, y = _logits(101, (3, 4, 5)), _logits(102, (3, 4, 5))
  got = _mutual_jit(x, temperature=2.0, target_logits=y)
  np.testing.assert_allclose(got, refs.mutual_kl(x, 2.0, targets=y), rtol=RTOL, atol=1e-6)


def test_mutual_kl_two_peers_equal_kl_distillation():
  a, b = _logits(103, (4, 6)), _logits(104, (4, 6))
  out = _mutual_jit(jnp.stack([a, b]), temperature=2.0)
  np.testing.assert_allclose(out[0], _kl_jit(a, b, temperature=2.0), rtol=1e-6)
  np.testing.assert_allclose(out[1], _kl_jit(b, a, temperature=2.0), rtol=1e-6)


def test_mutual_kl_leading_dims_behave_like_vmap():
  x = _logits(105, (3, 2, 4, 5))
  fn = functools.partial(losses.mutual_kl, temperature=2.0)
  vm = jax.vmap(jax.vmap(fn, in_axes=1, out_axes=1), in_axes=1, out_axes=1)
  np.testing.assert_allclose(jax.jit(fn)(x), jax.jit(vm)(x), rtol=1e-6)


def test_mutual_kl_stop_gradient_targets_give_each_peer_only_its_own_gradient():
  x = _logits(106, (3, 2, 5), 1.0)
  tau = 2.0

  def jacobian(hold_targets):
    def fn(x):
      targets = jax.lax.stop_gradient(x) if hold_targets else None
      return losses.mutual_kl(x, temperature=tau, target_logits=targets)
    return np.asarray(jax.jit(jax.jacrev(fn))(x))  # [K, B, K, B, C]

  jac, jac_free = jacobian(True), jacobian(False)
  for k in range(3):
    for l in range(3):
      block = jac[k, :, l]
      if l == k:
        # d/dx_k of 1/(K-1) sum_{m != k} tau^2 KL(p_m || q_k) = tau (q_k - mean_m p_m).
        mean_target = np.mean([refs.softmax(x[m], tau) for m in range(3) if m != k], axis=0)
        expected = tau * (refs.softmax(x[k], tau) - mean_target)
        np.testing.assert_allclose(np.einsum('bbc->bc', block), expected, rtol=1e-4, atol=1e-6)
        assert np.abs(block).max() > 1e-3
      else:
        np.testing.assert_array_equal(block, 0.0)
        assert np.abs(jac_free[k, :, l]).max() > 1e-3  # without stop_gradient it flows


def test_mutual_kl_grads():
  x = _logits(107, (3, 2, 4), 1.0)
  _check_grads(lambda x: jnp.sum(losses.mutual_kl(x, temperature=2.0)), (x,))


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_mutual_kl_low_precision_computes_in_float32(dtype):
  x = _logits(108, (3, 4, 6)).astype(dtype)
  out = _mutual_jit(x, temperature=4.0)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, refs.mutual_kl(np.float32(x), 4.0), rtol=1e-5, atol=1e-6)


def test_mutual_kl_large_logits_are_finite():
  x = jnp.array([[[1e4, -1e4, 0.0]], [[-1e4, 1e4, 0.0]], [[1e4, -1e4, 0.0]]])
  val = _assert_finite_value_and_grads(losses.mutual_kl, x)
  # Pairs (0,1), (1,0), (1,2), (2,1) cost 2e4 each, (0,2) and (2,0) nothing: 8e4 / (K-1).
  np.testing.assert_allclose(val, 4e4, rtol=1e-5)


@pytest.mark.parametrize('args, kwargs, match', [
    ((jnp.zeros((1, 3, 5)),), {}, 'peer_logits'),
    ((jnp.zeros((5,)),), {}, 'peer_logits'),
    ((jnp.zeros((2, 3, 5), jnp.int32),), {}, 'peer_logits'),
    ((jnp.zeros((2, 3, 5)),), dict(target_logits=jnp.zeros((2, 3, 4))), 'target_logits'),
    ((jnp.zeros((2, 3, 5)),), dict(target_logits=jnp.zeros((2, 3, 5), jnp.int32)),
     'target_logits'),
    ((jnp.zeros((2, 3, 5)),), dict(temperature=0.0), 'temperature'),
])
def test_mutual_kl_bad_inputs(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.mutual_kl(*args, **kwargs)


@hypothesis.given(hnp.arrays(np.float32, (3, 2, 5), elements=st.floats(-30, 30, width=32)),
                  st.floats(-50, 50, width=32), st.sampled_from([0.5, 1.0, 4.0]),
                  st.permutations([0, 1, 2]))
def test_mutual_kl_properties(x, shift, tau, perm):
  out = np.asarray(_mutual_jit(x, temperature=tau))
  assert np.all(out >= -1e-5)
  np.testing.assert_allclose(_mutual_jit(x + shift, temperature=tau), out,
                             rtol=1e-3, atol=1e-3 * tau**2)
  perm = np.asarray(perm)
  np.testing.assert_allclose(_mutual_jit(x[perm], temperature=tau), out[perm],
                             rtol=1e-5, atol=1e-5 * tau**2)
  same = np.broadcast_to(x[:1], x.shape)
  np.testing.assert_allclose(_mutual_jit(same, temperature=tau), 0.0, atol=1e-5 * tau**2)


# --------------------------------------------------------------------- dist_loss

@pytest.mark.parametrize('shape', [(1, 5), (6, 5), (8, 3)])
def test_dist_matches_reference(shape):
  s, t = _logits(120, shape), _logits(121, shape)
  for beta, gamma, tau in [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (1.0, 0.0, 0.5)]:
    got = _dist_jit(s, t, beta=beta, gamma=gamma, temperature=tau)
    assert got.shape == ()
    np.testing.assert_allclose(got, refs.dist(s, t, beta, gamma, tau), rtol=RTOL, atol=1e-6)


def test_dist_grads():
  s, t = _logits(122, (4, 5), 1.0), _logits(123, (4, 5), 1.0)
  _check_grads(lambda s, t: losses.dist_loss(s, t, temperature=2.0), (s, t))


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_dist_low_precision_computes_in_float32(dtype):
  s, t = _logits(124, (6, 5)).astype(dtype), _logits(125, (6, 5)).astype(dtype)
  out = _dist_jit(s, t, temperature=4.0)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
      out, refs.dist(np.float32(s), np.float32(t), tau=4.0), rtol=1e-5, atol=1e-6)


def test_dist_large_logits_are_finite():
  # Every row is one-hot on class 0 for the student: its columns are constant.
  s = jnp.array([[1e4, -1e4, 0.0], [1e4, 0.0, -1e4]])
  t = jnp.array([[-1e4, 1e4, 0.0], [1e4, -1e4, 0.0]])
  val = _assert_finite_value_and_grads(losses.dist_loss, s, t)
  np.testing.assert_allclose(val, refs.dist(s, t), rtol=1e-5)


@pytest.mark.parametrize('args, kwargs, match', [
    ((jnp.zeros((5,)), jnp.zeros((5,))), {}, 'student_logits'),
    ((jnp.zeros((2, 3, 5)), jnp.zeros((2, 3, 5))), {}, 'student_logits'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 4))), {}, 'teacher_logits'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5), jnp.int32)), {}, 'teacher_logits'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5))), dict(temperature=0.0), 'temperature'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5))), dict(eps=0.0), 'eps'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5))), dict(beta=-1.0), 'beta'),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5))), dict(gamma=-1.0), 'gamma'),
])
def test_dist_bad_inputs(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.dist_loss(*args, **kwargs)


@hypothesis.given(hnp.arrays(np.float32, (4, 5), elements=st.floats(-10, 10, width=32)),
                  hnp.arrays(np.float32, (4, 5), elements=st.floats(-10, 10, width=32)),
                  hnp.arrays(np.float32, (4, 1), elements=st.floats(-50, 50, width=32)),
                  st.sampled_from([1.0, 4.0]), st.permutations([0, 1, 2, 3]))
def test_dist_properties(s, t, row_shift, tau, perm):
  out = float(_dist_jit(s, t, temperature=tau))
  assert -1e-5 <= out <= 4 * tau**2 * (1 + 1e-5)
  # Softmax ignores a per-row shift; both relations ignore a joint row permutation.
  np.testing.assert_allclose(_dist_jit(s + row_shift, t - row_shift, temperature=tau), out,
                             rtol=1e-3, atol=1e-3 * tau**2)
  perm = np.asarray(perm)
  np.testing.assert_allclose(_dist_jit(s[perm], t[perm], temperature=tau), out,
                             rtol=1e-4, atol=1e-5 * tau**2)
  np.testing.assert_allclose(_dist_jit(s, s, temperature=tau), refs.dist(s, s, tau=tau),
                             rtol=1e-3, atol=1e-4 * tau**2)
