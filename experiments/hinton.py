"""Hinton KD on MNIST-1D: teacher, scratch, KD and transfer-set KD students, and its controls.

Usable from a notebook::

    from experiments import hinton
    from experiments.configs import demo
    rows = hinton.run(demo.get_config('quick'))
"""

from __future__ import annotations

import os
import shutil
import time

import jax

from experiments import report
from kdjax import data as kdata
from kdjax import models
from kdjax import runs
from kdjax import steps


TRANSFER_STAGES = ('transfer', 'transfer_labels', 'transfer_hard')
COLUMNS = ('run', 'model', 'params', 'train data', 'test accuracy', 'agreement w/ teacher',
           'steps', 'wall time (s)')


def run(config) -> list[dict]:
  """Runs the configured stages and returns one result row per stage."""
  if config.fresh and os.path.isdir(config.workdir):
    shutil.rmtree(config.workdir)
  data_dir = config.data_dir or None
  info = kdata.dataset_info(config.dataset)
  t0 = time.perf_counter()
  train_src = kdata.load(config.dataset, 'train', data_dir=data_dir)
  test_src = kdata.load(config.dataset, 'test', data_dir=data_dir)
  print(f'Loaded {config.dataset}: {len(train_src)} train / {len(test_src)} test examples '
        f'({time.perf_counter() - t0:.1f}s).')
  teacher = models.create(config.teacher.model, info.num_classes, **config.teacher.model_kwargs)
  student = models.create(config.student.model, info.num_classes, **config.student.model_kwargs)
  teacher_dir = os.path.join(config.workdir, 'teacher')
  teacher_ckpt = os.path.join(teacher_dir, 'checkpoints')
  common = dict(eval_data=test_src, batch_size=config.batch_size, seed=config.seed,
                progress=config.progress)
  rows, transfer = [], None

  def row(name, model_name, result, train_name, num_steps):
    rows.append({
        'run': name, 'model': model_name, 'params': f'{result.num_params:,}',
        'train data': train_name,
        'test accuracy': f'{100 * result.metrics["accuracy"]:.1f}%',
        'agreement w/ teacher': (f'{100 * result.metrics["agreement"]:.1f}%'
                                 if 'agreement' in result.metrics else '-'),
        'steps': num_steps, 'wall time (s)': f'{result.seconds:.1f}'})

  kd_terms = (steps.task_ce(config.kd.alpha),
              steps.soft_kd(1 - config.kd.alpha, temperature=config.kd.temperature))
  for stage in config.stages:
    if stage == 'teacher':
      res = runs.train_and_evaluate(
          teacher, train_data=train_src, num_steps=config.teacher.num_steps,
          learning_rate=config.teacher.learning_rate, workdir=teacher_dir, desc='teacher',
          **common)
      row('teacher', config.teacher.model, res, 'labeled train', config.teacher.num_steps)
    elif stage == 'scratch':
      res = runs.train_and_evaluate(
          student, train_data=train_src, num_steps=config.student.num_steps,
          learning_rate=config.learning_rates[stage],
          workdir=os.path.join(config.workdir, 'scratch'), desc='student (scratch)', **common)
      row('student from scratch', config.student.model, res, 'labeled train',
          config.student.num_steps)
    elif stage == 'kd':
      res = runs.train_and_evaluate(
          student, train_data=train_src, num_steps=config.student.num_steps,
          learning_rate=config.learning_rates[stage], terms=kd_terms, teacher=teacher,
          teacher_checkpoint=teacher_ckpt, workdir=os.path.join(config.workdir, 'kd'),
          desc='student (KD)', **common)
      row(f'KD student (tau={config.kd.temperature:g}, alpha={config.kd.alpha:g})',
          config.student.model, res, 'labeled train', config.student.num_steps)
    elif stage in TRANSFER_STAGES:
      if transfer is None:
        t0 = time.perf_counter()
        kw = dict(num_samples=config.transfer.num_samples, seed=config.transfer.seed,
                  data_dir=data_dir)
        transfer = {False: kdata.transfer_set(config.dataset, **kw),
                    True: kdata.transfer_set(config.dataset, labeled=True, **kw)}
        print(f'Transfer set: {len(transfer[False])} inputs ({time.perf_counter() - t0:.1f}s).')
      objective, labeled, name = {
          'transfer': ((steps.soft_kd(1.0, temperature=config.transfer.temperature),), False,
                       f'KD student, transfer set (tau={config.transfer.temperature:g})'),
          'transfer_labels': ((steps.task_ce(),), True, 'student, transfer set, true labels'),
          'transfer_hard': ((steps.hard_kd(),), False,
                            "student, transfer set, teacher's hard labels")}[stage]
      needs_teacher = not labeled
      res = runs.train_and_evaluate(
          student, train_data=transfer[labeled], num_steps=config.transfer.num_steps,
          learning_rate=config.learning_rates[stage], terms=objective,
          teacher=teacher if needs_teacher else None,
          teacher_checkpoint=teacher_ckpt if needs_teacher else None,
          workdir=os.path.join(config.workdir, stage), desc=f'student ({stage})', **common)
      row(name, config.student.model, res,
          f'{len(transfer[labeled]):,} ' + ('labeled' if labeled else 'unlabeled'),
          config.transfer.num_steps)
    else:
      raise ValueError(f'Unknown stage {stage!r}; known: teacher, scratch, kd, '
                       f'{", ".join(TRANSFER_STAGES)}.')
  report.write_table(rows, COLUMNS, os.path.join(config.workdir, 'summary'),
                     title=f'Hinton KD on {config.dataset} (seed {config.seed}, '
                     f'{jax.default_backend()})')
  return rows
