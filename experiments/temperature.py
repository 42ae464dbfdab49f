"""Experiment 1: KD vs the same student from scratch, across temperatures τ and weights α.

Finding tested (Hinton et al. 2015): *KD beats the
same student trained from scratch.* For each dataset a teacher is trained
once (seed ``config.teacher_seed``); for each student seed the student is
trained from scratch and with ``α·CE + (1−α)·τ²·KL`` for every (τ, α) of the
grid, with the same initialisation and data order as its scratch run, so
the differences are paired by seed. Optionally (MNIST-1D) the student is also
distilled on an unlabeled transfer set, where only the teacher's outputs
are used (Hinton's original setup).

The helpers here (:func:`load_data`, :func:`train_teacher`,
:func:`train_student`, :func:`add_deltas`, :func:`summarise`) are shared by
``experiments/topk.py`` and ``experiments/dkd_dist.py``.

    from experiments import temperature
    from experiments.configs import temperature as cfg
    rows = temperature.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from experiments import common
from experiments import stats
from kdjax import data as kdata
from kdjax import models
from kdjax import runs
from kdjax import steps


ACC, DELTA, AGREE = 'test accuracy', 'Δ vs scratch (paired)', 'agreement w/ teacher'
VS_KD = 'Δ vs KD (paired)'
CI_SCRATCH, VERDICT_SCRATCH = '95% CI vs scratch', 'verdict vs scratch'
# The columns of experiments 6 and 7 (topk, dkd_dist): Holm p and verdict for both baselines.
VS_KD_COLUMNS = (ACC, DELTA, CI_SCRATCH, VERDICT_SCRATCH, VS_KD, '95% CI vs KD', 'Holm p vs KD',
                 'verdict vs KD', AGREE)
COLUMNS = ('dataset', 'train data', 'method', 'τ', 'α', 'seeds', ACC, DELTA, *stats.COLUMNS,
           AGREE)
KEYS = ('dataset', 'train data', 'method', 'τ', 'α')


# ------------------------------------------------------------------ shared helpers

@dataclasses.dataclass
class Setup:
  """One dataset's data, teacher and student model."""
  dataset: str
  train: Any
  test: Any
  num_classes: int
  teacher: Any
  teacher_forward: Any
  teacher_checkpoint: str
  teacher_variables: Any
  teacher_accuracy: float
  student: Any
  spec: Any


def load_data(config, dataset: str):
  """Train/test sources (``config.data_samples`` > 0: a small generated MNIST-1D)."""
  data_dir = config.data_dir or None
  cfg = None
  if dataset == 'mnist1d' and config.get('data_samples', 0):
    cfg = kdata.mnist1d_config(config.data_samples)
  return (kdata.load(dataset, 'train', data_dir=data_dir, config=cfg),
          kdata.load(dataset, 'test', data_dir=data_dir, config=cfg))


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.=-]+', '', text.replace(' ', '_'))


def teacher_dir(config, dataset: str) -> str:
  """The teacher's run directory; its name encodes everything that defines the teacher.

  ``config.teacher_dir`` (shared by the experiments, so one teacher serves all
  of them) or ``<workdir>/teachers``.
  """
  spec = config.datasets[dataset].teacher
  samples = config.get('data_samples', 0) if dataset == 'mnist1d' else 0
  name = _slug(f'{dataset}{samples or ""}-{spec.model}-{dict(spec.kwargs)}-{spec.num_steps}steps-'
               f'lr{spec.learning_rate:g}-bs{config.batch_size}-seed{config.teacher_seed}')
  root = config.get('teacher_dir', '') or os.path.join(config.workdir, 'teachers')
  return os.path.join(root, name)


def train_teacher(config, dataset: str) -> Setup:
  """Loads the data and trains (or resumes, i.e. reuses) the dataset's teacher."""
  train, test = load_data(config, dataset)
  spec = config.datasets[dataset]
  info = kdata.dataset_info(dataset)
  teacher = models.create(spec.teacher.model, info.num_classes, **dict(spec.teacher.kwargs))
  student = models.create(spec.student.model, info.num_classes, **dict(spec.student.kwargs))
  workdir = teacher_dir(config, dataset)
  res = runs.train_and_evaluate(
      teacher, train_data=train, eval_data=test, num_steps=spec.teacher.num_steps,
      learning_rate=spec.teacher.learning_rate, batch_size=config.batch_size,
      seed=config.teacher_seed, workdir=workdir, progress=config.progress,
      desc=f'{dataset} teacher')
  print(f'{dataset}: teacher {spec.teacher.model} {100 * res.metrics["accuracy"]:.1f}% '
        f'({res.seconds:.0f}s, {workdir})', flush=True)
  return Setup(dataset, train, test, info.num_classes, teacher, models.as_forward(teacher),
               res.checkpoint_dir, res.state.variables, res.metrics['accuracy'], student, spec)


@functools.lru_cache(maxsize=None)
def _agreement_counts(student, teacher):
  """One jitted top-1 agreement count per (student, teacher) module pair (compiled once)."""
  s_fwd, t_fwd = models.as_forward(student), models.as_forward(teacher)

  @jax.jit
  def counts(sv, tv, batch):
    s = s_fwd(sv, batch['x'], train=False).logits.argmax(-1)
    t = t_fwd(tv, batch['x'], train=False).logits.argmax(-1)
    return jnp.sum((s == t) & batch['mask']), jnp.sum(batch['mask'])

  return counts


def _agreement(setup: Setup, student_variables) -> float:
  """Top-1 agreement of a student with the teacher on the test set."""
  counts = _agreement_counts(setup.student, setup.teacher)
  same = total = 0
  for batch in _eval_batches(setup):
    a, b = counts(student_variables, setup.teacher_variables, batch)
    same, total = same + int(a), total + int(b)
  return same / max(total, 1)


def _eval_batches(setup: Setup):
  return iter(kdata.make_pipeline(setup.test, batch_size=500, seed=0, shuffle=False,
                                  drop_remainder=False, num_epochs=1))


def train_student(setup: Setup, config, seed: int, terms: Optional[Sequence[steps.Term]],
                  *, train_data=None, num_steps: Optional[int] = None,
                  learning_rate: Optional[float] = None, desc: str = 'student') -> dict:
  """Trains the student (``terms=None``: from scratch) and returns its test metrics.

  Returns:
    ``{'accuracy', 'agreement', 'seconds'}``; agreement (top-1, on the test
    set) with the teacher is measured for scratch students too.
  """
  needs_teacher = terms is not None and any(t.teacher is not None for t in terms)
  res = runs.train_and_evaluate(
      setup.student, train_data=setup.train if train_data is None else train_data,
      eval_data=setup.test, num_steps=num_steps or setup.spec.student.num_steps,
      learning_rate=learning_rate or setup.spec.student.learning_rate,
      batch_size=config.batch_size, seed=seed, terms=terms,
      teacher=setup.teacher if needs_teacher else None,
      teacher_variables=setup.teacher_variables if needs_teacher else None,
      workdir=None, progress=config.progress, desc=desc)
  agreement = res.metrics.get('agreement')
  if agreement is None:
    agreement = _agreement(setup, res.state.variables)
  return {'accuracy': float(res.metrics['accuracy']), 'agreement': float(agreement),
          'seconds': float(res.seconds)}


def kd_terms(alpha: float, temperature: float) -> tuple[steps.Term, ...]:
  """``α·CE + (1−α)·τ²·KL`` (α = 0: the KD term alone, e.g. on a transfer set)."""
  kd = steps.soft_kd(1.0 - alpha, temperature=temperature)
  return (steps.task_ce(alpha), kd) if alpha > 0 else (kd,)


def add_deltas(records: list[dict], *, group: str = 'dataset', method: str = 'method',
               baseline: str = 'scratch') -> None:
  """Adds ``delta`` = accuracy − the same seed's baseline accuracy to every record."""
  base = {(r[group], r['seed']): r['accuracy'] for r in records if r[method] == baseline}
  for r in records:
    r['delta'] = r['accuracy'] - base[(r[group], r['seed'])]


def summarise(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict]:
  """Mean ± std rows over seeds with the display columns ACC, DELTA, AGREE."""
  rows = common.aggregate(records, keys, ['accuracy', 'delta', 'agreement'],
                          percent=['accuracy', 'delta', 'agreement'])
  for row in rows:
    row[ACC], row[AGREE] = row['accuracy'], row['agreement']
    row[DELTA] = '-' if row.get('method') == 'scratch' else (
        f"{100 * row['delta_mean']:+.1f} ± {100 * row['delta_std']:.1f}")
  return rows


def save(config, records: list[dict]) -> tuple[list[dict], dict, str]:
  """Writes records.json and setup.json; returns ``(records as read back, setup, out_dir)``."""
  out_dir = common.results_dir(config.results)
  common.save_records(records, os.path.join(out_dir, 'records.json'))
  setup = common.save_setup(out_dir, experiment=config.experiment, command=command(config),
                            config=config)
  return common.load_results(out_dir)[0], setup, out_dir


def dataset_names(config) -> str:
  """``'MNIST-1D, scikit-learn digits'``: the datasets run, by their display names."""
  names = {'mnist1d': 'MNIST-1D', 'digits': 'scikit-learn digits'}
  return ', '.join(names.get(d, d) for d in config.datasets_run)


def setting_of(row: Mapping[str, Any], keys: Sequence[str]) -> dict:
  """The ``{key: value}`` selector of a summary row (for :func:`experiments.common.paired`)."""
  return {k: row[k] for k in keys}


def label_of(row: Mapping[str, Any], keys: Sequence[str]) -> str:
  """``'mnist1d, KD, τ=4, α=0.1'``: a summary row's name in a family of comparisons."""
  parts = []
  for k in keys:
    v = row[k]
    if v in ('-', '—'):
      continue
    parts.append(f'{k}={v:g}' if isinstance(v, float) else str(v))
  return ', '.join(parts)


def compare_vs_kd(records: Sequence[Mapping[str, Any]], rows: list[dict],
                  keys: Sequence[str] = ('dataset', 'method', 'setting')) -> dict:
  """Adds the paired vs-scratch and vs-KD columns to :func:`summarise_vs_kd` rows.

  The family (one Holm correction): every non-scratch row vs scratch, and every row
  other than scratch and KD vs KD, each paired by seed within its dataset.

  Returns:
    ``{name: Comparison}``.
  """
  family = []
  for row in rows:
    if row['method'] == 'scratch':
      continue
    scratch = {'dataset': row['dataset'], 'method': 'scratch'}
    family.append((f'{label_of(row, keys)} vs scratch',
                   common.paired(records, setting_of(row, keys), scratch)))
    if row['method'] != 'KD':
      kd = {'dataset': row['dataset'], 'method': 'KD'}
      family.append((f'{label_of(row, keys)} vs KD',
                     common.paired(records, setting_of(row, keys), kd)))
  cmp = {c.name: c for c in stats.compare(family)}
  for row in rows:
    vs_s = cmp.get(f'{label_of(row, keys)} vs scratch')
    vs_kd = cmp.get(f'{label_of(row, keys)} vs KD')
    row[DELTA] = stats.format_delta(vs_s) if vs_s else '-'
    row[CI_SCRATCH] = stats.format_ci(vs_s) if vs_s else '-'
    row[VERDICT_SCRATCH] = vs_s.verdict if vs_s else '-'
    row.update({k + ' vs KD' if k != VS_KD else k: v
                for k, v in stats.columns(vs_kd, delta=VS_KD).items()})
  return cmp


def collect_vs_kd(config, methods_for: Callable[[Setup], Sequence[tuple]]) -> list[dict]:
  """Trains ``methods_for(setup)`` for every dataset and seed; adds paired deltas.

  ``methods_for`` gives ``(method, setting, terms)`` triples, among them
  ``'scratch'`` and ``'KD'``; every record gets ``delta`` (vs scratch) and
  ``vs_kd`` (vs KD), paired by dataset and seed.
  """
  records = []
  start = time.perf_counter()
  for dataset in config.datasets_run:
    setup = train_teacher(config, dataset)
    compared = methods_for(setup)
    for seed in config.seeds:
      for method, setting, terms in compared:
        r = train_student(setup, config, seed, terms, desc=f'{method} {setting}')
        records.append({'dataset': dataset, 'seed': seed, 'method': method,
                        'setting': setting, 'teacher accuracy': setup.teacher_accuracy, **r})
      print(f'{dataset} seed {seed} done ({time.perf_counter() - start:.0f}s)', flush=True)
  add_deltas(records)
  kd_acc = {(r['dataset'], r['seed']): r['accuracy'] for r in records if r['method'] == 'KD'}
  for r in records:
    r['vs_kd'] = r['accuracy'] - kd_acc[(r['dataset'], r['seed'])]
  return records


def summarise_vs_kd(records: Sequence[Mapping[str, Any]]) -> list[dict]:
  """:func:`summarise` by (dataset, method, setting), with the paired Δ vs KD column."""
  rows = summarise(records, ['dataset', 'method', 'setting'])
  vs_kd = common.aggregate(records, ['dataset', 'method', 'setting'], ['vs_kd'],
                           percent=['vs_kd'])
  for row, v in zip(rows, vs_kd):
    row['vs_kd_mean'], row['vs_kd_std'] = v['vs_kd_mean'], v['vs_kd_std']
    row[VS_KD] = '-' if row['method'] in ('KD', 'scratch') else (
        f"{100 * v['vs_kd_mean']:+.1f} ± {100 * v['vs_kd_std']:.1f}")
  return rows


def fresh_results(config) -> str:
  """Clears the experiment's student workdir if asked; returns the results directory."""
  if config.get('fresh', False) and os.path.isdir(config.workdir):
    shutil.rmtree(config.workdir)
  return common.results_dir(config.results)


def command(config, mode: str = '') -> str:
  return (f'python -m experiments.run --config experiments/configs/{config.experiment}.py'
          + (f':{mode}' if mode else ''))


# ---------------------------------------------------------------------- experiment

def collect(config) -> list[dict]:
  """Trains the teachers and every student; returns one record per (setting, seed)."""
  records = []
  start = time.perf_counter()
  for dataset in config.datasets_run:
    setup = train_teacher(config, dataset)
    n = len(setup.train)
    transfer = None
    if config.transfer.enabled and dataset == 'mnist1d':
      transfer = kdata.transfer_set('mnist1d', num_samples=config.transfer.num_samples,
                                    seed=config.transfer.seed, data_dir=config.data_dir or None)
    for seed in config.seeds:
      base = {'dataset': dataset, 'seed': seed, 'teacher accuracy': setup.teacher_accuracy}
      r = train_student(setup, config, seed, None, desc='scratch')
      records.append({**base, 'train data': f'labeled ({n})', 'method': 'scratch', 'τ': '-',
                      'α': '-', **r})
      for tau in config.temperatures:
        for alpha in config.alphas:
          r = train_student(setup, config, seed, kd_terms(alpha, tau), desc=f'KD τ={tau}')
          records.append({**base, 'train data': f'labeled ({n})', 'method': 'KD', 'τ': tau,
                          'α': alpha, **r})
      if transfer is not None:
        for tau in config.transfer.temperatures:
          r = train_student(setup, config, seed, kd_terms(0.0, tau), train_data=transfer,
                            num_steps=config.transfer.num_steps,
                            learning_rate=config.transfer.learning_rate,
                            desc=f'transfer KD τ={tau}')
          records.append({**base, 'train data': f'transfer ({len(transfer)} unlabeled)',
                          'method': 'KD (transfer set)', 'τ': tau, 'α': 0.0, **r})
      print(f'{dataset} seed {seed} done ({time.perf_counter() - start:.0f}s)', flush=True)
  add_deltas(records)
  return records


def write(config, records: list[dict]) -> list[dict]:
  """Writes records.json, setup.json, the table, plots and verdict; returns the table rows."""
  return report(*save(config, records))


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plots and verdict from the records alone; returns the table rows."""
  config = common.config_of(setup)
  rows = summarise(records, KEYS)
  family = [(f'{label_of(r, KEYS)} vs scratch',
             common.paired(records, setting_of(r, KEYS),
                           {'dataset': r['dataset'], 'method': 'scratch'}))
            for r in rows if r['method'] != 'scratch']
  cmp = {c.name: c for c in stats.compare(family)}
  for r in rows:
    r.update(stats.columns(cmp.get(f'{label_of(r, KEYS)} vs scratch'), delta=DELTA))
  for dataset in config.datasets_run:
    sel = [dict(r, tau=f'{r["τ"]:g}', series=f'α={r["α"]:g}') for r in rows
           if r['dataset'] == dataset and r['method'] == 'KD']
    scratch = [r for r in rows if r['dataset'] == dataset and r['method'] == 'scratch'][0]
    common.errorbar_plot(sel, x='tau', metric='accuracy', series='series',
                         path=os.path.join(out_dir, f'{dataset}.png'),
                         title=f'KD on {dataset} (labeled set): accuracy vs τ',
                         xlabel='temperature τ', baselines={'scratch': scratch['accuracy_mean']})
  verdicts = []
  for dataset in config.datasets_run:
    kd_rows = [r for r in rows if r['dataset'] == dataset and r['method'] == 'KD']
    kd_cmp = [cmp[f'{label_of(r, KEYS)} vs scratch'] for r in kd_rows]
    better = [c for c in kd_cmp if c.verdict == stats.BETTER]
    worse = [c for c in kd_cmp if c.verdict == stats.WORSE]
    best_row, best = max(zip(kd_rows, kd_cmp), key=lambda rc: rc[1].mean)
    worst_row, worst = min(zip(kd_rows, kd_cmp), key=lambda rc: rc[1].mean)
    if better and not worse:
      word = 'holds' if len(better) == len(kd_cmp) else 'holds for some settings'
    elif worse and not better:
      word = 'contradicted for some settings'
    elif better and worse:
      word = 'mixed'
    else:
      word = 'not reproduced (no setting significantly better)'
    text = (f'**{dataset}**, labeled set: **{word}**. KD is significantly better than scratch '
            f'in {len(better)} and worse in {len(worse)} of {len(kd_cmp)} (τ, α) settings; '
            f'nominally best τ={best_row["τ"]:g}, α={best_row["α"]:g}: {stats.summary(best)} '
            f'({best.wins}/{best.n} seeds); worst τ={worst_row["τ"]:g}, α={worst_row["α"]:g}: '
            f'{stats.format_delta(worst)} points.')
    tr_rows = [r for r in rows if r['dataset'] == dataset and r['method'] == 'KD (transfer set)']
    if tr_rows:
      tr_cmp = [cmp[f'{label_of(r, KEYS)} vs scratch'] for r in tr_rows]
      tr_better = [c for c in tr_cmp if c.verdict == stats.BETTER]
      best_tr = max(zip(tr_rows, tr_cmp), key=lambda rc: rc[1].mean)
      text += (f' With an unlabeled transfer set (Hinton\'s setup), KD alone is significantly '
               f'better than the labeled-set scratch student at {len(tr_better)} of '
               f'{len(tr_cmp)} temperatures; best τ={best_tr[0]["τ"]:g}: {best_tr[0][ACC]}%, '
               f'{stats.summary(best_tr[1])}.')
    verdicts.append(text)
  teacher_acc = {d: next(r['teacher accuracy'] for r in records if r['dataset'] == d)
                 for d in config.datasets_run}
  teachers = ', '.join(f'{d}: {config.datasets[d].teacher.model} {100 * teacher_acc[d]:.1f}%'
                       for d in config.datasets_run)
  scratch_acc = {r['dataset']: r['accuracy_mean'] for r in rows if r['method'] == 'scratch'}
  gaps = ', '.join(f'{d} {100 * (teacher_acc[d] - scratch_acc[d]):.1f}'
                   for d in config.datasets_run)
  students = ', '.join(f'{d}: {config.datasets[d].student.model} '
                       f'{dict(config.datasets[d].student.kwargs)}, '
                       f'{config.datasets[d].student.num_steps} steps, '
                       f'lr {config.datasets[d].student.learning_rate:g}'
                       for d in config.datasets_run)
  notes = (
      f'Teachers (one per dataset, seed {config.teacher_seed}; test accuracy): {teachers}. '
      f'Students (Adam, cosine decay, batch {config.batch_size}): {students}. Seeds vary the '
      'student initialisation and data order; the scratch and KD runs of a seed share both, '
      'so Δ is a paired difference (percentage points); accuracies are mean ± std over seeds. '
      'The loss is α·CE + (1−α)·τ²·KL(p_T^τ‖p_S^τ); on the transfer set '
      f'α = 0 ({config.transfer.num_steps} steps, lr {config.transfer.learning_rate:g}). '
      'Picking the best (τ, α) by test accuracy is optimistic; the count of settings that are '
      'significantly better than scratch is the fairer summary. Teacher − scratch student gap '
      f'(points): {gaps}; where it is small there is little to transfer. Training time (sum '
      f'over student runs, shared 2-core CPU): {sum(r["seconds"] for r in records):.0f} s. Raw '
      'per-seed numbers: records.json; plots: <dataset>.png.\n\n'
      + common.comparison_lines(list(cmp.values())))
  common.write_results(
      config.results, rows, COLUMNS,
      title='KD vs scratch across temperature τ and weight α',
      finding='KD beats the same student trained from scratch (Hinton et al. 2015).',
      verdict=' '.join(verdicts), command=setup['command'], notes=notes, out_dir=out_dir,
      dataset=dataset_names(config), seeds=common.seeds_of(records))
  return rows


def run(config) -> list[dict]:
  """Runs the (τ, α) grid, scratch and (optionally) transfer-set KD; writes the results."""
  fresh_results(config)
  return write(config, collect(config))
