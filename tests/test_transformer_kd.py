"""Transformer distillation: attention/hidden terms, progressive transfer, an NNX model.

The terms are checked against float64 NumPy references and by gradient
checks; bad shapes fail when the step is traced, naming the argument; short
training runs show that the terms move the student's attention and hidden
states towards the teacher's (compared with the same student trained on the
cross-entropy alone), and that progressive transfer trains one layer per
stage with the others frozen.
"""

import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import losses
from kdjax import models
from kdjax import schemes
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


def _np_attention_kl(s, t):
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    rows = np.where(t > 0, t * (np.log(t) - np.log(s)), 0.0).sum(-1)
  return rows.mean(axis=(-2, -1))


def _probs(key, shape, scale=2.0):
  return jax.nn.softmax(scale * jax.random.normal(key, shape), axis=-1)


def _apply_term(term, params, s, t):
  variables = {'params': params} if params else {}
  return term.loss(*term.module.apply(variables, s, t, None), **term.kwargs)


def test_attention_term_matches_numpy_reference():
  s = _probs(jax.random.key(0), (3, 2, 5, 5))
  t = _probs(jax.random.key(1), (3, 2, 5, 5)).at[0, 0, 0].set(jnp.eye(5)[2])  # exact zeros
  term = steps.attention_distribution('attention1', 'attention1')
  got = jax.jit(lambda s, t: _apply_term(term, None, s, t))(s, t)
  np.testing.assert_allclose(got, _np_attention_kl(s, t), rtol=1e-5, atol=1e-6)
  assert got.shape == (3,) and term.name == 'attention_kl/attention1'
  np.testing.assert_allclose(_apply_term(term, None, t, t), 0.0, atol=1e-6)


def test_hidden_term_matches_numpy_reference():
  s = jax.random.normal(jax.random.key(0), (3, 5, 4))
  t = jax.random.normal(jax.random.key(1), (3, 5, 6))
  term = steps.hidden_transfer('hidden1', 'hidden1')
  params = term.module.init(jax.random.key(2), s, t, None)['params']
  w = np.asarray(params['projection']['kernel'], np.float64)
  b = np.asarray(params['projection']['bias'], np.float64)
  assert w.shape == (4, 6)
  want = ((np.asarray(s, np.float64) @ w + b - np.asarray(t, np.float64)) ** 2).mean((-2, -1))
  got = jax.jit(lambda p, s, t: _apply_term(term, p, s, t))(params, s, t)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gradients():
  logits = jax.random.normal(jax.random.key(0), (2, 2, 4, 4))
  t = _probs(jax.random.key(1), (2, 2, 4, 4))
  att = steps.attention_distribution('a', 'a')
  jtu.check_grads(lambda z: jnp.sum(_apply_term(att, None, jax.nn.softmax(z), t)), (logits,),
                  order=1, modes=('rev',), atol=2e-2, rtol=2e-2)
  s = jax.random.normal(jax.random.key(2), (2, 3, 4))
  th = jax.random.normal(jax.random.key(3), (2, 3, 5))
  hid = steps.hidden_transfer('h', 'h')
  params = hid.module.init(jax.random.key(4), s, th, None)['params']
  jtu.check_grads(lambda p, s: jnp.sum(_apply_term(hid, p, s, th)), (params, s), order=1,
                  modes=('rev',), atol=2e-2, rtol=2e-2)
  # The attention gradient w.r.t. the student's logits is the softmax(z) - p of each row.
  g = jax.grad(lambda z: jnp.sum(_apply_term(att, None, jax.nn.softmax(z), t)))(logits)
  np.testing.assert_allclose(g, (jax.nn.softmax(logits) - t) / 8, atol=1e-6)


def _outputs(s_feats, t_feats):
  zeros = jnp.zeros((2, 10))
  return (models.ModelOutput(zeros, s_feats, {}), models.ModelOutput(zeros, t_feats, {}))


@pytest.mark.parametrize('term, s, t, match', [
    (steps.attention_distribution('a', 'a'), (2, 2, 5, 5), (2, 4, 5, 5), 'student_feature.*heads'),
    (steps.attention_distribution('a', 'a'), (2, 2, 5, 5), (2, 2, 6, 6), 'tokens'),
    (steps.attention_distribution('a', 'a'), (2, 5, 5), (2, 5, 5), 'student_feature'),
    (steps.hidden_transfer('a', 'a'), (2, 5, 4), (2, 6, 8), 'student_feature'),
    (steps.hidden_transfer('a', 'a'), (2, 4), (2, 5, 8), 'student_feature'),
])
def test_bad_inputs_fail_at_trace_time(term, s, t, match):
  s_out, t_out = _outputs({'a': jnp.ones(s) / s[-1]}, {'a': jnp.ones(t) / t[-1]})
  with pytest.raises(ValueError, match=match):
    steps.init_terms([term], s_out, jax.random.key(0), t_out)
  with pytest.raises(ValueError, match=match):  # inside a traced objective too
    objective = steps.make_objective([term], ['teacher'])
    jax.eval_shape(lambda: objective(s_out, {'teacher': t_out}, {term.name: {}},
                                     {'mask': jnp.ones(2, bool)}, 0))


def test_layer_terms_and_bad_layers():
  terms = steps.transformer_layer_terms(range(1, 3))
  assert [t.name for t in terms] == ['attention_kl/attention1', 'hidden_mse/hidden1',
                                     'attention_kl/attention2', 'hidden_mse/hidden2']
  with pytest.raises(ValueError, match='layers'):
    steps.transformer_layer_terms([])
  with pytest.raises(ValueError, match='layers'):
    steps.transformer_layer_terms([1, -1])


# ------------------------------------------------------------------ training

TEACHER = models.Transformer(width=16, depth=2, heads=2, patch=4)
STUDENT = models.Transformer(width=8, depth=2, heads=2, patch=4)
X = jax.random.normal(jax.random.key(10), (256, 16))
Y = jax.random.randint(jax.random.key(11), (256,), 0, 10)
X_HELD = jax.random.normal(jax.random.key(12), (128, 16))
_init_variables = jax.jit(models.init_variables, static_argnums=0)  # not op by op


def _sharp_teacher():
  """A random teacher with peaked attention (query/key kernels scaled up)."""
  variables = _init_variables(TEACHER, jax.random.key(1), X[:2])

  def sharpen(path, leaf):
    names = [getattr(k, 'key', '') for k in path]
    return 4.0 * leaf if ('query' in names or 'key' in names) and names[-1] == 'kernel' else leaf

  return jax.tree_util.tree_map_with_path(sharpen, variables)


def _batches(n, batch=32, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    idx = rng.integers(0, X.shape[0], batch)
    yield {'x': X[idx], 'label': Y[idx]}


def _forward_jit(forward, variables, x):
  """``forward``'s eval-mode output on ``x``, jitted (one compilation, not one per eager op)."""
  return jax.jit(lambda v: forward(v, x, train=False))(variables)


def _transfer_gap(forward, variables, t_vars, layers=(1, 2)):
  s = _forward_jit(forward, variables, X_HELD).features
  t = _forward_jit(models.linen_forward(TEACHER), t_vars, X_HELD).features
  return float(np.mean([np.mean(losses.attention_kl(s[f'attention{l}'], t[f'attention{l}']))
                        for l in layers]))


def _train(forward, variables, terms, t_vars, num_steps):
  s_out = _forward_jit(forward, variables, X[:4])
  t_out = _forward_jit(models.linen_forward(TEACHER), t_vars, X[:4])
  state = TrainState.create(apply_fn=forward, variables=variables, tx=optax.adam(1e-2),
                            **steps.init_terms(terms, s_out, jax.random.key(3), t_out))
  step = steps.make_distill_step(terms, models.linen_forward(TEACHER), teacher_metrics=False)
  fit = train.fit(state, step, _batches(num_steps), num_steps=num_steps, rng=jax.random.key(4),
                  teacher_variables=t_vars, progress=False, log_every=num_steps)
  return fit


@pytest.mark.long  # two 200-step runs (~35 s); the progressive test covers the terms too
def test_attention_and_hidden_transfer_train_the_student():
  t_vars = _sharp_teacher()
  s_vars = _init_variables(STUDENT, jax.random.key(2), X[:2])
  fwd = models.linen_forward(STUDENT)
  start = _transfer_gap(fwd, s_vars, t_vars)
  ce = _train(fwd, s_vars, (steps.task_ce(),), t_vars, 200)
  kd = _train(fwd, s_vars, (steps.task_ce(),) + steps.transformer_layer_terms([1, 2]),
              t_vars, 200)
  ce_gap = _transfer_gap(fwd, ce.state.variables, t_vars)
  kd_gap = _transfer_gap(fwd, kd.state.variables, t_vars)
  assert kd_gap < 0.5 * start and kd_gap < 0.5 * ce_gap, (start, ce_gap, kd_gap)


def test_freeze_except_zeroes_the_frozen_updates():
  tx = schemes.freeze_except(optax.adam(0.1), lambda p: p.startswith('params/block2/'))
  tree = {'params': {'block1': {'w': jnp.ones(3)}, 'block2': {'w': jnp.ones(3)}}, 'aux': {}}
  updates, _ = tx.update(tree, tx.init(tree), tree)
  np.testing.assert_array_equal(updates['params']['block1']['w'], 0.0)
  assert np.all(np.asarray(updates['params']['block2']['w']) < 0)


@pytest.mark.long  # three compiled stages (~15-30 s); freeze_except is tested above
def test_progressive_transfer_trains_one_layer_per_stage():
  t_vars = _sharp_teacher()
  s_vars = _init_variables(STUDENT, jax.random.key(2), X[:2])
  fwd = models.linen_forward(STUDENT)
  result = schemes.progressive_transfer(
      STUDENT, s_vars, TEACHER, t_vars, lambda i: _batches(100, seed=i), num_layers=2,
      stage_steps=100, final_steps=5, optimizer=lambda n: optax.adam(1e-2),
      rng=jax.random.key(5), sample_x=X[:4], log_every=100)
  assert result.stage_names == ['layer1', 'layer2', 'final']
  p0 = s_vars['params']
  p1, p2, p3 = (s.state.params for s in result.stages)

  def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  # Stage 1 trains block 1 and the embeddings only; stage 2 block 2 only; the final stage all.
  assert not same(p1['block1'], p0['block1']) and not same(p1['embed'], p0['embed'])
  assert same(p1['block2'], p0['block2']) and same(p1['classifier'], p0['classifier'])
  assert same(p2['block1'], p1['block1']) and same(p2['embed'], p1['embed'])
  assert not same(p2['block2'], p1['block2']) and same(p2['classifier'], p1['classifier'])
  assert all(not same(p3[k], p2[k]) for k in p3)
  assert _transfer_gap(fwd, {'params': p1}, t_vars, (1,)) < 0.5 * _transfer_gap(
      fwd, s_vars, t_vars, (1,))
  # Layer 2 learns on top of a frozen layer 1, so it closes less of its gap in 100 steps.
  assert _transfer_gap(fwd, {'params': p2}, t_vars, (2,)) < 0.8 * _transfer_gap(
      fwd, {'params': p1}, t_vars, (2,))
  with pytest.raises(ValueError, match='block'):
    schemes.progressive_transfer(STUDENT, s_vars, TEACHER, t_vars, None, num_layers=3,
                                 stage_steps=1, final_steps=1, optimizer=optax.adam,
                                 rng=jax.random.key(0), sample_x=X[:4])
  with pytest.raises(ValueError, match='num_layers'):
    schemes.progressive_transfer(STUDENT, s_vars, TEACHER, t_vars, None, num_layers=0,
                                 stage_steps=1, final_steps=1, optimizer=optax.adam,
                                 rng=jax.random.key(0), sample_x=X[:4])


# ------------------------------------------------------------------ a user's NNX transformer

def test_nnx_transformer_student_through_the_adapter():
  from flax import nnx

  class Block(nnx.Module):
    def __init__(self, width, heads, rngs):
      self.ln = nnx.LayerNorm(width, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
      self.mlp = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x):
      x = x + self.attn(self.ln(x), sow_weights=True)   # sows attention_weights
      return x + nnx.gelu(self.mlp(x))

  class NNXTransformer(nnx.Module):
    def __init__(self, width, heads, depth, rngs):
      self.embed = nnx.Linear(4, width, rngs=rngs)
      self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (4, width)))
      self.blocks = nnx.List([Block(width, heads, rngs) for _ in range(depth)])
      self.head = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
      h = self.embed(x.reshape(x.shape[0], -1, 4)) + self.pos[...]
      features = {}
      for i, block in enumerate(self.blocks, start=1):
        h = block(h)
        features[f'hidden{i}'] = h
      for i, path_state in enumerate(nnx.pop(self, nnx.Intermediate)['blocks'].values(), 1):
        features[f'attention{i}'] = path_state['attn']['attention_weights'][0]
      return self.head(h.mean(axis=1)), features

  model = NNXTransformer(8, 2, 2, nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  fwd = models.nnx_forward(graphdef)
  variables = {'params': params}
  out = _forward_jit(fwd, variables, X[:3])
  assert out.features['attention2'].shape == (3, 2, 4, 4)
  np.testing.assert_allclose(out.features['attention1'].sum(-1), 1.0, atol=1e-5)
  t_vars = _sharp_teacher()
  start = _transfer_gap(fwd, variables, t_vars)
  kd = _train(fwd, variables, (steps.task_ce(),) + steps.transformer_layer_terms([1, 2]),
              t_vars, 150)
  assert _transfer_gap(fwd, kd.state.variables, t_vars) < 0.5 * start
