"""Tests for kdjax.cohort: deep mutual learning (Zhang et al. 2018) in one jitted step.

References are float64 NumPy from the DML formulas: peer k minimises
ce_w·CE(y, z_k) + kl_w·1/(K−1)·Σ_{l≠k} τ²·KL(p_l ‖ q_k) with the other peers'
predictions held fixed, so for a linear peer z = xW + b the gradient on its
logits is (ce_w·(softmax(z_k) − onehot(y)) + kl_w·τ·(q_k − mean_{l≠k} p_l)) / B.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import cohort as co
from kdjax import models
from kdjax import steps
from kdjax.checkpoint import Checkpointer
from kdjax.state import TrainState
from kdjax.train import fit


B, D, C, K = 8, 5, 4, 3
LR = 0.3


def _linear(p, x):
  return x @ p['w'] + p['b']


def _tanh_mlp(p, x):
  return jnp.tanh(x @ p['v']) @ p['u']


_FWD = models.function_forward(_linear)


def _linear_params(key):
  k1, k2 = jax.random.split(key)
  return {'params': {'w': jax.random.normal(k1, (D, C)), 'b': 0.1 * jax.random.normal(k2, (C,))}}


def _batch(seed=0, n=B, mask=None):
  rng = np.random.default_rng(seed)
  batch = {'x': rng.normal(size=(n, D)).astype(np.float32),
           'label': rng.integers(0, C, size=n).astype(np.int32)}
  if mask is not None:
    batch['mask'] = np.asarray(mask, bool)
  return batch


# One step, forward and optimizers shared by the tests, so that cohorts of the
# same structure reuse one compiled program.
TAU, CE_W, KL_W = 2.0, 0.7, 1.3
STEP = jax.jit(co.make_cohort_step(temperature=TAU, ce_weight=CE_W, kl_weight=KL_W))
SGD = optax.sgd(LR)
ADAM = optax.adam(0.05)


def _linear_cohort(k=K, tx=SGD, seed=0):
  keys = jax.random.split(jax.random.key(seed), k)
  return co.init_cohort(_FWD, tx, keys, init_fn=_linear_params)


# ---------------------------------------------------------------- NumPy references

def _log_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _softmax(z):
  return np.exp(_log_softmax(z))


def _dml_reference(logits, labels, *, tau, ce_w, kl_w, mask=None):
  """Per-peer losses and logit gradients of DML, float64, other peers fixed.

  Args:
    logits: [K, B, C] float64.

  Returns:
    (ce [K], kl [K], dlogits [K, B, C]) with means over the valid rows.
  """
  k, n, c = logits.shape
  mask = np.ones(n, bool) if mask is None else mask
  count = mask.sum()
  onehot = np.eye(c)[labels]
  p = _softmax(logits)
  log_q = _log_softmax(logits / tau)
  q = np.exp(log_q)
  ce = -np.sum(onehot * _log_softmax(logits), -1)  # [K, B]
  kl = np.zeros((k, n))
  pbar = np.zeros_like(q)
  for i in range(k):
    others = [j for j in range(k) if j != i]
    for j in others:
      kl[i] += tau**2 * np.sum(q[j] * (log_q[j] - log_q[i]), -1) / (k - 1)
    pbar[i] = np.mean(q[others], axis=0)
  grad = ce_w * (p - onehot) + kl_w * tau * (q - pbar)
  grad = np.where(mask[None, :, None], grad, 0.0) / count
  mean = lambda v: np.sum(np.where(mask, v, 0.0), -1) / count  # noqa: E731
  return mean(ce), mean(kl), grad


def _np_params(cohort):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), cohort.peers.params)


# ---------------------------------------------------------------- stack / unstack / init

def test_stack_unstack_roundtrip_and_errors():
  trees = [{'a': np.full((2,), i, np.float32), 'b': {'c': np.arange(3) + i}} for i in range(3)]
  stacked = co.stack(trees)
  np.testing.assert_array_equal(stacked['a'], [[0, 0], [1, 1], [2, 2]])
  np.testing.assert_array_equal(stacked['b']['c'][2], [2, 3, 4])
  back = co.unstack(stacked, 3)
  for orig, got in zip(trees, back):
    chex.assert_trees_all_equal(orig, got)
  with pytest.raises(ValueError, match='trees'):
    co.stack([])
  with pytest.raises(ValueError, match='trees'):
    co.stack([{'a': np.zeros(2)}, {'b': np.zeros(2)}])
  with pytest.raises(ValueError, match='trees'):
    co.stack([{'a': np.zeros(2)}, {'a': np.zeros(3)}])
  with pytest.raises(ValueError, match='num'):
    co.unstack(stacked, 4)
  with pytest.raises(ValueError, match='tree'):
    co.unstack({'a': np.zeros((2, 1)), 'b': np.zeros((3, 1))})


def test_init_cohort_matches_individual_inits():
  model = models.create('mlp', hidden=(6,), num_classes=C)
  x = jnp.zeros((1, D))
  keys = jax.random.split(jax.random.key(3), 3)
  cohort = co.init_cohort(model, ADAM, keys, x)
  assert cohort.num_peers == 3 and cohort.stacked and int(cohort.step) == 0
  np.testing.assert_array_equal(cohort.peers.step, [0, 0, 0])
  init_one = jax.jit(lambda key: models.init_variables(model, key, x)['params'])
  for k in range(3):
    chex.assert_trees_all_close(cohort.peer(k).params, init_one(keys[k]), rtol=1e-6)
  # Different keys give different peers; Adam moments are stacked too.
  assert not np.allclose(cohort.peer(0).params['classifier']['kernel'],
                         cohort.peer(1).params['classifier']['kernel'])
  assert cohort.peers.opt_state[0].mu['params']['dense1']['kernel'].shape == (3, D, 6)
  with pytest.raises(ValueError, match='init_fn'):
    co.init_cohort(_FWD, SGD, keys)
  with pytest.raises(ValueError, match='keys'):
    co.init_cohort(model, SGD, keys[:2].reshape(1, 2), x)
  with pytest.raises(ValueError, match='peers'):
    co.CohortState.create(cohort.peer(0).replace(step=jnp.zeros((), jnp.int32)))
  with pytest.raises(ValueError, match='peers'):
    co.CohortState.create([])


# ---------------------------------------------------------------- DML step

def test_stacked_step_matches_float64_dml_reference():
  tau, ce_w, kl_w = TAU, CE_W, KL_W
  cohort = _linear_cohort()
  batch = _batch(1)
  new, metrics = STEP(cohort, batch, jax.random.key(0))

  params = _np_params(cohort)
  x = batch['x'].astype(np.float64)
  logits = np.einsum('bd,kdc->kbc', x, params['w']) + params['b'][:, None]
  ce, kl, grad = _dml_reference(logits, batch['label'], tau=tau, ce_w=ce_w, kl_w=kl_w)
  np.testing.assert_allclose(new.peers.params['w'],
                             params['w'] - LR * np.einsum('bd,kbc->kdc', x, grad),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.peers.params['b'], params['b'] - LR * grad.sum(1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new.peers.step, [1] * K)
  assert int(new.step) == 1
  acc = (logits.argmax(-1) == batch['label']).mean(-1)
  ens = (_softmax(logits).mean(0).argmax(-1) == batch['label']).mean()
  for k in range(K):
    np.testing.assert_allclose(metrics[f'ce/{k}'], ce[k], rtol=1e-5)
    np.testing.assert_allclose(metrics[f'kl/{k}'], kl[k], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics[f'loss/{k}'], ce_w * ce[k] + kl_w * kl[k], rtol=1e-5)
    np.testing.assert_allclose(metrics[f'accuracy/{k}'], acc[k], rtol=1e-6)
    assert int(metrics[f'skipped/{k}']) == 0
  np.testing.assert_allclose(metrics['loss'], np.mean(ce_w * ce + kl_w * kl), rtol=1e-5)
  np.testing.assert_allclose(metrics['accuracy'], acc.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics['ensemble_accuracy'], ens, rtol=1e-6)
  assert int(metrics['skipped']) == 0
  assert all(jnp.ndim(v) == 0 for v in metrics.values())
  # Summaries only: the same update and the same cohort-level values.
  step = jax.jit(co.make_cohort_step(temperature=tau, ce_weight=ce_w, kl_weight=kl_w,
                                     per_peer_metrics=False))
  new2, summary = step(cohort, batch, jax.random.key(0))
  assert sorted(summary) == ['accuracy', 'ce', 'ensemble_accuracy', 'invalid_label',
                             'invalid_labels', 'kl', 'loss', 'skipped']
  chex.assert_trees_all_close(new2.peers.params, new.peers.params, rtol=1e-6)
  chex.assert_trees_all_close(summary, {k: metrics[k] for k in summary}, rtol=1e-6)


def test_joint_update_equals_each_peer_alone_with_others_fixed():
  """DML: the joint step gives each peer the gradient of its own loss, others' outputs fixed.

  A step that let gradients flow into the targets (KD_Lib's known leak between
  peers) would fail this test; the last assertion shows it differs.
  """
  tau = TAU
  cohort = _linear_cohort(seed=4)
  batch = _batch(2)
  new, _ = STEP(cohort, batch, jax.random.key(0))
  x, y = jnp.asarray(batch['x']), jnp.asarray(batch['label'])
  all_logits = [np.asarray(_linear(cohort.peer(k).params, x)) for k in range(K)]

  def alone_loss(p, k):  # peer k's objective; the other peers' logits are constants
    z = _linear(p, x)
    log_q = jax.nn.log_softmax(z / tau)
    kl = 0.0
    for j in range(K):
      log_p = jax.nn.log_softmax(jnp.asarray(all_logits[j]) / tau)
      kl += jnp.where(j == k, 0.0, tau**2 * jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1)
                      / (K - 1))
    ce = -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], -1)[:, 0]
    return jnp.mean(CE_W * ce + KL_W * kl)

  alone_grad = jax.jit(jax.grad(alone_loss))
  for k in range(K):
    g = alone_grad(cohort.peer(k).params, k)
    expected = jax.tree.map(lambda p, d: p - LR * d, cohort.peer(k).params, g)
    chex.assert_trees_all_close(new.peer(k).params, expected, rtol=1e-5, atol=1e-6)

  # The leaky variant (targets not held constant) moves peer 0 differently.
  def leaky_total(params):
    z = jax.vmap(_linear, in_axes=(0, None))(params, x)
    from kdjax.losses import cross_entropy
    from kdjax.losses import mutual_kl
    return jnp.sum(jnp.mean(CE_W * cross_entropy(z, jnp.broadcast_to(y, z.shape[:-1]))
                            + KL_W * mutual_kl(z, temperature=tau), axis=-1))

  leak = jax.jit(jax.grad(leaky_total))(cohort.peers.params)
  leaky_w0 = cohort.peers.params['w'][0] - LR * leak['w'][0]
  assert not np.allclose(leaky_w0, new.peer(0).params['w'], atol=1e-4)


def test_different_architectures_in_one_step():
  """A tuple cohort (linear, tanh-MLP, Linen MLP): each peer alone with others fixed."""
  tau, ce_w, kl_w = 1.5, 0.8, 1.2
  tx = SGD
  linen = models.create('mlp', hidden=(7,), num_classes=C)
  k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
  fwds = [models.function_forward(_linear), models.function_forward(_tanh_mlp),
          models.linen_forward(linen)]
  variables = [_linear_params(k1),
               {'params': {'v': jax.random.normal(k2, (D, 6)), 'u': jax.random.normal(k3, (6, C))}},
               models.init_variables(linen, k3, jnp.zeros((1, D)))]
  peers = [TrainState.create(apply_fn=f, variables=v, tx=tx) for f, v in zip(fwds, variables)]
  cohort = co.CohortState.create(peers)
  assert not cohort.stacked and cohort.num_peers == 3
  batch = _batch(3)
  new, metrics = jax.jit(co.make_cohort_step(temperature=tau, ce_weight=ce_w, kl_weight=kl_w))(
      cohort, batch, jax.random.key(0))

  x, y = jnp.asarray(batch['x']), batch['label']

  @jax.jit
  def all_logits(variables):
    return jnp.stack([f(v, x, train=False).logits for f, v in zip(fwds, variables)])

  @jax.jit
  def pullbacks(variables, cotangents):  # each peer's own J_k^T · dL_k/dz_k
    return [jax.vjp(lambda p, f=f: f({'params': p}, x, train=True).logits, v['params'])[1](c)[0]
            for f, v, c in zip(fwds, variables, cotangents)]

  logits = np.asarray(all_logits(variables), np.float64)
  ce, kl, dlogits = _dml_reference(logits, y, tau=tau, ce_w=ce_w, kl_w=kl_w)
  grads = pullbacks(variables, jnp.asarray(dlogits, jnp.float32))
  for k, (v, g) in enumerate(zip(variables, grads)):
    expected = jax.tree.map(lambda p, d: p - LR * d, v['params'], g)
    chex.assert_trees_all_close(new.peers[k].params, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics[f'kl/{k}'], kl[k], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics[f'ce/{k}'], ce[k], rtol=1e-5)
    assert int(new.peers[k].step) == 1


def test_stacked_and_tuple_cohorts_agree():
  cohort = _linear_cohort(tx=ADAM, seed=6)
  as_tuple = co.CohortState.create([cohort.peer(k) for k in range(K)])
  a, b = cohort, as_tuple
  for i in range(3):
    a, ma = STEP(a, _batch(10 + i), jax.random.key(i))
    b, mb = STEP(b, _batch(10 + i), jax.random.key(i))
  for k in range(K):
    chex.assert_trees_all_close(a.peer(k).params, b.peers[k].params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(a.peer(k).opt_state, b.peers[k].opt_state, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(ma, mb, rtol=1e-5, atol=1e-6)


def test_single_peer_is_supervised_training():
  """K = 1: no KL; the update equals the engine's supervised step (with label smoothing)."""
  cohort = _linear_cohort(k=1)
  batch = _batch(4)
  step = jax.jit(co.make_cohort_step(ce_weight=CE_W, label_smoothing=0.1))
  new, metrics = step(cohort, batch, jax.random.key(0))
  ref_state, ref_metrics = jax.jit(steps.make_distill_step(
      [steps.task_ce(CE_W, label_smoothing=0.1)]))(cohort.peer(0), None, batch, jax.random.key(0))
  chex.assert_trees_all_close(new.peer(0).params, ref_state.params, rtol=1e-6)
  np.testing.assert_allclose(metrics['ce/0'], ref_metrics['loss/ce'], rtol=1e-6)
  np.testing.assert_allclose(metrics['loss/0'], ref_metrics['loss'], rtol=1e-6)
  assert float(metrics['kl/0']) == 0.0
  np.testing.assert_allclose(metrics['ensemble_accuracy'], ref_metrics['accuracy'])


def test_masked_rows_are_ignored():
  """Padding rows (mask False) change nothing: float64 reference over the valid rows only."""
  cohort = _linear_cohort(seed=7)
  mask = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
  batch = _batch(5, mask=mask)
  batch['x'][~mask] = 1e4  # garbage in the padding
  new, metrics = STEP(cohort, batch, jax.random.key(0))
  params = _np_params(cohort)
  x = batch['x'].astype(np.float64)
  logits = np.einsum('bd,kdc->kbc', x, params['w']) + params['b'][:, None]
  ce, kl, grad = _dml_reference(logits, batch['label'], tau=TAU, ce_w=CE_W, kl_w=KL_W, mask=mask)
  np.testing.assert_allclose(new.peers.params['w'],
                             params['w'] - LR * np.einsum('bd,kbc->kdc', x, grad),
                             rtol=1e-5, atol=1e-6)
  acc = ((logits.argmax(-1) == batch['label']) & mask).sum(-1) / mask.sum()
  for k in range(K):
    np.testing.assert_allclose(metrics[f'ce/{k}'], ce[k], rtol=1e-5)
    np.testing.assert_allclose(metrics[f'kl/{k}'], kl[k], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics[f'accuracy/{k}'], acc[k], rtol=1e-6)


def test_nonfinite_guard_is_per_peer():
  """Peer 1's gradient is NaN (d/ds 0·√s at s = 0) while its logits stay finite."""
  fwd = models.function_forward(lambda p, x: x @ p['w'] + 0.0 * jnp.sqrt(p['s']))
  keys = jax.random.split(jax.random.key(8), 2)
  cohort = co.init_cohort(
      fwd, SGD, keys,
      init_fn=lambda k: {'params': {'w': jax.random.normal(k, (D, C)), 's': jnp.float32(0.0)}})
  s = jnp.array([1.0, 0.0])  # peer 0 fine, peer 1 poisoned
  cohort = cohort.replace(peers=cohort.peers.replace(
      params={**cohort.peers.params, 's': s}))
  batch = _batch(6)
  step = STEP
  new, metrics = step(cohort, batch, jax.random.key(0))
  assert int(metrics['skipped']) == 1
  assert int(metrics['skipped/0']) == 0 and int(metrics['skipped/1']) == 1
  np.testing.assert_array_equal(new.peers.step, [1, 0])
  assert int(new.step) == 1
  chex.assert_trees_all_equal(new.peer(1).params, cohort.peer(1).params)
  # Peer 0 got its DML update against peer 1's (finite) predictions.
  x = batch['x'].astype(np.float64)
  w = np.asarray(cohort.peers.params['w'], np.float64)
  _, _, grad = _dml_reference(np.einsum('bd,kdc->kbc', x, w), batch['label'], tau=TAU,
                              ce_w=CE_W, kl_w=KL_W)
  np.testing.assert_allclose(new.peer(0).params['w'], w[0] - LR * x.T @ grad[0],
                             rtol=1e-5, atol=1e-6)

  # A corrupt label is excluded and counted: the same update as with its row masked.
  bad = dict(batch, label=batch['label'].copy())
  bad['label'][0] = C
  new2, metrics2 = step(cohort, bad, jax.random.key(0))
  assert int(metrics2['invalid_labels']) == 1 and int(metrics2['invalid_label']) == C
  rows = np.arange(len(batch['label']))
  masked = dict(batch, label=np.where(rows == 0, 0, batch['label']), mask=rows != 0)
  new3, metrics3 = step(cohort, masked, jax.random.key(0))
  chex.assert_trees_all_close(new2.peers, new3.peers, rtol=1e-6, atol=1e-7)
  assert int(metrics3['invalid_labels']) == 0


def test_batchnorm_statistics_and_unroll_peers_equal_vmap():
  """Each peer's BatchNorm statistics are its own; unrolled peers equal vmapped ones."""

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      # No conv bias: BatchNorm cancels it, so its gradient is rounding noise that Adam
      # would scale up to full steps.
      h = nn.Conv(3, (3,), use_bias=False)(x[..., None])
      h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(h)
      return nn.Dense(C)(nn.relu(h).reshape(x.shape[0], -1))

  net = Net()
  cohort = co.init_cohort(net, ADAM, jax.random.split(jax.random.key(12), 3),
                          jnp.zeros((1, D)))
  batch = _batch(8, mask=[1, 1, 0, 1, 1, 1, 1, 0])
  a, ma = STEP(cohort, batch, jax.random.key(0))
  b, mb = jax.jit(co.make_cohort_step(temperature=TAU, ce_weight=CE_W, kl_weight=KL_W,
                                      unroll_peers=True))(
      cohort, batch, jax.random.key(0))
  assert b.stacked
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(ma, mb, rtol=1e-5, atol=1e-6)

  apply = jax.jit(lambda v: net.apply(v, batch['x'], train=True, mutable=['batch_stats'])[1])
  for k in range(3):
    chex.assert_trees_all_close(a.peer(k).model_state['batch_stats'],
                                apply(cohort.peer(k).variables)['batch_stats'],
                                rtol=1e-5, atol=1e-6)
  mean = np.asarray(a.peers.model_state['batch_stats']['BatchNorm_0']['mean'])
  assert not np.allclose(mean[0], mean[1])


def test_step_validates_inputs():
  cohort = _linear_cohort()
  step = co.make_cohort_step()
  with pytest.raises(ValueError, match='label'):
    step(cohort, {'x': _batch()['x']}, jax.random.key(0))
  with pytest.raises(ValueError, match='temperature'):
    co.make_cohort_step(temperature=0.0)
  as_tuple = co.CohortState.create([cohort.peer(0), cohort.peer(1)])
  with pytest.raises(ValueError, match='peer_axis_name'):
    co.make_cohort_step(peer_axis_name='peer')(as_tuple, _batch(), jax.random.key(0))


def test_step_traces_once_and_vmaps_instead_of_looping():
  cohort = _linear_cohort()
  step = jax.jit(chex.assert_max_traces(co.make_cohort_step(), n=1))
  for i in range(3):
    cohort, _ = step(cohort, _batch(i), jax.random.key(i))
  assert int(cohort.step) == 3

  def count_dots(k):
    c = _linear_cohort(k=k)
    jaxpr = jax.make_jaxpr(co.make_cohort_step())(c, _batch(), jax.random.key(0))
    text = str(jaxpr)
    return text.count('dot_general')

  # The traced program does not grow with K: one batched matmul per use, not K.
  assert count_dots(2) == count_dots(6) > 0


# ---------------------------------------------------------------- evaluation

def test_eval_per_peer_matches_engine_and_ensemble_matches_numpy():
  cohort = _linear_cohort(seed=11)
  mask = np.array([1, 1, 1, 0, 1, 1, 0, 1], bool)
  batches = [_batch(20, mask=mask), _batch(21)]
  eval_step = jax.jit(co.make_cohort_eval_step())
  engine = jax.jit(jax.vmap(steps.make_eval_step(_FWD), in_axes=(0, None)))
  sums = eval_step(cohort, batches[0])
  per_peer = engine({'params': cohort.peers.params}, batches[0])
  for k in range(K):
    np.testing.assert_allclose(sums[f'correct/{k}'], per_peer['correct'][k])
    np.testing.assert_allclose(sums[f'loss_sum/{k}'], per_peer['loss_sum'][k], rtol=1e-6)
  assert float(sums['count']) == mask.sum()

  unrolled = jax.jit(co.make_cohort_eval_step(unroll_peers=True))(cohort, batches[0])
  chex.assert_trees_all_close(unrolled, sums, rtol=1e-6)

  out = co.evaluate_cohort(eval_step, cohort, batches)
  params = _np_params(cohort)
  correct, nll, acc = 0.0, 0.0, np.zeros(K)
  count = 0
  for batch in batches:
    m = batch.get('mask', np.ones(B, bool))
    z = np.einsum('bd,kdc->kbc', batch['x'].astype(np.float64), params['w']) + params['b'][:, None]
    p = _softmax(z).mean(0)
    correct += np.sum((p.argmax(-1) == batch['label']) & m)
    nll += np.sum(np.where(m, -np.log(p[np.arange(B), batch['label']]), 0.0))
    acc += np.sum((z.argmax(-1) == batch['label']) & m, axis=-1)
    count += m.sum()
  np.testing.assert_allclose(out['ensemble_accuracy'], correct / count, rtol=1e-6)
  np.testing.assert_allclose(out['ensemble_loss'], nll / count, rtol=1e-5)
  for k in range(K):
    np.testing.assert_allclose(out[f'accuracy/{k}'], acc[k] / count, rtol=1e-6)
  np.testing.assert_allclose(out['accuracy'], np.mean(acc / count), rtol=1e-6)
  assert out['count'] == count
  with pytest.raises(ValueError, match='batches'):
    co.evaluate_cohort(eval_step, cohort, [])


# ---------------------------------------------------------------- checkpoints and fit

class _Data:
  """A deterministic iterator with grain-style get_state/set_state."""

  def __init__(self):
    self.i = 0

  def __next__(self):
    self.i += 1
    return _batch(100 + self.i)

  def get_state(self):
    return {'i': self.i}

  def set_state(self, state):
    self.i = int(state['i'])


def test_checkpoint_roundtrip_stacked_and_tuple(tmp_path):
  stacked = _linear_cohort(tx=ADAM)
  stacked, _ = STEP(stacked, _batch(), jax.random.key(0))
  tuple_cohort = co.CohortState.create(co.unstack(stacked.peers))
  tuple_cohort, _ = STEP(tuple_cohort, _batch(1), jax.random.key(1))
  fresh = _linear_cohort(tx=ADAM, seed=99)
  saved = {'stacked': stacked, 'tuple': tuple_cohort}
  template = {'stacked': fresh, 'tuple': co.CohortState.create(co.unstack(fresh.peers))}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, saved, data_state={'i': 5})
    ckpt.wait()
    restored, data = ckpt.restore(template)
  assert data == {'i': 5}
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(saved))
  assert not np.allclose(restored['stacked'].peers.params['w'], fresh.peers.params['w'])


def test_fit_resumes_a_cohort_bitwise(tmp_path):
  tx = ADAM
  fit_step = co.as_fit_step(STEP)  # STEP is jitted; the adapter needs no jit of its own
  rng = jax.random.key(42)
  kwargs = dict(rng=rng, progress=False, log_every=1, checkpoint_every=2)
  full = fit(_linear_cohort(tx=tx), fit_step, _Data(), num_steps=4, **kwargs)
  ckpt = Checkpointer(tmp_path / 'b')
  fit(_linear_cohort(tx=tx), fit_step, _Data(), num_steps=2, checkpointer=ckpt, **kwargs)
  ckpt.close()
  resumed = fit(_linear_cohort(tx=tx), fit_step, _Data(), num_steps=4,
                checkpointer=Checkpointer(tmp_path / 'b'), **kwargs)
  assert resumed.resumed_from == 2 and int(resumed.state.step) == 4
  np.testing.assert_array_equal(resumed.state.peers.step, [4] * K)
  chex.assert_trees_all_equal(jax.device_get(resumed.state), jax.device_get(full.state))
  assert full.history[-1]['step'] == 4 and 'ensemble_accuracy' in full.history[-1]
  assert full.skipped_steps == 0
