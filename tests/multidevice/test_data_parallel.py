"""One step on 8 devices (pmap, jit + NamedSharding, shard_map) equals one step on 1 device.

The global batch is the same in every case; its padding mask leaves the
devices with unequal numbers of valid rows (one device has none), so only
exact means (psum of sums and of counts) agree with the single-device step.
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
from kdjax import parallel
from kdjax import steps
from kdjax.state import TrainState


N = 8
B, D, H, C = 16, 6, 8, 4
TOL = dict(rtol=1e-5, atol=1e-6)


def test_eight_devices():
  assert jax.device_count() == N and jax.local_device_count() == N


def _student_fn(p, x):
  h = jnp.tanh(x @ p['w1'] + p['b1'])
  return h @ p['w2'] + p['b2'], {'embedding': h}


def _teacher_fn(p, x):
  return 2.0 * x @ p['w'], {'embedding': jnp.sin(x @ p['v'])}


def _setup():
  k = jax.random.split(jax.random.key(0), 6)
  student = {'params': {'w1': jax.random.normal(k[0], (D, H)), 'b1': jnp.zeros(H),
                        'w2': jax.random.normal(k[1], (H, C)), 'b2': jnp.zeros(C)}}
  teacher = {'params': {'w': jax.random.normal(k[2], (D, C)), 'v': jax.random.normal(k[3], (D, H))}}
  state = TrainState.create(apply_fn=models.function_forward(_student_fn), variables=student,
                            tx=optax.adam(0.05))
  return state, models.function_forward(_teacher_fn), teacher


def _batches(num=2):
  rng = np.random.default_rng(0)
  mask = np.ones(B, bool)
  mask[:2] = False  # device 0 holds no valid row
  mask[5] = False
  return [{'x': rng.normal(size=(B, D)).astype(np.float32),
           'label': rng.integers(0, C, size=B).astype(np.int32), 'mask': mask}
          for _ in range(num)]


TERMS = (steps.task_ce(0.3), steps.soft_kd(0.7, temperature=2.0))


def _distill(axis_name=None):
  _, teacher, _ = _setup()
  return steps.make_distill_step(TERMS, teacher, axis_name=axis_name)


def _run(step, state, teacher_vars, batches, rng=jax.random.key(1)):
  history = []
  for batch in batches:
    state, metrics = step(state, teacher_vars, batch, rng)
    history.append(metrics)
  return state, history


def _compare(state, history, ref_state, ref_history):
  chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(ref_state.params),
                              **TOL)
  chex.assert_trees_all_close(jax.device_get(state.opt_state),
                              jax.device_get(ref_state.opt_state), **TOL)
  assert int(state.step) == int(ref_state.step)
  for got, want in zip(history, ref_history):
    assert sorted(got) == sorted(want)
    for key in want:
      np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), err_msg=key, **TOL)


@pytest.fixture(scope='module')
def distill_reference():
  state, _, tvars = _setup()
  return _run(jax.jit(_distill()), state, tvars, _batches())


def test_distill_pmap_equals_single_device(distill_reference):
  state, _, tvars = _setup()
  step = parallel.pmap_step(chex.assert_max_traces(_distill('data'), n=1))
  rstate = parallel.replicate_for_pmap(state)
  history = []
  for batch in _batches():
    rstate, metrics = step(rstate, tvars, parallel.split_for_pmap(batch), jax.random.key(1))
    history.append(parallel.unreplicate(metrics))
  # Every device holds the same state after the step.
  np.testing.assert_array_equal(rstate.params['w1'][0], rstate.params['w1'][N - 1])
  _compare(parallel.unreplicate(rstate), history, *distill_reference)


def test_distill_jit_named_sharding_equals_single_device(distill_reference):
  state, _, tvars = _setup()
  mesh = parallel.data_mesh()
  step = parallel.sharded_step(chex.assert_max_traces(_distill(), n=1), mesh)
  batches = [parallel.shard_batch(b, mesh) for b in _batches()]
  assert len(batches[0]['x'].sharding.device_set) == N
  got = _run(step, parallel.replicate(state, mesh), parallel.replicate(tvars, mesh), batches,
             parallel.replicate(jax.random.key(1), mesh))
  assert got[0].params['w1'].sharding.is_fully_replicated
  _compare(*got, *distill_reference)


def test_distill_shard_map_equals_single_device(distill_reference):
  state, _, tvars = _setup()
  mesh = parallel.data_mesh()
  step = parallel.shard_map_step(chex.assert_max_traces(_distill('data'), n=1), mesh)
  batches = [parallel.shard_batch(b, mesh) for b in _batches()]
  got = _run(step, parallel.replicate(state, mesh), parallel.replicate(tvars, mesh), batches)
  _compare(*got, *distill_reference)


def test_eval_step_shard_map_equals_single_device():
  state, _, _ = _setup()
  batch = _batches(1)[0]
  ref = steps.make_eval_step(state.apply_fn)(state.variables, batch)
  mesh = parallel.data_mesh()
  eval_step = parallel.shard_map_step(steps.make_eval_step(state.apply_fn, axis_name='data'),
                                      mesh, returns_state=False)
  got = eval_step(parallel.replicate(state.variables, mesh), parallel.shard_batch(batch, mesh))
  chex.assert_trees_all_close(jax.device_get(got), jax.device_get(ref), **TOL)
  assert float(got['count']) == batch['mask'].sum()


# ---------------------------------------------------------------- cohort, data-parallel

def _cohort():
  model = models.create('mlp', hidden=(H,), num_classes=C)
  return co.init_cohort(model, optax.adam(0.05), jax.random.split(jax.random.key(2), 3),
                        jnp.zeros((1, D)))


def _run_cohort(step, cohort, batches, rng=jax.random.key(3)):
  history = []
  for batch in batches:
    cohort, metrics = step(cohort, batch, rng)
    history.append(metrics)
  return cohort, history


def _compare_cohort(cohort, history, ref, ref_history):
  chex.assert_trees_all_close(jax.device_get(cohort.peers.params),
                              jax.device_get(ref.peers.params), **TOL)
  chex.assert_trees_all_close(jax.device_get(cohort.peers.opt_state),
                              jax.device_get(ref.peers.opt_state), **TOL)
  assert int(cohort.step) == int(ref.step)
  for got, want in zip(history, ref_history):
    assert sorted(got) == sorted(want)
    for key in want:
      np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), err_msg=key, **TOL)


@pytest.fixture(scope='module')
def cohort_reference():
  return _run_cohort(jax.jit(co.make_cohort_step(temperature=2.0)), _cohort(), _batches())


def test_cohort_pmap_equals_single_device(cohort_reference):
  step = parallel.pmap_step(
      chex.assert_max_traces(co.make_cohort_step(temperature=2.0, axis_name='data'), n=1))
  rc = parallel.replicate_for_pmap(_cohort())
  history = []
  for batch in _batches():
    rc, metrics = step(rc, parallel.split_for_pmap(batch), jax.random.key(3))
    history.append(parallel.unreplicate(metrics))
  _compare_cohort(parallel.unreplicate(rc), history, *cohort_reference)


def test_cohort_jit_named_sharding_equals_single_device(cohort_reference):
  mesh = parallel.data_mesh()
  step = parallel.sharded_step(chex.assert_max_traces(co.make_cohort_step(temperature=2.0), n=1),
                               mesh)
  batches = [parallel.shard_batch(b, mesh) for b in _batches()]
  _compare_cohort(*_run_cohort(step, parallel.replicate(_cohort(), mesh), batches),
                  *cohort_reference)


def test_cohort_shard_map_equals_single_device(cohort_reference):
  mesh = parallel.data_mesh()
  step = parallel.shard_map_step(
      chex.assert_max_traces(co.make_cohort_step(temperature=2.0, axis_name='data'), n=1), mesh)
  batches = [parallel.shard_batch(b, mesh) for b in _batches()]
  _compare_cohort(*_run_cohort(step, parallel.replicate(_cohort(), mesh), batches),
                  *cohort_reference)


class _BatchNormNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Dense(H)(x))
    return nn.Dense(C)(jnp.tanh(h))


def test_pmap_averages_batchnorm_statistics_over_devices():
  model = _BatchNormNet()
  batch = {k: v for k, v in _batches(1)[0].items() if k != 'mask'}
  variables = models.init_variables(model, jax.random.key(4), batch['x'][:1])
  state = TrainState.create(apply_fn=model, variables=variables, tx=optax.sgd(0.1))
  step = parallel.pmap_step(chex.assert_max_traces(steps.make_train_step(axis_name='data'), n=1))
  rstate, _ = step(parallel.replicate_for_pmap(state), None, parallel.split_for_pmap(batch),
                   jax.random.key(5))
  stats = jax.device_get(rstate.model_state['batch_stats'])
  for leaf in jax.tree.leaves(stats):  # replicas stay identical
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))
  # The running statistics are linear in the batch statistics, so their mean over
  # devices equals the mean of single-device steps on each shard.
  single = jax.jit(steps.make_train_step())
  shards = [{k: v.reshape(N, -1, *v.shape[1:])[i] for k, v in batch.items()}
            for i in range(N)]
  per_shard = [single(state, None, s, jax.random.key(5))[0].model_state['batch_stats']
               for s in shards]
  expected = jax.tree.map(lambda *xs: np.mean(np.stack(xs), 0), *per_shard)
  chex.assert_trees_all_close(parallel.unreplicate(stats), expected, **TOL)


def test_shard_batch_rejects_uneven_batches():
  with pytest.raises(ValueError, match='divisible'):
    parallel.shard_batch({'x': np.zeros((B + 1, D))}, parallel.data_mesh())
  with pytest.raises(ValueError, match='divisible'):
    parallel.split_for_pmap({'x': np.zeros((B + 1, D))})
