"""Bad inputs give a clear error: the right type and a message that names the culprit.

One table, one test id per bad input, across the losses, the steps and
``fit``, the data pipeline, checkpoints, cohorts and the experiments command
line. Each row is ``(id, call, error type, message regex)``; ``call`` takes a
:class:`Ctx` holding small real objects (a model state, a cohort, a local
dataset, empty directories). The command-line rows run
``python -m experiments.run`` in a subprocess that fails while parsing flags.
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import checkpoint
from kdjax import cohort
from kdjax import data as kd
from kdjax import dense
from kdjax import losses
from kdjax import models
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = jnp.zeros((4, 10))  # student logits: 4 examples, 10 classes
T = jnp.ones((4, 10))
Y = jnp.array([0, 1, 2, 3])
KEY = jax.random.key(0)
MLP = models.MLP(hidden=(8,), num_classes=3)  # 4 inputs, 3 classes


class Ctx:
  """Small real objects the rows use, built on first access."""

  def __init__(self, tmp):
    self.tmp = tmp
    self._n = 0

  def empty_dir(self):
    self._n += 1
    path = self.tmp / f'empty{self._n}'
    path.mkdir()
    return path

  @functools.cached_property
  def data_dir(self):
    return self.tmp / 'tfds'

  @functools.cached_property
  def source(self):  # 160 MNIST-1D examples
    return kd.load('mnist1d', 'train', data_dir=self.data_dir, config=kd.mnist1d_config(200))

  @functools.cached_property
  def state(self):
    variables = models.init_variables(MLP, KEY, jnp.ones((1, 4)))
    return TrainState.create(apply_fn=MLP, variables=variables, tx=optax.sgd(0.1))

  @functools.cached_property
  def cohort(self):
    return cohort.init_cohort(MLP, optax.sgd(0.1), jax.random.split(KEY, 2), jnp.ones((1, 4)))


@pytest.fixture(scope='module')
def ctx(tmp_path_factory):
  return Ctx(tmp_path_factory.mktemp('bad_inputs'))


class CommandFailed(Exception):
  """A command exited with a nonzero status; the message is its stderr."""


def _cli(*overrides):
  """Runs the experiments CLI on the demo config; raises CommandFailed on a nonzero exit."""
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.run', '--config', 'experiments/configs/demo.py',
       *overrides], cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT))
  if proc.returncode != 0:
    raise CommandFailed(proc.stderr)
  return proc.stdout


def _batch(label):
  return {'x': jnp.ones((2, 4)), 'label': jnp.asarray(label)}


class _Batches:
  """Batches of 2 examples for MLP; the third batch holds ``bad`` as a label."""

  def __init__(self, bad=None, n=None):
    self.i, self.bad, self.n = 0, bad, n

  def __next__(self):
    self.i += 1
    if self.n is not None and self.i > self.n:
      raise StopIteration
    label = [0, self.bad if (self.bad is not None and self.i == 3) else 1]
    return {'x': np.ones((2, 4), np.float32), 'label': np.asarray(label, np.int32)}


def _fit(ctx, data, **kwargs):
  return train.fit(ctx.state, jax.jit(steps.make_train_step()), data, rng=KEY, progress=False,
                   **{'num_steps': 4, 'log_every': 2, **kwargs})


CASES = [
    # ---------------------------------------------------------------- losses
    ('loss/label_above_range', lambda c: losses.hinton_kd(S, T, jnp.array([0, 1, 2, 12])),
     ValueError, r'`labels` must be class indices in \[0, 10\).*got 12 at index \(3,\)'),
    ('loss/label_negative', lambda c: losses.cross_entropy(S, jnp.array([0, -1, 2, 3])),
     ValueError, r'`labels` .*got -1 at index \(1,\)'),
    ('loss/dkd_label_equals_num_classes',
     lambda c: losses.decoupled_kd(S, T, jnp.array([0, 1, 2, 10])),
     ValueError, r'`labels` .*\[0, 10\).*got 10'),
    ('loss/float_labels', lambda c: losses.cross_entropy(S, Y.astype(jnp.float32)),
     ValueError, r'`labels` must be integer class indices, got dtype float32'),
    ('loss/label_shape', lambda c: losses.cross_entropy(S, jnp.zeros((4, 1), jnp.int32)),
     ValueError, r'`labels` must have shape \(4,\)'),
    ('loss/integer_logits', lambda c: losses.cross_entropy(jnp.zeros((4, 10), jnp.int32), Y),
     ValueError, r'`logits` must be a floating-point array'),
    ('loss/label_smoothing_1', lambda c: losses.cross_entropy(S, Y, label_smoothing=1.0),
     ValueError, r'`label_smoothing` must be in \[0, 1\)'),
    ('loss/shape_mismatch', lambda c: losses.kl_distillation(S, jnp.zeros((4, 9))),
     ValueError, r'`student_logits` and `teacher_logits` must have the same shape'),
    ('loss/scalar_logits', lambda c: losses.kl_distillation(jnp.float32(1), jnp.float32(1)),
     ValueError, r'`student_logits` must have at least 1 dimension'),
    ('loss/temperature_0', lambda c: losses.kl_distillation(S, T, temperature=0.0),
     ValueError, r'`temperature` must be > 0, got 0.0'),
    ('loss/temperature_negative', lambda c: losses.hinton_kd(S, T, Y, temperature=-2.0),
     ValueError, r'`temperature` must be > 0, got -2.0'),
    ('loss/mask_not_bool', lambda c: losses.kl_distillation(S, T, where=jnp.ones((4, 10))),
     ValueError, r'`where` must be a boolean mask, got dtype float32'),
    ('loss/mask_shape', lambda c: losses.kl_distillation(S, T, where=jnp.ones((3, 10), bool)),
     ValueError, r'`where` with shape \(3, 10\) does not broadcast to \(4, 10\)'),
    ('loss/alpha_above_1', lambda c: losses.hinton_kd(S, T, Y, alpha=2.0),
     ValueError, r'`alpha` must be in \[0, 1\]'),
    ('loss/topk_k_0', lambda c: losses.topk_distillation(S, T, k=0),
     ValueError, r'`k` must be a Python int in 1\.\.10'),
    ('loss/topk_k_above_classes', lambda c: losses.topk_distillation(S, T, k=11),
     ValueError, r'`k` must be a Python int in 1\.\.10 .*got 11'),
    ('loss/dkd_one_class',
     lambda c: losses.decoupled_kd(jnp.zeros((4, 1)), jnp.zeros((4, 1)), jnp.zeros(4, int)),
     ValueError, r'`student_logits` needs at least 2 classes'),
    ('loss/feature_shape', lambda c: losses.hint_l2(jnp.zeros((4, 8)), jnp.zeros((4, 7))),
     ValueError, r'`student_features` and `teacher_features` must have the same shape'),
    ('loss/batch_loss_rank',
     lambda c: losses.dist_loss(jnp.zeros((2, 4, 10)), jnp.zeros((2, 4, 10))),
     ValueError, r'`student_logits` must have 2 dimension\(s\)'),
    # ------------------------------------------------------- steps and fit
    ('step/soft_kd_temperature_0', lambda c: steps.soft_kd(temperature=0.0),
     ValueError, r'`temperature` must be > 0'),
    ('step/no_terms', lambda c: steps.make_distill_step([]),
     ValueError, r'`terms` must contain at least one Term'),
    ('step/duplicate_term_names', lambda c: steps.make_distill_step([steps.task_ce()] * 2),
     ValueError, r"Term names must be unique, got \['ce', 'ce'\]"),
    ('step/teacher_term_without_teacher', lambda c: steps.make_distill_step([steps.soft_kd()]),
     ValueError, r"Term 'kd' takes a teacher input.*`teacher_name`"),
    ('step/teacher_variables_none',
     lambda c: steps.make_distill_step([steps.soft_kd()], MLP)(
         c.state, None, _batch([0, 1]), KEY),
     ValueError, r'`teacher_variables` is None'),
    ('step/unknown_feature',
     lambda c: steps.make_distill_step([steps.hint('nope', 'embedding')], MLP)(
         c.state, c.state.variables, _batch([0, 1]), KEY),
     ValueError, r"The student has no feature 'nope'; available: \["),
    ('step/float_labels',
     lambda c: steps.make_train_step()(c.state, None, _batch([0.0, 1.0]), KEY),
     ValueError, r'`labels` must be integer class indices'),
    ('step/eager_label_out_of_range',
     lambda c: steps.make_train_step()(c.state, None, _batch([0, 3]), KEY),
     ValueError, r"`batch\['label'\]` must be class indices in \[0, 3\).*got 3 at index \(1,\)"),
    ('step/eval_label_out_of_range',
     lambda c: steps.make_eval_step(MLP)(c.state.variables, _batch([0, 5])),
     ValueError, r'`labels` must be class indices in \[0, 3\).*got 5'),
    ('fit/label_out_of_range_under_jit', lambda c: _fit(c, _Batches(bad=7)),
     train.InvalidLabelError, r'Batch 2 \(step 3\) has 1 `labels` outside \[0, num_classes\), '
     r'e\.g\. \[7\]'),
    ('fit/num_steps_negative', lambda c: _fit(c, _Batches(), num_steps=-1),
     ValueError, r'`num_steps` must be >= 0, got -1'),
    ('fit/log_every_0', lambda c: _fit(c, _Batches(), log_every=0),
     ValueError, r'`log_every` must be >= 1, got 0'),
    ('fit/data_runs_out', lambda c: _fit(c, _Batches(n=3)),
     ValueError, r'`data` ran out of batches before `num_steps`'),
    ('fit/evaluate_no_batches',
     lambda c: train.evaluate(steps.make_eval_step(MLP), c.state.variables, []),
     ValueError, r'`batches` is empty'),
    # ----------------------------------------------------------------- data
    ('data/unknown_dataset', lambda c: kd.load('no_such_dataset', 'train', data_dir=c.data_dir),
     ValueError, r"Unknown dataset 'no_such_dataset'"),
    ('data/unknown_split', lambda c: kd.load('digits', 'validation', data_dir=c.data_dir),
     ValueError, r"Unknown split 'validation'"),
    ('data/tfds_not_prepared', lambda c: kd.load('mnist', 'train', data_dir=c.empty_dir()),
     kd.DatasetNotPreparedError, r"'mnist' is not prepared.*tfds build mnist"),
    ('data/bad_download_value',
     lambda c: kd.load('cifar10', 'train', data_dir=c.data_dir, download='yes'),
     ValueError, r"`download` must be True, False or 'auto', got 'yes'"),
    ('data/config_for_digits',
     lambda c: kd.load('digits', 'train', data_dir=c.data_dir, config='x'),
     ValueError, r'Dataset "digits" has no configs'),
    ('data/unknown_mnist1d_config',
     lambda c: kd.load('mnist1d/nope', 'train', data_dir=c.data_dir),
     ValueError, r"Unknown mnist1d config 'nope'"),
    ('data/transfer_reuses_labeled_seed',
     lambda c: kd.mnist1d_config(100, seed=42, transfer=True),
     ValueError, r'A transfer set needs a `seed` different from `labeled_seed`'),
    ('data/batch_size_0', lambda c: kd.make_pipeline(c.source, batch_size=0, seed=0),
     ValueError, r'`batch_size` must be positive, got 0'),
    ('data/batch_size_negative', lambda c: kd.make_pipeline(c.source, batch_size=-3, seed=0),
     ValueError, r'`batch_size` must be positive, got -3'),
    ('data/batch_size_above_dataset',
     lambda c: kd.make_pipeline(c.source, batch_size=10_000, seed=0),
     ValueError, r'`batch_size` 10000 exceeds the 160 examples'),
    ('data/device_batch_size_0', lambda c: kd.DeviceData(c.source, batch_size=0, seed=0),
     ValueError, r'`batch_size` must be positive, got 0'),
    ('data/seed_negative', lambda c: kd.make_pipeline(c.source, batch_size=10, seed=-1),
     ValueError, r'`seed` must be >= 0, got -1'),
    ('data/num_epochs_0',
     lambda c: kd.make_pipeline(c.source, batch_size=10, seed=0, num_epochs=0),
     ValueError, r'`num_epochs` must be positive or None, got 0'),
    ('data/unknown_placement',
     lambda c: kd.training_data(c.source, batch_size=10, seed=0, placement='gpu'),
     ValueError, r"`placement` must be 'auto', 'device' or 'host', got 'gpu'"),
    ('data/unknown_canvas_config',
     lambda c: kd.load('digits_detection/nope', 'train', data_dir=c.data_dir),
     ValueError, r"Unknown digits_detection config 'nope'.*dense_digits_config"),
    ('data/canvas_config_of_wrong_type',
     lambda c: kd.load('digits_segmentation', 'train', data_dir=c.data_dir,
                       config=kd.mnist1d_config(200)),
     ValueError, r"`config` of 'digits_segmentation' must be a config name or a "
     r'DenseDigitsConfig'),
    ('data/canvas_digit_larger_than_canvas',
     lambda c: kd.dense_digits_config(10, 2, image_size=16),
     ValueError, r'Need 2 <= `min_size` <= `max_size` <= `image_size`'),
    # ---------------------------------------------------------------- dense
    ('dense/box_outside_image',
     lambda c: dense.assign_targets(jnp.array([[0.1, 0.1, 1.2, 0.5]]), jnp.array([1]),
                                    image_size=16, stride=4, num_bins=8),
     ValueError, r'`boxes` must be normalised to \[0, 1\]'),
    ('dense/box_ymin_above_ymax',
     lambda c: dense.assign_targets(jnp.array([[0.6, 0.1, 0.2, 0.5]]), jnp.array([1]),
                                    image_size=16, stride=4, num_bins=8),
     ValueError, r'`boxes` must have ymin <= ymax and xmin <= xmax'),
    ('dense/label_out_of_range',
     lambda c: dense.assign_targets(jnp.array([[0.1, 0.1, 0.2, 0.5]]), jnp.array([10]),
                                    image_size=16, stride=4, num_bins=8, num_classes=10),
     ValueError, r'`labels` must be in \[0, 10\) for real objects, got \[10\]'),
    ('dense/nms_scores_shape',
     lambda c: dense.nms(jnp.zeros((3, 4)), jnp.zeros((2,)), max_outputs=2),
     ValueError, r'`boxes` must be \[N, 4\] and `scores` \[N\]'),
    ('dense/coco_pred_box_outside',
     lambda c: dense.coco_map(np.array([[[0.0, 0.0, 2.0, 1.0]]]), np.ones((1, 1)),
                              np.zeros((1, 1), int), np.array([[[0.0, 0.0, 1.0, 1.0]]]),
                              np.zeros((1, 1), int), image_size=48),
     ValueError, r'`pred_boxes` must be normalised'),
    ('dense/ignore_label_not_masked',
     lambda c: dense.confusion_matrix(jnp.array([0, 1]), jnp.array([0, 255]), num_classes=11),
     ValueError, r'`targets` must be in \[0, 11\) on counted pixels, got \[255\]'),
    ('dense/detector_input_rank',
     lambda c: models.create('dense_detector_student').init(KEY, jnp.zeros((48, 48, 1))),
     ValueError, r'DenseDetector: input `x` must have rank 4'),
    # ---------------------------------------------------------- checkpoints
    ('ckpt/teacher_dir_missing', lambda c: checkpoint.load_variables(c.tmp / 'no_such_run'),
     FileNotFoundError, r"Teacher checkpoint directory '.*no_such_run' does not exist"),
    ('ckpt/teacher_dir_empty', lambda c: checkpoint.load_variables(c.empty_dir()),
     FileNotFoundError, r'No checkpoint in .*empty\d+; steps on disk: \[\]'),
    ('ckpt/restore_empty_dir',
     lambda c: checkpoint.Checkpointer(c.empty_dir()).restore({'w': jnp.zeros(2)}),
     FileNotFoundError, r'No checkpoint in .*; steps on disk: \[\]'),
    ('ckpt/restore_missing_step',
     lambda c: checkpoint.Checkpointer(c.empty_dir()).restore({'w': jnp.zeros(2)}, step=3),
     FileNotFoundError, r'No checkpoint at step 3 in '),
    ('ckpt/meta_of_empty_dir', lambda c: checkpoint.Checkpointer(c.empty_dir()).restore_meta(),
     FileNotFoundError, r'No checkpoint in '),
    ('ckpt/best_mode', lambda c: checkpoint.Checkpointer(c.empty_dir(), best_mode='up'),
     ValueError, r"`best_mode` must be 'max' or 'min', got 'up'"),
    ('ckpt/max_to_keep_0', lambda c: checkpoint.Checkpointer(c.empty_dir(), max_to_keep=0),
     ValueError, r'`max_to_keep` must be >= 1, got 0'),
    ('ckpt/which', lambda c: checkpoint.load_variables(c.empty_dir(), which='first'),
     ValueError, r"`which` must be 'latest' or 'best', got 'first'"),
    # -------------------------------------------------------------- cohorts
    ('cohort/stack_nothing', lambda c: cohort.stack([]),
     ValueError, r'`trees` must contain at least one pytree'),
    ('cohort/stack_shapes', lambda c: cohort.stack([{'w': jnp.zeros(2)}, {'w': jnp.zeros(3)}]),
     ValueError, r'`trees` must have equal leaf shapes; tree 1 differs'),
    ('cohort/stack_structures',
     lambda c: cohort.stack([{'w': jnp.zeros(2)}, {'v': jnp.zeros(2)}]),
     ValueError, r'`trees` must share one structure; tree 1 differs'),
    ('cohort/unstack_num', lambda c: cohort.unstack({'w': jnp.zeros((2, 3))}, num=3),
     ValueError, r'`num` is 3 but the leaves have a leading axis of 2'),
    ('cohort/unstack_scalar', lambda c: cohort.unstack({'w': jnp.zeros(())}),
     ValueError, r'`tree` must have leaves with one shared leading \(peer\) axis'),
    ('cohort/init_without_init_fn',
     lambda c: cohort.init_cohort(lambda v, x: x, optax.sgd(0.1), jax.random.split(KEY, 2)),
     ValueError, r'Pass `init_fn`'),
    ('cohort/keys_not_1d',
     lambda c: cohort.init_cohort(MLP, optax.sgd(0.1), jax.random.split(KEY, (2, 2)),
                                  jnp.ones((1, 4))),
     ValueError, r'`keys` must be a 1-D array of K keys, got shape \(2, 2\)'),
    ('cohort/peers_not_states', lambda c: cohort.CohortState.create('abc'),
     ValueError, r'`peers` must be a stacked TrainState or a sequence of TrainStates'),
    ('cohort/peers_empty_sequence', lambda c: cohort.CohortState.create([]),
     ValueError, r'`peers` as a sequence must hold one or more TrainStates'),
    ('cohort/temperature_0', lambda c: cohort.make_cohort_step(temperature=0.0),
     ValueError, r'`temperature` must be > 0'),
    ('cohort/batch_without_label',
     lambda c: cohort.make_cohort_step()(c.cohort, {'x': jnp.ones((2, 4))}, KEY),
     ValueError, r'`batch` must have a "label" entry'),
    ('cohort/batch_without_x',
     lambda c: cohort.make_cohort_step()(c.cohort, {'label': jnp.zeros(2, jnp.int32)}, KEY),
     ValueError, r'`batch` must have an "x" entry'),
    ('cohort/evaluate_no_batches',
     lambda c: cohort.evaluate_cohort(cohort.make_cohort_eval_step(), c.cohort, []),
     ValueError, r'`batches` is empty'),
    # ---------------------------------------------- configs (command line)
    ('config/unknown_key', lambda c: _cli('--config.no_such_key=1'),
     CommandFailed, r"--config\.no_such_key=1: unknown config key 'no_such_key'; config has "
     r"keys batch_size, .*workdir\."),
    ('config/unknown_nested_key', lambda c: _cli('--config.teacher.no_such=1'),
     CommandFailed, r"unknown config key 'no_such'; config\.teacher has keys learning_rate, "),
    ('config/missing_file', lambda c: _cli('--config=experiments/configs/no_such.py:quick'),
     CommandFailed, r"--config: no config file 'experiments/configs/no_such\.py'"),
    ('config/int_given_text', lambda c: _cli('--config.batch_size=abc'),
     CommandFailed, r'Flags parsing error: flag --config\.batch_size=abc: invalid literal for '
     r'int\(\)'),
    ('config/nested_int_given_text', lambda c: _cli('--config.teacher.num_steps=x'),
     CommandFailed, r'flag --config\.teacher\.num_steps=x: invalid literal for int\(\)'),
    ('config/float_given_text', lambda c: _cli('--config.kd.temperature=hot'),
     CommandFailed, r"flag --config\.kd\.temperature=hot: could not convert string to float"),
    ('config/unknown_mode', lambda c: _cli('--config=experiments/configs/demo.py:nonsense'),
     CommandFailed, r"Unknown demo mode 'nonsense'"),
]


@pytest.mark.parametrize('call,error,message', [row[1:] for row in CASES],
                         ids=[row[0] for row in CASES])
def test_bad_input_is_a_clear_error(ctx, call, error, message):
  with pytest.raises(error, match=message) as e:
    call(ctx)
  if error is CommandFailed:  # the command line answers in one usage line, not a traceback
    assert 'Traceback' not in str(e.value)
    assert str(e.value).startswith('FATAL Flags parsing error: ')


def test_the_table_is_large_and_covers_every_area():
  ids = [row[0] for row in CASES]
  assert len(ids) == len(set(ids)) >= 30
  areas = {i.split('/')[0] for i in ids}
  assert areas == {'loss', 'step', 'fit', 'data', 'dense', 'ckpt', 'cohort', 'config'}
