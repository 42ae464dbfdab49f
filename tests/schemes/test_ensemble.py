"""Tests for kdjax.schemes ensembles and distillation diagnostics (float64 references)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from kdjax import models
from kdjax import schemes
from kdjax.checkpoint import Checkpointer
from kdjax.models import function_forward
from kdjax.train import MetricWriter


def _members(k=3, d=6, c=5, seed=0):
  rng = np.random.default_rng(seed)
  fwd = function_forward(lambda p, x: x @ p['w'] + p['b'])
  return [(fwd, {'params': {'w': rng.normal(size=(d, c)).astype(np.float32) * 2,
                            'b': rng.normal(size=(c,)).astype(np.float32)}})
          for _ in range(k)]


def _logits(members, x):
  return [np.asarray(x, np.float64) @ np.asarray(v['params']['w'], np.float64)
          + np.asarray(v['params']['b'], np.float64) for _, v in members]


def _source(x, y):
  return [{'x': x[i], 'label': np.int32(y[i]), 'id': np.int32(i)} for i in range(len(x))]


def test_ensemble_probabilities_are_the_mean_of_member_softmaxes():
  members = _members()
  x = np.random.default_rng(1).normal(size=(7, 6)).astype(np.float32)
  got = jax.jit(lambda x: schemes.ensemble_predict(members, x))(x)
  # The same float32 softmaxes, averaged: equal to 1e-7 (bitwise up to summation order).
  each = [jax.nn.softmax(fn(v, x, train=False).logits) for fn, v in members]
  np.testing.assert_allclose(got, np.mean(np.stack(each), axis=0), rtol=0, atol=1e-7)
  # And the float64 reference from the logits.
  ref = np.mean([special.softmax(z, axis=-1) for z in _logits(members, x)], axis=0)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.sum(got, -1), 1.0, rtol=1e-6)


def test_ban_ensemble_of_linen_generations():
  """A BAN ensemble of Linen members (one architecture, several variables) is the mean."""
  model = models.MLP(hidden=(8,), num_classes=4)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)), jnp.float32)
  init = jax.jit(lambda key: model.init(key, x))
  gens = [(model, init(jax.random.key(g))) for g in range(3)]
  got = schemes.ensemble_predict(gens, x)
  each = [jax.nn.softmax(model.apply(v, x)) for _, v in gens]
  np.testing.assert_allclose(got, (each[0] + each[1] + each[2]) / 3, rtol=0, atol=1e-7)


def test_weighted_ensemble_matches_reference():
  members = _members(k=2)
  x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
  got = schemes.ensemble_predict(members, x, weights=[3.0, 1.0])
  p = [special.softmax(z, axis=-1) for z in _logits(members, x)]
  np.testing.assert_allclose(got, 0.75 * p[0] + 0.25 * p[1], rtol=1e-5, atol=1e-7)


def test_evaluate_ensemble_matches_reference():
  members = _members(k=3)
  rng = np.random.default_rng(4)
  x = rng.normal(size=(23, 6)).astype(np.float32)
  y = rng.integers(0, 5, size=23)
  out = schemes.evaluate_ensemble(members, _source(x, y), batch_size=10)  # padded last batch
  zs = _logits(members, x)
  p = np.mean([special.softmax(z, axis=-1) for z in zs], axis=0)
  preds = [z.argmax(-1) for z in zs]
  assert out['count'] == 23
  assert out['accuracy'] == pytest.approx(np.mean(p.argmax(-1) == y), abs=1e-9)
  assert out['nll'] == pytest.approx(-np.mean(np.log(p[np.arange(23), y])), rel=1e-5)
  np.testing.assert_allclose(out['member_accuracy'], [np.mean(q == y) for q in preds])
  pairs = [(0, 1), (0, 2), (1, 2)]
  assert out['disagreement'] == pytest.approx(
      np.mean([np.mean(preds[i] != preds[j]) for i, j in pairs]), abs=1e-9)


def test_evaluate_single_member_has_no_disagreement():
  members = _members(k=1)
  x = np.eye(6, dtype=np.float32)
  out = schemes.evaluate_ensemble(members, _source(x, np.arange(6) % 5))
  assert out['disagreement'] == 0.0 and out['accuracy'] == out['member_accuracy'][0]


@pytest.mark.parametrize('members, weights, match', [
    ([], None, 'members'),
    ([(lambda *a, **k: None,)], None, 'members'),
    (_members(k=2), [1.0], 'weights'),
    (_members(k=2), [-1.0, 2.0], 'weights'),
])
def test_bad_members_or_weights_raise(members, weights, match):
  with pytest.raises(ValueError, match=match):
    schemes.ensemble_predict(members, np.zeros((1, 6), np.float32), weights=weights)


def test_load_members_reads_checkpoints(tmp_path):
  fwd = function_forward(lambda p, x: x * p['w'])
  for i in (0, 1):
    with Checkpointer(tmp_path / str(i)) as ckpt:
      for step in (2, 4):
        ckpt.save(step, {'params': {'w': np.full(3, 10 * i + step, np.float32)},
                         'model_state': {}})
  loaded = schemes.load_members([fwd, fwd], [tmp_path / '0', tmp_path / '1'], steps=[2, None])
  assert [float(v['params']['w'][0]) for _, v in loaded] == [2.0, 14.0]
  with pytest.raises(ValueError, match='same length'):
    schemes.load_members([fwd], [tmp_path / '0', tmp_path / '1'])


# ------------------------------------------------------------------ diagnostics

def test_evaluate_distillation_matches_reference():
  (s_fn, sv), (t_fn, tv) = _members(k=2, seed=5)
  rng = np.random.default_rng(6)
  x = rng.normal(size=(13, 6)).astype(np.float32)
  y = rng.integers(0, 5, size=13)
  out = schemes.evaluate_distillation(s_fn, sv, t_fn, tv, _source(x, y), temperature=3.0,
                                      batch_size=5)
  s, t = _logits([(s_fn, sv), (t_fn, tv)], x)

  def kl(tau):
    p, q = special.softmax(t / tau, axis=-1), special.softmax(s / tau, axis=-1)
    return np.mean(np.sum(special.rel_entr(p, q), -1))

  assert out['kd_loss'] == pytest.approx(9.0 * kl(3.0), rel=1e-5)
  assert out['kl'] == pytest.approx(kl(1.0), rel=1e-5)
  assert out['agreement'] == pytest.approx(np.mean(s.argmax(-1) == t.argmax(-1)))
  assert out['student_accuracy'] == pytest.approx(np.mean(s.argmax(-1) == y))
  assert out['teacher_accuracy'] == pytest.approx(np.mean(t.argmax(-1) == y))
  assert out['count'] == 13
  with pytest.raises(ValueError, match='temperature'):
    schemes.evaluate_distillation(s_fn, sv, t_fn, tv, _source(x, y), temperature=0.0)


def test_read_metrics_keeps_the_last_value_per_step(tmp_path):
  with MetricWriter(tmp_path, tensorboard=False) as w:
    w.write(100, {'loss/kd': 2.0, 'accuracy': 0.5})
    w.write(200, {'loss/kd': 1.0, 'accuracy': 0.6})
    w.write(200, {'accuracy': 0.9}, split='eval')
  with MetricWriter(tmp_path, tensorboard=False) as w:  # a resumed run appends
    w.write(200, {'loss/kd': 1.5, 'accuracy': 0.7})
    w.write(150, {'loss/kd': 1.8, 'accuracy': 0.55})
  m = schemes.read_metrics(tmp_path)
  steps, values = m['train']['loss/kd']
  assert steps.tolist() == [100, 150, 200] and values.tolist() == [2.0, 1.8, 1.5]
  assert m['eval']['accuracy'][1].tolist() == [0.9]
  with pytest.raises(FileNotFoundError):
    schemes.read_metrics(tmp_path / 'missing')
