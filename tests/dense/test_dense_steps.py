"""Tests for the dense train steps: detection and segmentation, supervised and distilled.

Tiny models (the widths arguments) on real digit canvases. Compilation is the
cost here, so each step is compiled once per module: a term is switched on
by a schedule that reads ``state.step`` (``on(k)`` is 1 at step ``k`` and
from step ``ALL`` on), and tests pick the term by setting the step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import checkpoint
from kdjax import data as kd
from kdjax import dense
from kdjax import models
from kdjax import train
from kdjax.state import TrainState
from tests.batches import CyclingBatches


CONFIG = kd.dense_digits_config(24, 8, image_size=24, min_size=6, max_size=12)  # small canvases
ALL = 10  # from this step on every scheduled term is on
CPU = jax.devices()[0]
KEY = jax.random.key(0, impl='unsafe_rbg')  # cheaper initialiser compilation on CPU


def on(k):
  return lambda step: ((step == k) | (step >= ALL)).astype(jnp.float32)


def at_step(state, k):
  """``state`` with its (the student's) step counter set to ``k``."""
  if isinstance(state, dense.AdversarialState):
    return state.replace(student=at_step(state.student, k))
  return state.replace(step=jnp.asarray(k, jnp.int32))


def same_computation(supervised, distill, teacher_variables, state, batch, rng):
  """Whether two steps trace to the same program, so their results are equal bit for bit.

  The teacher's variables are closed over: if the step does not use them they
  do not appear in the program.
  """
  a = jax.make_jaxpr(lambda *args: supervised(args[0], None, *args[1:]))(state, batch, rng)
  b = jax.make_jaxpr(lambda *args: distill(args[0], teacher_variables, *args[1:]))(
      state, batch, rng)
  return str(a) == str(b)


def init(model, key, x):
  return jax.jit(models.init_variables, static_argnums=0)(model, key, x)


def tree_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_diff(a, b):
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs)


@pytest.fixture(scope='module')
def canvases():
  d = kd.generate_digit_canvases(24, 'train', CONFIG)
  return {'x': d['image'], 'boxes': d['boxes'], 'labels': d['labels'].astype(np.int32),
          'segmentation': d['segmentation']}


def batches(canvases, keys, size=6):
  n = len(canvases['x']) // size
  return [{'mask': jnp.ones(size, bool),
           **{k: jnp.asarray(canvases[k][i * size:(i + 1) * size]) for k in keys}}
          for i in range(n)]


# ------------------------------------------------------------------ detection

@pytest.fixture(scope='module')
def det(canvases):
  student = models.DenseDetector(num_classes=10, widths=(4, 8, 8), head_width=8, head_depth=1)
  teacher = models.DenseDetector(num_classes=10, widths=(4, 8, 16), head_width=8, head_depth=1)
  data = batches(canvases, ('x', 'boxes', 'labels'))
  x = data[0]['x']
  s_vars, t_vars = init(student, KEY, x), init(teacher, jax.random.fold_in(KEY, 1), x)
  run = jax.jit(models.linen_forward(student), static_argnames='train')
  t_run = jax.jit(models.linen_forward(teacher), static_argnames='train')
  aux = dense.init_hint_adapter(run(s_vars, x, train=False), t_run(t_vars, x, train=False),
                                jax.random.key(2))
  # One forward function and optimizer: they are static parts of the state, so new ones
  # would compile the step again.
  forward, tx = models.linen_forward(student), optax.adam(3e-3)
  make = lambda aux_params: TrainState.create(  # noqa: E731
      apply_fn=forward, variables=s_vars, tx=tx, aux_params=aux_params)
  # margin 1e3: every positive stays above the teacher's bound, so the term is active.
  scheduled = jax.jit(dense.make_detection_distill_step(
      teacher, stride=4, hint_weight=on(1), soft_weight=on(2), bounded_weight=on(3),
      ld_weight=on(4), margin=1e3))
  return dict(student=student, teacher=teacher, data=data, t_vars=t_vars, make=make, aux=aux,
              scheduled=scheduled)


def test_detection_terms_reach_the_student_and_the_adapter(det):
  state, batch, rng = det['make'](det['aux']), det['data'][0], jax.random.key(3)
  base, m0 = det['scheduled'](at_step(state, 0), det['t_vars'], batch, rng)
  assert int(m0['skipped']) == 0 and float(m0['positives']) > 2
  assert int(m0['invalid_labels']) == 0
  assert tree_equal(base.aux_params, state.aux_params)  # no hint: the adapter stays put
  for k, name in enumerate(('hint', 'soft', 'bounded', 'ld'), start=1):
    new, metrics = det['scheduled'](at_step(state, k), det['t_vars'], batch, rng)
    assert float(metrics[f'loss/{name}']) > 0, name
    assert float(metrics['loss']) > float(m0['loss']), name
    assert tree_diff(new.params, base.params) > 1e-6, name  # the term moved the student
    moved = tree_diff(new.aux_params, state.aux_params)
    assert (moved > 0) == (name == 'hint'), name  # only the hint trains the adapter
  # The adapter's gradient is the hint's alone.
  with pytest.raises(ValueError, match="aux_params\\['hint'\\]"):
    det['scheduled'](det['make'](None), det['t_vars'], batch, rng)


def test_detection_zero_weights_are_the_supervised_step(det):
  state, batch, rng = det['make'](None), det['data'][0], jax.random.key(3)
  zero = dense.make_detection_distill_step(det['teacher'], stride=4, hint_weight=0.0,
                                           soft_weight=0, bounded_weight=0.0, ld_weight=0.0)
  supervised = dense.make_detection_step(stride=4)
  # The same program (the teacher is not even run), hence the same update bit for bit.
  assert same_computation(supervised, zero, det['t_vars'], state, batch, rng)
  _, metrics = jax.eval_shape(zero, state, det['t_vars'], batch, rng)
  assert sorted(k for k in metrics if k.startswith('loss/')) == ['loss/box', 'loss/cls']
  with pytest.raises(ValueError, match='need a `teacher`'):
    dense.make_detection_distill_step(None, stride=4, ld_weight=1.0)
  with pytest.raises(ValueError, match='ld_region'):
    dense.make_detection_distill_step(det['teacher'], stride=4, ld_region='all')
  with pytest.raises(ValueError, match='>= 0'):
    dense.make_detection_distill_step(det['teacher'], stride=4, soft_weight=-1.0)


def test_detection_steps_reduce_the_loss_and_mask_padding(det):
  state = at_step(det['make'](det['aux']), ALL)  # every term on
  data, losses = det['data'], []
  for i in range(24):
    state, metrics = det['scheduled'](state, det['t_vars'], data[i % len(data)],
                                      jax.random.key(4))
    losses.append({k: float(v) for k, v in metrics.items()})
  first, last = losses[0], np.mean([m['loss'] for m in losses[-3:]])
  assert last < 0.7 * first['loss'], (first, losses[-1])
  for name in ('loss/cls', 'loss/box'):  # (the teacher is untrained: not the KD terms)
    assert losses[-1][name] < first[name], name
  # The targets of padded rows (mask False) do not enter the update, whatever they hold,
  # and bad labels there are not counted. (Their images do enter BatchNorm's batch
  # statistics, as in every kdjax step, so the padding repeats real images here.)
  batch = dict(data[0], mask=jnp.arange(6) < 4)
  junk = dict(batch, labels=batch['labels'].at[4:, 0].set(99),
              boxes=batch['boxes'].at[4:].set(jnp.array([0.0, 0.0, 1.0, 1.0])))
  step, s0, t_vars = det['scheduled'], det['make'](det['aux']), det['t_vars']
  a, ma = step(s0, t_vars, batch, jax.random.key(5))  # at step 0: the task losses only
  b, mb = step(s0, t_vars, junk, jax.random.key(5))
  assert int(mb['invalid_labels']) == 0 and float(ma['loss']) == float(mb['loss'])
  assert tree_equal(a, b)
  # A real row with a label out of range is left out and counted.
  _, mc = step(s0, t_vars, dict(junk, mask=jnp.ones(6, bool)), jax.random.key(5))
  assert int(mc['invalid_labels']) == 2 and int(mc['invalid_label']) == 99


# --------------------------------------------------------------- segmentation

@pytest.fixture(scope='module')
def seg(canvases):
  student = models.UNet(num_classes=11, widths=(4, 8))
  teacher = models.UNet(num_classes=11, widths=(4, 16))
  critic = dense.HolisticCritic(widths=(4, 8))
  data = batches(canvases, ('x', 'segmentation'))
  x = data[0]['x']
  s_vars, t_vars = init(student, KEY, x), init(teacher, jax.random.fold_in(KEY, 1), x)
  c_vars = jax.jit(critic.init)(jax.random.fold_in(KEY, 2),
                                dense.critic_input(jnp.zeros(x.shape[:3] + (11,)), x))

  # One forward function and optimizer per player (static parts of the state).
  forward, tx = models.linen_forward(student), optax.adam(1e-2)
  critic_forward, critic_tx = models.linen_forward(critic), optax.adam(1e-3, b1=0.5, b2=0.9)

  def make(adversarial=True):
    s = TrainState.create(apply_fn=forward, variables=s_vars, tx=tx)
    if not adversarial:
      return s
    c = TrainState.create(apply_fn=critic_forward, variables=c_vars, tx=critic_tx)
    return dense.AdversarialState(student=s, critic=c)

  raw = dense.make_segmentation_distill_step(
      teacher, pixel_weight=on(1), pair_weight=on(2), holistic_weight=on(3), pair_pool_size=2)
  # Jitted as kdjax.train.fit jits it (state donated), with the state and teacher committed
  # to the device like a state restored from a checkpoint, so that fit (also when it
  # resumes) reuses the compilation.
  jitted = jax.jit(raw, donate_argnums=(0,))

  def scheduled(state, *args):
    return jitted(jax.tree.map(jnp.copy, jax.device_put(state, CPU)), *args)

  return dict(teacher=teacher, data=data, t_vars=jax.device_put(t_vars, CPU), make=make, raw=raw,
              scheduled=scheduled)


def test_segmentation_terms_reach_the_student_and_both_players_update(seg):
  state, batch, rng = seg['make'](), seg['data'][0], jax.random.key(3)
  base, m0 = seg['scheduled'](at_step(state, 0), seg['t_vars'], batch, rng)
  assert int(base.student.step) == int(base.critic.step) == 1
  assert tree_diff(base.critic.params, state.critic.params) > 0  # the critic trained
  assert tree_diff(base.student.params, state.student.params) > 0
  assert {'critic/loss', 'critic/loss/wasserstein', 'critic/loss/gp', 'critic/skipped',
          'accuracy'} <= set(m0)
  assert 0.0 <= float(m0['accuracy']) <= 1.0 and int(m0['skipped']) == 0
  for k, name in enumerate(('pixel', 'pair', 'holistic'), start=1):
    new, metrics = seg['scheduled'](at_step(state, k), seg['t_vars'], batch, rng)
    assert np.isfinite(float(metrics[f'loss/{name}'])), name
    assert tree_diff(new.student.params, base.student.params) > 1e-7, name
    # The critic's update (first, at the critic's own step) does not depend on the terms.
    assert tree_equal(new.critic, base.critic), name
  with pytest.raises(ValueError, match='AdversarialState'):
    jax.eval_shape(seg['raw'], seg['make'](adversarial=False), seg['t_vars'], batch, rng)


def test_segmentation_zero_weights_are_the_supervised_step(seg):
  state, batch, rng = seg['make'](adversarial=False), seg['data'][0], jax.random.key(3)
  zero = dense.make_segmentation_distill_step(
      seg['teacher'], pixel_weight=0.0, pair_weight=0.0, holistic_weight=0.0)
  supervised = dense.make_segmentation_step()
  assert same_computation(supervised, zero, seg['t_vars'], state, batch, rng)
  # With an AdversarialState and no holistic term the critic is left as it is.
  two = seg['make']()
  pair = lambda s, *a: zero(dense.AdversarialState(s, two.critic), *a)  # noqa: E731
  student_only = lambda *a: (lambda r: (r[0].student, r[1]))(pair(*a))  # noqa: E731
  assert same_computation(supervised, student_only, seg['t_vars'], two.student, batch, rng)
  new_critic = jax.eval_shape(pair, two.student, seg['t_vars'], batch, rng)[0].critic
  assert jax.tree.structure(new_critic) == jax.tree.structure(two.critic)
  with pytest.raises(ValueError, match='need a `teacher`'):
    dense.make_segmentation_distill_step(None, holistic_weight=1.0)
  with pytest.raises(ValueError, match='critic_steps'):
    dense.make_segmentation_distill_step(seg['teacher'], critic_steps=0)


def test_two_player_step_trains_with_fit_and_resumes_bitwise(seg, tmp_path):
  def run(num_steps, directory=None):
    ckpt = None if directory is None else checkpoint.Checkpointer(directory)
    state = jax.device_put(at_step(seg['make'](), ALL), CPU)  # every term on
    # fit counts its own iterations (0 .. num_steps); the state's counter starts at ALL.
    result = train.fit(state, seg['raw'], CyclingBatches(seg['data']), num_steps=num_steps,
                       rng=jax.random.key(7), teacher_variables=seg['t_vars'],
                       checkpointer=ckpt, checkpoint_every=8, log_every=4,
                       progress=False, compiled=False)
    if ckpt is not None:
      ckpt.close()
    return result

  straight = run(16)
  history = straight.history
  assert all(h['skipped'] == 0 for h in history)
  # A few dozen steps reduce the task loss (the teacher is untrained: not the KD terms).
  assert history[-1]['loss/ce'] < 0.85 * history[0]['loss/ce'], (history[0], history[-1])
  assert history[-1]['accuracy'] > history[0]['accuracy'] + 0.2
  state = straight.state
  assert isinstance(state, dense.AdversarialState)
  assert int(state.student.step) == ALL + 16 and int(state.critic.step) == 16
  assert tree_diff(state.critic.params, seg['make']().critic.params) > 0
  # Stop after 8 steps (a checkpoint), start again: the same final state, bit for bit.
  first = run(8, directory=tmp_path / 'run')
  assert first.resumed_from is None and int(first.state.critic.step) == 8
  resumed = run(16, directory=tmp_path / 'run')
  assert resumed.resumed_from == 8
  assert tree_equal(resumed.state, straight.state)
  # The checkpoint holds both players, with their optimizer states.
  restored, _ = checkpoint.Checkpointer(tmp_path / 'run').restore(seg['make']())
  assert int(restored.critic.step) == 16
  assert tree_equal(restored.critic.opt_state, resumed.state.critic.opt_state)
