"""Tests for the detection losses against float64 references (Chen et al. 2017; LD 2022)."""

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


RTOL = 1e-5


def _randn(seed, shape, scale=3.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


# ------------------------------------------------------------ float64 references

def ref_weighted_soft_ce(s, t, w, tau):
  """-sum_c w_c softmax(t/tau)_c log softmax(s/tau)_c, float64."""
  s, t, w = (np.asarray(x, np.float64) for x in (s, t, w))
  p_t = special.softmax(t / tau, axis=-1)
  log_p_s = special.log_softmax(s / tau, axis=-1)
  return -np.sum(w * p_t * log_p_s, axis=-1)


def ref_bounded_regression(r_s, r_t, y, m):
  r_s, r_t, y = (np.asarray(x, np.float64) for x in (r_s, r_t, y))
  err_s = np.sum((r_s - y)**2, axis=-1)
  err_t = np.sum((r_t - y)**2, axis=-1)
  return np.where(err_s + m > err_t, err_s, 0.0)


def ref_ld(e_s, e_t, tau):
  """sum over the 4 edges of tau^2 KL(softmax(e_T/tau) || softmax(e_S/tau)), float64."""
  p = special.softmax(np.asarray(e_t, np.float64) / tau, axis=-1)
  q = special.softmax(np.asarray(e_s, np.float64) / tau, axis=-1)
  return tau**2 * np.sum(special.rel_entr(p, q), axis=(-2, -1))


# --------------------------------------------------- weighted_soft_cross_entropy

def _bg_weights(num_classes):
  return np.array([1.5] + [1.0] * (num_classes - 1), np.float32)  # class 0 = background


@pytest.mark.parametrize('tau', [1.0, 5.0])
@pytest.mark.parametrize('shape', [(6,), (2, 3, 6)])
def test_weighted_soft_ce_matches_reference(tau, shape):
  s, t, w = _randn(0, shape), _randn(1, shape), _bg_weights(shape[-1])
  fn = jax.jit(functools.partial(
      losses.weighted_soft_cross_entropy, class_weights=w, temperature=tau))
  got = fn(s, t)
  assert got.shape == shape[:-1] and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_weighted_soft_ce(s, t, w, tau), rtol=RTOL)


def test_weighted_soft_ce_has_no_tau_squared():
  # The paper's loss has no tau^2 factor: doubling tau changes the value only
  # through the softened distributions, as the reference (without tau^2) says.
  s, t, w = _randn(2, (3, 4)), _randn(3, (3, 4)), _bg_weights(4)
  for tau in (1.0, 4.0):
    got = losses.weighted_soft_cross_entropy(s, t, class_weights=w, temperature=tau)
    np.testing.assert_allclose(got, ref_weighted_soft_ce(s, t, w, tau), rtol=RTOL)


def test_weighted_soft_ce_leading_dims_behave_like_vmap():
  s, t, w = _randn(4, (3, 4, 5)), _randn(5, (3, 4, 5)), _bg_weights(5)
  fn = functools.partial(losses.weighted_soft_cross_entropy, class_weights=w, temperature=2.0)
  np.testing.assert_allclose(jax.jit(fn)(s, t), jax.jit(jax.vmap(jax.vmap(fn)))(s, t), rtol=1e-6)


def test_weighted_soft_ce_grads():
  s, t, w = _randn(6, (3, 5), 1.0), _randn(7, (3, 5), 1.0), _bg_weights(5)
  fn = lambda s, t: jnp.sum(
      losses.weighted_soft_cross_entropy(s, t, class_weights=w, temperature=2.0))
  check_grads(jax.jit(fn), (s, t), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_weighted_soft_ce_low_precision_computes_in_float32(dtype):
  s, t, w = _randn(8, (4, 6)), _randn(9, (4, 6)), _bg_weights(6)
  s_lp, t_lp = jnp.asarray(s, dtype), jnp.asarray(t, dtype)
  out = losses.weighted_soft_cross_entropy(s_lp, t_lp, class_weights=w, temperature=2.0)
  assert out.dtype == jnp.float32
  expected = ref_weighted_soft_ce(
      np.asarray(s_lp, np.float32), np.asarray(t_lp, np.float32), w, 2.0)
  np.testing.assert_allclose(out, expected, rtol=RTOL)


def test_weighted_soft_ce_large_logits_are_finite():
  s = jnp.array([[1e4, -1e4, 0.0]])
  t = jnp.array([[-1e4, 1e4, 0.0]])
  w = jnp.array([1.5, 1.0, 1.0])
  fn = lambda s, t: losses.weighted_soft_cross_entropy(s, t, class_weights=w).sum()
  val, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(s, t)
  assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_allclose(val, 2e4, rtol=1e-5)  # P_T = e_1, -log P_S,1 = 2e4


_logits_3x5 = hnp.arrays(np.float32, (3, 5), elements=st.floats(-30, 30, width=32))
_weights_5 = hnp.arrays(np.float32, (5,), elements=st.floats(0, 3, width=32))


@hypothesis.given(_logits_3x5, _logits_3x5, _weights_5, st.floats(-50, 50, width=32),
                  st.sampled_from([1.0, 3.0]))
def test_weighted_soft_ce_properties(s, t, w, shift, tau):
  out = np.asarray(losses.weighted_soft_cross_entropy(s, t, class_weights=w, temperature=tau))
  assert np.all(out >= -1e-5)
  shifted = losses.weighted_soft_cross_entropy(s + shift, t - shift, class_weights=w,
                                               temperature=tau)
  np.testing.assert_allclose(shifted, out, rtol=1e-3, atol=1e-3)
  # With unit weights it is a cross-entropy: minimised over the student at the teacher.
  ones = np.ones(5, np.float32)
  ce = losses.weighted_soft_cross_entropy(s, t, class_weights=ones, temperature=tau)
  ce_self = losses.weighted_soft_cross_entropy(t, t, class_weights=ones, temperature=tau)
  assert np.all(np.asarray(ce) >= np.asarray(ce_self) - 1e-4)


@pytest.mark.parametrize('kwargs, match', [
    (dict(class_weights=np.ones(4)), 'class_weights'),
    (dict(class_weights=np.ones((1, 3))), 'class_weights'),
    (dict(class_weights=np.array([1.0, -1.0, 1.0])), 'class_weights'),
    (dict(class_weights=np.ones(3), temperature=0.0), 'temperature'),
])
def test_weighted_soft_ce_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.weighted_soft_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3)), **kwargs)


def test_weighted_soft_ce_bad_inputs():
  with pytest.raises(ValueError, match='teacher_logits'):
    losses.weighted_soft_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4)),
                                       class_weights=np.ones(3))
  with pytest.raises(ValueError, match='student_logits'):
    losses.weighted_soft_cross_entropy(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)),
                                       class_weights=np.ones(3))


# ------------------------------------------------------------ bounded_regression

def _boxes(seed, shape=(8, 4)):
  rng = np.random.default_rng(seed)
  y = rng.normal(size=shape).astype(np.float32)
  spread = rng.uniform(0.1, 2.0, size=shape[:-1] + (1,))
  r_s = (y + rng.normal(size=shape) * spread).astype(np.float32)
  r_t = (y + rng.normal(size=shape) * 0.7).astype(np.float32)
  return r_s, r_t, y


@pytest.mark.parametrize('margin', [0.0, 0.5, 2.0])
def test_bounded_regression_matches_reference(margin):
  r_s, r_t, y = _boxes(0, (16, 4))
  expected = ref_bounded_regression(r_s, r_t, y, margin)
  assert 0 < np.count_nonzero(expected) < expected.size or margin == 2.0  # both branches
  got = jax.jit(functools.partial(losses.bounded_regression, margin=margin))(r_s, r_t, y)
  assert got.shape == (16,)
  np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_bounded_regression_both_branches_by_hand():
  y = np.zeros((3, 4), np.float32)
  r_s = np.array([[1, 0, 0, 0], [0.5, 0, 0, 0], [0.5, 0, 0, 0]], np.float32)  # err 1, .25, .25
  r_t = np.array([[0.5, 0, 0, 0], [1, 0, 0, 0], [0.6, 0, 0, 0]], np.float32)  # err .25, 1, .36
  # row 0: student worse than teacher -> err; row 1: better by .75 -> 0; row 2: better by .11,
  # within margin 0.2 -> err.
  got = losses.bounded_regression(r_s, r_t, y, margin=0.2)
  np.testing.assert_allclose(got, [1.0, 0.0, 0.25], rtol=RTOL)


def test_bounded_regression_leading_dims_behave_like_vmap():
  r_s, r_t, y = _boxes(1, (3, 5, 4))
  fn = functools.partial(losses.bounded_regression, margin=0.3)
  np.testing.assert_allclose(
      jax.jit(fn)(r_s, r_t, y), jax.jit(jax.vmap(jax.vmap(fn)))(r_s, r_t, y), rtol=1e-6)


def test_bounded_regression_grads_away_from_the_bound():
  r_s, r_t, y = _boxes(2, (12, 4))
  err_s = np.sum((r_s - y)**2, -1)
  err_t = np.sum((r_t - y)**2, -1)
  keep = np.abs(err_s + 0.1 - err_t) > 0.3  # stay away from the switching boundary
  assert keep.sum() >= 4 and 0 < np.sum(err_s[keep] + 0.1 > err_t[keep]) < keep.sum()
  args = tuple(a[keep] for a in (r_s, r_t, y))
  fn = lambda *a: jnp.sum(losses.bounded_regression(*a, margin=0.1))
  check_grads(jax.jit(fn), args, order=1, modes=['rev'], atol=1e-2, rtol=1e-2)
  g_teacher = jax.grad(fn, argnums=1)(*args)
  np.testing.assert_array_equal(g_teacher, 0.0)  # the teacher only sets the bound


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_bounded_regression_low_precision_computes_in_float32(dtype):
  r_s, r_t, y = (jnp.asarray(a, dtype) for a in _boxes(3))
  out = losses.bounded_regression(r_s, r_t, y, margin=0.1)
  assert out.dtype == jnp.float32
  expected = ref_bounded_regression(*(np.asarray(a, np.float32) for a in (r_s, r_t, y)), 0.1)
  np.testing.assert_allclose(out, expected, rtol=RTOL)


_boxes_4x4 = hnp.arrays(np.float32, (4, 4), elements=st.floats(-10, 10, width=32))


@hypothesis.given(_boxes_4x4, _boxes_4x4, _boxes_4x4, st.floats(0, 2, width=32))
def test_bounded_regression_properties(r_s, r_t, y, margin):
  out = np.asarray(losses.bounded_regression(r_s, r_t, y, margin=margin))
  assert np.all(out >= 0)
  err_s = np.sum((r_s.astype(np.float64) - y)**2, -1)
  assert np.all((out == 0) | np.isclose(out, err_s, rtol=1e-5, atol=1e-5))
  np.testing.assert_array_equal(losses.bounded_regression(y, r_t, y, margin=margin), 0.0)
  if margin > 1e-2:  # a student equal to its teacher is within the margin (m not lost to rounding)
    np.testing.assert_allclose(losses.bounded_regression(r_s, r_s, y, margin=margin), err_s,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('margin', [-0.1, np.ones(2)])
def test_bounded_regression_bad_margin(margin):
  with pytest.raises(ValueError, match='margin'):
    losses.bounded_regression(jnp.zeros((2, 4)), jnp.zeros((2, 4)), jnp.zeros((2, 4)),
                              margin=margin)


def test_bounded_regression_bad_inputs():
  with pytest.raises(ValueError, match='targets'):
    losses.bounded_regression(jnp.zeros((2, 4)), jnp.zeros((2, 4)), jnp.zeros((3, 4)))
  with pytest.raises(ValueError, match='teacher_boxes'):
    losses.bounded_regression(jnp.zeros((2, 4)), jnp.zeros((2, 3)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match='student_boxes'):
    losses.bounded_regression(jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 4)), jnp.zeros((2, 4)))


# ----------------------------------------------------- localization_distillation

@pytest.mark.parametrize('tau', [1.0, 10.0])
@pytest.mark.parametrize('shape', [(4, 7), (2, 3, 4, 7)])
def test_ld_matches_reference(tau, shape):
  e_s, e_t = _randn(10, shape), _randn(11, shape)
  got = jax.jit(functools.partial(losses.localization_distillation, temperature=tau))(e_s, e_t)
  assert got.shape == shape[:-2]
  np.testing.assert_allclose(got, ref_ld(e_s, e_t, tau), rtol=RTOL, atol=1e-6)


def test_ld_default_temperature_is_ten():
  e_s, e_t = _randn(12, (3, 4, 8)), _randn(13, (3, 4, 8))
  np.testing.assert_allclose(losses.localization_distillation(e_s, e_t), ref_ld(e_s, e_t, 10.0),
                             rtol=RTOL)


def test_ld_mask_equals_slicing():
  e_s, e_t = _randn(14, (2, 5, 4, 6)), _randn(15, (2, 5, 4, 6))
  where = np.random.default_rng(0).random((2, 5)) < 0.5
  where[0, 0], where[0, 1] = True, False
  fn = jax.jit(functools.partial(losses.localization_distillation, temperature=10.0))
  masked = fn(e_s, e_t, where=where)
  np.testing.assert_allclose(masked[where], fn(e_s[where], e_t[where]), rtol=1e-6)
  np.testing.assert_array_equal(masked[~where], 0.0)
  np.testing.assert_allclose(masked[where], ref_ld(e_s[where], e_t[where], 10.0), rtol=RTOL)


def test_ld_masked_regions_get_no_gradient():
  e_s, e_t = _randn(16, (4, 4, 5)), _randn(17, (4, 4, 5))
  where = np.array([True, False, True, False])
  g = jax.jit(jax.grad(lambda e: losses.localization_distillation(e, e_t, where=where).sum()))(e_s)
  np.testing.assert_array_equal(g[~where], 0.0)
  assert np.all(np.abs(g[where]).sum(axis=(-2, -1)) > 0)


def test_ld_leading_dims_behave_like_vmap():
  e_s, e_t = _randn(18, (3, 2, 4, 5)), _randn(19, (3, 2, 4, 5))
  fn = losses.localization_distillation
  np.testing.assert_allclose(jax.jit(fn)(e_s, e_t), jax.jit(jax.vmap(jax.vmap(fn)))(e_s, e_t),
                             rtol=1e-6)


def test_ld_grads():
  e_s, e_t = _randn(20, (2, 4, 5), 1.0), _randn(21, (2, 4, 5), 1.0)
  fn = lambda s, t: jnp.sum(losses.localization_distillation(s, t, temperature=2.0))
  check_grads(jax.jit(fn), (e_s, e_t), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_ld_low_precision_computes_in_float32(dtype):
  e_s, e_t = (jnp.asarray(_randn(k, (3, 4, 6), 5.0), dtype) for k in (22, 23))
  out = losses.localization_distillation(e_s, e_t, temperature=2.0)
  assert out.dtype == jnp.float32
  expected = ref_ld(np.asarray(e_s, np.float32), np.asarray(e_t, np.float32), 2.0)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=1e-6)


def test_ld_large_logits_are_finite():
  e_s = jnp.tile(jnp.array([1e4, -1e4, 0.0]), (1, 4, 1))
  e_t = jnp.tile(jnp.array([-1e4, 1e4, 0.0]), (1, 4, 1))
  fn = lambda s, t: losses.localization_distillation(s, t, temperature=1.0).sum()
  val, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(e_s, e_t)
  assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_allclose(val, 4 * 2e4, rtol=1e-5)


_edges = hnp.arrays(np.float32, (2, 4, 5), elements=st.floats(-30, 30, width=32))


@hypothesis.given(_edges, _edges, st.floats(-50, 50, width=32), st.sampled_from([1.0, 10.0]))
def test_ld_properties(e_s, e_t, shift, tau):
  out = np.asarray(losses.localization_distillation(e_s, e_t, temperature=tau))
  assert np.all(out >= -1e-4 * tau**2)
  np.testing.assert_allclose(losses.localization_distillation(e_s, e_s, temperature=tau), 0.0,
                             atol=1e-4 * tau**2)
  edge_shift = shift * np.arange(4, dtype=np.float32)[:, None]  # a different shift per edge
  shifted = losses.localization_distillation(e_s + edge_shift, e_t - edge_shift, temperature=tau)
  np.testing.assert_allclose(shifted, out, rtol=1e-3, atol=1e-3 * tau**2)


def test_ld_bad_inputs():
  with pytest.raises(ValueError, match='student_edge_logits'):
    losses.localization_distillation(jnp.zeros((2, 5, 8)), jnp.zeros((2, 5, 8)))
  with pytest.raises(ValueError, match='student_edge_logits'):
    losses.localization_distillation(jnp.zeros((8,)), jnp.zeros((8,)))
  with pytest.raises(ValueError, match='teacher_edge_logits'):
    losses.localization_distillation(jnp.zeros((2, 4, 8)), jnp.zeros((2, 4, 7)))
  with pytest.raises(ValueError, match='temperature'):
    losses.localization_distillation(jnp.zeros((2, 4, 8)), jnp.zeros((2, 4, 8)), temperature=0.0)
  with pytest.raises(ValueError, match='where'):
    losses.localization_distillation(jnp.zeros((2, 4, 8)), jnp.zeros((2, 4, 8)),
                                     where=np.ones(2, np.int32))
  with pytest.raises(ValueError, match='where'):
    losses.localization_distillation(jnp.zeros((2, 4, 8)), jnp.zeros((2, 4, 8)),
                                     where=np.ones(3, bool))


# ------------------------------------------------- task losses of the dense head

def test_softmax_focal_loss_matches_reference_and_gamma_zero_is_ce():
  z = _randn(0, (5, 7, 11))
  y = np.random.default_rng(1).integers(0, 11, size=(5, 7))
  log_p = special.log_softmax(np.float64(z), axis=-1)
  log_py = np.take_along_axis(log_p, y[..., None], axis=-1)[..., 0]
  for gamma in (0.0, 0.5, 2.0):
    ref = -(1 - np.exp(log_py))**gamma * log_py
    got = jax.jit(functools.partial(losses.softmax_focal_loss, gamma=gamma))(z, y)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(losses.softmax_focal_loss(z, y, gamma=0.0),
                             losses.cross_entropy(z, y), rtol=RTOL)
  # gamma = 0 keeps a finite gradient where p_y = 1.
  sure = jnp.array([[100.0, -100.0]])
  g = jax.grad(lambda s: losses.softmax_focal_loss(s, jnp.array([0]), gamma=0.0).sum())(sure)
  assert np.isfinite(g).all()
  check_grads(lambda s: losses.softmax_focal_loss(s, y[:2], gamma=2.0), (z[:2] / 3,), order=1,
              modes=['rev'], atol=1e-2, rtol=1e-2)
  with pytest.raises(ValueError, match='`gamma` must be >= 0'):
    losses.softmax_focal_loss(z, y, gamma=-1.0)
  with pytest.raises(ValueError, match='`labels` must be integers'):
    losses.softmax_focal_loss(z, y[:, :3])


def test_distribution_focal_loss_matches_reference_and_is_minimal_at_the_target():
  e = _randn(2, (3, 4, 8))
  d = np.random.default_rng(3).uniform(0, 6.99, size=(3, 4)).astype(np.float32)
  log_s = special.log_softmax(np.float64(e), axis=-1)
  lo = np.floor(d).astype(int)
  take = lambda i: np.take_along_axis(log_s, i[..., None], axis=-1)[..., 0]  # noqa: E731
  ref = -((lo + 1 - d) * take(lo) + (d - lo) * take(lo + 1))
  np.testing.assert_allclose(jax.jit(losses.distribution_focal_loss)(e, d), ref, rtol=RTOL)
  # Its minimiser puts (y_r - y, y - y_l) on the two bins: the expectation is y.
  best = np.zeros((1, 4, 8)) - 1e9
  best[0, :, 2], best[0, :, 3] = np.log(0.75), np.log(0.25)
  y = np.full((1, 4), 2.25, np.float32)
  loss = losses.distribution_focal_loss(jnp.asarray(best, jnp.float32), y)
  grad = jax.grad(lambda x: losses.distribution_focal_loss(x, y).sum())(
      jnp.asarray(best, jnp.float32))
  np.testing.assert_allclose(grad, 0.0, atol=1e-5)
  assert float(loss[0, 0]) > 0
  with pytest.raises(ValueError, match=r'\[\.\.\., 4, n_bins\]'):
    losses.distribution_focal_loss(e[:, :3], d[:, :3])
  with pytest.raises(ValueError, match='`distances` must have shape'):
    losses.distribution_focal_loss(e, d[:, :2])
