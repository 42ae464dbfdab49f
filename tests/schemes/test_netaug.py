"""Tests for NetAug: sliced layers, width-parametrised models, the step, the export.

References are float64 NumPy code written from the definitions (Cai et al.
2022, Eq. 1: ``L(W_base) + α·L([W_base, W_aug])``, the base weights being the
leading slice of the augmented ones), including a hand-written backward pass
for the gradient of the loss.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from kdjax import models
from kdjax import steps
from kdjax.schemes import _netaug as netaug
from kdjax.state import TrainState


B, D, C = 6, 5, 4


def _x(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _labels(seed=0):
  return np.random.default_rng(seed).integers(0, C, size=B).astype(np.int32)


def _noisy_variables(model, x, seed=0):
  """Variables of ``model`` with random (non-zero) biases, filled from NumPy."""
  shapes = jax.eval_shape(lambda v: models.init_variables(model, jax.random.key(0), v),
                          jax.ShapeDtypeStruct(x.shape, jnp.float32))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)


# ------------------------------------------------------------ NumPy references

def _relu(a):
  return np.maximum(a, 0.0)


def _ref_mlp(params, x, widths):
  """Float64 MLP forward with the leading slices of the wide params."""
  h = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  for i, w in enumerate(widths, start=1):
    k = np.asarray(params[f'dense{i}']['kernel'], np.float64)
    b = np.asarray(params[f'dense{i}']['bias'], np.float64)
    h = _relu(h @ k[:h.shape[1], :w] + b[:w])
  k = np.asarray(params['classifier']['kernel'], np.float64)
  return h @ k[:h.shape[1]] + np.asarray(params['classifier']['bias'], np.float64)


def _ref_conv1d(x, kernel, bias, stride, padding):
  """``y[b, l, o] = Σ_{j,c} x_pad[b, l·s + j, c]·K[j, c, o] + bias[o]``."""
  xp = np.pad(x, ((0, 0), (padding, padding), (0, 0)))
  k = kernel.shape[0]
  length = (xp.shape[1] - k) // stride + 1
  y = np.zeros((x.shape[0], length, kernel.shape[2]))
  for l in range(length):
    y[:, l] = np.einsum('bjc,jco->bo', xp[:, l * stride:l * stride + k], kernel)
  return y + bias


def _ref_cnn(params, x, widths, kernel_sizes, stride=2, padding=1):
  h = np.asarray(x, np.float64)[..., None]
  for i, (w, _) in enumerate(zip(widths, kernel_sizes), start=1):
    k = np.asarray(params[f'conv{i}']['kernel'], np.float64)[:, :h.shape[-1], :w]
    b = np.asarray(params[f'conv{i}']['bias'], np.float64)[:w]
    h = _relu(_ref_conv1d(h, k, b, stride, padding))
  k = np.asarray(params['classifier']['kernel'], np.float64)[:, :h.shape[-1], :]
  return np.einsum('blc,lck->bk', h, k) + np.asarray(params['classifier']['bias'], np.float64)


def _ce_mean(z, y):
  logp = special.log_softmax(z, axis=-1)
  return -np.mean(logp[np.arange(len(y)), y])


def _ref_loss_and_grads(params, x, y, width, weight=1.0):
  """CE of a one-hidden-layer MLP at ``width`` and its gradient wrt the wide params."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  w1, b1 = p['dense1']['kernel'], p['dense1']['bias']
  w2, b2 = p['classifier']['kernel'], p['classifier']['bias']
  x = np.asarray(x, np.float64)
  pre = x @ w1[:, :width] + b1[:width]
  h = _relu(pre)
  z = h @ w2[:width] + b2
  loss = _ce_mean(z, y)
  dz = (special.softmax(z, axis=-1) - np.eye(z.shape[1])[y]) / len(y) * weight
  g = jax.tree.map(np.zeros_like, p)
  g['classifier']['kernel'][:width] = h.T @ dz
  g['classifier']['bias'][:] = dz.sum(0)
  dpre = (dz @ w2[:width].T) * (pre > 0)
  g['dense1']['kernel'][:, :width] = x.T @ dpre
  g['dense1']['bias'][:width] = dpre.sum(0)
  return loss, g


# ------------------------------------------------------------------ layers

def test_base_fan_in_init_variance():
  w = models.base_fan_in_init(8)(jax.random.key(0), (64, 500))
  np.testing.assert_allclose(float(jnp.var(w)), 1 / 8, rtol=0.05)
  # the plain layer's initialiser at the base shape has the same variance
  plain = jax.nn.initializers.lecun_normal()(jax.random.key(1), (8, 4000))
  np.testing.assert_allclose(float(jnp.var(w)), float(jnp.var(plain)), rtol=0.08)


def test_sliced_layers_reject_too_wide():
  dense = models.SlicedDense(max_in=3, max_out=4)
  v = dense.init(jax.random.key(0), jnp.ones((1, 3)), 4)
  with pytest.raises(ValueError, match='features'):
    dense.apply(v, jnp.ones((1, 3)), 5)
  with pytest.raises(ValueError, match='input'):
    dense.apply(v, jnp.ones((1, 4)), 2)
  conv = models.SlicedConv(max_in=1, max_out=4, kernel_size=3)
  v = conv.init(jax.random.key(0), jnp.ones((1, 8, 1)), 4)
  with pytest.raises(ValueError, match='features'):
    conv.apply(v, jnp.ones((1, 8, 1)), 0)


# ------------------------------------------------------------------ models

@pytest.mark.parametrize('multiplier', [1.0, 2.0, 2.5])
def test_mlp_forward_matches_sliced_reference(multiplier):
  model = models.NetAugMLP(hidden=(3, 4), num_classes=C, max_multiplier=2.5)
  x = _x((B, D))
  v = _noisy_variables(model, x)
  logits = jax.jit(model.clone(multiplier=multiplier).apply)(v, x)
  widths = tuple(int(np.floor(h * multiplier + 0.5)) for h in (3, 4))
  np.testing.assert_allclose(logits, _ref_mlp(v['params'], x, widths), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('multiplier', [1.0, 2.0])
def test_cnn_forward_matches_sliced_reference(multiplier):
  model = models.NetAugCNN1D(num_classes=C, channels=(2, 3, 2), max_multiplier=2.0)
  x = _x((B, 20))
  v = _noisy_variables(model, x)
  logits = jax.jit(model.clone(multiplier=multiplier).apply)(v, x)
  widths = tuple(int(c * multiplier) for c in (2, 3, 2))
  ref = _ref_cnn(v['params'], x, widths, (5, 3, 3))
  np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)


def test_params_allocated_at_widest_and_shared():
  model = models.NetAugMLP(hidden=(3,), num_classes=C, max_multiplier=3.0)
  shapes = [jax.tree.map(jnp.shape, jax.eval_shape(
      model.clone(multiplier=m).init, jax.random.key(0), jnp.zeros((1, D)))) for m in (1, 2, 3)]
  assert shapes[0] == shapes[1] == shapes[2]
  assert shapes[0]['params']['dense1']['kernel'] == (D, 9)
  assert model.clone(multiplier=2.0).widths() == (6,)


def test_init_fan_options():
  x = jnp.zeros((1, 40))
  base = models.NetAugMLP(hidden=(50,), num_classes=C, max_multiplier=4.0)
  widest = base.clone(init_fan='widest')
  kb = base.init(jax.random.key(0), x)['params']['classifier']['kernel']    # [200, C]
  kw = widest.init(jax.random.key(0), x)['params']['classifier']['kernel']
  np.testing.assert_allclose(float(jnp.var(kb)), 1 / 50, rtol=0.2)   # base fan-in 50
  np.testing.assert_allclose(float(jnp.var(kw)), 1 / 200, rtol=0.2)  # widest fan-in 200
  with pytest.raises(ValueError, match='init_fan'):
    base.clone(init_fan='wide').init(jax.random.key(0), x)


def test_model_multiplier_out_of_range():
  model = models.NetAugMLP(hidden=(3,), num_classes=C, max_multiplier=2.0, multiplier=2.5)
  with pytest.raises(ValueError, match='multiplier'):
    model.init(jax.random.key(0), jnp.zeros((1, D)))
  with pytest.raises(ValueError, match='max_multiplier'):
    models.NetAugCNN1D(max_multiplier=0.5).widths()


# ------------------------------------------------------------------ export

@pytest.mark.parametrize('kind', ['mlp', 'cnn'])
def test_export_base_is_the_slice_bit_for_bit(kind):
  if kind == 'mlp':
    model = models.NetAugMLP(hidden=(3, 4), num_classes=C, max_multiplier=3.0)
    x = _x((B, D))
  else:
    model = models.NetAugCNN1D(num_classes=C, channels=(2, 3, 2), max_multiplier=2.0)
    x = _x((B, 20))
  v = _noisy_variables(model, x)
  base, bv = models.export_base(model.clone(multiplier=2.0), v)  # any multiplier exports the base
  assert type(base) is (models.MLP if kind == 'mlp' else models.CNN1D)
  # parameter shapes are those of the plain base model
  plain_shapes = jax.eval_shape(base.init, jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, bv) == jax.tree.map(jnp.shape, plain_shapes)
  # values are the leading slice, bit for bit
  for name, (w_in, w_out) in model.layer_widths(1.0).items():
    k, b = v['params'][name]['kernel'], v['params'][name]['bias']
    w_in = k.shape[-2] if w_in is None else w_in
    expected = np.asarray(k)[..., :w_in, :w_out]
    np.testing.assert_array_equal(bv['params'][name]['kernel'],
                                  expected.reshape(bv['params'][name]['kernel'].shape))
    np.testing.assert_array_equal(bv['params'][name]['bias'], np.asarray(b)[:w_out])
  # logits equal the wide model's base-width forward, bit for bit (jitted and eager)
  np.testing.assert_array_equal(jax.jit(base.apply)(bv, x), jax.jit(model.apply)(v, x))
  np.testing.assert_array_equal(base.apply(bv, x), model.apply(v, x))


def test_export_base_rejects_foreign_variables():
  model = models.NetAugMLP(hidden=(3,), num_classes=C)
  with pytest.raises(ValueError, match='dense1'):
    models.export_base(model, {'params': {'classifier': {}}})
  with pytest.raises(ValueError, match='NetAugMLP'):
    models.export_base(models.MLP(), {'params': {}})


# ------------------------------------------------------------------ step

MLP1 = models.NetAugMLP(hidden=(3,), num_classes=C, max_multiplier=3.0)


@functools.lru_cache(maxsize=None)
def _step(alpha, multipliers=(2.0, 3.0)):
  return jax.jit(netaug.make_netaug_step(MLP1, multipliers, alpha=alpha))


def _state(lr=1.0):
  x = _x((B, D))
  v = _noisy_variables(MLP1, x, seed=3)
  return TrainState.create(apply_fn=MLP1, variables=v, tx=optax.sgd(lr))


def test_step_loss_and_gradient_match_reference():
  state = _state()
  x, y = _x((B, D), seed=1), _labels(1)
  seen = set()
  for seed in range(12):
    if seen == {2.0, 3.0} and seed >= 3:
      break
    new, metrics = _step(0.7)(state, None, {'x': x, 'label': y}, jax.random.key(seed))
    m = float(metrics['multiplier'])
    seen.add(m)
    width = int(3 * m)
    loss_base, g_base = _ref_loss_and_grads(state.params, x, y, 3)
    loss_aug, g_aug = _ref_loss_and_grads(state.params, x, y, width, weight=0.7)
    np.testing.assert_allclose(metrics['loss/base'], loss_base, rtol=1e-5)
    np.testing.assert_allclose(metrics['loss/aug'], loss_aug, rtol=1e-5)
    np.testing.assert_allclose(metrics['loss'], loss_base + 0.7 * loss_aug, rtol=1e-5)
    # SGD with lr 1: the update is minus the gradient of L_base + α·L_aug
    update = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b), state.params,
                          new.params)
    expected = jax.tree.map(np.add, g_base, g_aug)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, atol=2e-6), update, expected)
    # parameters beyond the sampled width get no gradient at all
    np.testing.assert_array_equal(new.params['dense1']['kernel'][:, width:],
                                  state.params['dense1']['kernel'][:, width:])
    assert int(new.step) == 1 and int(metrics['skipped']) == 0
  assert seen == {2.0, 3.0}


def test_alpha_zero_is_plain_training_of_the_base():
  state = _state()
  x, y = _x((B, D), seed=2), _labels(2)
  # a schedule step -> 0 (exercises schedules too)
  step = jax.jit(netaug.make_netaug_step(MLP1, (2.0, 3.0), alpha=lambda s: 0.0 * s))
  new, _ = step(state, None, {'x': x, 'label': y}, jax.random.key(0))
  base, bv = models.export_base(MLP1, state.variables)
  plain = TrainState.create(apply_fn=base, variables=bv, tx=optax.sgd(1.0))
  plain, _ = jax.jit(steps.make_train_step())(plain, None, {'x': x, 'label': y},
                                              jax.random.key(0))
  _, new_base = models.export_base(MLP1, new.variables)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               new_base['params'], plain.params)
  # the augmented part is untouched
  np.testing.assert_array_equal(new.params['dense1']['kernel'][:, 3:],
                                state.params['dense1']['kernel'][:, 3:])


def test_host_sampling_matches_switch():
  state = _state()
  x, y = _x((B, D), seed=5), _labels(5)
  host = netaug.make_netaug_step(MLP1, (2.0, 3.0), alpha=0.7, sampling='host')
  for seed in (0, 1, 2):
    a_state, a = _step(0.7)(state, None, {'x': x, 'label': y}, jax.random.key(seed))
    b_state, b = host(state, None, {'x': x, 'label': y}, jax.random.key(seed))
    assert float(a['multiplier']) == float(b['multiplier'])  # the same sampled width
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7),
                 a_state.params, b_state.params)


def test_sampling_is_uniform_and_compiles_once():
  state = _state()
  x, y = _x((B, D)), _labels()
  fn = chex.assert_max_traces(netaug.make_netaug_step(MLP1, (1.5, 2.0, 3.0)), n=1)
  step = jax.jit(fn)
  counts = {}
  for seed in range(150):
    _, metrics = step(state, None, {'x': x, 'label': y}, jax.random.key(seed))
    m = float(metrics['multiplier'])
    counts[m] = counts.get(m, 0) + 1
  assert set(counts) == {1.5, 2.0, 3.0}
  assert all(25 <= c <= 75 for c in counts.values()), counts  # Binomial(150, 1/3): 50 ± 5.8


def test_step_mask_equals_slicing():
  state = _state()
  x, y = _x((B, D), seed=4), _labels(4)
  mask = np.array([1, 1, 0, 1, 0, 1], bool)
  _, masked = _step(0.7)(state, None, {'x': x, 'label': y, 'mask': mask}, jax.random.key(0))
  _, sliced = _step(0.7)(state, None, {'x': x[mask], 'label': y[mask]}, jax.random.key(0))
  for k in ('loss', 'loss/base', 'loss/aug', 'accuracy', 'multiplier'):
    np.testing.assert_allclose(masked[k], sliced[k], rtol=1e-5, err_msg=k)


def test_step_skips_nonfinite():
  state = _state()
  x = _x((B, D))
  x[0, 0] = np.nan
  new, metrics = _step(0.7)(state, None, {'x': x, 'label': _labels()}, jax.random.key(0))
  assert int(metrics['skipped']) == 1
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
  assert int(new.step) == 0


def test_step_rejects_bad_multipliers():
  with pytest.raises(ValueError, match='multipliers'):
    netaug.make_netaug_step(MLP1, ())
  with pytest.raises(ValueError, match='multipliers'):
    netaug.make_netaug_step(MLP1, (1.0,))
  with pytest.raises(ValueError, match='multipliers'):
    netaug.make_netaug_step(MLP1, (4.0,))
  with pytest.raises(ValueError, match='sampling'):
    netaug.make_netaug_step(MLP1, (2.0,), sampling='vmap')
  with pytest.raises(ValueError, match='factor'):
    netaug.augment_multipliers(1.0)
  with pytest.raises(ValueError, match='diversity'):
    netaug.augment_multipliers(3.0, 0)


# ------------------------------------------------------------- experiment

@pytest.mark.long
@pytest.mark.slow
def test_experiment_quick(tmp_path, monkeypatch):
  from experiments import common
  from experiments import netaug as experiment
  from experiments.configs import netaug as config_module
  monkeypatch.setattr(common, 'RESULTS', str(tmp_path / 'results'))
  config = config_module.get_config('quick')
  config.workdir = str(tmp_path / 'runs')
  rows = experiment.run(config)
  assert rows and set(experiment.COLUMNS) <= set(rows[0])
  out = tmp_path / 'results' / config.results
  for name in ('results.md', 'results.csv', 'records.json', 'netaug.png'):
    assert (out / name).exists(), name


@pytest.mark.long
@pytest.mark.slow
def test_experiment_digits_quick(tmp_path, monkeypatch):
  from experiments import common
  from experiments import netaug as experiment
  from experiments.configs import netaug as config_module
  monkeypatch.setattr(common, 'RESULTS', str(tmp_path / 'results'))
  config = config_module.get_config('digits_quick')
  config.workdir = str(tmp_path / 'runs')
  rows = experiment.run(config)
  assert [r['training'] for r in rows] == ['plain', 'NetAug']
  assert rows[0]['params'] == '460'  # MLP(6) on flattened 8×8 inputs: 64·6 + 6 + 6·10 + 10
  md = (tmp_path / 'results' / 'netaug_digits_quick' / 'results.md').read_text()
  assert 'on scikit-learn digits' in md and 'scikit-learn digits (1437 train / 360 test)' in md
  assert 'MNIST-1D (' not in md and 'netaug.py:digits_quick`' in md
