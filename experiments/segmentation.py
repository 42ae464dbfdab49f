"""Structured KD for segmentation on digit canvases: pixel-wise, pair-wise and holistic terms.

For each seed a teacher-size :class:`kdjax.models.UNet` is trained with the
supervised step (per-pixel CE), then the student-size U-Net four times from
the same initialisation and data order: from scratch, +pixel-wise KD, +pixel
and pair-wise KD (on the ``bottleneck`` map), and +pixel, pair-wise and
holistic KD (a Wasserstein critic on (probability map, image) pairs with
gradient penalty, trained in the same step; Liu et al. 2019). Test mIoU and
pixel accuracy are compared to the scratch student, paired by seed
(Holm-corrected). Also reported: training images/s, and a PNG of test
canvases with each model's predicted class map.

Usable from a notebook::

    from experiments import segmentation
    from experiments.configs import segmentation as cfg
    rows = segmentation.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from experiments import stats
from experiments.detection import dense_config
from experiments.detection import fit
from experiments.detection import speed_note
from experiments.dml import fresh_workdir
from experiments.dml import init_key
from experiments.dml import jit_init
from experiments.dml import json_records
from experiments.dml import run_dir
from kdjax import data as kdata
from kdjax import dense
from kdjax import models
from kdjax.state import TrainState


NUM_CLASSES = 11
DELTA = 'Δ mIoU vs scratch (paired)'
COLUMNS = ('model', 'mIoU', 'pixel accuracy', DELTA, *stats.COLUMNS,
           'Δ pixel accuracy (paired)', 'train images/s', 'seeds')
FINDING = ('Liu et al. 2019 (structured KD): a compact segmenter distilled from a larger one '
           'beats the same network trained from scratch, pixel-wise KD helps, and the '
           'pair-wise and holistic terms add to it.')


def methods(config) -> dict[str, dict[str, float]]:
  """The students: name -> weights of :func:`kdjax.dense.make_segmentation_distill_step`."""
  pixel = {'pixel_weight': config.pixel_weight}
  pair = {**pixel, 'pair_weight': config.pair_weight}
  return {'scratch': {}, '+pixel': pixel, '+pixel+pair': pair,
          '+pixel+pair+holistic': {**pair, 'holistic_weight': config.holistic_weight}}


def load_data(config):
  """``(train, test)`` digit-canvas segmentation sources."""
  kw = dict(config=dense_config(config), data_dir=config.data_dir or None)
  return (kdata.load('digits_segmentation', 'train', **kw),
          kdata.load('digits_segmentation', 'test', **kw))


def predict(forward, variables, src, *, batch_size: int = 100) -> dict:
  """Predicted class maps of ``src`` and the summed confusion matrix."""
  @jax.jit
  def run(x, target):
    pred = jnp.argmax(forward(variables, x, train=False).logits, -1)
    return pred, dense.confusion_matrix(pred, target, num_classes=NUM_CLASSES)

  preds, total = [], 0
  for start in range(0, len(src), batch_size):
    batch = src.read_batch(np.arange(start, min(start + batch_size, len(src))))
    pred, cm = jax.device_get(run(batch['x'], batch['segmentation'].astype(np.int32)))
    preds.append(np.asarray(pred))
    total = total + np.asarray(cm)
  metrics = dense.segmentation_metrics(jnp.asarray(total))
  return {'pred': np.concatenate(preds), 'miou': float(metrics['miou']),
          'pixel_accuracy': float(metrics['pixel_accuracy'])}


class Parts(NamedTuple):
  """The models, optimizers and steps of one segmentation run (:func:`build`).

  Attributes:
    t_fwd: the teacher's forward (``kdjax.models.linen_forward``).
    s_fwd: the student's forward.
    c_fwd: the holistic critic's forward.
    t_init: ``key -> variables`` of the teacher (jitted).
    s_init: ``key -> variables`` of the student (jitted).
    c_init: ``key -> variables`` of the critic (jitted).
    t_tx: the teacher's optimizer.
    s_tx: the students' optimizer.
    c_tx: the critic's optimizer (WGAN-GP's Adam).
    supervised: the supervised segmentation step (teacher and scratch student).
    steps: method name -> its student step (:func:`methods`).
  """
  t_fwd: Callable
  s_fwd: Callable
  c_fwd: Callable
  t_init: Callable
  s_init: Callable
  c_init: Callable
  t_tx: optax.GradientTransformation
  s_tx: optax.GradientTransformation
  c_tx: optax.GradientTransformation
  supervised: Callable
  steps: dict


def build(config, sample: np.ndarray) -> Parts:
  """Builds the teacher, student, critic, optimizers and every method's step."""
  teacher = models.create('unet_teacher', NUM_CLASSES, **dict(config.teacher))
  student = models.create('unet_student', NUM_CLASSES, **dict(config.student))
  critic = dense.HolisticCritic(widths=tuple(config.critic_widths))
  t_fwd, s_fwd, c_fwd = (models.linen_forward(m) for m in (teacher, student, critic))
  supervised = dense.make_segmentation_step()
  steps = {name: (supervised if not w else dense.make_segmentation_distill_step(
      t_fwd, pair_feature='bottleneck', gp_weight=config.gp_weight, **w))
      for name, w in methods(config).items()}
  critic_sample = dense.critic_input(jnp.zeros(sample.shape[:3] + (NUM_CLASSES,)), sample)
  return Parts(t_fwd=t_fwd, s_fwd=s_fwd, c_fwd=c_fwd, t_init=jit_init(teacher, sample),
               s_init=jit_init(student, sample), c_init=jit_init(critic, critic_sample),
               t_tx=optax.adam(config.learning_rate), s_tx=optax.adam(config.learning_rate),
               c_tx=optax.adam(config.critic_learning_rate, b1=0.5, b2=0.9),
               supervised=supervised, steps=steps)


def student_state(parts: Parts, weights: Mapping[str, float], s_vars, c_vars):
  """The initial student state of one method: with the critic for the holistic term."""
  state = TrainState.create(apply_fn=parts.s_fwd, variables=s_vars, tx=parts.s_tx)
  if weights.get('holistic_weight'):
    state = dense.AdversarialState(student=state, critic=TrainState.create(
        apply_fn=parts.c_fwd, variables=c_vars, tx=parts.c_tx))
  return state


def run(config) -> list[dict]:
  """Trains the teacher and the four students per seed; writes results/<config.results>/."""
  fresh_workdir(config)
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  train_src, test_src = load_data(config)
  sample = train_src.read_batch(np.arange(min(config.batch_size, len(train_src))))['x']
  parts = build(config, sample)
  t_fwd, s_fwd, supervised = parts.t_fwd, parts.s_fwd, parts.supervised
  records, examples, timings = [], {}, []
  for seed in config.seeds:
    key = init_key(seed)
    hp = {k: config[k] for k in ('num_steps', 'batch_size', 'learning_rate', 'num_train')}
    t_state = TrainState.create(apply_fn=t_fwd, variables=parts.t_init(key), tx=parts.t_tx)
    t_fit = fit(t_state, supervised, train_src, config=config, seed=seed,
                workdir=run_dir(config, seed, 'teacher', {**hp, 'teacher': config.teacher}),
                desc=f'teacher seed {seed}')
    t_vars = t_fit.state.variables
    results = {'teacher': (t_fit, predict(t_fwd, t_vars, test_src))}
    s_vars = parts.s_init(jax.random.fold_in(key, 1))
    c_vars = parts.c_init(jax.random.fold_in(key, 2))
    for name, weights in methods(config).items():
      state = student_state(parts, weights, s_vars, c_vars)
      s_fit = fit(state, parts.steps[name], train_src, config=config, seed=seed,
                  teacher_variables=t_vars if weights else None,
                  workdir=run_dir(config, seed, f'student_{name.replace("+", "_")}',
                                  {**hp, 'student': config.student, 'weights': weights,
                                   'critic': [config.critic_widths, config.critic_learning_rate,
                                              config.gp_weight]}),
                  desc=f'student {name} seed {seed}')
      results[name] = (s_fit, predict(s_fwd, s_fit.state.variables, test_src))
    for name, (result, pred) in results.items():
      timings.append(result.seconds)
      rate = (config.num_steps * config.batch_size / result.seconds
              if result.resumed_from is None and result.seconds > 0 else float('nan'))
      records.append({'seed': seed, 'model': name, 'miou': pred['miou'],
                      'pixel_accuracy': pred['pixel_accuracy'], 'images_per_second': rate,
                      'resumed': result.resumed_from is not None})
      if seed == config.seeds[0]:
        examples[name] = pred['pred'][:config.num_examples]
  for r in records:
    base = next(b for b in records if b['seed'] == r['seed'] and b['model'] == 'scratch')
    r['delta_miou'] = r['miou'] - base['miou']
    r['delta_pixel_accuracy'] = r['pixel_accuracy'] - base['pixel_accuracy']
  out_dir = common.results_dir(config.results)
  common.save_records(json_records(records), os.path.join(out_dir, 'records.json'))
  shown = test_src.read_batch(np.arange(config.num_examples))
  plot_examples(shown['x'], shown['segmentation'], examples,
                os.path.join(out_dir, 'segmentation_examples.png'))
  setup = common.save_setup(
      out_dir, experiment='segmentation', config=config,
      command='python -m experiments.run --config experiments/configs/segmentation.py'
      + ('' if config.results == 'segmentation' else ':quick'),
      facts={'train_size': len(train_src), 'test_size': len(test_src),
             'train_seconds': float(sum(timings)), 'image_size': int(sample.shape[1])})
  return report(common.load_results(out_dir)[0], setup, out_dir)


def plot_examples(images: np.ndarray, targets: np.ndarray,
                  examples: Mapping[str, np.ndarray], path: str) -> None:
  """Test canvases (rows): the image, the target map and each model's predicted map."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = ['image', 'target'] + list(examples)
  n = len(images)
  fig, axes = plt.subplots(n, len(names), figsize=(1.8 * len(names), 1.8 * n), squeeze=False)
  for i in range(n):
    for j, name in enumerate(names):
      ax = axes[i, j]
      if name == 'image':
        ax.imshow(images[i, ..., 0], cmap='gray', vmin=0, vmax=1)
      else:
        m = targets[i] if name == 'target' else examples[name][i]
        ax.imshow(m, cmap='tab20', vmin=0, vmax=NUM_CLASSES - 1, interpolation='nearest')
      ax.set_xticks([]), ax.set_yticks([])
      if i == 0:
        ax.set_title(name, fontsize=7)
  fig.suptitle('Test canvases: class maps (0 background, digit + 1)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plot and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  students = [m for m in methods(config) if m != 'scratch']
  cmp = common.versus_scratch(records, students,
                              {'mIoU': 'miou', 'pixel accuracy': 'pixel_accuracy'})
  rows, agg = common.rows_versus_scratch(
      records, cmp, ('mIoU', 'miou', 'mIoU'),
      ('pixel accuracy', 'pixel_accuracy', 'pixel accuracy'), delta=DELTA)
  common.errorbar_plot(agg, x='model', metric='miou',
                       path=os.path.join(out_dir, 'segmentation_miou.png'),
                       title='Digit-canvas segmentation: test mIoU', xlabel='model',
                       ylabel='mIoU (%)')
  verdict = common.reproduced_versus_scratch(cmp, students, 'mIoU')
  notes = (
      f'Setup: digit canvases ({facts["train_size"]} train / {facts["test_size"]} test, '
      f'{facts["image_size"]} px, 11 classes with the background). Teacher `unet_teacher` '
      f'{dict(config.teacher)}, student `unet_student` {dict(config.student)}; Adam '
      f'{config.learning_rate:g}, {config.num_steps} steps, batch {config.batch_size}. Task '
      f'loss: per-pixel CE. +pixel: pixel-wise KL, τ = 1 ({config.pixel_weight:g}); +pair: '
      f'pair-wise similarity KD on `bottleneck` ({config.pair_weight:g}); +holistic: '
      f'−D(student map | image) ({config.holistic_weight:g}) against a `HolisticCritic` '
      f'{list(config.critic_widths)} updated first in each step (WGAN-GP, λ = '
      f'{config.gp_weight:g}, Adam {config.critic_learning_rate:g}, β = (0.5, 0.9)). All '
      'students of a seed share initialisation and data order; Δ is paired per seed. Train '
      'images/s: steps × batch / wall time of the run, compilation included (CPU, 2 '
      'cores).\n\n'
      + common.comparison_lines(list(cmp.values())) + '\n\n' + speed_note(out_dir)
      + 'Plots: `segmentation_miou.png`, `segmentation_examples.png` (predicted class maps). '
      f'Total training time {facts["train_seconds"]:.0f} s.')
  common.write_results(
      config.results, rows, COLUMNS, title='Structured KD for segmentation on digit canvases',
      finding=FINDING, verdict=verdict, command=setup['command'], notes=notes, out_dir=out_dir,
      dataset='digits_segmentation', seeds=common.seeds_of(records))
  return rows
