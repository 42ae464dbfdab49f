"""A run killed with SIGKILL and resumed ends bitwise-identical to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kdjax import data as kdata
from kdjax import models
from kdjax import runs


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worker(*args):
  return [sys.executable, '-m', 'tests.e2e.resume_worker', *map(str, args)]


def _env():
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')


def _checkpoint_steps(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
  data_dir = tmp_path / 'data'
  teacher = runs.train_and_evaluate(
      models.MLP(hidden=(32,), num_classes=10),
      train_data=kdata.load('digits', 'train', data_dir=data_dir),
      eval_data=kdata.load('digits', 'test', data_dir=data_dir), num_steps=60, batch_size=32,
      workdir=tmp_path / 'teacher', progress=False)
  teacher_dir = teacher.checkpoint_dir

  # Uninterrupted reference run.
  subprocess.run(_worker(data_dir, teacher_dir, tmp_path / 'ref', tmp_path / 'ref.npz'),
                 check=True, cwd=ROOT, env=_env(), timeout=300)

  # The same run, killed once it has saved a checkpoint partway through.
  workdir = tmp_path / 'killed'
  ckpt_dir = workdir / 'checkpoints'
  proc = subprocess.Popen(_worker(data_dir, teacher_dir, workdir, tmp_path / 'res.npz'),
                          cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if any(s >= 60 for s in _checkpoint_steps(ckpt_dir)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'the run finished before it could be killed'
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  killed_at = max(_checkpoint_steps(ckpt_dir))
  assert 0 < killed_at < 300

  subprocess.run(_worker(data_dir, teacher_dir, workdir, tmp_path / 'res.npz'),
                 check=True, cwd=ROOT, env=_env(), timeout=300)
  info = json.load(open(tmp_path / 'res.npz.json'))
  assert info['resumed_from'] >= killed_at and info['step'] == 300

  ref, res = np.load(tmp_path / 'ref.npz'), np.load(tmp_path / 'res.npz')
  assert ref.files == res.files
  for key in ref.files:
    np.testing.assert_array_equal(ref[key], res[key])
  ref_info = json.load(open(tmp_path / 'ref.npz.json'))
  assert ref_info['accuracy'] == info['accuracy']
