"""``fit``'s compiled chunks on 8 devices (jit + mesh on both data paths, pmap) equal 1 device."""

import chex
import jax
import numpy as np

from kdjax import data as kdata
from kdjax import parallel
from kdjax.train import fit
from tests.multidevice.test_data_parallel import _distill
from tests.multidevice.test_data_parallel import _setup
from tests.multidevice.test_data_parallel import C
from tests.multidevice.test_data_parallel import D
from tests.multidevice.test_data_parallel import TOL


NUM_STEPS, BATCH = 10, 16
KW = dict(num_steps=NUM_STEPS, rng=jax.random.key(1), progress=False, log_every=4)


def _source(n=72):
  rng = np.random.default_rng(0)
  return [{'x': rng.normal(size=D).astype(np.float32), 'label': np.int32(rng.integers(C)),
           'id': np.int32(i)} for i in range(n)]


def _host(src):
  return iter(kdata.make_pipeline(src, batch_size=BATCH, seed=0, drop_remainder=False))


def _resident(src):
  return kdata.DeviceData(src, batch_size=BATCH, seed=0, drop_remainder=False)


def _reference():
  state, _, tvars = _setup()
  return fit(state, jax.jit(_distill()), _resident(_source()), teacher_variables=tvars, **KW)


def _compare(result, reference, state=None):
  assert result.chunks == reference.chunks == 3  # chunks end at steps 4, 8, 10
  state = result.state if state is None else state
  chex.assert_trees_all_close(jax.device_get(state.params),
                              jax.device_get(reference.state.params), **TOL)
  for got, ref in zip(result.history, reference.history):
    assert got['step'] == ref['step']
    np.testing.assert_allclose(got['loss'], ref['loss'], rtol=1e-5)


def test_fit_on_a_mesh_equals_one_device_on_both_data_paths():
  reference = _reference()
  mesh = parallel.data_mesh()
  for data in (_resident(_source()), _host(_source())):
    state, _, tvars = _setup()
    result = fit(state, jax.jit(_distill()), data, teacher_variables=tvars, mesh=mesh, **KW)
    assert result.state.params['w1'].sharding.is_fully_replicated
    assert len(result.state.params['w1'].sharding.device_set) == jax.device_count()
    _compare(result, reference)


def test_fit_with_a_pmapped_step_equals_one_device():
  reference = _reference()
  state, _, tvars = _setup()
  batches = map(parallel.split_for_pmap, _host(_source()))
  result = fit(parallel.replicate_for_pmap(state), parallel.pmap_step(_distill('data')), batches,
               teacher_variables=tvars, **KW)
  assert result.state.params['w1'].shape[0] == jax.device_count()
  _compare(result, reference, parallel.unreplicate(result.state))
