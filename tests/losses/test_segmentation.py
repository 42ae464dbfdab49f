"""Tests for the segmentation losses against float64 references from Liu et al. 2019 / WGAN-GP."""

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

def ref_pixelwise(s, t, tau=1.0, where=None):
  """Per image: mean over valid pixels of tau^2 KL(softmax(t/tau) || softmax(s/tau))."""
  p = special.softmax(np.asarray(t, np.float64) / tau, axis=-1)
  q = special.softmax(np.asarray(s, np.float64) / tau, axis=-1)
  kl = tau**2 * np.sum(special.rel_entr(p, q), axis=-1)  # [B, H, W]
  if where is None:
    where = np.ones(kl.shape, bool)
  where = np.broadcast_to(where, kl.shape)
  return np.array([kl[b][where[b]].mean() if where[b].any() else 0.0 for b in range(len(kl))])


def ref_avg_pool(x, bh, bw):
  """Non-overlapping bh x bw average pooling; border windows average what exists."""
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  nh, nw = -(-h // bh), -(-w // bw)
  out = np.zeros((b, nh, nw, c))
  for i in range(nh):
    for j in range(nw):
      out[:, i, j] = x[:, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw].mean(axis=(1, 2))
  return out


def ref_pairwise(f_s, f_t, pool=None):
  f_s, f_t = np.asarray(f_s, np.float64), np.asarray(f_t, np.float64)
  if pool is not None:
    f_s, f_t = ref_avg_pool(f_s, *pool), ref_avg_pool(f_t, *pool)

  def sim(f):
    nodes = f.reshape(f.shape[0], -1, f.shape[-1])
    nodes = nodes / np.linalg.norm(nodes, axis=-1, keepdims=True)
    return nodes @ nodes.transpose(0, 2, 1)

  return np.mean((sim(f_s) - sim(f_t))**2, axis=(1, 2))


# ------------------------------------------------------------------ pixelwise_kd

@pytest.mark.parametrize('tau', [1.0, 3.0])
def test_pixelwise_matches_reference(tau):
  s, t = _randn(0, (2, 3, 5, 4)), _randn(1, (2, 3, 5, 4))
  got = jax.jit(functools.partial(losses.pixelwise_kd, temperature=tau))(s, t)
  assert got.shape == (2,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_pixelwise(s, t, tau), rtol=RTOL)


def test_pixelwise_ignore_mask_matches_reference_and_crop():
  s, t = _randn(2, (3, 4, 5, 6)), _randn(3, (3, 4, 5, 6))
  where = np.random.default_rng(1).random((3, 4, 5)) < 0.6
  where[2] = False  # an image with only ignored pixels gives 0
  fn = jax.jit(functools.partial(losses.pixelwise_kd, temperature=2.0))
  got = fn(s, t, where=where)
  np.testing.assert_allclose(got, ref_pixelwise(s, t, 2.0, where), rtol=RTOL)
  assert got[2] == 0.0
  crop = np.zeros((3, 4, 5), bool)
  crop[:, 1:3, 2:5] = True  # a rectangular mask equals cropping the maps
  np.testing.assert_allclose(fn(s, t, where=crop), fn(s[:, 1:3, 2:5], t[:, 1:3, 2:5]), rtol=1e-6)


def test_pixelwise_batch_behaves_like_vmap():
  s, t = _randn(4, (3, 2, 3, 4)), _randn(5, (3, 2, 3, 4))
  single = lambda s, t: losses.pixelwise_kd(s[None], t[None], temperature=2.0)[0]
  np.testing.assert_allclose(jax.jit(functools.partial(losses.pixelwise_kd, temperature=2.0))(s, t),
                             jax.jit(jax.vmap(single))(s, t), rtol=1e-6)


def test_pixelwise_grads():
  s, t = _randn(6, (2, 2, 3, 4), 1.0), _randn(7, (2, 2, 3, 4), 1.0)
  where = np.random.default_rng(2).random((2, 2, 3)) < 0.7
  fn = lambda s, t: jnp.sum(losses.pixelwise_kd(s, t, temperature=2.0, where=where))
  check_grads(jax.jit(fn), (s, t), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_pixelwise_low_precision_computes_in_float32(dtype):
  s, t = (jnp.asarray(_randn(k, (2, 3, 3, 5)), dtype) for k in (8, 9))
  out = losses.pixelwise_kd(s, t, temperature=2.0)
  assert out.dtype == jnp.float32
  expected = ref_pixelwise(np.asarray(s, np.float32), np.asarray(t, np.float32), 2.0)
  np.testing.assert_allclose(out, expected, rtol=RTOL)


def test_pixelwise_large_logits_are_finite():
  s = jnp.tile(jnp.array([1e4, -1e4, 0.0]), (1, 2, 2, 1))
  t = jnp.tile(jnp.array([-1e4, 1e4, 0.0]), (1, 2, 2, 1))
  fn = lambda s, t: losses.pixelwise_kd(s, t).sum()
  val, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(s, t)
  assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_allclose(val, 2e4, rtol=1e-5)


_maps = hnp.arrays(np.float32, (2, 2, 2, 4), elements=st.floats(-30, 30, width=32))


@hypothesis.given(_maps, _maps, st.floats(-50, 50, width=32), st.sampled_from([1.0, 4.0]))
def test_pixelwise_properties(s, t, shift, tau):
  out = np.asarray(losses.pixelwise_kd(s, t, temperature=tau))
  assert np.all(out >= -1e-5 * tau**2)
  np.testing.assert_allclose(losses.pixelwise_kd(s, s, temperature=tau), 0.0, atol=1e-5 * tau**2)
  shifted = losses.pixelwise_kd(s + shift, t - shift, temperature=tau)
  np.testing.assert_allclose(shifted, out, rtol=1e-3, atol=1e-3 * tau**2)


def test_pixelwise_bad_inputs():
  z = jnp.zeros((2, 3, 3, 4))
  with pytest.raises(ValueError, match='student_logits'):
    losses.pixelwise_kd(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match='teacher_logits'):
    losses.pixelwise_kd(z, jnp.zeros((2, 3, 3, 5)))
  with pytest.raises(ValueError, match='temperature'):
    losses.pixelwise_kd(z, z, temperature=-1.0)
  with pytest.raises(ValueError, match='where'):
    losses.pixelwise_kd(z, z, where=np.ones((2, 3, 4), bool))
  with pytest.raises(ValueError, match='where'):
    losses.pixelwise_kd(z, z, where=np.ones((2, 3, 3), np.float32))


# -------------------------------------------------------- pairwise_similarity_kd

@pytest.mark.parametrize('pool_size, pool', [
    (None, None), (2, (2, 2)), ((2, 3), (2, 3)), ((5, 7), (5, 7))])
def test_pairwise_matches_reference(pool_size, pool):
  f_s, f_t = _randn(10, (2, 5, 7, 3)), _randn(11, (2, 5, 7, 6))  # channels differ
  got = jax.jit(functools.partial(losses.pairwise_similarity_kd, pool_size=pool_size))(f_s, f_t)
  assert got.shape == (2,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_pairwise(f_s, f_t, pool), rtol=RTOL, atol=1e-7)


def test_pairwise_pool_is_a_window_not_an_output_size():
  # A 4x6 map pooled with window 2 gives 2x3 = 6 nodes: the same as pre-pooling by hand.
  f_s, f_t = _randn(12, (1, 4, 6, 3)), _randn(13, (1, 4, 6, 2))
  pooled = lambda f: f.reshape(1, 2, 2, 3, 2, -1).mean(axis=(2, 4))
  fn = jax.jit(losses.pairwise_similarity_kd, static_argnames='pool_size')
  np.testing.assert_allclose(fn(f_s, f_t, pool_size=2), fn(pooled(f_s), pooled(f_t)), rtol=1e-6)


def test_pairwise_batch_behaves_like_vmap():
  f_s, f_t = _randn(14, (3, 3, 4, 2)), _randn(15, (3, 3, 4, 5))
  single = lambda s, t: losses.pairwise_similarity_kd(s[None], t[None])[0]
  np.testing.assert_allclose(jax.jit(losses.pairwise_similarity_kd)(f_s, f_t),
                             jax.jit(jax.vmap(single))(f_s, f_t), rtol=1e-6)


def test_pairwise_grads():
  f_s, f_t = _randn(16, (2, 3, 3, 2), 1.0), _randn(17, (2, 3, 3, 4), 1.0)
  fn = lambda s, t: jnp.sum(losses.pairwise_similarity_kd(s, t, pool_size=(2, 2)))
  check_grads(jax.jit(fn), (f_s, f_t), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_pairwise_zero_feature_vector_is_finite():
  f_s = _randn(18, (1, 2, 2, 3)).copy()
  f_s[0, 0, 0] = 0.0
  f_t = _randn(19, (1, 2, 2, 3))
  fn = lambda s: losses.pairwise_similarity_kd(s, f_t).sum()
  val, g = jax.jit(jax.value_and_grad(fn))(f_s)
  assert np.isfinite(val) and np.all(np.isfinite(g))


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_pairwise_low_precision_computes_in_float32(dtype):
  f_s, f_t = (jnp.asarray(_randn(k, (2, 3, 3, 4)), dtype) for k in (20, 21))
  out = losses.pairwise_similarity_kd(f_s, f_t)
  assert out.dtype == jnp.float32
  expected = ref_pairwise(np.asarray(f_s, np.float32), np.asarray(f_t, np.float32))
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=1e-7)


_features = hnp.arrays(np.float32, (2, 3, 2, 3), elements=st.floats(0.125, 10, width=32)
                       | st.floats(-10, -0.125, width=32))


@hypothesis.given(_features, _features, hnp.arrays(np.float32, (1, 3, 2, 1),
                                                   elements=st.floats(0.125, 10, width=32)))
def test_pairwise_properties(f_s, f_t, node_scale):
  out = np.asarray(losses.pairwise_similarity_kd(f_s, f_t))
  assert np.all(out >= 0) and np.all(out <= 4 + 1e-5)
  np.testing.assert_allclose(losses.pairwise_similarity_kd(f_s, f_s), 0.0, atol=1e-6)
  # Cosine similarity ignores each node's scale ...
  np.testing.assert_allclose(losses.pairwise_similarity_kd(f_s * node_scale, f_t), out,
                             rtol=1e-4, atol=1e-5)
  # ... and a teacher with extra zero channels has the same geometry.
  padded = np.concatenate([f_s, np.zeros_like(f_s)], axis=-1)
  np.testing.assert_allclose(losses.pairwise_similarity_kd(f_s, padded), 0.0, atol=1e-6)


@pytest.mark.parametrize('pool_size', [0, (2,), (2, 0), 2.5, (2.0, 2.0), 'a', True])
def test_pairwise_bad_pool_size(pool_size):
  with pytest.raises(ValueError, match='pool_size'):
    losses.pairwise_similarity_kd(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 2)),
                                  pool_size=pool_size)


def test_pairwise_bad_inputs():
  with pytest.raises(ValueError, match='student_features'):
    losses.pairwise_similarity_kd(jnp.zeros((4, 4, 2)), jnp.zeros((1, 4, 4, 2)))
  with pytest.raises(ValueError, match='teacher_features'):
    losses.pairwise_similarity_kd(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 5, 2)))
  with pytest.raises(ValueError, match='student_features'):
    losses.pairwise_similarity_kd(jnp.zeros((1, 4, 4, 2), jnp.int32), jnp.zeros((1, 4, 4, 2)))


# ------------------------------------------------ pairwise_similarity_kd: masks

def ref_pairwise_masked(f_s, f_t, where, pool=None):
  """Liu et al. Eq. 2 on the valid nodes only, one image at a time (float64 loops).

  Masked pixels do not exist: a pooled node averages the valid pixels of its
  window, a window with none is not a node, and the mean runs over valid pairs.
  """
  f_s, f_t = np.asarray(f_s, np.float64), np.asarray(f_t, np.float64)
  where = np.broadcast_to(where, f_s.shape[:3])
  bh, bw = pool if pool is not None else (1, 1)
  h, w = f_s.shape[1:3]
  out = []
  for b in range(len(f_s)):
    nodes_s, nodes_t = [], []
    for i in range(0, h, bh):
      for j in range(0, w, bw):
        keep = where[b, i:i + bh, j:j + bw]
        if keep.any():
          nodes_s.append(f_s[b, i:i + bh, j:j + bw][keep].mean(axis=0))
          nodes_t.append(f_t[b, i:i + bh, j:j + bw][keep].mean(axis=0))
    if not nodes_s:
      out.append(0.0)
      continue
    sims = []
    for nodes in (np.array(nodes_s), np.array(nodes_t)):
      unit = nodes / np.linalg.norm(nodes, axis=-1, keepdims=True)
      sims.append(unit @ unit.T)
    out.append(np.mean((sims[0] - sims[1])**2))
  return np.array(out)


_pairwise_jit = jax.jit(losses.pairwise_similarity_kd, static_argnames='pool_size')


@pytest.mark.parametrize('pool_size, pool', [(None, None), (2, (2, 2)), ((2, 3), (2, 3))])
def test_pairwise_mask_matches_reference(pool_size, pool):
  f_s, f_t = _randn(50, (3, 5, 7, 3)), _randn(51, (3, 5, 7, 4))
  where = np.random.default_rng(52).random((3, 5, 7)) < 0.5
  where[2] = False  # an image with no valid pixel gives 0
  got = _pairwise_jit(f_s, f_t, pool_size=pool_size, where=where)
  assert got.shape == (3,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_pairwise_masked(f_s, f_t, where, pool), rtol=RTOL,
                             atol=1e-7)
  assert got[2] == 0.0


def test_pairwise_all_true_mask_changes_nothing():
  f_s, f_t = _randn(53, (2, 5, 7, 3)), _randn(54, (2, 5, 7, 4))
  for pool_size in (None, (2, 3)):
    np.testing.assert_allclose(
        _pairwise_jit(f_s, f_t, pool_size=pool_size, where=np.ones((5, 7), bool)),
        _pairwise_jit(f_s, f_t, pool_size=pool_size), rtol=1e-6)


def test_pairwise_mask_equals_slicing():
  f_s, f_t = _randn(55, (2, 4, 6, 3)), _randn(56, (2, 4, 6, 2))
  # Scattered valid pixels, without pooling: the valid nodes alone, as a [1, 1, K, C] map.
  where = np.random.default_rng(57).random((2, 4, 6)) < 0.5
  got = _pairwise_jit(f_s, f_t, where=where)
  for b in range(2):
    alone = _pairwise_jit(f_s[b][where[b]][None, None], f_t[b][where[b]][None, None])
    np.testing.assert_allclose(got[b], alone[0], rtol=1e-5, atol=1e-7)
  # A rectangle starting on the window grid equals cropping, also with pooling; a crop
  # cut at the bottom/right leaves partial border windows on both sides of the identity.
  for rows, cols, pool_size in [((1, 3), (1, 6), None), ((2, 4), (3, 5), (2, 3))]:
    crop = np.zeros((4, 6), bool)
    crop[slice(*rows), slice(*cols)] = True
    cropped = [f[:, slice(*rows), slice(*cols)] for f in (f_s, f_t)]
    np.testing.assert_allclose(_pairwise_jit(f_s, f_t, pool_size=pool_size, where=crop),
                               _pairwise_jit(*cropped, pool_size=pool_size), rtol=1e-5, atol=1e-7)


def test_pairwise_masked_pixels_are_inert():
  f_s, f_t = _randn(58, (3, 4, 4, 3), 1.0), _randn(59, (3, 4, 4, 2), 1.0)
  where = np.random.default_rng(60).random((3, 4, 4)) < 0.6
  where[0] = False
  for pool_size in (None, 3):
    fn = lambda s, t: losses.pairwise_similarity_kd(s, t, pool_size=pool_size, where=where)
    clean = jax.jit(fn)(f_s, f_t)
    assert clean[0] == 0.0
    dirty_s = np.where(where[..., None], f_s, np.float32(np.nan))
    dirty_t = np.where(where[..., None], f_t, np.float32(np.inf))
    np.testing.assert_array_equal(jax.jit(fn)(dirty_s, dirty_t), clean)
    grads = jax.jit(jax.grad(lambda s, t: jnp.sum(fn(s, t)), argnums=(0, 1)))(dirty_s, dirty_t)
    for g in grads:
      assert np.all(np.isfinite(g)) and np.any(g != 0)
      np.testing.assert_array_equal(np.where(where[..., None], 0.0, g), 0.0)
  check_grads(jax.jit(lambda s, t: jnp.sum(fn(s, t))), (f_s, f_t), order=1, modes=['rev'],
              atol=1e-2, rtol=1e-2)  # with pooling


def test_pairwise_bad_masks():
  z = jnp.zeros((2, 4, 4, 3))
  for where in (np.ones((2, 4, 4), np.float32), np.ones((2, 4, 5), bool),
                np.ones((2, 4, 4, 3), bool), np.ones((3, 1, 4, 4), bool)):
    with pytest.raises(ValueError, match='`where`'):
      losses.pairwise_similarity_kd(z, z, where=where)


# ------------------------------------------------------------------- holistic KD

def test_holistic_losses_match_formula():
  real, fake = _randn(22, (5,)), _randn(23, (5,))
  d = jax.jit(losses.holistic_discriminator_loss)(real, fake)
  g = jax.jit(losses.holistic_generator_loss)(fake)
  np.testing.assert_allclose(d, fake.astype(np.float64) - real, rtol=RTOL)
  np.testing.assert_allclose(g, -fake.astype(np.float64), rtol=RTOL)
  assert d.shape == g.shape == (5,)


def test_holistic_losses_leading_dims_and_grads():
  real, fake = _randn(24, (2, 3)), _randn(25, (2, 3))
  np.testing.assert_allclose(losses.holistic_discriminator_loss(real, fake),
                             jax.vmap(losses.holistic_discriminator_loss)(real, fake), rtol=1e-6)
  check_grads(lambda r, f: jnp.sum(losses.holistic_discriminator_loss(r, f)), (real, fake),
              order=1, modes=['rev'], atol=1e-2, rtol=1e-2)
  check_grads(lambda f: jnp.sum(losses.holistic_generator_loss(f)), (fake,),
              order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_holistic_sign_convention():
  # A critic step on the discriminator loss widens D(teacher) - D(student); a student step on
  # the generator loss raises D(student).
  teacher_maps, student_maps = _randn(26, (4, 3)), _randn(27, (4, 3))
  w = _randn(28, (3,))
  critic = lambda w, x: x @ w
  gap = lambda w: jnp.mean(critic(w, teacher_maps) - critic(w, student_maps))
  d_loss = lambda w: jnp.mean(losses.holistic_discriminator_loss(
      critic(w, teacher_maps), critic(w, student_maps)))
  assert gap(w - 0.1 * jax.jit(jax.grad(d_loss))(w)) > gap(w)
  g_loss = lambda x: jnp.mean(losses.holistic_generator_loss(critic(w, x)))
  moved = student_maps - 0.1 * jax.jit(jax.grad(g_loss))(student_maps)
  assert jnp.mean(critic(w, moved)) > jnp.mean(critic(w, student_maps))


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_holistic_low_precision_computes_in_float32(dtype):
  real, fake = jnp.asarray([1.5, -2.25], dtype), jnp.asarray([0.5, 3.0], dtype)
  d = losses.holistic_discriminator_loss(real, fake)
  g = losses.holistic_generator_loss(fake)
  assert d.dtype == g.dtype == jnp.float32
  np.testing.assert_array_equal(d, [-1.0, 5.25])
  np.testing.assert_array_equal(g, [-0.5, -3.0])


def test_holistic_bad_inputs():
  with pytest.raises(ValueError, match='fake_scores'):
    losses.holistic_discriminator_loss(jnp.zeros(3), jnp.zeros(4))
  with pytest.raises(ValueError, match='real_scores'):
    losses.holistic_discriminator_loss(jnp.zeros(3, jnp.int32), jnp.zeros(3))
  with pytest.raises(ValueError, match='fake_scores'):
    losses.holistic_generator_loss(jnp.zeros(3, jnp.int32))


# -------------------------------------------------------------- gradient_penalty

def _quadratic_critic(params):
  c, v = params
  return lambda x: c * jnp.sum(jnp.square(x), axis=(1, 2, 3)) + jnp.sum(x * v, axis=(1, 2, 3))


def ref_gradient_penalty(c, v, real, fake, eps):
  """(||grad D(x_hat)|| - 1)^2 for D(x) = c sum x^2 + sum v x, whose gradient is 2 c x + v."""
  real, fake, v = (np.asarray(a, np.float64) for a in (real, fake, v))
  eps = np.asarray(eps, np.float64).reshape(-1, 1, 1, 1)
  x_hat = eps * real + (1 - eps) * fake
  grad = 2 * c * x_hat + v
  return (np.sqrt(np.sum(grad**2, axis=(1, 2, 3))) - 1)**2


def test_gradient_penalty_matches_reference():
  real, fake = _randn(30, (4, 2, 3, 2), 1.0), _randn(31, (4, 2, 3, 2), 1.0)
  c, v = np.float32(0.3), _randn(32, (2, 3, 2), 0.2)
  key = jax.random.key(7)
  fn = jax.jit(lambda params, r, f, k: losses.gradient_penalty(
      _quadratic_critic(params), r, f, key=k))
  got = fn((c, v), real, fake, key)
  eps = jax.random.uniform(key, (4,))  # the documented interpolation weights
  assert got.shape == (4,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_gradient_penalty(c, v, real, fake, eps), rtol=RTOL)


def test_gradient_penalty_linear_critic_is_key_independent():
  real, fake = _randn(33, (3, 2, 2, 1)), _randn(34, (3, 2, 2, 1))
  v = _randn(35, (2, 2, 1), 0.5)
  expected = (np.linalg.norm(v.astype(np.float64)) - 1)**2
  fn = jax.jit(lambda k: losses.gradient_penalty(_quadratic_critic((0.0, v)), real, fake, key=k))
  for seed in (0, 1):
    got = fn(jax.random.key(seed))
    np.testing.assert_allclose(got, np.full(3, expected), rtol=RTOL)


def test_gradient_penalty_grads_wrt_critic_params():
  real, fake = _randn(36, (2, 2, 2, 1), 1.0), _randn(37, (2, 2, 2, 1), 1.0)
  key = jax.random.key(3)
  fn = lambda c, v: jnp.sum(losses.gradient_penalty(
      _quadratic_critic((c, v)), real, fake, key=key))
  check_grads(jax.jit(fn), (np.float32(0.4), _randn(38, (2, 2, 1), 0.5)), order=1,
              modes=['rev'], atol=1e-2, rtol=1e-2)


def test_gradient_penalty_constant_critic_is_finite():
  real, fake = _randn(39, (2, 3)), _randn(40, (2, 3))
  fn = lambda a: jnp.sum(losses.gradient_penalty(lambda x: a * jnp.ones(x.shape[0]), real, fake,
                                                 key=jax.random.key(0)))
  val, g = jax.jit(jax.value_and_grad(fn))(1.0)
  np.testing.assert_allclose(val, 2.0)  # zero gradient norm: (0 - 1)^2 per example
  assert np.isfinite(g)


def test_gradient_penalty_accepts_column_scores():
  real, fake = _randn(41, (3, 4)), _randn(42, (3, 4))
  v = _randn(43, (4,), 0.5)
  got = jax.jit(lambda r, f: losses.gradient_penalty(
      lambda x: (x @ v)[:, None], r, f, key=jax.random.key(0)))(real, fake)
  np.testing.assert_allclose(got, np.full(3, (np.linalg.norm(v.astype(np.float64)) - 1)**2),
                             rtol=RTOL)


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16])
def test_gradient_penalty_low_precision_computes_in_float32(dtype):
  real, fake = (jnp.asarray(_randn(k, (2, 2, 2, 2), 1.0), dtype) for k in (44, 45))
  key = jax.random.key(1)
  got = jax.jit(lambda r, f: losses.gradient_penalty(
      _quadratic_critic((0.5, np.zeros((2, 2, 2), np.float32))), r, f, key=key))(real, fake)
  assert got.dtype == jnp.float32
  expected = ref_gradient_penalty(0.5, np.zeros((2, 2, 2)), np.asarray(real, np.float32),
                                  np.asarray(fake, np.float32), jax.random.uniform(key, (2,)))
  np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_gradient_penalty_bad_inputs():
  key = jax.random.key(0)
  critic = lambda x: jnp.sum(x, axis=-1)
  with pytest.raises(ValueError, match='fake'):
    losses.gradient_penalty(critic, jnp.zeros((2, 3)), jnp.zeros((2, 4)), key=key)
  with pytest.raises(ValueError, match='real'):
    losses.gradient_penalty(critic, jnp.zeros(()), jnp.zeros(()), key=key)
  with pytest.raises(ValueError, match='critic_fn'):
    losses.gradient_penalty(lambda x: x, jnp.zeros((2, 3)), jnp.zeros((2, 3)), key=key)
  with pytest.raises(ValueError, match='critic_fn'):
    losses.gradient_penalty('critic', jnp.zeros((2, 3)), jnp.zeros((2, 3)), key=key)
