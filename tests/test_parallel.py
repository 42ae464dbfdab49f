"""Tests for kdjax.parallel.

The multi-device cases (8 simulated CPU devices, the peer-parallel 4×2 mesh and
the 2-process run) live in ``tests/multidevice`` and run here in a subprocess,
because the device count must be fixed before JAX starts.
"""

import os
import subprocess
import sys

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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_multidevice_suite_in_subprocess():
  env = dict(os.environ, KDJAX_MULTIDEVICE='1',
             XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'pytest', 'tests/multidevice', '-q', '-p', 'no:cacheprovider',
       '-p', 'no:xdist', '-p', 'no:randomly'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output
  assert ' passed' in output and 'skipped' not in output, output


def test_helpers_on_one_device():
  mesh = parallel.data_mesh()
  assert mesh.axis_names == ('data',) and mesh.devices.size == jax.device_count()
  two_d = parallel.peer_data_mesh(1)
  assert two_d.axis_names == ('peer', 'data') and two_d.devices.shape == (1, jax.device_count())

  batch = {'x': np.arange(12.0, dtype=np.float32).reshape(6, 2), 'label': np.arange(6)}
  sharded = parallel.shard_batch(batch, mesh)
  np.testing.assert_array_equal(sharded['x'], batch['x'])
  assert sharded['x'].sharding.spec == jax.sharding.PartitionSpec('data')
  rep = parallel.replicate({'w': jnp.arange(3.0)}, mesh)
  assert rep['w'].sharding.is_fully_replicated
  np.testing.assert_array_equal(rep['w'], [0.0, 1.0, 2.0])

  split = parallel.split_for_pmap(batch, 3)
  assert split['x'].shape == (3, 2, 2)
  np.testing.assert_array_equal(split['x'][1], batch['x'][2:4])
  tree = parallel.replicate_for_pmap({'w': jnp.arange(3.0)}, 1)
  assert tree['w'].shape == (1, 3)
  np.testing.assert_array_equal(parallel.unreplicate(tree)['w'], [0.0, 1.0, 2.0])
  with pytest.raises(ValueError, match='divisible'):
    parallel.split_for_pmap(batch, 4)
  with pytest.raises(ValueError, match='scalar'):
    parallel.shard_batch({'x': np.float32(1.0)}, mesh)
  assert parallel.process_batch_slice(10) == slice(0, 10)


def test_wrappers_on_one_device_equal_plain_jit():
  """The wrapped steps on a 1-device mesh reproduce the plain jitted step."""
  fwd = models.function_forward(lambda p, x: x @ p['w'])
  state = TrainState.create(apply_fn=fwd, variables={'params': {'w': jnp.ones((3, 2))}},
                            tx=optax.sgd(0.5))
  batch = {'x': np.eye(3, dtype=np.float32)[[0, 1, 2, 0]], 'label': np.array([0, 1, 1, 0])}
  ref, ref_metrics = jax.jit(steps.make_train_step())(state, None, batch, jax.random.key(0))
  mesh = parallel.data_mesh()
  for wrapped, s in [
      (parallel.sharded_step(steps.make_train_step(), mesh), parallel.replicate(state, mesh)),
      (parallel.shard_map_step(steps.make_train_step(axis_name='data'), mesh),
       parallel.replicate(state, mesh))]:
    new, metrics = wrapped(s, None, parallel.shard_batch(batch, mesh), jax.random.key(0))
    np.testing.assert_allclose(new.params['w'], ref.params['w'], rtol=1e-6)
    np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=1e-6)
  pmapped = parallel.pmap_step(steps.make_train_step(axis_name='data'))
  new, metrics = pmapped(parallel.replicate_for_pmap(state, 1), None,
                         parallel.split_for_pmap(batch, 1), jax.random.key(0))
  np.testing.assert_allclose(parallel.unreplicate(new).params['w'], ref.params['w'], rtol=1e-6)


def test_batch_argument_is_found_by_name():
  assert parallel._batch_argnum(co.make_cohort_step(), None) == (1, 3)
  assert parallel._batch_argnum(steps.make_train_step(), None) == (2, 4)
  with pytest.raises(ValueError, match='batch_argnum'):
    parallel.sharded_step(lambda state, data: None, parallel.data_mesh())
  with pytest.raises(ValueError, match='batch_argnum'):
    parallel.pmap_step(lambda state, data: None, batch_argnum=5)


def test_initialize_distributed_single_process_and_env_validation(monkeypatch):
  for name in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  info = parallel.initialize_distributed()
  assert info == parallel.DistributedInfo(0, 1, jax.local_device_count(), jax.device_count())
  assert parallel.initialize_distributed(num_processes=1).num_processes == 1
  monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, 'two')
  with pytest.raises(ValueError, match=parallel.ENV_NUM_PROCESSES):
    parallel.initialize_distributed()
  monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, '2')
  with pytest.raises(ValueError, match='coordinator_address'):
    parallel.initialize_distributed()
  with pytest.raises(ValueError, match='process_id'):
    parallel.initialize_distributed('127.0.0.1:1', process_id=2)
