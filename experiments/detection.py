"""Detection distillation on digit canvases: does a small dense detector gain from KD?

For each seed a teacher-size :class:`kdjax.models.DenseDetector` is trained
with the supervised dense step, then the student-size detector four times
from the same initialisation and data order: from scratch, with the Chen et
al. 2017 terms (hint through a 1x1 adapter, background-weighted soft CE,
teacher-bounded regression), with localization distillation (Zheng et al.
2022, τ = 10, on the positives), and with both. Test COCO mAP@[.5:.95] and
mAP@.5 (:func:`kdjax.dense.coco_map`) are compared to the scratch student,
paired by seed (Holm-corrected). Also reported: training images/s, and a PNG
of test canvases with the predicted boxes of the teacher and each student.

Usable from a notebook::

    from experiments import detection
    from experiments.configs import detection as cfg
    rows = detection.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping, NamedTuple

import jax
import numpy as np
import optax

from experiments import common
from experiments import stats
from experiments.dml import fresh_workdir
from experiments.dml import init_key
from experiments.dml import jit_init
from experiments.dml import json_records
from experiments.dml import run_dir
from kdjax import checkpoint
from kdjax import data as kdata
from kdjax import dense
from kdjax import models
from kdjax import train
from kdjax.state import TrainState


DELTA = 'Δ mAP vs scratch (paired)'
COLUMNS = ('model', 'mAP@[.5:.95]', 'mAP@.5', DELTA, *stats.COLUMNS, 'Δ mAP@.5 (paired)',
           'train images/s', 'seeds')
FINDING = ('Chen et al. 2017 and Zheng et al. 2022 (LD): a small detector distilled from a '
           'larger one (hint + soft class loss + bounded regression; localization '
           'distillation of the box-edge distributions) beats the same detector trained '
           'from scratch, and the two kinds of terms add up.')


def methods(config) -> dict[str, dict[str, float]]:
  """The students: name -> weights of :func:`kdjax.dense.make_detection_distill_step`."""
  chen = {'hint_weight': config.hint_weight, 'soft_weight': config.soft_weight,
          'bounded_weight': config.bounded_weight}
  ld = {'ld_weight': config.ld_weight}
  return {'scratch': {}, '+Chen': chen, '+LD': ld, '+both': {**chen, **ld}}


def load_data(config):
  """``(train, test)`` digit-canvas detection sources."""
  kw = dict(config=dense_config(config), data_dir=config.data_dir or None)
  return kdata.load('digits_detection', 'train', **kw), kdata.load('digits_detection', 'test', **kw)


def dense_config(config) -> kdata.DenseDigitsConfig:
  """The digit-canvas builder config of ``config`` (sizes, ``image_size`` x ``image_size``)."""
  return kdata.dense_digits_config(config.num_train, config.num_test,
                                   image_size=config.image_size)


def fit(state, step_fn, train_src, *, config, seed: int, teacher_variables=None,
        workdir=None, desc: str = 'train') -> train.FitResult:
  """``kdjax.train.fit`` on ``train_src``; a complete checkpoint in ``workdir`` is restored."""
  data = kdata.training_data(train_src, batch_size=config.batch_size, seed=seed)
  ckpt = None if workdir is None else checkpoint.Checkpointer(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), max_to_keep=1)
  try:
    return train.fit(state, step_fn, data, num_steps=config.num_steps, rng=jax.random.key(seed),
                     teacher_variables=teacher_variables, checkpointer=ckpt,
                     checkpoint_every=config.num_steps, log_every=config.num_steps,
                     compiled=config.compiled, progress=config.progress, desc=desc)
  finally:
    if ckpt is not None:
      ckpt.close()


def predict(forward, variables, src, *, stride: int, batch_size: int = 100,
            max_detections: int = 20) -> dict:
  """Detections and ground truth over ``src``, as ``[N, ...]`` NumPy arrays."""
  @jax.jit
  def run(x):
    out = forward(variables, x, train=False)
    d = dense.detect(out.logits, out.features['box_logits'], stride=stride,
                     image_size=x.shape[1:3], max_detections=max_detections)
    return d.boxes, d.scores, d.classes

  parts = {k: [] for k in ('boxes', 'scores', 'classes', 'gt_boxes', 'gt_labels')}
  for start in range(0, len(src), batch_size):
    batch = src.read_batch(np.arange(start, min(start + batch_size, len(src))))
    boxes, scores, classes = jax.device_get(run(batch['x']))
    for k, v in (('boxes', boxes), ('scores', scores), ('classes', classes),
                 ('gt_boxes', batch['boxes']), ('gt_labels', batch['labels'])):
      parts[k].append(np.asarray(v))
  return {k: np.concatenate(v) for k, v in parts.items()}


def score(pred: Mapping[str, np.ndarray], image_size: int) -> dict:
  """COCO box mAP of :func:`predict`'s output."""
  return dense.coco_map(pred['boxes'], pred['scores'], pred['classes'], pred['gt_boxes'],
                        pred['gt_labels'], image_size=image_size)


class Parts(NamedTuple):
  """The models, optimizers and steps of one detection run (:func:`build`).

  Attributes:
    t_fwd: the teacher's forward (``kdjax.models.linen_forward``).
    s_fwd: the student's forward.
    t_init: ``key -> variables`` of the teacher (jitted).
    s_init: ``key -> variables`` of the student (jitted).
    t_tx: the teacher's optimizer.
    s_tx: the students' optimizer.
    stride: the detectors' output stride.
    supervised: the supervised dense step (teacher and scratch student).
    steps: method name -> its student step (:func:`methods`).
  """
  t_fwd: Callable
  s_fwd: Callable
  t_init: Callable
  s_init: Callable
  t_tx: optax.GradientTransformation
  s_tx: optax.GradientTransformation
  stride: int
  supervised: Callable
  steps: dict


def build(config, sample: np.ndarray) -> Parts:
  """Builds the teacher, student, optimizers and every method's step for ``sample``'s shape."""
  teacher = models.create('dense_detector_teacher', 10, **dict(config.teacher))
  student = models.create('dense_detector_student', 10, **dict(config.student))
  stride = student.stride
  t_fwd = models.linen_forward(teacher)
  supervised = dense.make_detection_step(stride=stride)
  steps = {name: (supervised if not w else dense.make_detection_distill_step(
      t_fwd, stride=stride, margin=config.margin, **w)) for name, w in methods(config).items()}
  return Parts(t_fwd=t_fwd, s_fwd=models.linen_forward(student),
               t_init=jit_init(teacher, sample), s_init=jit_init(student, sample),
               t_tx=optax.adam(config.learning_rate), s_tx=optax.adam(config.learning_rate),
               stride=stride, supervised=supervised, steps=steps)


def student_state(parts: Parts, weights: Mapping[str, float], s_vars, t_vars, sample, key):
  """The initial student state of one method: ``aux_params`` hold its hint adapter, if any."""
  aux = None
  if weights.get('hint_weight'):
    sample_out = jax.jit(lambda v: parts.s_fwd(v, sample, train=False))(s_vars)
    teacher_out = jax.eval_shape(lambda v: parts.t_fwd(v, sample, train=False), t_vars)
    aux = dense.init_hint_adapter(sample_out, teacher_out, key)
  return TrainState.create(apply_fn=parts.s_fwd, variables=s_vars, tx=parts.s_tx,
                           aux_params=aux)


def run(config) -> list[dict]:
  """Trains the teacher and the four students per seed; writes results/<config.results>/."""
  fresh_workdir(config)
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  train_src, test_src = load_data(config)
  sample = train_src.read_batch(np.arange(min(config.batch_size, len(train_src))))['x']
  image_size = int(sample.shape[1])
  parts = build(config, sample)
  t_fwd, s_fwd, stride, supervised = parts.t_fwd, parts.s_fwd, parts.stride, parts.supervised
  records, examples, timings = [], {}, []
  for seed in config.seeds:
    key = init_key(seed)
    hp = {k: config[k] for k in ('num_steps', 'batch_size', 'learning_rate', 'num_train')}
    t_state = TrainState.create(apply_fn=t_fwd, variables=parts.t_init(key), tx=parts.t_tx)
    t_fit = fit(t_state, supervised, train_src, config=config, seed=seed,
                workdir=run_dir(config, seed, 'teacher', {**hp, 'teacher': config.teacher}),
                desc=f'teacher seed {seed}')
    t_vars = t_fit.state.variables
    results = {'teacher': (t_fit, predict(t_fwd, t_vars, test_src, stride=stride))}
    s_vars = parts.s_init(jax.random.fold_in(key, 1))
    for name, weights in methods(config).items():
      state = student_state(parts, weights, s_vars, t_vars, sample, jax.random.fold_in(key, 2))
      s_fit = fit(state, parts.steps[name], train_src, config=config, seed=seed,
                  teacher_variables=t_vars if weights else None,
                  workdir=run_dir(config, seed, f'student_{name[1:] if weights else name}',
                                  {**hp, 'student': config.student, 'weights': weights,
                                   'margin': config.margin}),
                  desc=f'student {name} seed {seed}')
      results[name] = (s_fit, predict(s_fwd, s_fit.state.variables, test_src, stride=stride))
    for name, (result, pred) in results.items():
      m = score(pred, image_size)
      timings.append(result.seconds)
      rate = (config.num_steps * config.batch_size / result.seconds
              if result.resumed_from is None and result.seconds > 0 else float('nan'))
      records.append({'seed': seed, 'model': name, 'map': m['mAP'], 'map50': m['mAP@.5'],
                      'images_per_second': rate, 'resumed': result.resumed_from is not None})
      if seed == config.seeds[0]:
        examples[name] = {k: v[:config.num_examples] for k, v in pred.items()}
  for r in records:
    base = next(b for b in records if b['seed'] == r['seed'] and b['model'] == 'scratch')
    r['delta_map'], r['delta_map50'] = r['map'] - base['map'], r['map50'] - base['map50']
  out_dir = common.results_dir(config.results)
  common.save_records(json_records(records), os.path.join(out_dir, 'records.json'))
  images = test_src.read_batch(np.arange(config.num_examples))['x']
  plot_examples(images, examples, os.path.join(out_dir, 'detection_examples.png'))
  setup = common.save_setup(
      out_dir, experiment='detection', config=config,
      command='python -m experiments.run --config experiments/configs/detection.py'
      + ('' if config.results == 'detection' else ':quick'),
      facts={'train_size': len(train_src), 'test_size': len(test_src),
             'train_seconds': float(sum(timings)), 'image_size': image_size})
  return report(common.load_results(out_dir)[0], setup, out_dir)


def plot_examples(images: np.ndarray, examples: Mapping[str, Mapping[str, np.ndarray]],
                  path: str, *, min_score: float = 0.3) -> None:
  """Test canvases (rows) with each model's boxes (columns): class and score on each box."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(examples)
  n, size = len(images), images.shape[1]
  fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.8 * (len(names) + 1), 1.8 * n),
                           squeeze=False)
  first = examples[names[0]]
  for i in range(n):
    for j, name in enumerate(['ground truth'] + names):
      ax = axes[i, j]
      ax.imshow(images[i, ..., 0], cmap='gray', vmin=0, vmax=1)
      ax.set_xticks([]), ax.set_yticks([])
      if i == 0:
        ax.set_title(name, fontsize=8)
      if name == 'ground truth':
        boxes, labels, scores = first['gt_boxes'][i], first['gt_labels'][i], None
        keep = labels >= 0
      else:
        e = examples[name]
        boxes, labels, scores = e['boxes'][i], e['classes'][i], e['scores'][i]
        keep = (labels >= 0) & (scores >= min_score)
      for k in np.flatnonzero(keep):
        y0, x0, y1, x1 = boxes[k] * size
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   color='lime' if scores is None else 'red', lw=0.8))
        text = str(int(labels[k])) if scores is None else f'{int(labels[k])} {scores[k]:.1f}'
        ax.text(x0, y0 - 1, text, color='yellow', fontsize=5)
  fig.suptitle(f'Test canvases: boxes with score >= {min_score}', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def speed_note(out_dir: str) -> str:
  """The ``step_speed.json`` measurement of ``out_dir`` as a Markdown paragraph ('' if absent).

  That file holds the steady-state step times of a short ``kdjax.train.fit``
  per model, scanned (``compiled=True``) and per step (``compiled=False``):
  the measurement that chose the config's ``compiled``.
  """
  path = os.path.join(out_dir, 'step_speed.json')
  if not os.path.isfile(path):
    return ''
  with open(path) as f:
    speed = json.load(f)
  parts = [f'{s["model"]} {"scanned" if s["compiled"] else "per step"}: '
           f'{s["images_per_second"]:.0f} images/s ({s["ms_per_step"]:.0f} ms/step, batch '
           f'{s["batch_size"]}, {s["image_size"]} px)' for s in speed['steps']]
  return (f'Step speed (`step_speed.json`, `{speed["script"]}`: ' + speed['what'] + '): '
          + '; '.join(parts) + '.\n\n')


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plot and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  students = [m for m in methods(config) if m != 'scratch']
  cmp = common.versus_scratch(records, students, {'mAP': 'map', 'mAP@.5': 'map50'})
  rows, agg = common.rows_versus_scratch(records, cmp, ('mAP', 'map', 'mAP@[.5:.95]'),
                                         ('mAP@.5', 'map50', 'mAP@.5'), delta=DELTA)
  common.errorbar_plot(agg, x='model', metric='map',
                       path=os.path.join(out_dir, 'detection_map.png'),
                       title='Digit-canvas detection: test COCO mAP@[.5:.95]', xlabel='model',
                       ylabel='mAP@[.5:.95] (%)')
  verdict = common.reproduced_versus_scratch(cmp, students, 'mAP')
  notes = (
      f'Setup: digit canvases ({facts["train_size"]} train / {facts["test_size"]} test, '
      f'{facts["image_size"]} px, 1-4 digits). Teacher `dense_detector_teacher` '
      f'{dict(config.teacher)}, student `dense_detector_student` {dict(config.student)}; Adam '
      f'{config.learning_rate:g}, {config.num_steps} steps, batch {config.batch_size}. Task '
      'loss: softmax focal loss over all locations (background class 0) + distribution focal '
      'loss on the FCOS-assigned positives. +Chen: hint on `backbone` through a 1x1 conv '
      f'(weight {config.hint_weight:g}), soft CE with background weight 1.5 '
      f'({config.soft_weight:g}), bounded regression on decoded edges, margin '
      f'{config.margin:g} ({config.bounded_weight:g}). +LD: τ = 10 on the positives '
      f'({config.ld_weight:g}). All students of a seed share initialisation and data order; '
      'Δ is paired per seed. mAP: pycocotools on the test set (20 detections per image). '
      'Train images/s: steps × batch / wall time of the run, compilation included (CPU, 2 '
      'cores).\n\n'
      + common.comparison_lines(list(cmp.values())) + '\n\n' + speed_note(out_dir)
      + 'Plots: `detection_map.png`, `detection_examples.png` (predicted boxes on test canvases). '
      f'Total training time {facts["train_seconds"]:.0f} s.')
  common.write_results(
      config.results, rows, COLUMNS, title='Detection distillation on digit canvases',
      finding=FINDING, verdict=verdict, command=setup['command'], notes=notes, out_dir=out_dir,
      dataset='digits_detection', seeds=common.seeds_of(records))
  return rows
