"""Two processes on loopback (jax.distributed + gloo) agree with one process.

Each process runs ``multihost_worker.py`` (the same script, as on several
hosts): a data-parallel distillation step over 2 global devices, with
``jax.jit`` + ``NamedSharding`` and with ``jax.shard_map``.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from kdjax import steps
from tests.multidevice import multihost_worker as worker


HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 120


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _reference():
  state, teacher, tvars, batches = worker.setup()
  step = jax.jit(steps.make_distill_step(worker.terms(), teacher))
  for batch in batches:
    state, metrics = step(state, tvars, batch, jax.random.key(1))
  return state, metrics


def test_two_processes_match_single_process(tmp_path):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'KDJAX_MULTIDEVICE')}
  env.update(JAX_PLATFORMS='cpu', KDJAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
             KDJAX_NUM_PROCESSES='2')
  root = os.path.dirname(os.path.dirname(HERE))
  env['PYTHONPATH'] = os.pathsep.join([root, env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
  procs, outs = [], []
  for i in range(2):
    out = tmp_path / f'process{i}.npz'
    outs.append(out)
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(HERE, 'multihost_worker.py'), str(out)],
        env={**env, 'KDJAX_PROCESS_ID': str(i)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=TIMEOUT)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, p in enumerate(procs):
    assert p.returncode == 0, f'process {i} failed:\n{logs[i]}'

  ref_state, ref_metrics = _reference()
  for i, out in enumerate(outs):
    got = np.load(out)
    assert int(got['process_id']) == i
    np.testing.assert_array_equal(got['rows'], [4 * i, 4 * i + 4])
    for variant in ('jit', 'shard_map'):
      for key, value in ref_state.params.items():
        np.testing.assert_allclose(got[f'{variant}/params/{key}'], value, rtol=1e-5, atol=1e-6,
                                   err_msg=f'process {i} {variant} {key}')
      for key, value in ref_metrics.items():
        np.testing.assert_allclose(got[f'{variant}/metrics/{key}'], value, rtol=1e-5, atol=1e-6,
                                   err_msg=f'process {i} {variant} {key}')
