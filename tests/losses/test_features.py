"""Tests for kdjax.losses feature-map losses against float64 references."""

import functools
import math

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest
from scipy import stats

from kdjax import losses


RTOL = 1e-5


def _x(seed, shape, scale=1.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


# --------------------------------------------------- float64 references (loops)

def ref_hint_l2(s, t):
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  return np.array([np.mean((s[b] - t[b])**2) for b in range(len(s))])


def _ref_unit(v):
  v = np.asarray(v, np.float64).ravel()
  return v / np.sqrt(np.sum(v**2))


def ref_attention_transfer(s, t, p):
  """Zagoruyko & Komodakis: sum_c |F_c|^p, vectorised over HW, unit norm."""
  out = []
  for fs, ft in zip(np.asarray(s, np.float64), np.asarray(t, np.float64)):
    h, w = fs.shape[:2]
    maps = []
    for f in (fs, ft):
      a = np.zeros((h, w))
      for c in range(f.shape[-1]):
        a += np.abs(f[:, :, c])**p
      maps.append(_ref_unit(a))
    out.append(np.mean((maps[0] - maps[1])**2))
  return np.array(out)


def ref_nst_mmd(s, t, kernel):
  """Huang & Wang: channels are samples over HW, unit-normalised, biased MMD²."""
  k = (lambda x, y: np.dot(x, y)**2) if kernel == 'polynomial' else np.dot
  out = []
  for fs, ft in zip(np.asarray(s, np.float64), np.asarray(t, np.float64)):
    xs = [_ref_unit(fs[:, :, c]) for c in range(fs.shape[-1])]
    xt = [_ref_unit(ft[:, :, c]) for c in range(ft.shape[-1])]
    mean_k = lambda a, b: np.mean([k(u, v) for u in a for v in b])
    out.append(mean_k(xs, xs) + mean_k(xt, xt) - 2 * mean_k(xs, xt))
  return np.array(out)


def ref_factor_transfer(s, t, p):
  out = []
  for fs, ft in zip(s, t):
    d = _ref_unit(fs) - _ref_unit(ft)
    out.append(np.sum(np.abs(d)**p) / d.size)
  return np.array(out)


def ref_vid(t, mu, log_var, include_constant):
  """Exact Gaussian NLL from scipy, minus the constant unless asked for."""
  t, mu = np.asarray(t, np.float64), np.asarray(mu, np.float64)
  sigma = np.sqrt(np.exp(np.broadcast_to(np.asarray(log_var, np.float64), t.shape)))
  nll = -stats.norm.logpdf(t, loc=mu, scale=sigma)
  if not include_constant:
    nll = nll - 0.5 * np.log(2 * np.pi)
  return nll.reshape(len(t), -1).mean(axis=1)


def ref_fsp_matrix(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  b, h, w, ci = x.shape
  g = np.zeros((b, ci, y.shape[-1]))
  for n in range(b):
    for i in range(ci):
      for j in range(y.shape[-1]):
        total = sum(x[n, a, c, i] * y[n, a, c, j] for a in range(h) for c in range(w))
        g[n, i, j] = total / (h * w)
  return g


# ----------------------------------------------------------------------- hint_l2

@pytest.mark.parametrize('shape', [(3, 5), (2, 4, 4, 3)])
def test_hint_l2_matches_reference(shape):
  s, t = _x(0, shape), _x(1, shape)
  got = jax.jit(losses.hint_l2)(s, t)
  assert got.shape == shape[:1]
  np.testing.assert_allclose(got, ref_hint_l2(s, t), rtol=RTOL)


def test_hint_l2_feature_ndim_behaves_like_vmap():
  s, t = _x(2, (2, 3, 4, 5)), _x(3, (2, 3, 4, 5))
  got = losses.hint_l2(s, t, feature_ndim=2)
  assert got.shape == (2, 3)
  np.testing.assert_allclose(got, jax.vmap(losses.hint_l2)(s, t), rtol=1e-6)


def test_hint_l2_mask_equals_slicing():
  s, t = _x(4, (3, 4, 4, 2)), _x(5, (3, 4, 4, 2))
  rows = np.array([True, False, True, True])  # keep some H positions
  masked = losses.hint_l2(s, t, where=rows[:, None, None])
  sliced = losses.hint_l2(s[:, rows], t[:, rows])
  np.testing.assert_allclose(masked, sliced, rtol=1e-6)
  channel = np.array([False, True])
  np.testing.assert_allclose(losses.hint_l2(s, t, where=channel),
                             losses.hint_l2(s[..., channel], t[..., channel]), rtol=1e-6)


def test_hint_l2_fully_masked_example_is_zero():
  s, t = _x(6, (2, 3)), _x(7, (2, 3))
  out = losses.hint_l2(s, t, where=np.array([[True], [False]]))
  assert out[1] == 0.0 and out[0] > 0


def test_hint_l2_grads():
  s, t = _x(8, (2, 3, 3, 2)), _x(9, (2, 3, 3, 2))
  check_grads(jax.jit(lambda s, t: losses.hint_l2(s, t).sum()), (s, t), order=1, modes=['rev'],
              atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------ attention_transfer

@pytest.mark.parametrize('p', [1, 2, 4])
def test_attention_transfer_matches_reference(p):
  s, t = _x(10, (3, 4, 5, 2)), _x(11, (3, 4, 5, 6))  # channels differ
  got = jax.jit(functools.partial(losses.attention_transfer, p=p))(s, t)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, ref_attention_transfer(s, t, p), rtol=RTOL, atol=1e-7)


def test_attention_transfer_leading_dims_behave_like_vmap():
  s, t = _x(12, (2, 3, 4, 4, 2)), _x(13, (2, 3, 4, 4, 5))
  fn = losses.attention_transfer
  np.testing.assert_allclose(jax.jit(fn)(s, t), jax.jit(jax.vmap(jax.vmap(fn)))(s, t), rtol=1e-6)


def test_attention_transfer_grads():
  s, t = _x(14, (2, 3, 3, 2)), _x(15, (2, 3, 3, 4))
  check_grads(jax.jit(lambda s, t: losses.attention_transfer(s, t).sum()), (s, t), order=1,
              modes=['rev'], atol=1e-2, rtol=1e-2)


def test_attention_transfer_zero_features_have_finite_grads():
  s, t = np.zeros((1, 2, 2, 3), np.float32), _x(16, (1, 2, 2, 3))
  val, grad = jax.jit(jax.value_and_grad(lambda s: losses.attention_transfer(s, t).sum()))(s)
  assert np.isfinite(val) and np.all(np.isfinite(grad))


# ----------------------------------------------------------------------- nst_mmd

@pytest.mark.parametrize('kernel', ['polynomial', 'linear'])
def test_nst_mmd_matches_reference(kernel):
  s, t = _x(20, (2, 3, 4, 3)), _x(21, (2, 3, 4, 5))
  got = jax.jit(functools.partial(losses.nst_mmd, kernel=kernel))(s, t)
  assert got.shape == (2,)
  np.testing.assert_allclose(got, ref_nst_mmd(s, t, kernel), rtol=RTOL, atol=1e-6)


def test_nst_mmd_leading_dims_behave_like_vmap():
  s, t = _x(22, (2, 2, 3, 3, 2)), _x(23, (2, 2, 3, 3, 4))
  fn = losses.nst_mmd
  np.testing.assert_allclose(jax.jit(fn)(s, t), jax.jit(jax.vmap(jax.vmap(fn)))(s, t),
                             rtol=1e-5, atol=1e-7)


def test_nst_mmd_grads():
  s, t = _x(24, (2, 3, 3, 2)), _x(25, (2, 3, 3, 3))
  check_grads(jax.jit(lambda s, t: losses.nst_mmd(s, t).sum()), (s, t), order=1, modes=['rev'],
              atol=1e-2, rtol=1e-2)


# --------------------------------------------------------------- factor_transfer

@pytest.mark.parametrize('p', [1, 2])
@pytest.mark.parametrize('shape', [(3, 7), (2, 3, 3, 4)])
def test_factor_transfer_matches_reference(p, shape):
  s, t = _x(30, shape), _x(31, shape, 5.0)
  got = jax.jit(functools.partial(losses.factor_transfer, p=p))(s, t)
  assert got.shape == shape[:1]
  np.testing.assert_allclose(got, ref_factor_transfer(s, t, p), rtol=RTOL)


def test_factor_transfer_feature_ndim_behaves_like_vmap():
  s, t = _x(32, (2, 3, 4, 5)), _x(33, (2, 3, 4, 5))
  fn = functools.partial(losses.factor_transfer, p=2)
  np.testing.assert_allclose(fn(s, t, feature_ndim=2), jax.vmap(fn)(s, t), rtol=1e-6)


def test_factor_transfer_grads():
  s, t = _x(34, (2, 3, 2, 2)), _x(35, (2, 3, 2, 2))
  for p in (1, 2):
    check_grads(jax.jit(lambda s, t: losses.factor_transfer(s, t, p=p).sum()), (s, t), order=1,
                modes=['rev'], atol=1e-2, rtol=1e-2)


# --------------------------------------------------------------------------- vid

@pytest.mark.parametrize('include_constant', [False, True])
@pytest.mark.parametrize('var_shape', [(3,), (2, 4, 4, 3), (1, 1, 3)])
def test_vid_matches_reference(include_constant, var_shape):
  t, mu = _x(40, (2, 4, 4, 3)), _x(41, (2, 4, 4, 3))
  log_var = _x(42, var_shape, 0.5)
  fn = jax.jit(functools.partial(losses.vid, include_constant=include_constant))
  got = fn(t, mu, log_var)
  assert got.shape == (2,)
  np.testing.assert_allclose(got, ref_vid(t, mu, log_var, include_constant), rtol=RTOL,
                             atol=1e-6)


def test_vid_feature_ndim_behaves_like_vmap():
  t, mu, log_var = _x(43, (2, 3, 5)), _x(44, (2, 3, 5)), _x(45, (5,))
  got = losses.vid(t, mu, log_var, feature_ndim=1)
  np.testing.assert_allclose(
      got, jax.vmap(lambda t, mu: losses.vid(t, mu, log_var))(t, mu), rtol=1e-6)


def test_vid_grads():
  t, mu, log_var = _x(46, (2, 3, 3, 2)), _x(47, (2, 3, 3, 2)), _x(48, (2,), 0.3)
  check_grads(jax.jit(lambda t, mu, lv: losses.vid(t, mu, lv).sum()), (t, mu, log_var), order=1,
              modes=['rev'], atol=1e-2, rtol=1e-2)


def test_vid_minimised_by_true_variance():
  # d/d(log σ²) of mean ½(log σ² + r²/σ²) is 0 at σ² = mean r².
  t, mu = _x(49, (1, 50)), _x(50, (1, 50))
  best = np.log(np.mean((t - mu)**2))
  vals = [float(losses.vid(t, mu, jnp.full((50,), best + d))[0]) for d in (-0.1, 0.0, 0.1)]
  assert vals[1] < vals[0] and vals[1] < vals[2]


# ---------------------------------------------------------- fsp_matrix, fsp_loss

def test_fsp_matrix_matches_reference():
  x, y = _x(60, (2, 3, 4, 2)), _x(61, (2, 3, 4, 3))
  got = jax.jit(losses.fsp_matrix)(x, y)
  assert got.shape == (2, 2, 3)
  np.testing.assert_allclose(got, ref_fsp_matrix(x, y), rtol=RTOL, atol=1e-6)


def test_fsp_loss_matches_reference():
  # Student and teacher differ in spatial size, not in channels.
  si, so = _x(62, (2, 4, 4, 2)), _x(63, (2, 4, 4, 3))
  ti, to = _x(64, (2, 2, 3, 2)), _x(65, (2, 2, 3, 3))
  expected = np.mean((ref_fsp_matrix(si, so) - ref_fsp_matrix(ti, to))**2, axis=(1, 2))
  got = jax.jit(losses.fsp_loss)(si, so, ti, to)
  np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_fsp_loss_leading_dims_behave_like_vmap():
  args = [_x(66 + i, (2, 3, 2, 2, c)) for i, c in enumerate((2, 3, 2, 3))]
  fn = losses.fsp_loss
  np.testing.assert_allclose(fn(*args), jax.vmap(jax.vmap(fn))(*args), rtol=1e-6)


def test_fsp_loss_grads():
  args = [_x(70 + i, (2, 2, 3, c)) for i, c in enumerate((2, 3, 2, 3))]
  check_grads(jax.jit(lambda *a: losses.fsp_loss(*a).sum()), tuple(args), order=1, modes=['rev'],
              atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------ shared: dtypes, errors

_LOW_PRECISION_CASES = {
    'hint_l2': (losses.hint_l2, [(2, 3, 3, 2), (2, 3, 3, 2)]),
    'attention_transfer': (losses.attention_transfer, [(2, 3, 3, 2), (2, 3, 3, 4)]),
    'nst_mmd': (losses.nst_mmd, [(2, 3, 3, 2), (2, 3, 3, 4)]),
    'factor_transfer': (losses.factor_transfer, [(2, 3, 3, 2), (2, 3, 3, 2)]),
    'vid': (losses.vid, [(2, 3, 3, 2), (2, 3, 3, 2), (2,)]),
    'fsp_matrix': (losses.fsp_matrix, [(2, 3, 3, 2), (2, 3, 3, 4)]),
    'fsp_loss': (losses.fsp_loss, [(2, 3, 3, 2), (2, 3, 3, 4), (2, 2, 2, 2), (2, 2, 2, 4)]),
}


@pytest.mark.parametrize('name', sorted(_LOW_PRECISION_CASES))
@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_low_precision_computes_in_float32(name, dtype):
  fn, shapes = _LOW_PRECISION_CASES[name]
  args = [jnp.asarray(_x(80 + i, shape), dtype) for i, shape in enumerate(shapes)]
  out = fn(*args)
  assert out.dtype == jnp.float32
  ref = fn(*[a.astype(jnp.float32) for a in args])
  np.testing.assert_allclose(out, ref, rtol=1e-6)


_z = lambda *shape: jnp.zeros(shape)


@pytest.mark.parametrize('call, match', [
    (lambda: losses.hint_l2(_z(2, 3), _z(2, 4)), 'teacher_features'),
    (lambda: losses.hint_l2(_z(3), _z(3)), 'student_features'),
    (lambda: losses.hint_l2(_z(2, 3), _z(2, 3), feature_ndim=3), 'feature_ndim'),
    (lambda: losses.hint_l2(_z(2, 3), _z(2, 3), feature_ndim=0), 'feature_ndim'),
    (lambda: losses.hint_l2(_z(2, 3), _z(2, 3), where=jnp.ones((2, 3))), 'where'),
    (lambda: losses.hint_l2(_z(2, 3), _z(2, 3), where=jnp.ones((4,), bool)), 'where'),
    (lambda: losses.hint_l2(jnp.zeros((2, 3), jnp.int32), _z(2, 3)), 'student_features'),
    (lambda: losses.attention_transfer(_z(2, 4, 4, 3), _z(2, 4, 5, 3)), 'teacher_features'),
    (lambda: losses.attention_transfer(_z(4, 3), _z(4, 3)), 'student_features'),
    (lambda: losses.attention_transfer(_z(1, 2, 2, 1), _z(1, 2, 2, 1), p=0.5), '`p`'),
    (lambda: losses.nst_mmd(_z(1, 2, 2, 1), _z(1, 2, 2, 1), kernel='rbf'), 'kernel'),
    (lambda: losses.nst_mmd(_z(2, 2, 2, 1), _z(1, 2, 2, 1)), 'teacher_features'),
    (lambda: losses.factor_transfer(_z(2, 3), _z(2, 3), p=3), '`p`'),
    (lambda: losses.factor_transfer(_z(2, 3), _z(3, 3)), 'teacher_factors'),
    (lambda: losses.vid(_z(2, 3), _z(2, 4), _z(3)), 'mean'),
    (lambda: losses.vid(_z(2, 3), _z(2, 3), _z(4)), 'log_variance'),
    (lambda: losses.vid(_z(2, 3), _z(2, 3), _z(5, 2, 3)), 'log_variance'),
    (lambda: losses.vid(_z(2, 3), _z(2, 3), jnp.zeros(3, jnp.int32)), 'log_variance'),
    (lambda: losses.fsp_matrix(_z(1, 2, 2, 1), _z(1, 2, 3, 1)), 'features_out'),
    (lambda: losses.fsp_matrix(_z(2, 1), _z(2, 1)), 'features_in'),
    (lambda: losses.fsp_loss(_z(1, 2, 2, 1), _z(1, 2, 2, 2), _z(1, 2, 2, 3), _z(1, 2, 2, 2)),
     'teacher_in'),
    (lambda: losses.fsp_loss(_z(1, 2, 2, 1), _z(1, 2, 2, 2), _z(1, 2, 2, 1), _z(1, 2, 2, 3)),
     'teacher_out'),
    (lambda: losses.fsp_loss(_z(1, 2, 2, 1), _z(1, 2, 2, 2), _z(2, 2, 2, 1), _z(2, 2, 2, 2)),
     'teacher_in'),
    (lambda: losses.fsp_loss(_z(1, 2, 2, 1), _z(1, 3, 2, 2), _z(1, 2, 2, 1), _z(1, 2, 2, 2)),
     'student_out'),
])
def test_bad_inputs_raise_naming_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ------------------------------------------------------------------- properties

# Quarter-integer grid: exact zeros and well-separated values, no denormals.
_grid = st.integers(-12, 12).map(lambda v: v / 4)
_maps = hnp.arrays(np.float32, (2, 3, 3, 2), elements=_grid)
_maps_t = hnp.arrays(np.float32, (2, 3, 3, 3), elements=_grid)
_scale = st.floats(0.1, 10.0)


@hypothesis.given(_maps, _maps_t, _scale, _scale)
def test_attention_transfer_properties(s, t, a, b):
  out = np.asarray(losses.attention_transfer(s, t))
  # Non-negative unit maps: ‖â_s − â_t‖² = 2 − 2 â_s·â_t ≤ 2; mean over H·W = 9.
  assert np.all(out >= 0) and np.all(out <= 2.0 / 9 + 1e-6)
  np.testing.assert_allclose(losses.attention_transfer(s, s), 0.0, atol=1e-7)
  scaled = losses.attention_transfer(np.float32(a) * s, np.float32(b) * t)
  np.testing.assert_allclose(scaled, out, rtol=1e-4, atol=1e-6)


@hypothesis.given(_maps, _maps_t, _scale, st.sampled_from(['polynomial', 'linear']))
def test_nst_mmd_properties(s, t, a, kernel):
  out = np.asarray(losses.nst_mmd(s, t, kernel=kernel))
  assert np.all(out >= -1e-6)
  np.testing.assert_allclose(losses.nst_mmd(t, t, kernel=kernel), 0.0, atol=1e-6)
  scaled = losses.nst_mmd(np.float32(a) * s, t, kernel=kernel)
  np.testing.assert_allclose(scaled, out, rtol=1e-4, atol=1e-6)


@hypothesis.given(_maps, _maps, _scale, st.sampled_from([1, 2]))
def test_factor_transfer_properties(s, t, a, p):
  out = np.asarray(losses.factor_transfer(s, t, p=p))
  assert np.all(out >= 0)
  np.testing.assert_allclose(losses.factor_transfer(s, s, p=p), 0.0, atol=1e-7)
  scaled = losses.factor_transfer(np.float32(a) * s, t, p=p)
  np.testing.assert_allclose(scaled, out, rtol=1e-4, atol=1e-6)


@hypothesis.given(_maps, _maps)
def test_hint_l2_properties(s, t):
  out = np.asarray(losses.hint_l2(s, t))
  assert np.all(out >= 0)
  np.testing.assert_array_equal(losses.hint_l2(s, s), 0.0)
  np.testing.assert_allclose(out, losses.hint_l2(t, s), rtol=1e-6)


@hypothesis.given(_maps, _maps, hnp.arrays(np.float32, (2,), elements=_grid))
def test_vid_properties(t, mu, log_var):
  out = np.asarray(losses.vid(t, mu, log_var, include_constant=True))
  # The NLL at the mean is ½(log 2π + log σ²); any other mean is worse.
  at_mean = np.asarray(losses.vid(t, t, log_var, include_constant=True))
  np.testing.assert_allclose(at_mean, 0.5 * (math.log(2 * math.pi) + np.mean(log_var)),
                             rtol=1e-6)
  assert np.all(out >= at_mean - 1e-6)


# ------------------------------------------------------------------ fsp_matrix

def test_fsp_matrix_leading_dims_behave_like_vmap():
  x, y = _x(90, (2, 3, 2, 3, 2)), _x(91, (2, 3, 2, 3, 4))
  got = jax.jit(losses.fsp_matrix)(x, y)
  assert got.shape == (2, 3, 2, 4)
  np.testing.assert_allclose(got, jax.jit(jax.vmap(jax.vmap(losses.fsp_matrix)))(x, y),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got.reshape(6, 2, 4),
                             ref_fsp_matrix(x.reshape(6, 2, 3, 2), y.reshape(6, 2, 3, 4)),
                             rtol=RTOL, atol=1e-6)


def test_fsp_matrix_grads():
  x, y = _x(92, (2, 2, 3, 2)), _x(93, (2, 2, 3, 3))
  check_grads(jax.jit(lambda x, y: jnp.sum(jnp.sin(losses.fsp_matrix(x, y)))), (x, y), order=1,
              modes=['rev'], atol=1e-2, rtol=1e-2)


# ============================================================ masks (``where=``)
# Masked entries are left out as if sliced away: the float64 references below
# compute each loss on the kept entries only, one example at a time.

def _kept_positions(f, keep):
  """``[H, W, C]`` features at the kept ``[H, W]`` positions: ``[K, C]`` (row-major)."""
  return np.asarray(f, np.float64)[np.asarray(keep, bool)]


def ref_attention_transfer_masked(s, t, p, where):
  out = []
  for fs, ft, keep in zip(s, t, where):
    if not keep.any():
      out.append(0.0)
      continue
    maps = [_ref_unit(np.sum(np.abs(_kept_positions(f, keep))**p, axis=-1)) for f in (fs, ft)]
    out.append(np.mean((maps[0] - maps[1])**2))
  return np.array(out)


def ref_nst_mmd_masked(s, t, kernel, where):
  k = (lambda x, y: np.dot(x, y)**2) if kernel == 'polynomial' else np.dot
  out = []
  for fs, ft, keep in zip(s, t, where):
    if not keep.any():
      out.append(0.0)
      continue
    xs, xt = _kept_positions(fs, keep), _kept_positions(ft, keep)  # [K, C]
    xs = [_ref_unit(xs[:, c]) for c in range(xs.shape[1])]
    xt = [_ref_unit(xt[:, c]) for c in range(xt.shape[1])]
    mean_k = lambda a, b: np.mean([k(u, v) for u in a for v in b])
    out.append(mean_k(xs, xs) + mean_k(xt, xt) - 2 * mean_k(xs, xt))
  return np.array(out)


def ref_factor_transfer_masked(s, t, p, where):
  out = []
  for fs, ft, keep in zip(s, t, np.broadcast_to(where, np.shape(s))):
    if not keep.any():
      out.append(0.0)
      continue
    d = _ref_unit(np.asarray(fs, np.float64)[keep]) - _ref_unit(np.asarray(ft, np.float64)[keep])
    out.append(np.sum(np.abs(d)**p) / d.size)
  return np.array(out)


def ref_vid_masked(t, mu, log_var, where):
  t, mu = np.asarray(t, np.float64), np.asarray(mu, np.float64)
  sigma = np.sqrt(np.exp(np.broadcast_to(np.asarray(log_var, np.float64), t.shape)))
  nll = -stats.norm.logpdf(t, loc=mu, scale=sigma) - 0.5 * np.log(2 * np.pi)
  where = np.broadcast_to(where, t.shape)
  return np.array([nll[b][where[b]].mean() if where[b].any() else 0.0 for b in range(len(t))])


def _random_mask(seed, shape, keep=0.6):
  return np.random.default_rng(seed).random(shape) < keep


def _gather_same_count(f, keep):
  """``[B, H, W, C]`` -> ``[B, 1, K, C]`` of the kept positions (same K in every example)."""
  return np.stack([f[b][keep[b]] for b in range(len(f))])[:, None]


def _mask_with_count(seed, b, h, w, count):
  keep = np.zeros((b, h * w), bool)
  rng = np.random.default_rng(seed)
  for i in range(b):
    keep[i, rng.choice(h * w, count, replace=False)] = True
  return keep.reshape(b, h, w)


_at_jit = jax.jit(losses.attention_transfer, static_argnames='p')
_nst_jit = jax.jit(losses.nst_mmd, static_argnames='kernel')
_ft_jit = jax.jit(losses.factor_transfer, static_argnames=('p', 'feature_ndim'))
_vid_jit = jax.jit(losses.vid, static_argnames=('include_constant', 'feature_ndim'))


@pytest.mark.parametrize('p', [1, 2])
def test_attention_transfer_mask_matches_reference(p):
  s, t = _x(100, (4, 4, 5, 2)), _x(101, (4, 4, 5, 3))
  where = _random_mask(102, (4, 4, 5))
  where[3] = False  # an example with no valid position gives 0
  got = _at_jit(s, t, p=p, where=where)
  np.testing.assert_allclose(got, ref_attention_transfer_masked(s, t, p, where), rtol=RTOL,
                             atol=1e-7)
  assert got[3] == 0.0


def test_attention_transfer_mask_equals_slicing():
  s, t = _x(103, (3, 4, 5, 2)), _x(104, (3, 4, 5, 3))
  keep = _mask_with_count(105, 3, 4, 5, count=7)  # scattered positions, 7 per example
  np.testing.assert_allclose(_at_jit(s, t, where=keep),
                             _at_jit(_gather_same_count(s, keep), _gather_same_count(t, keep)),
                             rtol=1e-5, atol=1e-7)
  crop = np.zeros((4, 5), bool)
  crop[1:3, 1:5] = True  # one [H, W] mask for the whole batch equals cropping
  np.testing.assert_allclose(_at_jit(s, t, where=crop),
                             _at_jit(s[:, 1:3, 1:5], t[:, 1:3, 1:5]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('kernel', ['polynomial', 'linear'])
def test_nst_mmd_mask_matches_reference(kernel):
  s, t = _x(110, (3, 3, 4, 3)), _x(111, (3, 3, 4, 5))
  where = _random_mask(112, (3, 3, 4))
  where[1] = False
  got = _nst_jit(s, t, kernel=kernel, where=where)
  np.testing.assert_allclose(got, ref_nst_mmd_masked(s, t, kernel, where), rtol=RTOL, atol=1e-6)
  assert got[1] == 0.0


def test_nst_mmd_mask_equals_slicing():
  s, t = _x(113, (3, 4, 4, 2)), _x(114, (3, 4, 4, 3))
  keep = _mask_with_count(115, 3, 4, 4, count=9)
  np.testing.assert_allclose(_nst_jit(s, t, where=keep),
                             _nst_jit(_gather_same_count(s, keep), _gather_same_count(t, keep)),
                             rtol=1e-5, atol=1e-6)
  rows = np.array([True, False, True, True])
  np.testing.assert_allclose(_nst_jit(s, t, where=rows[:, None]),  # [H, 1]: one row dropped
                             _nst_jit(s[:, rows], t[:, rows]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('p', [1, 2])
def test_factor_transfer_mask_matches_reference(p):
  s, t = _x(120, (4, 3, 3, 2)), _x(121, (4, 3, 3, 2), 5.0)
  where = _random_mask(122, (4, 3, 3, 2))
  where[2] = False
  got = _ft_jit(s, t, p=p, where=where)
  np.testing.assert_allclose(got, ref_factor_transfer_masked(s, t, p, where), rtol=RTOL)
  assert got[2] == 0.0


def test_factor_transfer_mask_equals_slicing():
  s, t = _x(123, (3, 4, 4, 3)), _x(124, (3, 4, 4, 3))
  rows, channels = np.array([True, False, True, True]), np.array([True, False, True])
  np.testing.assert_allclose(_ft_jit(s, t, p=1, where=rows[:, None, None]),
                             _ft_jit(s[:, rows], t[:, rows], p=1), rtol=1e-5)
  np.testing.assert_allclose(_ft_jit(s, t, p=2, where=channels),
                             _ft_jit(s[..., channels], t[..., channels], p=2), rtol=1e-5)
  # With feature_ndim the mask broadcasts against the full input shape as well.
  np.testing.assert_allclose(_ft_jit(s, t, feature_ndim=2, where=channels),
                             _ft_jit(s[..., channels], t[..., channels], feature_ndim=2),
                             rtol=1e-5)


def test_vid_mask_matches_reference():
  t, mu, log_var = _x(130, (3, 4, 4, 2)), _x(131, (3, 4, 4, 2)), _x(132, (2,), 0.5)
  where = _random_mask(133, (3, 4, 4, 1))  # per position, shared by the channels
  where[0] = False
  got = _vid_jit(t, mu, log_var, where=where)
  np.testing.assert_allclose(got, ref_vid_masked(t, mu, log_var, where), rtol=RTOL, atol=1e-6)
  assert got[0] == 0.0


def test_vid_mask_equals_slicing():
  t, mu, log_var = _x(134, (3, 4, 4, 3)), _x(135, (3, 4, 4, 3)), _x(136, (3,), 0.5)
  rows = np.array([False, True, True, True])
  np.testing.assert_allclose(_vid_jit(t, mu, log_var, where=rows[:, None, None]),
                             _vid_jit(t[:, rows], mu[:, rows], log_var), rtol=1e-5)
  channels = np.array([True, True, False])
  np.testing.assert_allclose(
      _vid_jit(t, mu, log_var, where=channels, include_constant=True),
      _vid_jit(t[..., channels], mu[..., channels], log_var[channels], include_constant=True),
      rtol=1e-5)


# Each case: loss with a mask argument, input shapes, and a mask of the documented shape.
_MASKED_CASES = {
    'hint_l2': (losses.hint_l2, [(3, 3, 3, 2), (3, 3, 3, 2)], (3, 3, 3, 2)),
    'attention_transfer': (losses.attention_transfer, [(3, 3, 3, 2), (3, 3, 3, 4)], (3, 3, 3)),
    'nst_mmd': (losses.nst_mmd, [(3, 3, 3, 2), (3, 3, 3, 4)], (3, 3, 3)),
    'factor_transfer': (losses.factor_transfer, [(3, 3, 3, 2), (3, 3, 3, 2)], (3, 3, 3, 2)),
    'vid': (losses.vid, [(3, 3, 3, 2), (3, 3, 3, 2), (2,)], (3, 3, 3, 2)),
}


def _masked_case(name):
  fn, shapes, mask_shape = _MASKED_CASES[name]
  args = [_x(140 + i, shape) for i, shape in enumerate(shapes)]
  where = _random_mask(150, mask_shape)
  where[0] = False  # example 0 is fully masked
  where[1] = True   # example 1 is fully kept
  return fn, args, where


@pytest.mark.parametrize('name', sorted(_MASKED_CASES))
def test_masked_entries_are_inert(name):
  fn, args, where = _masked_case(name)
  loss = jax.jit(lambda *a: fn(*a, where=where))
  clean = loss(*args)
  unmasked = jax.jit(fn)(*[a[1:2] for a in args[:2]], *args[2:])
  np.testing.assert_allclose(clean[1], unmasked[0], rtol=1e-6)
  assert clean[0] == 0.0
  # Garbage (inf, NaN) in masked entries changes neither the value nor any gradient.
  masks = [np.broadcast_to(where.reshape(where.shape + (1,) * (4 - where.ndim)), a.shape)
           for a in args[:2]]
  dirty = [np.where(m, a, np.float32(v)) for a, m, v in zip(args, masks, (np.inf, np.nan))]
  np.testing.assert_array_equal(loss(*dirty, *args[2:]), clean)
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a, where=where)), argnums=(0, 1)))(
      *dirty, *args[2:])
  for g, mask in zip(grads, masks):
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.where(mask, 0.0, g), 0.0)  # none on masked entries
    assert np.any(g != 0)


@pytest.mark.parametrize('name', sorted(_MASKED_CASES))
def test_masked_grads(name):
  fn, args, where = _masked_case(name)
  check_grads(jax.jit(lambda *a: jnp.sum(fn(*a, where=where))), tuple(args), order=1,
              modes=['rev'], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize('name', sorted(_MASKED_CASES))
def test_bad_masks_raise_naming_where(name):
  fn, args, where = _masked_case(name)
  with pytest.raises(ValueError, match='`where`'):
    fn(*args, where=where.astype(np.float32))
  with pytest.raises(ValueError, match='`where`'):
    fn(*args, where=np.ones((5,), bool))
  with pytest.raises(ValueError, match='`where`'):  # broadcasts only *with* the inputs
    fn(*args, where=np.ones((2,) + where.shape, bool))


@pytest.mark.parametrize('fn', [losses.attention_transfer, losses.nst_mmd])
def test_spatial_mask_with_leading_dims_behaves_like_vmap(fn):
  s, t = _x(160, (2, 3, 3, 4, 2)), _x(161, (2, 3, 3, 4, 3))
  where = _random_mask(162, (2, 3, 3, 4))
  got = jax.jit(lambda s, t, w: fn(s, t, where=w))(s, t, where)
  assert got.shape == (2, 3)
  per_map = jax.vmap(jax.vmap(lambda s, t, w: fn(s, t, where=w)))
  np.testing.assert_allclose(got, jax.jit(per_map)(s, t, where), rtol=1e-5, atol=1e-7)
