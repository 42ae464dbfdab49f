"""Tests for the kdjax.models zoo.

Random initialisation compiles slowly on this CPU (each threefry sampler shape
is its own XLA program), so most tests read shapes with ``jax.eval_shape`` and
run forwards on NumPy-filled variables of the right structure. Forward values
of the MLP and the 1-D CNN are checked against float64 NumPy references; the
BatchNorm update is checked against a NumPy convolution of the stem.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models


def _abstract_init(model, shape, dtype=jnp.float32):
  x = jax.ShapeDtypeStruct(tuple(shape), dtype)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def _fake_variables(model, shape, seed=0):
  """Variables of the right tree and shapes, filled from NumPy (no jax.random)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    size = leaf.shape
    if name == 'kernel':
      fan_in = int(np.prod(size[:-1]))
      value = rng.normal(size=size) * np.sqrt(2.0 / fan_in)
    elif name in ('scale', 'var'):
      value = 1.0 + 0.1 * np.abs(rng.normal(size=size))
    else:  # bias, mean
      value = 0.1 * rng.normal(size=size)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree.map_with_path(fill, _abstract_init(model, shape))


def _shapes(model, shape):
  """(logits shape, {feature: shape}) without computing anything."""
  variables = _abstract_init(model, shape)
  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  logits, state = jax.eval_shape(
      functools.partial(model.apply, mutable=['intermediates']), variables, x)
  feats = models.get_features(state['intermediates'])
  return logits.shape, {k: v.shape for k, v in feats.items()}


def _x(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ------------------------------------------------------------ shapes, features

# Expected feature shapes, derived by hand from each layer plan: 3x3 convs with
# padding 1 and stride s give floor((H - 1) / s) + 1; a 2x2 max-pool halves.
SHAPE_CASES = [
    ('mlp', {}, (2, 40), {'hidden1': (2, 100), 'hidden2': (2, 100), 'embedding': (2, 100)}),
    ('mlp', {'hidden': (32,)}, (2, 8, 8, 1), {'hidden1': (2, 32), 'embedding': (2, 32)}),
    ('mlp', {'hidden': ()}, (2, 40), {'embedding': (2, 40)}),
    ('cnn1d', {}, (2, 40),
     {'stage1': (2, 19, 25), 'stage2': (2, 10, 25), 'stage3': (2, 5, 25), 'embedding': (2, 125)}),
    ('cnn1d', {'channels': (8, 16, 32)}, (2, 40, 1),
     {'stage1': (2, 19, 8), 'stage2': (2, 10, 16), 'stage3': (2, 5, 32), 'embedding': (2, 160)}),
    ('resnet20', {}, (2, 32, 32, 3),
     {'stage1': (2, 32, 32, 16), 'stage2': (2, 16, 16, 32), 'stage3': (2, 8, 8, 64),
      'embedding': (2, 64)}),
    ('resnet8x4', {}, (2, 32, 32, 3),
     {'stage1': (2, 32, 32, 64), 'stage2': (2, 16, 16, 128), 'stage3': (2, 8, 8, 256),
      'embedding': (2, 256)}),
    ('resnet8', {}, (2, 8, 8, 1),
     {'stage1': (2, 8, 8, 16), 'stage2': (2, 4, 4, 32), 'stage3': (2, 2, 2, 64),
      'embedding': (2, 64)}),
    ('wrn_16_2', {}, (2, 32, 32, 3),
     {'stage1': (2, 32, 32, 32), 'stage2': (2, 16, 16, 64), 'stage3': (2, 8, 8, 128),
      'embedding': (2, 128)}),
    ('wrn_16_1', {}, (2, 7, 7, 3),
     {'stage1': (2, 7, 7, 16), 'stage2': (2, 4, 4, 32), 'stage3': (2, 2, 2, 64),
      'embedding': (2, 64)}),
    ('plain_cnn_2', {}, (2, 32, 32, 3),
     {'stage1': (2, 16, 16, 16), 'stage2': (2, 8, 8, 16), 'embedding': (2, 1024)}),
    ('plain_cnn_4', {}, (2, 32, 32, 3),
     {'stage1': (2, 16, 16, 16), 'stage2': (2, 8, 8, 32), 'embedding': (2, 2048)}),
    ('plain_cnn_6', {}, (2, 32, 32, 3),
     {'stage1': (2, 16, 16, 16), 'stage2': (2, 8, 8, 32), 'stage3': (2, 4, 4, 64),
      'embedding': (2, 1024)}),
    ('plain_cnn_8', {}, (2, 32, 32, 3),
     {'stage1': (2, 16, 16, 16), 'stage2': (2, 8, 8, 32), 'stage3': (2, 4, 4, 64),
      'stage4': (2, 2, 2, 128), 'embedding': (2, 64)}),
    ('plain_cnn_10', {}, (2, 32, 32, 3),
     {'stage1': (2, 16, 16, 32), 'stage2': (2, 8, 8, 64), 'stage3': (2, 4, 4, 128),
      'stage4': (2, 2, 2, 256), 'embedding': (2, 128)}),
    # Digits: the last pool is skipped once the map is 1x1.
    ('plain_cnn_2', {}, (2, 8, 8, 1),
     {'stage1': (2, 4, 4, 16), 'stage2': (2, 2, 2, 16), 'embedding': (2, 64)}),
    ('plain_cnn_8', {}, (2, 8, 8, 1),
     {'stage1': (2, 4, 4, 16), 'stage2': (2, 2, 2, 32), 'stage3': (2, 1, 1, 64),
      'stage4': (2, 1, 1, 128), 'embedding': (2, 64)}),
    ('plain_cnn_10', {}, (2, 8, 8, 1),
     {'stage1': (2, 4, 4, 32), 'stage2': (2, 2, 2, 64), 'stage3': (2, 1, 1, 128),
      'stage4': (2, 1, 1, 256), 'embedding': (2, 128)}),
]


@pytest.mark.parametrize('name, kwargs, shape, expected', SHAPE_CASES)
def test_logit_and_feature_shapes(name, kwargs, shape, expected):
  logits, feats = _shapes(models.create(name, num_classes=7, **kwargs), shape)
  assert logits == (shape[0], 7)
  assert feats == expected


@pytest.mark.parametrize('name, shape', [
    ('mlp', (3, 40)), ('cnn1d', (3, 40)), ('resnet8', (3, 8, 8, 3)),
    ('wrn_16_1', (3, 8, 8, 3)), ('plain_cnn_8', (3, 8, 8, 1)),
])
def test_forward_runs_and_embedding_feeds_classifier(name, shape):
  model = models.create(name, num_classes=5)
  variables = _fake_variables(model, shape)
  logits, state = jax.jit(functools.partial(model.apply, mutable=['intermediates']))(
      variables, _x(shape))
  assert logits.shape == (3, 5) and np.all(np.isfinite(logits))
  feats = models.get_features(state['intermediates'])
  head = variables['params']['classifier']
  np.testing.assert_allclose(
      feats['embedding'] @ head['kernel'] + head['bias'], logits, rtol=1e-4, atol=1e-5)


def test_init_returns_no_intermediates():
  variables = _abstract_init(models.create('resnet8'), (2, 8, 8, 3))
  assert set(variables) == {'params', 'batch_stats'}
  assert set(_abstract_init(models.create('mlp'), (2, 40))) == {'params'}


def test_dtype_is_forwarded():
  model = models.create('cnn1d', dtype=jnp.bfloat16)
  logits, _ = jax.eval_shape(
      functools.partial(model.apply, mutable=['intermediates']),
      _abstract_init(model, (2, 40)), jax.ShapeDtypeStruct((2, 40), jnp.float32))
  assert logits.dtype == jnp.bfloat16


# ------------------------------------------------------- values vs NumPy refs

def test_mlp_matches_numpy_reference():
  model = models.MLP(hidden=(6, 5), num_classes=3)
  x = _x((4, 2, 5))
  p = _fake_variables(model, x.shape)['params']
  h = x.reshape(4, -1).astype(np.float64)
  for layer in ('dense1', 'dense2'):
    h = np.maximum(h @ np.float64(p[layer]['kernel']) + np.float64(p[layer]['bias']), 0.0)
  expected = h @ np.float64(p['classifier']['kernel']) + np.float64(p['classifier']['bias'])
  np.testing.assert_allclose(jax.jit(model.apply)({'params': p}, x), expected, rtol=1e-5,
                             atol=1e-6)


def _conv1d_ref(x, kernel, bias, stride, pad):
  """float64 1-D cross-correlation, PyTorch padding semantics. x: [B, L, C]."""
  xp = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
  k = kernel.shape[0]
  length = (xp.shape[1] - k) // stride + 1
  out = np.stack([np.einsum('bkc,kco->bo', xp[:, i * stride:i * stride + k], kernel)
                  for i in range(length)], axis=1)
  return out + bias


def test_cnn1d_matches_numpy_reference():
  model = models.CNN1D(num_classes=4, channels=(3, 5, 6))
  x = _x((2, 40))
  p = jax.tree.map(np.float64, _fake_variables(model, x.shape)['params'])
  h = np.float64(x)[..., None]
  for i, k in enumerate((5, 3, 3), start=1):
    assert p[f'conv{i}']['kernel'].shape[0] == k
    h = np.maximum(_conv1d_ref(h, p[f'conv{i}']['kernel'], p[f'conv{i}']['bias'], 2, 1), 0.0)
  assert h.shape == (2, 5, 6)  # Paper's plan: 40 -> 19 -> 10 -> 5.
  expected = h.reshape(2, -1) @ p['classifier']['kernel'] + p['classifier']['bias']
  got = jax.jit(model.apply)({'params': jax.tree.map(np.float32, p)}, x)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- BatchNorm, dropout

def _conv2d_same_ref(x, kernel):
  """float64 3x3 stride-1 cross-correlation with padding 1. x: [B, H, W, C]."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  return sum(np.einsum('bhwc,co->bhwo', xp[:, i:i + h, j:j + w], kernel[i, j])
             for i in range(3) for j in range(3))


@pytest.fixture(scope='module')
def resnet8_bn():
  """resnet8, filled variables and one jitted apply shared by the BN tests."""
  model = models.resnet8(num_classes=3)
  x = _x((4, 8, 8, 3), seed=1)
  variables = _fake_variables(model, x.shape)
  apply = jax.jit(functools.partial(model.apply, mutable=['batch_stats']),
                  static_argnames='train')
  return x, variables, apply


def test_batchnorm_train_updates_stats_and_eval_does_not(resnet8_bn):
  x, variables, apply = resnet8_bn
  _, eval_state = apply(variables, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, eval_state['batch_stats'],
               variables['batch_stats'])
  _, train_state = apply(variables, x, train=True)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         train_state['batch_stats'], variables['batch_stats'])
  assert all(jax.tree.leaves(changed))
  # Stem running mean: 0.9 * old + 0.1 * batch mean of the stem conv (float64).
  conv = _conv2d_same_ref(np.float64(x), np.float64(variables['params']['stem_conv']['kernel']))
  old = np.float64(variables['batch_stats']['stem_bn']['mean'])
  np.testing.assert_allclose(train_state['batch_stats']['stem_bn']['mean'],
                             0.9 * old + 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_eval_is_per_example_and_train_uses_batch_statistics(resnet8_bn):
  x, variables, apply = resnet8_bn
  other = x.copy()
  other[2:] = _x((2, 8, 8, 3), seed=9)  # Same first two examples, new batch-mates.
  eval_a, eval_b = apply(variables, x, train=False)[0], apply(variables, other, train=False)[0]
  np.testing.assert_allclose(eval_a[:2], eval_b[:2], rtol=1e-5, atol=1e-6)
  train_a, train_b = apply(variables, x, train=True)[0], apply(variables, other, train=True)[0]
  assert not np.allclose(train_a[:2], train_b[:2], atol=1e-4)


def test_wide_block_dropout_uses_rng_only_in_train():
  block = models.WideBasicBlock(features=4, dropout_rate=0.5)
  x = _x((2, 4, 4, 4), seed=3)
  variables = _fake_variables(block, x.shape)
  train = jax.jit(lambda k: block.apply(variables, x, train=True, rngs={'dropout': k},
                                        mutable=['batch_stats'])[0])
  a, b, c = (train(jax.random.key(s)) for s in (0, 0, 1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  no_dropout = models.WideBasicBlock(features=4)
  np.testing.assert_array_equal(block.apply(variables, x), no_dropout.apply(variables, x))


def test_wrn_passes_dropout_rate_to_blocks():
  model = models.wrn_16_1(dropout_rate=0.3)
  shape = (2, 8, 8, 3)
  variables = _abstract_init(model, shape)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  train = functools.partial(model.apply, train=True, mutable=['batch_stats'])
  jax.eval_shape(functools.partial(train, rngs={'dropout': jax.random.key(0)}), variables, x)
  with pytest.raises(Exception, match='dropout'):  # Flax's missing-rng error.
    jax.eval_shape(train, variables, x)
  jax.eval_shape(model.apply, variables, x)  # Eval needs no rng.


# ------------------------------------------------------------------- determinism

def test_init_and_apply_are_deterministic():
  model = models.create('mlp', num_classes=2, hidden=(3,))
  x = _x((2, 4))
  init = jax.jit(model.init)
  v0, v0b, v1 = init(jax.random.key(0), x), init(jax.random.key(0), x), init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, v0, v0b)
  assert not np.allclose(v0['params']['dense1']['kernel'], v1['params']['dense1']['kernel'])
  apply = jax.jit(model.apply)
  np.testing.assert_array_equal(apply(v0, x), apply(v0b, x))


def test_conv_init_is_he_normal_fan_out():
  from kdjax.models import _utils  # pylint: disable=import-outside-toplevel
  w = np.asarray(_utils.conv_init(jax.random.key(0), (3, 3, 32, 64)))
  # std = sqrt(2 / fan_out), fan_out = 3 * 3 * 64; 18432 samples -> ~1% error.
  np.testing.assert_allclose(w.std(), np.sqrt(2.0 / (9 * 64)), rtol=0.03)


# ------------------------------------------------------------ depth and params

def _kernels(model, shape):
  params = _abstract_init(model, shape)['params']
  return [leaf.shape for leaf in jax.tree.leaves(params) if len(leaf.shape) == 4]


@pytest.mark.parametrize('depth', [8, 14, 20, 32, 44, 56, 110])
def test_resnet_depth_counts_weighted_layers(depth):
  kernels = _kernels(getattr(models, f'resnet{depth}')(), (1, 8, 8, 3))
  n3x3 = sum(k[:2] == (3, 3) for k in kernels)
  n1x1 = sum(k[:2] == (1, 1) for k in kernels)
  assert n3x3 + 1 == depth  # 3x3 convs + the Dense; projections are not counted.
  assert n1x1 == 2  # Projections into stages 2 and 3.


@pytest.mark.parametrize('depth, k, projections', [(16, 1, 2), (16, 2, 3), (40, 2, 3)])
def test_wrn_depth_counts_weighted_layers(depth, k, projections):
  kernels = _kernels(models.WRN(depth=depth, widen_factor=k), (1, 8, 8, 3))
  assert sum(s[:2] == (3, 3) for s in kernels) == depth - 3  # + Dense + 2 shortcuts = depth
  assert sum(s[:2] == (1, 1) for s in kernels) == projections


@pytest.mark.parametrize('depth', [2, 4, 6, 8, 10])
def test_plain_cnn_depth_counts_conv_layers(depth):
  assert len(_kernels(models.PlainCNN(depth=depth), (1, 8, 8, 1))) == depth


def _resnet_params_ref(depth, widths, num_classes):
  """Parameter count of a CIFAR ResNet from its definition (no BN running stats)."""
  n = (depth - 2) // 6
  total = 9 * 3 * widths[0] + 2 * widths[0]
  cin = widths[0]
  for stage, w in enumerate(widths[1:]):
    for b in range(n):
      total += 9 * cin * w + 9 * w * w + 4 * w
      if cin != w or (stage > 0 and b == 0):
        total += cin * w + 2 * w
      cin = w
  return total + cin * num_classes + num_classes


def _wrn_params_ref(depth, k, num_classes):
  n = (depth - 4) // 6
  total, cin = 9 * 3 * 16, 16
  for stage, base in enumerate((16, 32, 64)):
    w = base * k
    for b in range(n):
      total += 2 * cin + 9 * cin * w + 2 * w + 9 * w * w
      if cin != w or (stage > 0 and b == 0):
        total += cin * w
      cin = w
  return total + 2 * cin + cin * num_classes + num_classes


# RepDistiller's reported sizes (CRD paper, CIFAR-100 models; ResNet-20 is
# He et al.'s CIFAR-10 figure).
PUBLISHED = [
    ('resnet20', 10, 0.27e6, _resnet_params_ref(20, (16, 16, 32, 64), 10)),
    ('resnet56', 100, 0.86e6, _resnet_params_ref(56, (16, 16, 32, 64), 100)),
    ('resnet110', 100, 1.74e6, _resnet_params_ref(110, (16, 16, 32, 64), 100)),
    ('resnet8x4', 100, 1.23e6, _resnet_params_ref(8, (32, 64, 128, 256), 100)),
    ('resnet32x4', 100, 7.43e6, _resnet_params_ref(32, (32, 64, 128, 256), 100)),
    ('wrn_16_2', 100, 0.70e6, _wrn_params_ref(16, 2, 100)),
    ('wrn_40_2', 100, 2.26e6, _wrn_params_ref(40, 2, 100)),
    ('wrn_40_1', 100, 0.57e6, _wrn_params_ref(40, 1, 100)),
]


@pytest.mark.parametrize('name, num_classes, published, analytic', PUBLISHED)
def test_param_counts(name, num_classes, published, analytic):
  params = _abstract_init(models.create(name, num_classes), (1, 32, 32, 3))['params']
  count = models.count_params(params)
  assert count == analytic
  assert abs(count - published) / published < 0.02


def _analytic_params(name, num_classes):
  if name.startswith('wrn_'):
    _, depth, k = name.split('_')
    return _wrn_params_ref(int(depth), int(k), num_classes)
  depth, _, wide = name[len('resnet'):].partition('x')
  widths = (32, 64, 128, 256) if wide else (16, 16, 32, 64)
  return _resnet_params_ref(int(depth), widths, num_classes)


CIFAR_MODELS = [n for n in models.list_models() if n.startswith(('resnet', 'wrn_'))]


@pytest.mark.parametrize('name', CIFAR_MODELS)
def test_every_registered_cifar_model_has_its_analytic_size(name):
  params = _abstract_init(models.create(name, 100), (1, 32, 32, 3))['params']
  assert models.count_params(params) == _analytic_params(name, 100)


def test_count_params_counts_scalars():
  tree = {'a': jnp.zeros((3, 4)), 'b': [jnp.zeros(5), jnp.zeros(())]}
  assert models.count_params(tree) == 18
  assert models.count_params({}) == 0


# ------------------------------------------------------------------ get_features

class _Inner(nn.Module):

  @nn.compact
  def __call__(self, x):
    self.sow('intermediates', 'feat', x * 2)
    return x


class _Outer(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = _Inner(name='block')(x)
    self.sow('intermediates', 'top', x + 1)
    self.sow('intermediates', 'top', x + 3)  # Second call: the last one wins.
    return x


def test_get_features_flattens_nested_sows():
  x = jnp.arange(3.0)
  _, state = _Outer().apply({}, x, mutable=['intermediates'])
  feats = models.get_features(state['intermediates'])
  assert set(feats) == {'block/feat', 'top'}
  np.testing.assert_array_equal(feats['block/feat'], 2 * x)
  np.testing.assert_array_equal(feats['top'], x + 3)
  # The whole mutable state is accepted too.
  assert set(models.get_features(state)) == {'block/feat', 'top'}


def test_get_features_rejects_non_mappings():
  with pytest.raises(TypeError, match='intermediates'):
    models.get_features([jnp.zeros(2)])


# --------------------------------------------------------------------- registry

def test_create_unknown_name_lists_known_names():
  with pytest.raises(ValueError, match='resnet99') as err:
    models.create('resnet99')
  for known in ('mlp', 'cnn1d', 'resnet20', 'resnet8x4', 'wrn_16_2', 'plain_cnn_4'):
    assert known in str(err.value)


def test_create_forwards_kwargs_and_num_classes():
  model = models.create('mlp', num_classes=3, hidden=(7,))
  params = _abstract_init(model, (2, 4))['params']
  assert params['dense1']['kernel'].shape == (4, 7)
  assert params['classifier']['kernel'].shape == (7, 3)
  assert models.create('plain_cnn_6').depth == 6
  assert models.create('wrn_40_2', 100).widen_factor == 2


@pytest.mark.parametrize('name, kwargs, expected', [
    ('one_cnn1d', {'num_branches': 2}, 'ONE'), ('one_resnet', {'depth': 8}, 'ONE'),
    ('byot_cnn1d', {}, 'BYOT'), ('byot_resnet', {'depth': 8}, 'BYOT')])
def test_online_models_are_registered(name, kwargs, expected):
  model = models.create(name, 7, **kwargs)
  assert type(model).__name__ == expected
  assert models.create(name, 7, **kwargs) == model  # the factory is the module's constructor


def test_register_and_list_models():
  assert 'resnet32x4' in models.list_models()
  with pytest.raises(ValueError, match='already registered'):
    models.register('mlp', models.MLP)
  name = '_test_tiny_mlp'
  models.register(name, lambda num_classes=10, **kw: models.MLP((4,), num_classes, **kw))
  try:
    assert models.create(name, 2).hidden == (4,)
  finally:
    models._registry._REGISTRY.pop(name)  # pylint: disable=protected-access


@pytest.mark.parametrize('build, shape, match', [
    (lambda: models.resnet20(), (2, 32, 32), '`x`'),
    (lambda: models.CifarResNet(depth=21), (2, 8, 8, 3), '`depth`'),
    (lambda: models.WRN(depth=18), (2, 8, 8, 3), '`depth`'),
    (lambda: models.PlainCNN(depth=3), (2, 8, 8, 3), '`depth`'),
    (lambda: models.CNN1D(channels=(4, 4)), (2, 40), '`channels`'),
])
def test_bad_configuration_raises(build, shape, match):
  with pytest.raises(ValueError, match=match):
    _abstract_init(build(), shape)


# ------------------------------------------------------------------------ flops

def test_flops_dense_matches_count():
  # One Dense: 2 FLOPs per multiply-add plus one per bias add.
  b, d, c = 4, 40, 10
  assert models.flops(models.MLP(hidden=(), num_classes=c), (b, d)) == 2 * b * d * c + b * c


def test_flops_resnet20_close_to_textbook_macs():
  macs = 0  # Conv MACs of ResNet-20 on 32x32, from the layer plan.
  macs += 32 * 32 * 16 * 27 + 6 * 32 * 32 * 16 * 144
  macs += 16 * 16 * 32 * (144 + 5 * 288 + 16)
  macs += 8 * 8 * 64 * (288 + 5 * 576 + 32)
  got = models.flops(models.resnet20(), (1, 32, 32, 3))
  # XLA skips padding taps (a few % fewer) and adds BN/ReLU element-wise ops.
  assert 0.9 * 2 * macs < got < 1.02 * 2 * macs
