"""A short supervised run used by test_save_kill.py; SIGKILLed while orbax writes a checkpoint.

Usage: python -m tests.e2e.save_kill_worker DATA_DIR WORKDIR OUT_NPZ

With ``KDJAX_TEST_STALL=<step>:<stage>`` and ``KDJAX_TEST_STALL_MARKER=<path>``
the asynchronous save of ``<step>`` stops halfway, writes the marker (the path
of the step's temporary directory) and sleeps, so that the test can kill the
process in the middle of the write. Stages:

* ``items``: the ``data`` and ``meta`` items are committed, the ``state`` item
  is written but not yet committed (renamed into place);
* ``commit``: every item is committed, the step directory is not yet renamed
  from ``<step>.orbax-checkpoint-tmp`` to ``<step>``.

Only this test process is patched; the library is not.
"""

import asyncio
import os
import sys

from orbax.checkpoint._src.path import atomicity

from kdjax import data as kdata
from kdjax import models
from kdjax import runs
from tests.e2e.resume_worker import write_result


NUM_STEPS = 100
CHECKPOINT_EVERY = 20


def _stall_save(step, stage, marker):
  """Patches orbax's atomic rename so that the save of ``step`` hangs at ``stage``."""
  finalize = atomicity.AtomicRenameTemporaryPath.finalize
  tmp_step = f'{step}{atomicity.TMP_DIR_SUFFIX}'

  async def stalled(self, *args, **kwargs):
    tmp, final = self.get(), self.get_final()
    hit = ((stage == 'items' and final.name == 'state' and tmp.parent.name == tmp_step)
           or (stage == 'commit' and final.name == str(step)))
    if hit:
      with open(marker + '.part', 'w') as f:
        f.write(os.fspath(tmp))
      os.replace(marker + '.part', marker)
      await asyncio.sleep(600)  # killed here
    return await finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = stalled


def main(data_dir, workdir, out):
  if os.environ.get('KDJAX_TEST_STALL'):
    step, stage = os.environ['KDJAX_TEST_STALL'].split(':')
    _stall_save(int(step), stage, os.environ['KDJAX_TEST_STALL_MARKER'])
  result = runs.train_and_evaluate(
      models.MLP(hidden=(16,), num_classes=10),
      train_data=kdata.load('digits', 'train', data_dir=data_dir),
      eval_data=kdata.load('digits', 'test', data_dir=data_dir),
      num_steps=NUM_STEPS, batch_size=32, seed=3, learning_rate=3e-3, workdir=workdir,
      checkpoint_every=CHECKPOINT_EVERY, log_every=CHECKPOINT_EVERY, progress=False)
  write_result(result, out)


if __name__ == '__main__':
  main(*sys.argv[1:])
