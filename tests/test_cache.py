"""Tests for kdjax.cache: keys, staleness, misses, cached steps, the top-k cache."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import cache as kc
from kdjax import data as kd
from kdjax import losses
from kdjax import models
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


N, L, C = 90, 40, 10
TAU = 2.0


def _source(n=N, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, L)).astype(np.float32)
  y = rng.integers(0, C, size=n).astype(np.int32)
  return [{'x': x[i], 'label': y[i], 'id': np.int32(i)} for i in range(n)]


@pytest.fixture(scope='module')
def teacher():
  model = models.create('cnn1d', C, channels=8)
  variables = models.init_variables(model, jax.random.key(1), jnp.zeros((1, L)))
  # Scale the logits up so that the targets are far from uniform.
  variables = jax.tree.map(lambda a: 3.0 * a, variables)
  return models.as_forward(model), variables


@pytest.fixture(scope='module')
def teacher_logits_fn(teacher):
  fwd, _ = teacher
  return jax.jit(lambda v, x: fwd(v, x, train=False).logits)


@pytest.fixture(scope='module')
def student():
  model = models.create('mlp', C, hidden=(16,))
  variables = models.init_variables(model, jax.random.key(2), jnp.zeros((1, L)))
  return TrainState.create(apply_fn=model, variables=variables, tx=optax.adam(1e-2))


def _batches(src, **kw):
  return list(kd.make_pipeline(src, **kw))


# ------------------------------------------------------------- keys and hits

def test_cache_hit_is_bitwise_the_recomputed_teacher(teacher, teacher_logits_fn):
  fwd, tv = teacher
  src = _source()
  cache = kc.build_cache(fwd, tv, src, batch_size=32, features=('embedding',))
  assert cache.epochs is None and cache.logits.shape == (N, C) and bool(cache.filled.all())
  assert cache.features['embedding'].shape == (N, 5 * 8)
  look = jax.jit(kc.lookup)
  batches = _batches(src, batch_size=32, seed=0, shuffle=False, drop_remainder=False,
                     num_epochs=1)
  assert not batches[-1]['mask'].all()  # the padded last batch is covered too
  for batch in batches:
    m = batch['mask']
    want = np.asarray(teacher_logits_fn(tv, batch['x']))
    got = look(cache, batch)
    np.testing.assert_array_equal(np.asarray(got.logits)[m], want[m])
    np.testing.assert_array_equal(np.asarray(got.logits)[~m], 0.0)  # padded rows: zeros
    emb = fwd(tv, batch['x'], train=False).features['embedding']
    np.testing.assert_allclose(np.asarray(got.features['embedding'])[m], np.asarray(emb)[m],
                               rtol=1e-6, atol=1e-6)
    assert int(kc.count_misses(cache, batch)) == 0
    kc.check_batch(cache, batch)


def test_real_source_and_batches_give_the_same_cache(teacher, tmp_path):
  fwd, tv = teacher
  src = kd.load('mnist1d', 'train', data_dir=tmp_path, config=kd.mnist1d_config(200))
  from_source = kc.build_cache(fwd, tv, src, batch_size=64)
  ds = kd.make_pipeline(src, batch_size=64, seed=0, shuffle=False, drop_remainder=False,
                        num_epochs=1)
  from_batches = kc.build_cache(fwd, tv, ds)
  assert from_source.logits.shape == (len(src), C)
  np.testing.assert_array_equal(from_source.logits, from_batches.logits)
  assert from_source.pipeline == 'transform=None' and from_batches.pipeline is None


def test_augmented_cache_is_keyed_by_epoch_and_misses_raise(teacher, teacher_logits_fn,
                                                            student):
  fwd, tv = teacher
  src = _source()
  aug = kd.SequenceAugment(max_shift=3, noise_std=0.3)
  with pytest.raises(ValueError, match='epochs'):
    kc.build_cache(fwd, tv, src, transform=aug, seed=3)
  cache = kc.build_cache(fwd, tv, src, epochs=range(3), seed=3, transform=aug, batch_size=50)
  assert cache.logits.shape == (N, 3, C) and cache.epochs == (0, 1, 2)
  kc.check_pipeline(cache, seed=3, transform=aug)
  with pytest.raises(ValueError, match='seed=3'):
    kc.check_pipeline(cache, seed=4, transform=aug)
  with pytest.raises(ValueError, match='keyed by id only'):
    kc.check_pipeline(kc.build_cache(fwd, tv, src), seed=3, transform=aug)

  # The training pipeline: shuffled, another batch size, 3 epochs then a 4th.
  per_epoch = kd.batches_per_epoch(N, 40)
  it = iter(kd.make_pipeline(src, batch_size=40, seed=3, transform=aug))
  look = jax.jit(kc.lookup)
  for _ in range(3 * per_epoch):
    batch = next(it)
    want = np.asarray(teacher_logits_fn(tv, batch['x']))  # this epoch's view
    np.testing.assert_allclose(look(cache, batch).logits, want, rtol=1e-5, atol=1e-5)
    # Another epoch's entry of the same ids is another view: a stale lookup would show.
    other = dict(batch, epoch=(batch['epoch'] + 1) % 3)
    assert np.abs(np.asarray(look(cache, other).logits) - want).max() > 1e-2
    kc.check_batch(cache, batch)
  # A hit passes the host check and runs the (jitted) step.
  terms = (steps.task_ce(0.5), steps.soft_kd(0.5, temperature=TAU))
  step = jax.jit(kc.make_cached_distill_step(terms, skip_nonfinite=False))
  new, metrics = kc.checked(step)(student, cache, batch, jax.random.key(0))
  assert int(new.step) == 1 and int(metrics['cache_misses']) == 0
  assert int(metrics['skipped']) == 0
  batch = next(it)
  assert int(batch['epoch'][0]) == 3
  with pytest.raises(kc.CacheMissError, match=r'\(epoch, id\) \[\(3, '):
    kc.check_batch(cache, batch)
  assert int(kc.count_misses(cache, batch)) == 40
  assert np.isnan(np.asarray(look(cache, batch).logits)).all()
  # In the step a miss never trains: the state is kept and the miss is reported.
  new, metrics = step(student, cache, batch, jax.random.key(0))
  chex.assert_trees_all_equal(new.params, student.params)
  assert int(new.step) == 0 and int(metrics['skipped']) == 1
  assert int(metrics['cache_misses']) == 40
  with pytest.raises(kc.CacheMissError):
    kc.checked(step)(student, cache, batch, jax.random.key(0))
  # An epoch-keyed cache needs the batch's epoch.
  with pytest.raises(ValueError, match='"epoch"'):
    kc.lookup(cache, {'id': batch['id']})


def test_build_errors(teacher):
  fwd, tv = teacher
  src = _source(20)
  batch = next(iter(kd.make_pipeline(src, batch_size=10, seed=0)))
  with pytest.raises(ValueError, match='more than once'):
    kc.build_cache(fwd, tv, [batch, batch])
  with pytest.raises(ValueError, match='sequence of epoch'):
    kc.build_cache(fwd, tv, src, epochs=3)
  with pytest.raises(ValueError, match='num_ids'):
    kc.build_cache(fwd, tv, src, num_ids=5)
  with pytest.raises(ValueError, match='no feature'):
    kc.build_cache(fwd, tv, src, features=('nope',))
  for kw in ({'k': 0}, {'k': C + 1}, {'k': 2, 'target': 'x'}, {'k': 2, 'temperature': 0.0}):
    with pytest.raises(ValueError):
      kc.build_topk_cache(fwd, tv, src, **kw)
  # The endless training pipeline can be passed: reading stops after the first epoch
  # (id-keyed) or the last cached one; rows of other epochs are skipped.
  endless = kd.make_pipeline(src, batch_size=10, seed=0)
  assert bool(kc.build_cache(fwd, tv, endless).filled.all())
  cache = kc.build_cache(fwd, tv, endless, epochs=[1, 2])
  assert cache.logits.shape == (20, 2, C) and bool(cache.filled.all())


# --------------------------------------------------------------- cached steps

def test_cached_kd_step_equals_the_uncached_step(teacher, student):
  """Two cached teachers (full logits + features; top-k with k = C) vs the same live."""
  fwd, tv = teacher
  src = _source()
  terms = (steps.task_ce(0.1),
           steps.soft_kd(0.5, temperature=4.0, teacher_name='a', name='a'),
           steps.soft_kd(0.4, temperature=4.0, teacher_name='b', name='b'),
           steps.hint('embedding', 'embedding', 0.01, adapter=nn.Dense(40), teacher_name='a'))
  batch = next(iter(kd.make_pipeline(src, batch_size=30, seed=1)))
  full = kc.build_cache(fwd, tv, [batch], features=('embedding',))  # same batch: bitwise
  sparse = kc.to_topk(kc.build_cache(fwd, tv, src), C, temperature=4.0)
  out = student.apply_fn(student.variables, batch['x'][:2], train=False)
  aux = steps.init_adapters(terms, out, jax.random.key(3))
  state = TrainState.create(apply_fn=student.apply_fn, variables=student.variables,
                            tx=optax.adam(1e-2), aux_params=aux)
  live = jax.jit(steps.make_distill_step(terms, {'a': fwd, 'b': fwd}))
  cached = jax.jit(kc.make_cached_distill_step(terms, ('a', 'b')))
  s1, m1 = live(state, {'a': tv, 'b': tv}, batch, jax.random.key(0))
  s2, m2 = cached(state, {'a': full, 'b': sparse}, batch, jax.random.key(0))
  chex.assert_trees_all_close(s2.trainable, s1.trainable, rtol=0, atol=1e-6)
  for k, v in m1.items():
    np.testing.assert_allclose(m2[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  assert int(m2['cache_misses']) == 0 and int(s2.step) == 1 and int(m2['skipped']) == 0
  # The teacher outputs are bitwise equal (see the first test); inside the step XLA fuses the
  # live teacher with the loss, so the terms agree to rounding.
  np.testing.assert_allclose(m2['loss/a'], m1['loss/a'], rtol=1e-6)
  np.testing.assert_allclose(m2['loss/hint/embedding'], m1['loss/hint/embedding'], rtol=1e-6)
  with pytest.raises(ValueError, match='Expected caches for'):
    cached(state, {'a': full}, batch, jax.random.key(0))


# ------------------------------------------------------------------ top-k cache

def _ref_topk_target(t, k, tau, target):
  """float64 NumPy KD-topk target from the formula (Tang et al. 2020, §5)."""
  z = t / tau
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  order = np.argsort(-t, axis=-1, kind='stable')[:, :k]
  top = np.zeros_like(p, bool)
  np.put_along_axis(top, order, True, axis=-1)
  if target == 'topk':
    rest = (1.0 - np.where(top, p, 0).sum(-1, keepdims=True)) / max(C - k, 1)
    return np.where(top, p, rest)
  return np.where(top, p, 0) / np.where(top, p, 0).sum(-1, keepdims=True)


def _ref_kl(rho, s, tau):
  zs = s / tau
  log_q = zs - zs.max(-1, keepdims=True)
  log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
  terms = np.where(rho > 0, rho * (np.log(np.where(rho > 0, rho, 1)) - log_q), 0.0)
  return tau**2 * terms.sum(-1)


@pytest.mark.parametrize('target', ['topk', 'renormalized'])
def test_topk_cache_matches_the_float64_target(teacher, target):
  fwd, tv = teacher
  src = _source(40)
  full = kc.build_cache(fwd, tv, src)
  t = np.asarray(full.logits, np.float64)
  s = np.random.default_rng(5).normal(size=(40, C)) * 2
  batch = {'id': np.arange(40, dtype=np.int32)}
  kd_loss = jax.jit(lambda cache: losses.kl_distillation(
      jnp.float32(s), kc.lookup(cache, batch).logits, temperature=TAU))
  for k in (1, 4, C):
    sparse = kc.to_topk(full, k, temperature=TAU, target=target)
    assert sparse.values.shape == (40, k) and sparse.k == k
    got = kd_loss(sparse)
    np.testing.assert_allclose(got, _ref_kl(_ref_topk_target(t, k, TAU, target), s, TAU),
                               rtol=1e-5, atol=1e-6)
    if target == 'topk':
      np.testing.assert_allclose(
          got, losses.topk_distillation(jnp.float32(s), full.logits, k=k, temperature=TAU),
          rtol=1e-5, atol=1e-6)
  # k = C reproduces the full KD loss.
  full_kd = losses.kl_distillation(jnp.float32(s), full.logits, temperature=TAU)
  np.testing.assert_allclose(kd_loss(kc.to_topk(full, C, temperature=TAU, target=target)),
                             full_kd, rtol=1e-6, atol=1e-6)


def test_build_topk_cache_equals_sparsified_full_cache(teacher):
  fwd, tv = teacher
  src = _source(50)
  aug = kd.SequenceAugment(max_shift=1)
  full = kc.build_cache(fwd, tv, src, epochs=(0, 2), seed=1, transform=aug, batch_size=16)
  sparse = kc.build_topk_cache(fwd, tv, src, k=4, temperature=3.0, epochs=(0, 2), seed=1,
                               transform=aug, batch_size=16)
  ref = kc.to_topk(full, 4, temperature=3.0)
  np.testing.assert_array_equal(sparse.values, ref.values)
  np.testing.assert_array_equal(sparse.indices, ref.indices)
  np.testing.assert_allclose(sparse.tail_logsumexp, ref.tail_logsumexp, rtol=1e-6)
  assert sparse.epochs == (0, 2) and sparse.pipeline == full.pipeline
  assert sparse.nbytes < full.nbytes  # 4 of 10 classes
  # Ties and the dense reconstruction: a row of equal logits keeps the lowest classes.
  z = kc.dense_target_logits(jnp.zeros((1, 2)), jnp.array([[0, 1]]), jnp.log(jnp.array([2.0])),
                             num_classes=4, temperature=1.0)
  np.testing.assert_allclose(jax.nn.softmax(z), [[0.25] * 4], rtol=1e-6)
  enc = kc.to_topk(kc.TeacherCache(logits=jnp.zeros((1, 4)), features={},
                                   filled=jnp.ones(1, bool)), 2)
  assert enc.indices.tolist() == [[0, 1]]


# ---------------------------------------------------- experiments 1, 6, 7 (quick)

@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  """A TFDS dir and a teacher dir shared by the three smoke runs (one quick teacher)."""
  return {'data_dir': str(tmp_path_factory.mktemp('tfds')),
          'teacher_dir': str(tmp_path_factory.mktemp('teachers'))}


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.parametrize('name', ['temperature', 'topk', 'dkd_dist'])
def test_experiment_quick(name, shared, tmp_path, monkeypatch):
  import importlib
  import json

  from experiments import common
  module = importlib.import_module(f'experiments.{name}')
  config = importlib.import_module(f'experiments.configs.{name}').get_config('quick')
  assert config.experiment == name and len(config.seeds) >= 1
  monkeypatch.setattr(common, 'RESULTS', str(tmp_path / 'results'))
  config.workdir = str(tmp_path / 'runs')
  config.data_dir = shared['data_dir']
  config.teacher_dir = shared['teacher_dir']
  rows = module.run(config)
  out = tmp_path / 'results' / f'{name}_quick'
  for f in ('results.md', 'results.csv', 'records.json', 'mnist1d.png'):
    assert (out / f).is_file(), f
  md = (out / 'results.md').read_text()
  assert '**Finding tested:**' in md and '**Verdict on our data:**' in md
  assert '**Regenerate:** `python -m experiments.run --config experiments/configs/' in md
  assert all(set(module.COLUMNS) <= set(r) for r in rows)
  records = json.loads((out / 'records.json').read_text())
  methods = {r['method'] for r in records}
  assert 'scratch' in methods and 'KD' in methods
  # Δ vs scratch is paired: accuracy minus the same seed's scratch accuracy.
  scratch = {r['seed']: r['accuracy'] for r in records if r['method'] == 'scratch'}
  for r in records:
    assert r['delta'] == pytest.approx(r['accuracy'] - scratch[r['seed']])
    assert 0.0 <= r['accuracy'] <= 1.0 and 0.0 <= r['agreement'] <= 1.0
  expected = {'temperature': {'KD (transfer set)'}, 'topk': {'KD-topk', 'KD-pt', 'KD-sim'},
              'dkd_dist': {'DKD', 'DIST'}}[name]
  # KD-topk rows are named by their k ('KD-topk k=2').
  assert all(any(m == e or m.startswith(e + ' ') for m in methods) for e in expected), methods


@pytest.mark.parametrize('placement', ['device', 'host'])
def test_fit_stops_at_the_first_uncached_epoch(teacher, student, placement):
  fwd, tv = teacher
  src = _source()
  cache = kc.build_cache(fwd, tv, src, epochs=(0,), seed=0)  # epoch 0 only
  step = kc.make_cached_distill_step((steps.task_ce(0.5), steps.soft_kd(0.5, temperature=TAU)))
  data = kd.training_data(src, batch_size=30, seed=0, placement=placement)  # 3 batches/epoch
  with pytest.raises(kc.CacheMissError, match=r'Batch 3 \(step 4\) has 30 rows'):
    train.fit(student, step, data, num_steps=6, rng=jax.random.key(0), teacher_variables=cache,
              progress=False, log_every=6)
  # Covering the epochs the run visits trains to the end.
  cache = kc.build_cache(fwd, tv, src, epochs=(0, 1), seed=0)
  data = kd.training_data(src, batch_size=30, seed=0, placement=placement)
  result = train.fit(student, step, data, num_steps=6, rng=jax.random.key(0),
                     teacher_variables=cache, progress=False, log_every=6)
  assert int(result.state.step) == 6 and result.skipped_steps == 0
