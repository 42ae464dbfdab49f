"""Tests for ONE and BYOT: models, losses, steps, export and early exit.

Random initialisation compiles slowly on this CPU, so models get variables of
the right structure filled from NumPy (see ``_fake_variables``). Loss values
are compared with float64 NumPy references written from the papers' formulas
(Lan et al. 2018, Eq. 5; Zhang et al. 2019, §3.2).
"""

import functools
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from experiments import early_exit
from kdjax import losses
from kdjax import models
from kdjax import online
from kdjax.state import TrainState


# ---------------------------------------------------------------- helpers

def _fake_variables(model, x, seed=0):
  """Variables of ``model`` for input ``x``, filled from NumPy (no jax.random)."""
  shapes = jax.eval_shape(
      lambda v: models.init_variables(model, jax.random.key(0), v),
      jax.ShapeDtypeStruct(np.shape(x), jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    keys = [getattr(p, 'key', '') for p in path]
    size = leaf.shape
    if keys[-1] == 'kernel':
      lead = 1 if 'branches' in keys else 0  # stacked branch kernels: [m, ...]
      fan_in = int(np.prod(size[lead:-1]))
      value = rng.normal(size=size) * np.sqrt(2.0 / fan_in)
    elif keys[-1] in ('scale', 'var'):
      value = 1.0 + 0.2 * np.abs(rng.normal(size=size))
    else:  # bias, mean
      value = 0.2 * rng.normal(size=size)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree.map_with_path(fill, shapes)


def _x(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _branch_slice(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def _separate_branch(model, variables, x, i, train=False):
  """Branch i's logits by running the trunk and the branch as separate modules."""
  trunk_vars = {c: t['trunk'] for c, t in variables.items() if 'trunk' in t}
  branch_vars = {c: _branch_slice(t['branches'], i) for c, t in variables.items()
                 if 'branches' in t}
  mutable = ['batch_stats'] if train else []
  h, _ = model.trunk.apply(trunk_vars, x, train=train, mutable=mutable)
  (logits, _), state = model.branch.apply(branch_vars, h, train, mutable=mutable)
  return logits, state


ONE_CNN = functools.partial(models.one_cnn1d, num_classes=5, num_branches=3, channels=(4, 6, 8))
ONE_RES = functools.partial(models.one_resnet, num_classes=5, depth=8, widths=(4, 4, 8, 8),
                            num_branches=3)


# ------------------------------------------------------------ NumPy references

def _ce(z, y):
  logp = special.log_softmax(np.asarray(z, np.float64), axis=-1)
  return -np.take_along_axis(logp, np.asarray(y)[..., None], axis=-1)[..., 0]


def _kl_tau(target, student, tau):
  """τ² KL(softmax(target/τ) ‖ softmax(student/τ)) over the last axis."""
  p = special.softmax(np.asarray(target, np.float64) / tau, axis=-1)
  q = special.softmax(np.asarray(student, np.float64) / tau, axis=-1)
  return tau**2 * np.sum(special.rel_entr(p, q), axis=-1)


def _one_ref(branches, ensemble, y, tau, target=None):
  """Lan et al. 2018: Σ_i CE(y, z_i) + CE(y, z_e) + τ² Σ_i KL(p_e^τ ‖ p_i^τ)."""
  target = ensemble if target is None else target
  ce_b = sum(_ce(z, y) for z in branches)
  kl = sum(_kl_tau(target, z, tau) for z in branches)
  return ce_b, _ce(ensemble, y), kl


def _byot_ref(z, f, y, alpha, tau, lam, target_z=None, target_f=None, reduction='sum'):
  """Zhang et al. 2019: CE(y, z_K) + Σ_{k<K} (1−α)CE + α τ² KL(p_K‖p_k) + λ‖F_k − F_K‖²."""
  z, f = np.asarray(z, np.float64), np.asarray(f, np.float64)
  tz = z[-1] if target_z is None else target_z
  tf = f[-1] if target_f is None else target_f
  total = _ce(z[-1], y)
  for k in range(z.shape[0] - 1):
    sq = np.sum((f[k] - tf)**2, axis=tuple(range(y.ndim, f[k].ndim)))
    if reduction == 'mean':
      sq = sq / np.prod(f.shape[1 + y.ndim:])
    total = total + (1 - alpha) * _ce(z[k], y) + alpha * _kl_tau(tz, z[k], tau) + lam * sq
  return total


# ---------------------------------------------------------------- ONE model

def test_one_cnn1d_shapes_and_features():
  model = ONE_CNN()
  x = jax.ShapeDtypeStruct((2, 40), jnp.float32)
  variables = jax.eval_shape(lambda v: models.init_variables(model, jax.random.key(0), v), x)
  out = jax.eval_shape(functools.partial(models.linen_forward(model), train=False), variables, x)
  # Lengths 40 -> 19 -> 10 -> 5 (kernel 5/3/3, stride 2, padding 1); 3 branches.
  assert out.logits.shape == (2, 5)
  shapes = {k: v.shape for k, v in out.features.items()}
  assert shapes == {'trunk/stage1': (2, 19, 4), 'trunk/stage2': (2, 10, 6), 'shared': (2, 10, 6),
                    'branch_logits': (3, 2, 5), 'branch_embedding': (3, 2, 40), 'gate': (2, 3)}
  assert variables['params']['branches']['conv3']['kernel'].shape == (3, 3, 6, 8)
  assert variables['params']['gate_fc']['kernel'].shape == (6, 3)


def test_one_resnet_shapes_and_batch_stats():
  model = ONE_RES(gate_norm=True)
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(lambda v: models.init_variables(model, jax.random.key(0), v), x)
  out = jax.eval_shape(functools.partial(models.linen_forward(model), train=True), variables, x)
  assert out.logits.shape == (2, 5)
  assert out.features['shared'].shape == (2, 4, 4, 8)  # stem + stages 1-2 shared
  assert out.features['branch_logits'].shape == (3, 2, 5)
  assert out.features['branch_embedding'].shape == (3, 2, 8)
  stats = out.model_state['batch_stats']
  assert set(stats) == {'trunk', 'branches', 'gate_bn'}
  assert stats['branches']['stage3_block1']['bn1']['mean'].shape == (3, 8)


@pytest.mark.parametrize('make, shape', [(ONE_CNN, (6, 40)), (ONE_RES, (6, 8, 8, 3))])
def test_vmapped_branches_match_separate_branches(make, shape):
  model = make()
  x = _x(shape)
  variables = _fake_variables(model, x)
  out = jax.jit(functools.partial(models.linen_forward(model), train=False))(variables, x)
  separate = jax.jit(functools.partial(_separate_branch, model))  # the branch index is traced
  for i in range(model.num_branches):
    logits, _ = separate(variables, x, i)
    np.testing.assert_allclose(out.features['branch_logits'][i], logits, rtol=1e-5, atol=1e-5)
  # Different parameters give different branches.
  assert not np.allclose(out.features['branch_logits'][0], out.features['branch_logits'][1])


def test_vmapped_branches_update_their_own_batch_stats():
  model = ONE_RES()
  x = _x((6, 8, 8, 3))
  variables = _fake_variables(model, x)
  out = jax.jit(functools.partial(models.linen_forward(model), train=True))(variables, x)
  new_stats = out.model_state['batch_stats']['branches']
  separate = jax.jit(functools.partial(_separate_branch, model, train=True))
  for i in range(model.num_branches):
    logits, state = separate(variables, x, i)
    np.testing.assert_allclose(out.features['branch_logits'][i], logits, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(_branch_slice(new_stats, i), state['batch_stats'],
                                rtol=1e-5, atol=1e-6)


def test_gate_is_a_softmax_and_ensemble_is_gated_sum():
  model = ONE_CNN()
  x = _x((7, 40), seed=1)
  variables = _fake_variables(model, x, seed=1)
  out = jax.jit(functools.partial(models.linen_forward(model), train=False))(variables, x)
  gate = np.asarray(out.features['gate'], np.float64)
  np.testing.assert_allclose(gate.sum(-1), 1.0, rtol=1e-6)
  assert np.all(gate > 0)
  # Reference: softmax(Dense(GAP(shared))) and Σ_i g_i z_i, in float64.
  fc = variables['params']['gate_fc']
  pooled = np.asarray(out.features['shared'], np.float64).mean(axis=1)
  ref_gate = special.softmax(pooled @ np.asarray(fc['kernel'], np.float64) + fc['bias'], axis=-1)
  np.testing.assert_allclose(gate, ref_gate, rtol=1e-5, atol=1e-6)
  z = np.asarray(out.features['branch_logits'], np.float64)
  np.testing.assert_allclose(out.logits, np.einsum('bm,mbc->bc', ref_gate, z),
                             rtol=1e-5, atol=1e-5)


def test_branch_template_with_module_fields_is_rejected():
  class Holder(nn.Module):
    inner: nn.Module

    def __call__(self, h, train=False):
      return self.inner(h), h

  model = models.ONE(trunk=models.CNN1DTrunk(), branch=Holder(nn.Dense(3)))
  with pytest.raises(ValueError, match='branch'):
    jax.eval_shape(lambda v: model.init(jax.random.key(0), v),
                   jax.ShapeDtypeStruct((1, 40), jnp.float32))


@pytest.mark.parametrize('kwargs, match', [
    ({'shared_layers': 3}, 'shared_layers'), ({'channels': (4, 4)}, 'channels')])
def test_one_cnn1d_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.one_cnn1d(**kwargs)


@pytest.mark.parametrize('kwargs, match', [
    ({'depth': 9}, 'depth'), ({'shared_stages': 3}, 'shared_stages'),
    ({'widths': (16,)}, 'widths')])
def test_one_resnet_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.one_resnet(**kwargs)


# ------------------------------------------------------------------- export

@pytest.mark.parametrize('make, shape', [(ONE_CNN, (6, 40)), (ONE_RES, (6, 8, 8, 3))])
def test_export_branch_is_bitwise_the_branch(make, shape):
  model = make()
  x = _x(shape, seed=2)
  variables = _fake_variables(model, x, seed=2)
  one_out = jax.jit(functools.partial(models.linen_forward(model), train=False))(variables, x)
  net = model.export_branch(variables, 0)[0]
  run_exported = jax.jit(net.apply)
  # Reference: the trunk and the branch modules run on their own, with the
  # i-th slice of the stacked parameters (the index is traced: one compile).
  run_direct = jax.jit(lambda v, x, i: _separate_branch(model, v, x, i)[0])
  for i in range(model.num_branches):
    net_i, net_vars = model.export_branch(variables, i)
    assert net_i == net  # one architecture; only the variables differ
    assert 'gate_fc' not in net_vars['params']
    assert models.count_params(net_vars['params']) < models.count_params(variables['params'])
    exported = run_exported(net_vars, x)
    np.testing.assert_array_equal(exported, run_direct(variables, x, i))  # bit for bit
    # Inside the ONE model the branches are vmapped (grouped convolutions), so
    # XLA rounds differently: equal to float32 precision, same predictions.
    np.testing.assert_allclose(exported, one_out.features['branch_logits'][i],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(exported, -1),
                                  np.argmax(one_out.features['branch_logits'][i], -1))
  # The free function is the method.
  net, net_vars = models.export_branch(model, variables, 1)
  chex.assert_trees_all_equal(net_vars, model.export_branch(variables, 1)[1])


def test_exported_branch_is_a_standalone_model():
  model = ONE_CNN()
  x = _x((3, 40))
  net, net_vars = model.export_branch(_fake_variables(model, x), 0)
  # It works with the generic forward protocol and has the CNN1D layout.
  out = models.linen_forward(net)(net_vars, x, train=False)
  assert out.logits.shape == (3, 5) and out.features['embedding'].shape == (3, 40)
  zoo = models.CNN1D(num_classes=5, channels=(4, 6, 8))
  zoo_shapes = jax.eval_shape(lambda v: zoo.init(jax.random.key(0), v),
                              jax.ShapeDtypeStruct((3, 40), jnp.float32))
  assert models.count_params(zoo_shapes['params']) == models.count_params(net_vars['params'])


@pytest.mark.parametrize('index', [-1, 3, 1.0, True])
def test_export_branch_bad_index(index):
  model = ONE_CNN()
  variables = _fake_variables(model, _x((1, 40)))
  with pytest.raises(ValueError, match='index'):
    model.export_branch(variables, index)


def test_export_branch_rejects_other_variables():
  with pytest.raises(ValueError, match='variables'):
    ONE_CNN().export_branch({'params': {'classifier': {}}}, 0)


# --------------------------------------------------------------- ONE loss

@pytest.mark.parametrize('tau, lead', [(3.0, (5,)), (1.0, (2, 3)), (0.5, ())])
def test_one_loss_matches_reference(tau, lead):
  rng = np.random.default_rng(0)
  m, c = 3, 6
  branches = (2.0 * rng.normal(size=(m,) + lead + (c,))).astype(np.float32)
  ensemble = (2.0 * rng.normal(size=lead + (c,))).astype(np.float32)
  target = (2.0 * rng.normal(size=lead + (c,))).astype(np.float32)
  y = rng.integers(0, c, size=lead).astype(np.int32)
  for tgt in (None, target):
    ce_b, ce_e, kl = _one_ref(branches, ensemble, y, tau, tgt)
    loss = jax.jit(functools.partial(losses.one_loss, temperature=tau))(
        branches, ensemble, y, target_logits=tgt)
    terms = jax.jit(functools.partial(losses.one_loss_terms, temperature=tau))(
        branches, ensemble, y, target_logits=tgt)
    assert loss.shape == lead
    np.testing.assert_allclose(loss, ce_b + ce_e + kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms['ce_branches'], ce_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms['ce_ensemble'], ce_e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms['kl'], kl, rtol=1e-5, atol=1e-6)


def test_one_loss_grads():
  rng = np.random.default_rng(1)
  b, e = rng.normal(size=(2, 3, 4)), rng.normal(size=(3, 4))
  y = np.array([0, 3, 1])
  jax.test_util.check_grads(jax.jit(lambda b, e: losses.one_loss(b, e, y).sum()), (b, e),
                            order=1, modes=['rev'])


@pytest.mark.parametrize('args, kwargs, match', [
    (((2, 3, 4), (3, 5), (3,)), {}, 'ensemble_logits'),
    (((2, 3, 4), (3, 4), (4,)), {}, 'labels'),
    (((2, 3, 4), (3, 4), (3,)), {'temperature': 0.0}, 'temperature'),
    (((2, 3, 4), (3, 4), (3,)), {'target_logits': np.zeros((2, 4))}, 'target_logits'),
    (((4,), (4,), ()), {}, 'branch_logits'),
])
def test_one_loss_bad_inputs(args, kwargs, match):
  shapes = args
  branches, ensemble = np.zeros(shapes[0], np.float32), np.zeros(shapes[1], np.float32)
  labels = np.zeros(shapes[2], np.int32)
  with pytest.raises(ValueError, match=match):
    losses.one_loss(branches, ensemble, labels, **kwargs)


# -------------------------------------------------------------- BYOT loss

@pytest.mark.parametrize('alpha, tau, lam, fshape', [
    (0.3, 3.0, 0.03, (8,)), (0.7, 1.5, 0.5, (2, 3)), (0.0, 2.0, 0.0, (4,)), (1.0, 4.0, 1.0, (4,))])
def test_byot_loss_matches_reference(alpha, tau, lam, fshape):
  rng = np.random.default_rng(2)
  k, b, c = 4, 5, 7
  z = (2.0 * rng.normal(size=(k, b, c))).astype(np.float32)
  f = rng.normal(size=(k, b) + fshape).astype(np.float32)
  y = rng.integers(0, c, size=b).astype(np.int32)
  tz = rng.normal(size=(b, c)).astype(np.float32)
  tf = rng.normal(size=(b,) + fshape).astype(np.float32)
  fn = jax.jit(functools.partial(losses.byot_loss, alpha=alpha, temperature=tau,
                                 feature_weight=lam))
  np.testing.assert_allclose(fn(z, f, y), _byot_ref(z, f, y, alpha, tau, lam),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fn(z, f, y, target_logits=tz, target_features=tf),
                             _byot_ref(z, f, y, alpha, tau, lam, tz, tf), rtol=1e-5, atol=1e-5)
  mean = functools.partial(losses.byot_loss, alpha=alpha, temperature=tau, feature_weight=lam,
                           feature_reduction='mean')
  np.testing.assert_allclose(jax.jit(mean)(z, f, y),
                             _byot_ref(z, f, y, alpha, tau, lam, reduction='mean'),
                             rtol=1e-5, atol=1e-5)
  terms = jax.jit(functools.partial(losses.byot_loss_terms, alpha=alpha, temperature=tau,
                                    feature_weight=lam))(z, f, y)
  assert {t.shape for t in terms.values()} == {(k, b)}
  # The deepest exit gets the plain cross-entropy and nothing else.
  np.testing.assert_allclose(terms['ce'][-1], _ce(z[-1], y), rtol=1e-5)
  assert np.all(np.asarray(terms['kl'][-1]) == 0) and np.all(np.asarray(terms['feature'][-1]) == 0)
  np.testing.assert_allclose(terms['ce'][0], (1 - alpha) * _ce(z[0], y), rtol=1e-5, atol=1e-7)


def test_byot_loss_single_exit_is_cross_entropy():
  rng = np.random.default_rng(3)
  z, f, y = rng.normal(size=(1, 4, 3)), rng.normal(size=(1, 4, 2)), np.array([0, 1, 2, 0])
  np.testing.assert_allclose(losses.byot_loss(z, f, y), _ce(z[0], y), rtol=1e-5)


def test_byot_loss_grads():
  rng = np.random.default_rng(4)
  z, f, y = rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 2, 5)), np.array([1, 2])
  jax.test_util.check_grads(jax.jit(lambda z, f: losses.byot_loss(z, f, y).sum()), (z, f),
                            order=1, modes=['rev'])


@pytest.mark.parametrize('kwargs, match', [
    ({'alpha': 1.5}, 'alpha'), ({'temperature': -1.0}, 'temperature'),
    ({'feature_weight': -0.1}, 'feature_weight'),
    ({'feature_reduction': 'max'}, 'feature_reduction'),
    ({'target_logits': np.zeros((2, 3))}, 'target_logits'),
    ({'target_features': np.zeros((3, 2))}, 'target_features')])
def test_byot_loss_bad_options(kwargs, match):
  z, f, y = np.zeros((3, 4, 5)), np.zeros((3, 4, 2)), np.zeros(4, np.int32)
  with pytest.raises(ValueError, match=match):
    losses.byot_loss(z, f, y, **kwargs)


def test_byot_loss_feature_leading_axes_must_match():
  with pytest.raises(ValueError, match='exit_features'):
    losses.byot_loss(np.zeros((3, 4, 5)), np.zeros((2, 4, 2)), np.zeros(4, np.int32))


# ---------------------------------------------- steps: targets held constant

def _toy_one(p, x):
  """Linear branches; the 'ensemble' has its own weights so its gradient is visible."""
  z = jnp.einsum('bd,mdc->mbc', x, p['w'])
  return x @ p['e'], {'branch_logits': z}


def _toy_byot(p, x):
  f = jnp.tanh(jnp.einsum('bd,kde->kbe', x, p['v']))
  z = jnp.einsum('kbe,kec->kbc', f, p['w'])
  return z[-1], {'exit_logits': z, 'exit_features': f}


def _toy_batch(seed=0, n=8, d=5, c=3):
  rng = np.random.default_rng(seed)
  return {'x': rng.normal(size=(n, d)).astype(np.float32),
          'label': rng.integers(0, c, size=n).astype(np.int32)}


def _sgd_grads(step, params, apply_fn, batch):
  """Gradients the step applied, recovered from one SGD(1) update."""
  state = TrainState.create(apply_fn=apply_fn, variables={'params': params}, tx=optax.sgd(1.0))
  new, metrics = jax.jit(step)(state, None, batch, jax.random.key(0))
  return jax.tree.map(lambda a, b: a - b, state.params, new.params), metrics


def test_one_step_holds_the_ensemble_target_constant():
  rng = np.random.default_rng(5)
  params = {'w': jnp.asarray(rng.normal(size=(3, 5, 3)), jnp.float32),
            'e': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  batch = _toy_batch()
  tau = 3.0
  grads, metrics = _sgd_grads(online.make_one_step(temperature=tau), params,
                              models.function_forward(_toy_one), batch)
  x, y = batch['x'], batch['label']

  def full(p, stop):
    ens, feats = _toy_one(p, x)
    target = jax.lax.stop_gradient(ens) if stop else ens
    return jnp.mean(losses.one_loss(feats['branch_logits'], ens, y, temperature=tau,
                                    target_logits=target))

  loss_and_grad = jax.jit(jax.value_and_grad(full), static_argnums=1)
  # The ensemble's weights learn from CE(y, z_e) only ...
  ce_only = jax.jit(jax.grad(lambda e: jnp.mean(
      optax.losses.softmax_cross_entropy_with_integer_labels(x @ e, y))))(params['e'])
  np.testing.assert_allclose(grads['e'], ce_only, rtol=1e-4, atol=1e-6)
  # ... which differs from letting the KL term flow into the ensemble.
  assert not np.allclose(grads['e'], loss_and_grad(params, False)[1]['e'], atol=1e-4)
  loss, ref = loss_and_grad(params, True)
  chex.assert_trees_all_close(grads, ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(
      metrics['loss/ce_branches'] + metrics['loss/ce_ensemble'] + metrics['loss/kl'],
      metrics['loss'], rtol=1e-6)


def test_one_step_target_path_has_zero_gradient():
  # d(update of the branch weights)/d(ensemble weights) flows only through the
  # KL target; with the target stopped, the branches' gradient ignores e.
  params = {'w': jnp.full((2, 5, 3), 0.1), 'e': jnp.full((5, 3), 0.2)}
  batch = _toy_batch(1)
  step = online.make_one_step()
  fwd = models.function_forward(_toy_one)

  def branch_update(e):
    state = TrainState.create(apply_fn=fwd, variables={'params': {**params, 'e': e}},
                              tx=optax.sgd(1.0))
    new, _ = step(state, None, batch, jax.random.key(0))
    return jnp.sum(new.params['w'])

  g = jax.jit(jax.grad(branch_update))(params['e'])
  np.testing.assert_array_equal(g, np.zeros_like(g))


def test_byot_step_holds_the_deepest_exit_constant():
  rng = np.random.default_rng(6)
  params = {'v': jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32),
            'w': jnp.asarray(rng.normal(size=(3, 4, 3)), jnp.float32)}
  batch = _toy_batch(2)
  alpha, tau, lam = 0.4, 2.0, 0.5
  grads, metrics = _sgd_grads(
      online.make_byot_step(alpha=alpha, temperature=tau, feature_weight=lam), params,
      models.function_forward(_toy_byot), batch)
  x, y = batch['x'], batch['label']

  def deepest_ce(p):
    z, _ = _toy_byot(p, x)
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(z, y))

  def full(p, stop):
    _, feats = _toy_byot(p, x)
    z, f = feats['exit_logits'], feats['exit_features']
    sg = jax.lax.stop_gradient if stop else (lambda a: a)
    return jnp.mean(losses.byot_loss(z, f, y, alpha=alpha, temperature=tau, feature_weight=lam,
                                     target_logits=sg(z[-1]), target_features=sg(f[-1])))

  loss_and_grad = jax.jit(jax.value_and_grad(full), static_argnums=1)
  ce_grad = jax.jit(jax.grad(deepest_ce))(params)
  # The deepest exit's weights learn from its own cross-entropy only ...
  np.testing.assert_allclose(grads['v'][-1], ce_grad['v'][-1], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads['w'][-1], ce_grad['w'][-1], rtol=1e-4, atol=1e-6)
  # ... not from the shallow exits' KL and feature terms.
  assert not np.allclose(grads['v'][-1], loss_and_grad(params, False)[1]['v'][-1], atol=1e-4)
  loss, ref = loss_and_grad(params, True)
  chex.assert_trees_all_close(grads, ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss/ce'] + metrics['loss/kl'] + metrics['loss/feature'],
                             metrics['loss'], rtol=1e-6)


def test_steps_respect_the_mask():
  rng = np.random.default_rng(7)
  params = {'w': jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32),
            'e': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  batch = _toy_batch(3, n=8)
  fwd = models.function_forward(_toy_one)
  masked = {**batch, 'mask': np.arange(8) < 5}
  sliced = {k: v[:5] for k, v in batch.items()}
  g_masked, m_masked = _sgd_grads(online.make_one_step(), params, fwd, masked)
  g_sliced, m_sliced = _sgd_grads(online.make_one_step(), params, fwd, sliced)
  chex.assert_trees_all_close(g_masked, g_sliced, rtol=1e-5, atol=1e-6)
  for key in ('loss', 'accuracy', 'accuracy/branch0', 'accuracy/branch1'):
    np.testing.assert_allclose(m_masked[key], m_sliced[key], rtol=1e-6)


def test_step_errors():
  state = TrainState.create(apply_fn=models.function_forward(lambda p, x: x @ p['w']),
                            variables={'params': {'w': jnp.zeros((5, 3))}}, tx=optax.sgd(0.1))
  with pytest.raises(ValueError, match='branch_logits'):
    online.make_one_step()(state, None, _toy_batch(), jax.random.key(0))
  with pytest.raises(ValueError, match='exit_logits'):
    online.make_byot_step()(state, None, _toy_batch(), jax.random.key(0))
  with pytest.raises(ValueError, match='label'):
    online.make_one_step()(state, None, {'x': _toy_batch()['x']}, jax.random.key(0))
  with pytest.raises(ValueError, match='alpha'):
    online.make_byot_step(alpha=-0.1)
  with pytest.raises(ValueError, match='temperature'):
    online.make_one_step(temperature=0.0)


# ---------------------------------------------- training on a separable task

def _separable(n=48, length=40, classes=3, seed=0):
  """Each class is a bump at its own position plus noise."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, size=n).astype(np.int32)
  pos = np.arange(length)
  centers = 8 + 12 * y
  x = np.exp(-0.5 * ((pos[None] - centers[:, None]) / 2.0)**2) * 2.0
  return {'x': (x + 0.3 * rng.normal(size=x.shape)).astype(np.float32), 'label': y}


@pytest.mark.parametrize('kind', ['one', 'byot'])
def test_few_steps_reduce_the_loss_and_compile_once(kind):
  if kind == 'one':
    model = models.one_cnn1d(num_classes=3, num_branches=2, channels=6)
    step_fn = online.make_one_step()
  else:
    model = models.byot_cnn1d(num_classes=3, channels=6)
    step_fn = online.make_byot_step()
  batch = _separable()
  variables = _fake_variables(model, batch['x'], seed=3)
  state = TrainState.create(apply_fn=model, variables=variables, tx=optax.adam(5e-3))
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(step_fn, n=1))
  losses = []
  for i in range(20):
    state, metrics = step(state, None, batch, jax.random.key(i))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses)) and int(state.step) == 20
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(metrics['accuracy']) >= 0.9
  prefix = 'branch' if kind == 'one' else 'exit'
  assert any(k.startswith(f'accuracy/{prefix}') for k in metrics)


# ----------------------------------------------------------------- BYOT model

def test_byot_cnn1d_shapes():
  model = models.byot_cnn1d(num_classes=5, channels=(4, 6, 8))
  x = jax.ShapeDtypeStruct((2, 40), jnp.float32)
  variables = jax.eval_shape(lambda v: models.init_variables(model, jax.random.key(0), v), x)
  out = jax.eval_shape(functools.partial(models.linen_forward(model), train=False), variables, x)
  shapes = {k: v.shape for k, v in out.features.items()}
  assert shapes == {'stage1': (2, 19, 4), 'stage2': (2, 10, 6), 'stage3': (2, 5, 8),
                    'exit_logits': (3, 2, 5), 'exit_features': (3, 2, 40), 'embedding': (2, 40)}
  # The deepest head is the CNN1D classifier: same parameter count as the zoo model's head.
  assert variables['params']['heads_2']['classifier']['kernel'].shape == (40, 5)


def test_byot_resnet_shapes():
  model = models.byot_resnet(num_classes=5, depth=8, widths=(4, 4, 8, 16))
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(lambda v: models.init_variables(model, jax.random.key(0), v), x)
  out = jax.eval_shape(functools.partial(models.linen_forward(model), train=True), variables, x)
  shapes = {k: v.shape for k, v in out.features.items()}
  assert shapes == {'stage1': (2, 8, 8, 4), 'stage2': (2, 4, 4, 8), 'stage3': (2, 2, 2, 16),
                    'exit_logits': (3, 2, 5), 'exit_features': (3, 2, 16), 'embedding': (2, 16)}
  assert set(out.model_state['batch_stats']) == {
      'stem', 'stages_0', 'stages_1', 'stages_2', 'heads_0', 'heads_1'}


def test_byot_backbone_matches_the_zoo_cnn1d():
  # Exit K of BYOT-CNN1D is exactly the zoo's CNN1D with the same weights.
  model = models.byot_cnn1d(num_classes=5, channels=(4, 6, 8))
  x = _x((4, 40))
  variables = _fake_variables(model, x)
  p = variables['params']
  zoo_params = {f'conv{i + 1}': p[f'stages_{i}']['conv'] for i in range(3)}
  zoo_params['classifier'] = p['heads_2']['classifier']
  zoo = models.CNN1D(num_classes=5, channels=(4, 6, 8))
  np.testing.assert_allclose(jax.jit(model.apply)(variables, x),
                             jax.jit(zoo.apply)({'params': zoo_params}, x), rtol=1e-6, atol=1e-6)


def test_max_exit_computes_a_prefix():
  model = models.byot_cnn1d(num_classes=5, channels=(4, 6, 8))
  x = _x((4, 40))
  variables = _fake_variables(model, x)
  full = jax.jit(functools.partial(models.linen_forward(model), train=False))(variables, x)
  for k in (1, 2):
    part = jax.jit(functools.partial(models.linen_forward(model.clone(max_exit=k)), train=False))(
        variables, x)
    assert part.features['exit_logits'].shape[0] == k
    np.testing.assert_allclose(part.logits, full.features['exit_logits'][k - 1], rtol=1e-6,
                               atol=1e-6)
  with pytest.raises(ValueError, match='max_exit'):
    model.clone(max_exit=4).apply(variables, x)


def test_byot_heads_must_agree_on_feature_shape():
  model = models.BYOT(stages=(models.Conv1DStage(4, 3), models.Conv1DStage(4, 3)),
                      heads=(models.CNN1DExitHead(3), models.CNN1DExitHead(3)))
  with pytest.raises(ValueError, match='one shape'):
    jax.eval_shape(lambda v: model.init(jax.random.key(0), v),
                   jax.ShapeDtypeStruct((2, 40), jnp.float32))


# ---------------------------------------------------------------- early exit

def _early_exit_reference(z, y, threshold):
  """Per-example loop: exit at the first head with max softmax prob >= threshold."""
  p = special.softmax(np.asarray(z, np.float64), axis=-1)
  exits, correct = [], []
  for n in range(z.shape[1]):
    k = next((k for k in range(z.shape[0] - 1) if p[k, n].max() >= threshold), z.shape[0] - 1)
    exits.append(k)
    correct.append(p[k, n].argmax() == y[n])
  return np.array(exits), np.mean(correct)


def test_early_exit_table_thresholds():
  rng = np.random.default_rng(8)
  k, n, c = 3, 200, 4
  z = (rng.normal(size=(k, n, c)) * np.array([1.0, 2.0, 4.0])[:, None, None]).astype(np.float32)
  y = rng.integers(0, c, size=n)
  costs = [1.0, 2.5, 4.0]
  rows = early_exit.early_exit_table(z, y, [0.0, 0.5, 0.8, 1.01], exit_costs=costs)
  head_acc = (z.argmax(-1) == y).mean(axis=1)
  # Threshold 0: everyone leaves at head 1.
  assert rows[0]['mean_stages'] == 1.0 and rows[0]['exit1_fraction'] == 1.0
  assert rows[0]['accuracy'] == pytest.approx(head_acc[0])
  assert rows[0]['cost'] == 1.0
  # Threshold > 1: everyone runs to the deepest head.
  assert rows[-1]['mean_stages'] == k and rows[-1]['exit3_fraction'] == 1.0
  assert rows[-1]['accuracy'] == pytest.approx(head_acc[-1])
  assert rows[-1]['relative_cost'] == 1.0
  for row in rows:
    exits, acc = _early_exit_reference(z, y, row['threshold'])
    assert row['accuracy'] == pytest.approx(acc)
    assert row['mean_stages'] == pytest.approx(np.mean(exits + 1))
    assert row['cost'] == pytest.approx(np.mean(np.array(costs)[exits]))
    assert sum(row[f'exit{j}_fraction'] for j in range(1, k + 1)) == pytest.approx(1.0)
  assert 0 < rows[1]['exit1_fraction'] < 1  # the middle thresholds mix exits


def test_early_exit_table_bad_shapes():
  with pytest.raises(ValueError, match='exit_logits'):
    early_exit.early_exit_table(np.zeros((4, 3)), np.zeros(4), [0.5])
  with pytest.raises(ValueError, match='exit_costs'):
    early_exit.early_exit_table(np.zeros((2, 4, 3)), np.zeros(4), [0.5], exit_costs=[1.0])


def test_early_exit_on_a_model_with_flops_and_plot(tmp_path):
  model = models.byot_cnn1d(num_classes=3, channels=4)
  data = _separable(n=10, seed=1)
  variables = _fake_variables(model, data['x'])
  batches = [{'x': data['x'][:6], 'label': data['label'][:6]},
             {'x': data['x'][6:], 'label': data['label'][6:], 'mask': np.arange(4) < 3}]
  z, y = early_exit.collect_head_logits(model, variables, batches)
  assert z.shape == (3, 9, 3) and y.shape == (9,)
  full = jax.jit(functools.partial(models.linen_forward(model), train=False))(
      variables, data['x'][:9])
  np.testing.assert_allclose(z, full.features['exit_logits'], rtol=1e-6, atol=1e-6)

  costs = early_exit.exit_flops(model, (1, 40))
  assert len(costs) == 3 and costs[0] < costs[1] < costs[2]
  # Hand count for exit 1 (2 FLOPs per multiply-add): conv1 19·5·1·4, pointwise
  # conv 5·4·4, classifier 20·3 multiply-adds; pooling, bias and ReLU add a few.
  assert 2 * (19 * 5 * 4 + 5 * 4 * 4 + 20 * 3) <= costs[0] < 1.5 * 2 * (19 * 5 * 4 + 5 * 16 + 60)

  rows = early_exit.early_exit_table(z, y, [0.0, 0.6, 2.0], exit_costs=costs)
  assert rows[0]['cost'] == costs[0] and rows[-1]['cost'] == costs[-1]

  eval_step = jax.jit(online.make_heads_eval_step(model, feature='exit_logits'))
  heads = online.evaluate_heads(eval_step, variables, batches, prefix='exit')
  np.testing.assert_allclose([heads[f'accuracy/exit{k}'] for k in (1, 2, 3)],
                             (z.argmax(-1) == y).mean(axis=1), rtol=1e-6)
  assert heads['accuracy'] == pytest.approx(heads['accuracy/exit3']) and heads['count'] == 9
  assert rows[-1]['accuracy'] == pytest.approx(heads['accuracy/exit3'])
  np.testing.assert_allclose(heads['loss/exit1'], _ce(z[0], y).mean(), rtol=1e-5)

  path = early_exit.plot_early_exit(rows, tmp_path / 'exit.png',
                                    head_points=[(c / costs[-1], heads[f'accuracy/exit{k}'])
                                                 for k, c in enumerate(costs, start=1)])
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert os.path.getsize(path) > 1000


def test_evaluate_heads_for_one_branches():
  model = ONE_CNN()
  x = _x((8, 40), seed=4)
  y = np.random.default_rng(4).integers(0, 5, size=8).astype(np.int32)
  variables = _fake_variables(model, x)
  step = jax.jit(online.make_heads_eval_step(model, feature='branch_logits'))
  r = online.evaluate_heads(step, variables, [{'x': x, 'label': y}], prefix='branch', start=0)
  out = jax.jit(functools.partial(models.linen_forward(model), train=False))(variables, x)
  assert r['accuracy'] == pytest.approx(np.mean(np.argmax(out.logits, -1) == y))
  for i in range(3):
    assert r[f'accuracy/branch{i}'] == pytest.approx(
        np.mean(np.argmax(out.features['branch_logits'][i], -1) == y))
  with pytest.raises(ValueError, match='empty'):
    online.evaluate_heads(step, variables, [])
