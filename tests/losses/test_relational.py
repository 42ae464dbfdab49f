"""Tests for kdjax.losses relational and embedding losses against float64 references."""

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

from kdjax import losses


RTOL = 1e-5


def _x(seed, shape, scale=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=shape) * scale + offset).astype(np.float32)


def _f64(x):
  return np.asarray(x, np.float64)


# --------------------------------------------------- float64 references (loops)

def _ref_unit_rows(x):
  x = _f64(x).reshape(len(x), -1)
  return np.stack([row / np.sqrt(np.sum(row**2)) for row in x])


def _ref_smooth_l1(x):
  return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def ref_similarity_preserving(s, t):
  """Tung & Mori: ‖norm_rows(Q_T Q_Tᵀ) − norm_rows(Q_S Q_Sᵀ)‖²_F / B²."""
  b = len(s)
  gs = [_ref_unit_rows(_f64(f).reshape(b, -1) @ _f64(f).reshape(b, -1).T) for f in (s, t)]
  return np.sum((gs[1] - gs[0])**2) / b**2


def ref_rkd_distance(s, t):
  def potential(x):
    x = _f64(x)
    b = len(x)
    d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(b)] for i in range(b)])
    return d / d[d > 0].mean()
  return np.mean(_ref_smooth_l1(potential(s) - potential(t)))


def ref_rkd_angle(s, t):
  def potential(x):
    x = _f64(x)
    b = len(x)
    out = np.zeros((b, b, b))
    for i in range(b):
      for j in range(b):
        for k in range(b):
          u, v = x[i] - x[j], x[k] - x[j]
          nu, nv = np.linalg.norm(u), np.linalg.norm(v)
          if nu > 0 and nv > 0:
            out[i, j, k] = np.dot(u, v) / (nu * nv)
    return out
  return np.mean(_ref_smooth_l1(potential(s) - potential(t)))


def ref_pkt(s, t, eps=1e-7):
  def conditional(x):
    x = _ref_unit_rows(x)
    b = len(x)
    k = np.array([[(np.dot(x[i], x[j]) + 1) / 2 for j in range(b)] for i in range(b)])
    return k / k.sum(axis=1, keepdims=True)
  ps, pt = conditional(s), conditional(t)
  return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def ref_crd_nce(anchor, positive, negatives, tau):
  a, p, n = _ref_unit_rows(anchor), _ref_unit_rows(positive), _f64(negatives)
  out = []
  for i in range(len(a)):
    pos = math.exp(np.dot(a[i], p[i]) / tau)
    neg = sum(math.exp(np.dot(a[i], m / np.linalg.norm(m)) / tau) for m in n[i])
    out.append(-math.log(pos / (pos + neg)))
  return np.array(out)


def ref_cc_loss(s, t, gamma, order):
  def correlation(x):
    x = _ref_unit_rows(x)
    b = len(x)
    c = np.zeros((b, b))
    for i in range(b):
      for j in range(b):
        g = np.dot(x[i], x[j])
        c[i, j] = math.exp(-2 * gamma) * sum(
            (2 * gamma)**p / math.factorial(p) * g**p for p in range(order + 1))
    return c
  return np.sum((correlation(t) - correlation(s))**2) / len(s)**2


# ------------------------------------------------------------ similarity_preserving

@pytest.mark.parametrize('s_shape, t_shape', [((5, 3), (5, 7)), ((4, 3, 3, 2), (4, 2, 2, 5))])
def test_similarity_preserving_matches_reference(s_shape, t_shape):
  s, t = _x(0, s_shape), _x(1, t_shape)
  got = jax.jit(losses.similarity_preserving)(s, t)
  assert got.shape == ()
  np.testing.assert_allclose(got, ref_similarity_preserving(s, t), rtol=RTOL)


def test_similarity_preserving_grads():
  s, t = _x(2, (3, 2, 2, 2)), _x(3, (3, 2, 2, 3))
  check_grads(jax.jit(losses.similarity_preserving), (s, t), order=1, modes=['rev'],
              atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------------- rkd_distance

def test_rkd_distance_matches_reference():
  # A shared offset checks the centred-Gram distances against direct ones.
  s, t = _x(10, (6, 3), offset=5.0), _x(11, (6, 8), 3.0)
  got = jax.jit(losses.rkd_distance)(s, t)
  assert got.shape == ()
  np.testing.assert_allclose(got, ref_rkd_distance(s, t), rtol=RTOL)


def test_rkd_distance_with_coinciding_examples():
  s, t = _x(12, (5, 3)), _x(13, (5, 4))
  s[3] = s[1]  # a zero distance must be left out of the mean and give finite grads
  np.testing.assert_allclose(jax.jit(losses.rkd_distance)(s, t), ref_rkd_distance(s, t),
                             rtol=RTOL)
  grads = jax.jit(jax.grad(losses.rkd_distance, argnums=(0, 1)))(s, t)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_rkd_distance_grads():
  s, t = _x(14, (4, 3)), _x(15, (4, 5))
  check_grads(jax.jit(losses.rkd_distance), (s, t), order=1, modes=['rev'],
              atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------- rkd_angle

def test_rkd_angle_matches_reference():
  s, t = _x(20, (5, 3), offset=5.0), _x(21, (5, 6), 2.0)
  got = jax.jit(losses.rkd_angle)(s, t)
  assert got.shape == ()
  np.testing.assert_allclose(got, ref_rkd_angle(s, t), rtol=RTOL)


def test_rkd_angle_with_coinciding_examples():
  s, t = _x(22, (5, 3)), _x(23, (5, 4))
  s[4] = s[0]
  np.testing.assert_allclose(jax.jit(losses.rkd_angle)(s, t), ref_rkd_angle(s, t), rtol=RTOL)
  grads = jax.jit(jax.grad(losses.rkd_angle, argnums=(0, 1)))(s, t)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_rkd_angle_grads():
  s, t = _x(24, (4, 3)), _x(25, (4, 2))
  check_grads(jax.jit(losses.rkd_angle), (s, t), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------------- pkt

@pytest.mark.parametrize('eps', [1e-7, 1e-3])
def test_pkt_matches_reference(eps):
  s, t = _x(30, (6, 3)), _x(31, (6, 9))
  got = jax.jit(functools.partial(losses.pkt, eps=eps))(s, t)
  assert got.shape == ()
  np.testing.assert_allclose(got, ref_pkt(s, t, eps), rtol=RTOL)


def test_pkt_grads():
  s, t = _x(32, (4, 3)), _x(33, (4, 5))
  check_grads(jax.jit(losses.pkt), (s, t), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------------------ crd_nce

@pytest.mark.parametrize('tau', [0.07, 0.5, 1.0])
def test_crd_nce_matches_reference(tau):
  a, p, n = _x(40, (4, 5)), _x(41, (4, 5)), _x(42, (4, 6, 5), 2.0)
  got = jax.jit(functools.partial(losses.crd_nce, temperature=tau))(a, p, n)
  assert got.shape == (4,)
  np.testing.assert_allclose(got, ref_crd_nce(a, p, n, tau), rtol=RTOL)


def test_crd_nce_shared_negatives_broadcast():
  a, p, n = _x(43, (3, 4)), _x(44, (3, 4)), _x(45, (5, 4))
  fn = jax.jit(losses.crd_nce)
  np.testing.assert_allclose(fn(a, p, n), fn(a, p, np.broadcast_to(n, (3, 5, 4))), rtol=1e-6)


def test_crd_nce_leading_dims_behave_like_vmap():
  a, p, n = _x(46, (2, 3, 4)), _x(47, (2, 3, 4)), _x(48, (2, 3, 5, 4))
  fn = jax.jit(losses.crd_nce)
  np.testing.assert_allclose(fn(a, p, n), jax.jit(jax.vmap(jax.vmap(losses.crd_nce)))(a, p, n),
                             rtol=1e-6)


def test_crd_nce_grads():
  a, p, n = _x(49, (2, 3)), _x(50, (2, 3)), _x(51, (2, 4, 3))
  fn = jax.jit(lambda a, p, n: losses.crd_nce(a, p, n, temperature=0.5).sum())
  check_grads(fn, (a, p, n), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------------------ cc_loss

@pytest.mark.parametrize('gamma, order', [(0.4, 2), (1.0, 0), (0.25, 5)])
def test_cc_loss_matches_reference(gamma, order):
  s, t = _x(60, (6, 3)), _x(61, (6, 7))
  got = jax.jit(functools.partial(losses.cc_loss, gamma=gamma, order=order))(s, t)
  assert got.shape == ()
  np.testing.assert_allclose(got, ref_cc_loss(s, t, gamma, order), rtol=RTOL, atol=1e-9)


def test_cc_loss_high_order_approaches_gaussian_rbf():
  s, t, gamma = _x(62, (5, 3)), _x(63, (5, 4)), 0.4
  def rbf(x):
    x = _ref_unit_rows(x)
    return np.exp(-gamma * np.sum((x[:, None] - x[None])**2, axis=-1))
  exact = np.sum((rbf(t) - rbf(s))**2) / 25
  fn = jax.jit(functools.partial(losses.cc_loss, gamma=gamma, order=12))
  np.testing.assert_allclose(fn(s, t), exact, rtol=1e-4)


def test_cc_loss_grads():
  s, t = _x(64, (4, 3)), _x(65, (4, 5))
  check_grads(jax.jit(losses.cc_loss), (s, t), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


# --------------------------------------------------------- shared: dtypes, errors

_BATCH_LOSSES = {
    'similarity_preserving': losses.similarity_preserving,
    'rkd_distance': losses.rkd_distance,
    'rkd_angle': losses.rkd_angle,
    'pkt': losses.pkt,
    'cc_loss': losses.cc_loss,
}


@pytest.mark.parametrize('name', sorted(_BATCH_LOSSES))
@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_low_precision_computes_in_float32(name, dtype):
  fn = jax.jit(_BATCH_LOSSES[name])
  s, t = jnp.asarray(_x(70, (4, 3)), dtype), jnp.asarray(_x(71, (4, 5)), dtype)
  out = fn(s, t)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, fn(s.astype(jnp.float32), t.astype(jnp.float32)), rtol=1e-6)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_crd_nce_low_precision_computes_in_float32(dtype):
  shapes = ((2, 3), (2, 3), (2, 4, 3))
  args = [jnp.asarray(_x(72 + i, shape), dtype) for i, shape in enumerate(shapes)]
  fn = jax.jit(losses.crd_nce)
  out = fn(*args)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, fn(*[a.astype(jnp.float32) for a in args]), rtol=1e-6)


@pytest.mark.parametrize('name', sorted(_BATCH_LOSSES))
def test_batch_losses_reject_bad_shapes(name):
  fn = _BATCH_LOSSES[name]
  with pytest.raises(ValueError, match='teacher_'):
    fn(jnp.zeros((4, 3)), jnp.zeros((5, 3)))  # batch sizes differ
  with pytest.raises(ValueError, match='student_'):
    fn(jnp.zeros((4,)), jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match='student_'):
    fn(jnp.zeros((4, 3), jnp.int32), jnp.zeros((4, 3)))


@pytest.mark.parametrize('name', sorted(_BATCH_LOSSES))
def test_batch_losses_take_one_batch_and_vmap_over_groups(name):
  # The batch is axis 0 of a fixed [B, ...] layout (no extra leading axes are
  # broadcast); several groups are handled with vmap, one scalar per group.
  fn = _BATCH_LOSSES[name]
  s, t = _x(76, (3, 4, 2)), _x(77, (3, 4, 5))
  got = jax.jit(jax.vmap(fn))(s, t)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, [jax.jit(fn)(s[g], t[g]) for g in range(3)], rtol=1e-6)


_z = lambda *shape: jnp.zeros(shape)


@pytest.mark.parametrize('call, match', [
    (lambda: losses.rkd_distance(_z(4, 2, 2), _z(4, 3)), 'student_embeddings'),
    (lambda: losses.rkd_angle(_z(4, 3), _z(4, 3, 1)), 'teacher_embeddings'),
    (lambda: losses.pkt(_z(4, 3), _z(4, 3), eps=0.0), 'eps'),
    (lambda: losses.cc_loss(_z(4, 3), _z(4, 3), gamma=0.0), 'gamma'),
    (lambda: losses.cc_loss(_z(4, 3), _z(4, 3), order=-1), 'order'),
    (lambda: losses.cc_loss(_z(4, 3), _z(4, 3), order=1.5), 'order'),
    (lambda: losses.crd_nce(_z(2, 3), _z(2, 4), _z(2, 5, 3)), 'positive'),
    (lambda: losses.crd_nce(_z(2, 3), _z(2, 3), _z(2, 5, 4)), 'negatives'),
    (lambda: losses.crd_nce(_z(2, 3), _z(2, 3), _z(3, 5, 3)), 'negatives'),
    (lambda: losses.crd_nce(_z(2, 3), _z(2, 3), _z(3)), 'negatives'),
    (lambda: losses.crd_nce(_z(2, 3), _z(2, 3), _z(2, 5, 3), temperature=0.0), 'temperature'),
    (lambda: losses.crd_nce(jnp.zeros((2, 3), jnp.int32), _z(2, 3), _z(2, 5, 3)), 'anchor'),
])
def test_bad_inputs_raise_naming_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ------------------------------------------------------------------- properties

# Quarter-integer grid: exact zeros and coinciding rows are possible.
_grid = st.integers(-12, 12).map(lambda v: v / 4)
_emb_s = hnp.arrays(np.float32, (4, 3), elements=_grid)
_emb_t = hnp.arrays(np.float32, (4, 5), elements=_grid)
_scale = st.floats(0.1, 10.0)


_JITTED_BATCH_LOSSES = {name: jax.jit(fn) for name, fn in _BATCH_LOSSES.items()}


@pytest.mark.parametrize('name', sorted(_BATCH_LOSSES))
@hypothesis.given(s=_emb_s, t=_emb_t, a=_scale, b=_scale)
def test_batch_loss_properties(name, s, t, a, b):
  fn = _JITTED_BATCH_LOSSES[name]
  out = float(fn(s, t))
  assert out >= -1e-6
  np.testing.assert_allclose(fn(t, t), 0.0, atol=1e-6)
  # All five compare scale-free relations: positive rescaling changes nothing.
  scaled = fn(np.float32(a) * s, np.float32(b) * t)
  np.testing.assert_allclose(scaled, out, rtol=1e-4, atol=1e-5)


_jitted_crd_nce = jax.jit(
    lambda a, p, n, tau: losses.crd_nce(a, p, n, temperature=tau), static_argnums=3)


@hypothesis.given(_emb_s, _emb_s, hnp.arrays(np.float32, (4, 2, 3), elements=_grid), _scale,
                  st.sampled_from([0.07, 1.0]))
def test_crd_nce_properties(a, p, n, c, tau):
  fn = _jitted_crd_nce
  out = np.asarray(fn(a, p, n, tau))
  assert np.all(out >= 0)  # −log of a probability
  np.testing.assert_allclose(fn(np.float32(c) * a, p, n, tau), out, rtol=1e-4, atol=1e-5)
  # A positive aligned with the anchor is at least as good as any other positive.
  aligned = np.asarray(fn(a, a, n, tau))
  nonzero = np.any(a != 0, axis=-1) & np.any(p != 0, axis=-1)
  assert np.all(aligned[nonzero] <= out[nonzero] + 1e-5)
