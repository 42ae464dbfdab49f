"""The detection distill step of the experiments, run by ``kdjax.train.fit`` scanned and per step.

The detection experiment picks ``compiled`` (``lax.scan`` chunks or one call
per step) by measured speed alone, so both must train the same student: the
same batches (from device-resident data) and the same updates, up to float
rounding between the two compiled programs.

Long: it compiles the distill step twice (a scan and a jitted step), about 25
CPU seconds even with one-stage models on 16 px canvases, over the default
suite's 10-second budget for a test.
"""

import types

import jax
import numpy as np
import optax
import pytest

from kdjax import data as kd
from kdjax import dense
from kdjax import models
from kdjax import train
from kdjax.state import TrainState


CONFIG = kd.dense_digits_config(8, 4, image_size=16, min_size=6, max_size=10)
KEY = jax.random.key(0, impl='unsafe_rbg')  # cheaper initialiser compilation on CPU


class Canvases:
  """A random-access source of detection canvases whose targets go on the device."""

  info = types.SimpleNamespace(targets=('boxes', 'labels'))

  def __init__(self, n):
    d = kd.generate_digit_canvases(n, 'train', CONFIG)
    self.rows = {'x': d['image'], 'boxes': d['boxes'], 'labels': d['labels'].astype(np.int32),
                 'id': np.arange(n, dtype=np.int32)}

  def __len__(self):
    return len(self.rows['x'])

  def read_batch(self, indices):
    return {k: v[indices] for k, v in self.rows.items()}


@pytest.mark.long
def test_detection_distill_fit_scanned_equals_per_step():
  src = Canvases(8)
  student = models.DenseDetector(num_classes=10, widths=(4, 4), head_width=4, head_depth=1)
  teacher = models.DenseDetector(num_classes=10, widths=(4, 8), head_width=4, head_depth=1)
  x = src.read_batch(np.arange(4))['x']
  s_vars = models.init_variables(student, KEY, x)
  t_vars = models.init_variables(teacher, jax.random.fold_in(KEY, 1), x)
  s_fwd, t_fwd = models.linen_forward(student), models.linen_forward(teacher)
  aux = dense.init_hint_adapter(s_fwd(s_vars, x, train=False), t_fwd(t_vars, x, train=False),
                                jax.random.key(2))
  step = dense.make_detection_distill_step(t_fwd, stride=student.stride, hint_weight=1.0,
                                           soft_weight=1.0, bounded_weight=0.5, ld_weight=1.0)
  state = TrainState.create(apply_fn=s_fwd, variables=s_vars, tx=optax.adam(3e-3),
                            aux_params=aux)

  def run(compiled):
    data = kd.DeviceData(src, batch_size=4, seed=3)
    return train.fit(state, step, data, num_steps=4, rng=jax.random.key(1),
                     teacher_variables=t_vars, log_every=2, progress=False, compiled=compiled)

  scanned, per_step = run(True), run(False)
  assert scanned.compiled and not per_step.compiled
  assert scanned.chunks == per_step.chunks == 2
  assert int(scanned.state.step) == int(per_step.state.step) == 4
  # Every term was on and trained the student: the start state is far from both results.
  assert all(h['skipped'] == 0 and h['loss/ld'] > 0 and h['loss/hint'] > 0
             for h in scanned.history)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(scanned.state.params)))
  assert moved > 1e-3
  # Same batches and updates: the logged metrics and the final state agree.
  for a, b in zip(scanned.history, per_step.history):
    for k in ('loss', 'loss/cls', 'loss/box', 'loss/hint', 'loss/soft', 'loss/bounded',
              'loss/ld', 'positives'):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for name, a, b in (('variables', scanned.state.variables, per_step.state.variables),
                     ('aux_params', scanned.state.aux_params, per_step.state.aux_params),
                     ('opt_state', scanned.state.opt_state, per_step.state.opt_state)):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-5,
                                 err_msg=name)
