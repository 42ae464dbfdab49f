"""A distillation run used by test_resume.py; killed and restarted by the test.

Usage: python -m tests.e2e.resume_worker DATA_DIR TEACHER_DIR WORKDIR OUT_NPZ
"""

import json
import sys
import time

import jax
import numpy as np

from kdjax import data as kdata
from kdjax import models
from kdjax import runs
from kdjax import steps


NUM_STEPS = 300


def slow(example, rng):
  """Identity with a delay, so the test can kill the run midway."""
  del rng
  time.sleep(0.0003)
  return example


def write_result(result, out):
  """Saves a run's final params and optimizer state (``out``.npz) and facts (``out``.json)."""
  leaves = jax.tree.leaves(jax.device_get((result.state.params, result.state.opt_state)))
  np.savez(out, *[np.asarray(x) for x in leaves])
  with open(out + '.json', 'w') as f:
    json.dump({'resumed_from': result.fit.resumed_from, 'step': int(result.state.step),
               'accuracy': result.metrics['accuracy']}, f)


def main(data_dir, teacher_dir, workdir, out):
  train = kdata.load('digits', 'train', data_dir=data_dir)
  test = kdata.load('digits', 'test', data_dir=data_dir)
  result = runs.train_and_evaluate(
      models.MLP(hidden=(16,), num_classes=10), train_data=train, eval_data=test,
      num_steps=NUM_STEPS, batch_size=32, seed=7, learning_rate=3e-3,
      terms=(steps.task_ce(0.5), steps.soft_kd(0.5, temperature=2.0)),
      teacher=models.MLP(hidden=(32,), num_classes=10), teacher_checkpoint=teacher_dir,
      transform=slow, workdir=workdir, checkpoint_every=20, progress=False)
  write_result(result, out)


if __name__ == '__main__':
  main(*sys.argv[1:])
