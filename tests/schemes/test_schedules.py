"""Tests for kdjax.schemes term-weight schedules against float64 NumPy references."""

import math

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import schemes
from kdjax import steps
from kdjax.models import function_forward
from kdjax.state import TrainState


STEPS = np.arange(0, 400, dtype=np.int32)


def _run(schedule, t=STEPS):
  """Evaluates a schedule under jit, one traced step at a time (as the train step does)."""
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(t)), np.float64)


# Independent references, written from the definitions in the docstrings.
def ref_until(t, n, w, after):
  return np.where(t < n, w, after).astype(np.float64)


def ref_linear(t, w, n, end, start):
  f = np.clip((t - start) / n, 0.0, 1.0)
  return w + (end - w) * f


def ref_cosine(t, w, n, end, start):
  f = np.clip((t - start) / n, 0.0, 1.0)
  return end + (w - end) * 0.5 * (1.0 + np.cos(np.pi * f))


def ref_piecewise(t, boundaries, values):
  out = np.empty(t.shape)
  for i, s in enumerate(t):
    out[i] = values[sum(s >= b for b in boundaries)]
  return out


@pytest.mark.parametrize('n, w, after', [(0, 1.0, 0.0), (1, 0.9, 0.0), (150, 0.7, 0.2)])
def test_kd_until_matches_reference(n, w, after):
  np.testing.assert_allclose(_run(schemes.kd_until(n, w, after=after)),
                             ref_until(STEPS, n, w, after), rtol=1e-6)


@pytest.mark.parametrize('w, n, end, start', [(1.0, 100, 0.0, 0), (0.9, 250, 0.1, 30)])
def test_linear_decay_matches_reference(w, n, end, start):
  np.testing.assert_allclose(_run(schemes.linear_decay(w, n, end=end, start=start)),
                             ref_linear(STEPS, w, n, end, start), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('w, n, end, start', [(1.0, 100, 0.0, 0), (0.9, 250, 0.1, 30)])
def test_cosine_decay_matches_reference(w, n, end, start):
  np.testing.assert_allclose(_run(schemes.cosine_decay(w, n, end=end, start=start)),
                             ref_cosine(STEPS, w, n, end, start), rtol=1e-6, atol=1e-6)


def test_piecewise_constant_matches_reference():
  s = schemes.piecewise_constant([5, 50, 300], [1.0, 0.6, 0.3, 0.0])
  np.testing.assert_allclose(_run(s), ref_piecewise(STEPS, [5, 50, 300], [1.0, 0.6, 0.3, 0.0]),
                             rtol=1e-7)


def test_complement_and_constant():
  kd = schemes.linear_decay(0.9, 200)
  np.testing.assert_allclose(_run(schemes.complement(kd)),
                             1.0 - ref_linear(STEPS, 0.9, 200, 0.0, 0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(_run(schemes.complement(0.25, total=2.0)), 1.75)
  np.testing.assert_array_equal(_run(schemes.constant(0.3)), np.float32(0.3))
  assert float(schemes.weight_at(schemes.kd_until(3), 2)) == 1.0


@hypothesis.given(n=st.integers(0, 10_000), t=st.integers(0, 2**30),
                  w=st.floats(0.0, 10.0, width=32))
def test_kd_until_property(n, t, w):
  got = float(schemes.kd_until(n, w)(jnp.int32(t)))
  assert got == (np.float32(w) if t < n else 0.0)


@hypothesis.given(t=st.integers(0, 2**30), n=st.integers(1, 10_000), start=st.integers(0, 1000))
def test_decays_are_monotone_and_bounded(t, n, start):
  lin = schemes.linear_decay(1.0, n, start=start)
  cos = schemes.cosine_decay(1.0, n, start=start)
  for s in (lin, cos):
    a, b = float(s(jnp.int32(t))), float(s(jnp.int32(t + 1)))
    assert 0.0 <= b <= a + 1e-7 <= 1.0 + 1e-7


def test_schedules_have_stable_reprs():
  # The chain records term weights by repr; a schedule must not print an address.
  for s in (schemes.kd_until(3), schemes.linear_decay(1.0, 5), schemes.cosine_decay(1.0, 5),
            schemes.piecewise_constant([1], [1.0, 0.0]), schemes.complement(0.5),
            schemes.constant(1.0)):
    assert ' at 0x' not in repr(s) and repr(s) == repr(eval(repr(s), vars(schemes._schedules)))
    assert s == eval(repr(s), vars(schemes._schedules))


@pytest.mark.parametrize('make, match', [
    (lambda: schemes.kd_until(-1), 'num_steps'),
    (lambda: schemes.kd_until(2.5), 'num_steps'),
    (lambda: schemes.linear_decay(1.0, 0), 'num_steps'),
    (lambda: schemes.cosine_decay(1.0, 10, start=-1), 'start'),
    (lambda: schemes.piecewise_constant([1, 1], [0.0, 1.0, 2.0]), 'boundaries'),
    (lambda: schemes.piecewise_constant([1], [0.0]), 'values'),
])
def test_bad_arguments_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_kd_until_switches_the_kd_term_off_inside_the_train_step():
  """With (task_ce(1 − w(t)), soft_kd(w(t))) the loss is the reference mix, then CE alone."""
  n = 3
  kd = schemes.kd_until(n, 0.8)
  step = jax.jit(steps.make_distill_step(
      [steps.task_ce(schemes.complement(kd)), steps.soft_kd(kd, temperature=2.0)],
      function_forward(lambda p, x: x @ p['w'])))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  y = rng.integers(0, 3, size=8).astype(np.int32)
  teacher = {'params': {'w': rng.normal(size=(4, 3)).astype(np.float32)}}
  state = TrainState.create(apply_fn=function_forward(lambda p, x: x @ p['w']),
                            variables={'params': {'w': np.zeros((4, 3), np.float32)}},
                            tx=optax.sgd(0.1))
  for t in range(n + 2):
    w = np.asarray(state.params['w'], np.float64)
    s_logits, t_logits = x @ w, x @ np.asarray(teacher['params']['w'], np.float64)
    logp = s_logits - np.log(np.sum(np.exp(s_logits), -1, keepdims=True))
    ce = -np.mean(logp[np.arange(8), y])
    pt = np.exp(t_logits / 2) / np.sum(np.exp(t_logits / 2), -1, keepdims=True)
    ps = np.exp(s_logits / 2) / np.sum(np.exp(s_logits / 2), -1, keepdims=True)
    kl = 4.0 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
    expected = (0.2 * ce + 0.8 * kl) if t < n else ce
    state, metrics = step(state, teacher, {'x': x, 'label': y}, jax.random.key(0))
    np.testing.assert_allclose(float(metrics['loss']), expected, rtol=1e-5)
    assert math.isclose(float(metrics['loss/kd']), kl, rel_tol=1e-5)
