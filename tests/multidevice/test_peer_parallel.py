"""Peer-parallel cohorts on a 4×2 ('peer', 'data') mesh equal the single-device cohort."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import cohort as co
from kdjax import models
from kdjax import parallel


B, D, H, C = 8, 6, 8, 5
TOL = dict(rtol=1e-5, atol=1e-6)
MODEL = models.create('mlp', hidden=(H,), num_classes=C)
TX = optax.adam(0.05)


@functools.lru_cache(maxsize=1)
def _cohort8():
  return co.init_cohort(MODEL, TX, jax.random.split(jax.random.key(8), 8), jnp.zeros((1, D)))


def _cohort(k):
  """The first ``k`` of 8 peers (one initialisation shared by the tests)."""
  c = _cohort8()
  return c.replace(peers=jax.tree.map(lambda a: a[:k], c.peers))


def _batches(num=2):
  rng = np.random.default_rng(1)
  mask = np.ones(B, bool)
  mask[[0, 1, 2, 6]] = False  # data shards hold 1 and 3 valid rows
  return [{'x': rng.normal(size=(B, D)).astype(np.float32),
           'label': rng.integers(0, C, size=B).astype(np.int32), 'mask': mask}
          for _ in range(num)]


def _run(step, cohort, batches):
  history = []
  for batch in batches:
    cohort, metrics = step(cohort, batch, jax.random.key(7))
    history.append(metrics)
  return cohort, history


@pytest.mark.parametrize('num_peers', [8, 4])
def test_peer_parallel_equals_single_device(num_peers):
  chex.clear_trace_counter()  # the parametrized cases share one call site
  ref, ref_history = _run(jax.jit(co.make_cohort_step(temperature=2.0)), _cohort(num_peers),
                          _batches())

  mesh = parallel.peer_data_mesh(4)
  assert dict(mesh.shape) == {'peer': 4, 'data': 2}
  step = parallel.shard_map_step(
      chex.assert_max_traces(
          co.make_cohort_step(temperature=2.0, axis_name='data', peer_axis_name='peer'), n=1),
      mesh, peer_axis='peer')
  cohort = parallel.shard_cohort(_cohort(num_peers), mesh)
  # Each device holds K/4 peers.
  shard = cohort.peers.params['classifier']['kernel'].addressable_shards[0]
  assert shard.data.shape[0] == num_peers // 4
  batches = [parallel.shard_batch(b, mesh) for b in _batches()]
  got, history = _run(step, cohort, batches)

  assert got.peers.params['classifier']['kernel'].sharding.spec == jax.sharding.PartitionSpec(
      'peer')
  chex.assert_trees_all_close(jax.device_get(got.peers.params), jax.device_get(ref.peers.params),
                              **TOL)
  chex.assert_trees_all_close(jax.device_get(got.peers.opt_state),
                              jax.device_get(ref.peers.opt_state), **TOL)
  np.testing.assert_array_equal(got.peers.step, ref.peers.step)
  assert int(got.step) == int(ref.step) == 2
  for g, w in zip(history, ref_history):
    assert sorted(g) == sorted(w) and f'accuracy/{num_peers - 1}' in g
    for key in w:
      np.testing.assert_allclose(np.asarray(g[key]), np.asarray(w[key]), err_msg=key, **TOL)


def test_peer_parallel_eval_equals_single_device():
  cohort = _cohort(8)
  batch = _batches(1)[0]
  ref = co.make_cohort_eval_step()(cohort, batch)
  mesh = parallel.peer_data_mesh(4)
  eval_step = parallel.shard_map_step(
      co.make_cohort_eval_step(axis_name='data', peer_axis_name='peer'), mesh, peer_axis='peer',
      returns_state=False)
  got = eval_step(parallel.shard_cohort(cohort, mesh), parallel.shard_batch(batch, mesh))
  assert sorted(got) == sorted(ref)
  chex.assert_trees_all_close(jax.device_get(got), jax.device_get(ref), **TOL)
  assert float(got['count']) == batch['mask'].sum()


def test_shard_cohort_validates():
  mesh = parallel.peer_data_mesh(4)
  with pytest.raises(ValueError, match='peers'):
    parallel.shard_cohort(_cohort(6), mesh)
  c = _cohort(2)
  with pytest.raises(ValueError, match='stacked'):
    parallel.shard_cohort(co.CohortState.create([c.peer(0), c.peer(1)]), mesh)
  with pytest.raises(ValueError, match='num_peer_shards'):
    parallel.peer_data_mesh(3)
