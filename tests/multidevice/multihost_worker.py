"""One process of the 2-process data-parallel distillation test (see test_multihost.py).

Run as ``python multihost_worker.py OUT.npz`` with ``KDJAX_COORDINATOR_ADDRESS``,
``KDJAX_NUM_PROCESSES`` and ``KDJAX_PROCESS_ID`` set: the script is the same
on every process, as it would be on several hosts. It trains a tiny student
against a frozen teacher for ``NUM_STEPS`` steps on a global batch split
across the processes, once with ``jax.jit`` + ``NamedSharding`` and once with
``jax.shard_map``, and writes the final parameters and metrics.
"""

import sys

import jax
import numpy as np
import optax

from kdjax import models
from kdjax import parallel
from kdjax import steps
from kdjax.state import TrainState


NUM_STEPS = 2
B, D, H, C = 8, 5, 6, 3
TEMPERATURE = 2.0


def student_fn(p, x):
  return jax.numpy.tanh(x @ p['w1']) @ p['w2']


def teacher_fn(p, x):
  return 3.0 * x @ p['w']


def setup():
  """Student state, teacher forward and variables, and the global batches."""
  rng = np.random.default_rng(0)
  student = {'params': {'w1': rng.normal(size=(D, H)).astype(np.float32),
                        'w2': rng.normal(size=(H, C)).astype(np.float32)}}
  teacher = {'params': {'w': rng.normal(size=(D, C)).astype(np.float32)}}
  state = TrainState.create(apply_fn=models.function_forward(student_fn), variables=student,
                            tx=optax.adam(0.1))
  mask = np.ones(B, bool)
  mask[[0, 1, 2]] = False  # process 0 holds one valid row, process 1 four
  batches = [{'x': rng.normal(size=(B, D)).astype(np.float32),
              'label': rng.integers(0, C, size=B).astype(np.int32), 'mask': mask}
             for _ in range(NUM_STEPS)]
  return state, models.function_forward(teacher_fn), teacher, batches


def terms():
  return (steps.task_ce(0.4), steps.soft_kd(0.6, temperature=TEMPERATURE))


def main(out_path):
  info = parallel.initialize_distributed()  # from the KDJAX_* environment variables
  assert info.num_processes == 2 and info.device_count == 2, info
  state, teacher, tvars, batches = setup()
  rows = parallel.process_batch_slice(B)
  mesh = parallel.data_mesh()
  results = {}
  for name, step in [
      ('jit', parallel.sharded_step(steps.make_distill_step(terms(), teacher), mesh)),
      ('shard_map', parallel.shard_map_step(
          steps.make_distill_step(terms(), teacher, axis_name='data'), mesh))]:
    s = parallel.replicate(state, mesh)
    t = parallel.replicate(tvars, mesh)
    rng = parallel.replicate(jax.random.key(1), mesh)
    for batch in batches:
      local = {k: v[rows] for k, v in batch.items()}
      s, metrics = step(s, t, parallel.shard_batch(local, mesh), rng)
    for key, value in s.params.items():
      results[f'{name}/params/{key}'] = np.asarray(value.addressable_data(0))
    for key, value in metrics.items():
      results[f'{name}/metrics/{key}'] = np.asarray(value.addressable_data(0))
  results['process_id'] = np.asarray(info.process_id)
  results['rows'] = np.asarray([rows.start, rows.stop])
  np.savez(out_path, **results)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(sys.argv[1])
