"""A run SIGKILLed while orbax writes a checkpoint resumes from the previous complete one.

The worker (save_kill_worker.py) stalls the save of step 60 halfway through, at
one of two stages, and the test kills it there with a real SIGKILL. The
half-written step must not be used: the run restarts from step 40 and ends
bitwise-identical to a run that was never interrupted.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kdjax import checkpoint
from tests.e2e import save_kill_worker


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STALL_STEP = 60
TMP = f'{STALL_STEP}.orbax-checkpoint-tmp'


def _worker(*args):
  return [sys.executable, '-m', 'tests.e2e.save_kill_worker', *map(str, args)]


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', **extra)
  for key in ('KDJAX_TEST_STALL', 'KDJAX_TEST_STALL_MARKER'):
    if key not in extra:
      env.pop(key, None)
  return env


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run (and the data directory the killed runs share)."""
  root = tmp_path_factory.mktemp('save_kill')
  out = root / 'ref.npz'
  subprocess.run(_worker(root / 'data', root / 'ref', out), check=True, cwd=ROOT, env=_env(),
                 timeout=300)
  return root, np.load(out), json.load(open(f'{out}.json'))


@pytest.mark.slow
@pytest.mark.parametrize('stage', ['items', 'commit'])
def test_sigkill_during_checkpoint_write_resumes_bitwise_identically(reference, tmp_path,
                                                                     stage):
  root, ref, ref_info = reference
  workdir, out, marker = tmp_path / 'run', tmp_path / 'res.npz', tmp_path / 'stalled'
  ckpt_dir = workdir / 'checkpoints'
  proc = subprocess.Popen(
      _worker(root / 'data', workdir, out), cwd=ROOT, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      env=_env(KDJAX_TEST_STALL=f'{STALL_STEP}:{stage}', KDJAX_TEST_STALL_MARKER=str(marker)))
  deadline = time.time() + 120
  while not marker.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  try:
    assert marker.exists(), f'the save never stalled: {proc.stderr.read().decode()[-2000:]}'
  finally:
    if proc.poll() is None:
      os.kill(proc.pid, signal.SIGKILL)  # a real kill, inside orbax's write of step 60
    proc.communicate()
  assert proc.returncode == -signal.SIGKILL

  # The kill left the half-written step in orbax's temporary directory only.
  assert marker.read_text().startswith(os.fspath(ckpt_dir / TMP))
  on_disk = sorted(os.listdir(ckpt_dir))
  assert TMP in on_disk and str(STALL_STEP) not in on_disk, on_disk
  items = sorted(os.listdir(ckpt_dir / TMP))
  if stage == 'items':  # the arrays are written but their item was never committed
    assert 'state.orbax-checkpoint-tmp' in items and 'state' not in items, items
    assert os.listdir(ckpt_dir / TMP / 'state.orbax-checkpoint-tmp' / 'd')
  else:  # every item committed, the step itself not
    assert {'data', 'meta', 'state'} <= set(items), items
  with checkpoint.Checkpointer(ckpt_dir) as ckpt:
    assert ckpt.latest_step() == STALL_STEP - save_kill_worker.CHECKPOINT_EVERY

  # Started again with the same arguments, it resumes from step 40, not 60.
  subprocess.run(_worker(root / 'data', workdir, out), check=True, cwd=ROOT, env=_env(),
                 timeout=300, capture_output=True)
  info = json.load(open(f'{out}.json'))
  assert info['resumed_from'] == STALL_STEP - save_kill_worker.CHECKPOINT_EVERY
  assert info['step'] == save_kill_worker.NUM_STEPS
  assert TMP not in os.listdir(ckpt_dir)  # orbax rewrote step 60 from scratch
  res = np.load(out)
  assert ref.files == res.files
  for key in ref.files:
    np.testing.assert_array_equal(ref[key], res[key])
  assert info['accuracy'] == ref_info['accuracy']
