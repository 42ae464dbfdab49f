"""Experiment 1: KD vs the same student from scratch, with τ, α and the learning rate tuned.

Finding tested (Hinton et al. 2015): *KD beats the same student trained from
scratch.* Protocol (:func:`run_tuned`, shared by experiments 6 and 7): every
method's a-priori grid (scratch: learning rates; KD ``α·CE + (1−α)·τ²·KL``:
learning rate × τ × α) is trained on train minus a stratified validation split
with the tuning seed, distilling from a teacher trained on that same part, and
scored on validation (:mod:`experiments.tuning`). The validation choice is then
trained on the full train split for every evaluation seed, each seed with its
own teacher (teacher ``i`` for student seed ``i``, trained once into
``runs/kd_teachers``), and tested once. The scratch and KD runs of a seed share
the student initialisation and data order, so differences are paired by seed.
KD's test accuracy at every τ of the grid (each with its validation-best α and
learning rate) is also shown, as an exploratory curve. Optionally (MNIST-1D)
the student is distilled on an unlabeled transfer set (Hinton's original setup).

The helpers here (:func:`load_data`, :func:`train_teacher`,
:func:`train_student`, :func:`run_tuned`, :func:`add_deltas`,
:func:`summarise` ...) are shared by ``experiments/topk.py``,
``experiments/dkd_dist.py`` and ``experiments/repdistiller.py``.

    from experiments import temperature
    from experiments.configs import temperature as cfg
    rows = temperature.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from experiments import common
from experiments import stats
from experiments import tuning
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


HOLM_SCRATCH = 'Holm p vs scratch'
# The columns of the tuned experiments 6 and 7.
TUNED_VS_KD_COLUMNS = ('dataset', 'method', 'setting', 'seeds', ACC, DELTA, CI_SCRATCH,
                       HOLM_SCRATCH, VERDICT_SCRATCH, VS_KD, '95% CI vs KD', 'Holm p vs KD',
                       'verdict vs KD', AGREE)


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


def teacher_dir(config, dataset: str, seed: Optional[int] = None, fit: bool = False) -> str:
  """The teacher's run directory; its name encodes everything that defines the teacher.

  ``config.teacher_dir`` (shared by the experiments, so one teacher serves all
  of them) or ``<workdir>/teachers``.

  Args:
    config: the experiment config.
    dataset: ``'mnist1d'`` or ``'digits'``.
    seed: the teacher's seed (default ``config.teacher_seed``).
    fit: a teacher trained on "train minus validation" (``config.tuning``'s
      split), the one the tuning runs distil from.
  """
  spec = config.datasets[dataset].teacher
  seed = config.teacher_seed if seed is None else seed
  samples = config.get('data_samples', 0) if dataset == 'mnist1d' else 0
  split = f'-fit{config.tuning.fraction:g}s{config.tuning.split_seed}' if fit else ''
  name = _slug(f'{dataset}{samples or ""}-{spec.model}-{dict(spec.kwargs)}-{spec.num_steps}steps-'
               f'lr{spec.learning_rate:g}-bs{config.batch_size}-seed{seed}{split}')
  root = config.get('teacher_dir', '') or os.path.join(config.workdir, 'teachers')
  return os.path.join(root, name)


def train_teacher(config, dataset: str, seed: Optional[int] = None, *, data=None,
                  fit: bool = False) -> Setup:
  """Loads the data and trains (or restores, i.e. reuses) one of the dataset's teachers.

  Args:
    config: the experiment config.
    dataset: the dataset.
    seed: the teacher's seed (default ``config.teacher_seed``).
    data: ``(train, test)`` sources (default :func:`load_data`); with
      ``fit=True``, ``(train minus validation, validation)``.
    fit: the teacher of the tuning runs (see :func:`teacher_dir`).

  Returns:
    The :class:`Setup` whose student trains on ``data[0]`` and is evaluated on ``data[1]``.
  """
  seed = config.teacher_seed if seed is None else seed
  train, test = load_data(config, dataset) if data is None else data
  spec = config.datasets[dataset]
  info = kdata.dataset_info(dataset)
  teacher = _module(spec.teacher.model, info.num_classes, spec.teacher.kwargs)
  student = _module(spec.student.model, info.num_classes, spec.student.kwargs)
  workdir = teacher_dir(config, dataset, seed, fit=fit)
  res = runs.train_and_evaluate(
      teacher, train_data=train, eval_data=test, num_steps=spec.teacher.num_steps,
      learning_rate=spec.teacher.learning_rate, batch_size=config.batch_size,
      seed=seed, workdir=workdir, progress=config.progress,
      desc=f'{dataset} teacher')
  print(f'{dataset}: teacher {spec.teacher.model} seed {seed}{" (fit)" if fit else ""} '
        f'{100 * res.metrics["accuracy"]:.1f}% ({res.seconds:.0f}s, {workdir})', flush=True)
  return Setup(dataset, train, test, info.num_classes, teacher, models.as_forward(teacher),
               res.checkpoint_dir, res.state.variables, res.metrics['accuracy'], student, spec)


_MODULES: dict = {}


def _module(name: str, num_classes: int, kwargs):
  """One module object per (model, kwargs): jitted steps and agreement counts compile once."""
  key = (name, num_classes, repr(sorted(dict(kwargs).items())))
  if key not in _MODULES:
    _MODULES[key] = models.create(name, num_classes, **dict(kwargs))
  return _MODULES[key]


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


# ------------------------------------------------- validation tuning, a teacher per seed

@dataclasses.dataclass
class Method:
  """One compared objective and the a-priori grid its hyperparameters are tuned on.

  Attributes:
    name: the method's name in the tables (``'scratch'``, ``'KD'`` ...).
    grid: the settings tried on validation; each has ``'learning_rate'`` and the
      method's own hyperparameters (e.g. ``'τ'``, ``'α'``).
    terms: ``(setting, setup) -> terms`` (``None``: trained from scratch).
    train_data: ``setup -> source`` the student trains on (default: the setup's train split).
    num_steps: the student's steps (default: the dataset's student spec).
    train_label: the "train data" column.
    key: what defines the objective in :func:`run_key` (default: ``name``); methods of
      different experiments with the same key and setting are the same run.
  """
  name: str
  grid: list
  terms: Callable[[Mapping[str, Any], Setup], Optional[tuple]]
  train_data: Optional[Callable[[Setup], Any]] = None
  num_steps: Optional[int] = None
  train_label: str = 'labeled'
  key: str = ''


def teacher_seed(config, seed: int) -> int:
  """The seed of the teacher paired with student seed ``seed``.

  With ``config.teacher_per_seed`` every evaluation seed has its own teacher
  (teacher ``i`` for seed ``i``), so the teacher's variance enters the
  comparisons; otherwise all seeds share ``config.teacher_seed``.

  Examples:
    >>> teacher_seed({'teacher_per_seed': True, 'teacher_seed': 0}, 3)
    3
    >>> teacher_seed({'teacher_seed': 0}, 3)
    0
  """
  return seed if config.get('teacher_per_seed', False) else config['teacher_seed']


def hyperparameters(setting: Mapping[str, Any]) -> dict:
  """A setting without its learning rate (the method's own hyperparameters).

  Examples:
    >>> hyperparameters({'learning_rate': 1e-3, 'τ': 4.0})
    {'τ': 4.0}
  """
  return {k: v for k, v in setting.items() if k != 'learning_rate'}


def setting_label(setting: Mapping[str, Any]) -> str:
  """``'τ=4, α=0.5, lr=0.003'``: a setting for the tables (learning rate last).

  Examples:
    >>> setting_label({'learning_rate': 3e-3, 'τ': 4.0, 'α': 0.5})
    'τ=4, α=0.5, lr=0.003'
    >>> setting_label({'learning_rate': 1e-2})
    'lr=0.01'
  """
  def fmt(v):
    return f'{v:g}' if isinstance(v, (int, float)) else str(v)
  parts = [f'{k}={fmt(v)}' for k, v in hyperparameters(setting).items()]
  return ', '.join(parts + [f'lr={fmt(setting["learning_rate"])}'])


def split_sources(config, dataset: str):
  """``(train, test, train minus validation, validation)`` of ``dataset``."""
  train, test = load_data(config, dataset)
  fit, val = tuning.validation_sources(train, fraction=config.tuning.fraction,
                                       seed=config.tuning.split_seed)
  return train, test, fit, val


def run_key(config, setup: Setup, seed: int, method: Method, setting: Mapping[str, Any]) -> str:
  """A hash of everything that defines one student run (the objective, its setting, the
  teacher's checkpoint, the data, the student and the seed).

  Experiments 1, 6 and 7 share ``config.run_cache``: a run they have in common
  (scratch, KD at the same setting, with the same teacher and seed) is trained once.
  """
  spec = setup.spec.student
  src = method.train_data(setup) if method.train_data else setup.train
  key = {'objective': method.key or method.name, 'setting': sorted(dict(setting).items()),
         'teacher': os.path.relpath(setup.teacher_checkpoint) if setup.teacher_checkpoint else '',
         'train': len(src), 'eval': len(setup.test), 'dataset': setup.dataset,
         'samples': config.get('data_samples', 0), 'student': [spec.model, str(dict(spec.kwargs))],
         'num_steps': method.num_steps or spec.num_steps, 'batch_size': config.batch_size,
         'seed': seed}
  return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _train_method(setup: Setup, config, seed: int, method: Method, setting, desc: str) -> dict:
  cache = config.get('run_cache', '')
  path = cache and os.path.join(cache, f'{run_key(config, setup, seed, method, setting)}.json')
  if path and os.path.exists(path):
    with open(path) as f:
      return dict(json.load(f), restored=True)
  r = train_student(setup, config, seed, method.terms(setting, setup),
                    train_data=method.train_data(setup) if method.train_data else None,
                    num_steps=method.num_steps, learning_rate=setting['learning_rate'],
                    desc=desc)
  if path:
    os.makedirs(cache, exist_ok=True)
    with open(path + '.tmp', 'w') as f:
      json.dump(r, f)
    os.replace(path + '.tmp', path)
  return dict(r, restored=False)


def tune_methods(config, setup_fit: Setup, methods: Sequence[Method]) -> dict[str, dict]:
  """Tunes every method on validation (:func:`experiments.tuning.tune`), tuning seed.

  ``setup_fit`` trains on "train minus validation" (with a teacher trained on
  that split too) and evaluates on the validation split.

  Returns:
    ``{method name: tuning record}``.
  """
  out = {}
  for m in methods:
    restored = []

    def score(s, m=m, restored=restored):
      r = _train_method(setup_fit, config, config.tuning.seed, m, s,
                        f'tune {m.name} {setting_label(s)}')
      restored.append(r['restored'])
      return r['accuracy']

    rec = tuning.tune(m.grid, score)
    rec['restored'] = restored
    print(f'{setup_fit.dataset}: {m.name} tuned ⇒ {setting_label(rec["chosen"])} '
          f'({100 * max(rec["validation_accuracy"]):.1f}% on validation)', flush=True)
    out[m.name] = rec
  return out


def run_tuned(config, methods_for: Callable[[str], Sequence[Method]],
              plan: Optional[Callable[[Method, dict], list]] = None) -> tuple[list[dict], dict]:
  """The protocol of experiments 1, 6 and 7 for every dataset of ``config.datasets_run``.

  1. :func:`tune_methods` on a stratified validation split of train, with a
     teacher trained on the rest of train (seed ``config.tuning.seed``);
  2. for every evaluation seed ``s``: teacher :func:`teacher_seed` ``(s)``
     (trained once on the full train split, checkpointed, restored on rerun)
     and every planned setting of every method, trained on the full train
     split with seed ``s`` and evaluated on test once.

  Args:
    config: the experiment config (with ``tuning``).
    methods_for: ``dataset -> methods``.
    plan: ``(method, tuning record) -> [(setting, chosen?)]``: the settings evaluated
      on test (default: the validation choice alone).

  Returns:
    ``(records, facts)``: one record per (dataset, method, setting, seed), with
    ``delta`` (vs the same seed's scratch student) and ``vs_kd`` (vs KD's
    validation choice, when there is a KD method); ``facts`` holds the tuning
    records, split sizes and teacher accuracies.
  """
  plan = plan or (lambda m, rec: [(rec['chosen'], True)])
  start = time.perf_counter()
  records, facts = [], {'tuning': {}, 'validation_size': {}, 'fit_size': {}, 'train_size': {},
                        'test_size': {}, 'tuning_teacher_validation_accuracy': {}}
  for dataset in config.datasets_run:
    train, test, fit, val = split_sources(config, dataset)
    for key, src in (('train_size', train), ('test_size', test), ('fit_size', fit),
                     ('validation_size', val)):
      facts[key][dataset] = len(src)
    methods = list(methods_for(dataset))
    setup_fit = train_teacher(config, dataset, config.tuning.seed, data=(fit, val), fit=True)
    facts['tuning_teacher_validation_accuracy'][dataset] = float(setup_fit.teacher_accuracy)
    tuned = tune_methods(config, setup_fit, methods)
    facts['tuning'][dataset] = tuned
    for rec in tuned.values():
      facts['tuning_runs'] = facts.get('tuning_runs', 0) + len(rec['restored'])
      facts['tuning_runs_restored'] = facts.get('tuning_runs_restored', 0) + sum(rec['restored'])
    for seed in config.seeds:
      t_seed = teacher_seed(config, seed)
      setup = train_teacher(config, dataset, t_seed, data=(train, test))
      for m in methods:
        for setting, chosen in plan(m, tuned[m.name]):
          r = _train_method(setup, config, seed, m, setting, f'{m.name} {setting_label(setting)}')
          src = m.train_data(setup) if m.train_data else setup.train
          records.append({'dataset': dataset, 'seed': seed, 'teacher seed': t_seed,
                          'teacher accuracy': float(setup.teacher_accuracy),
                          'train data': f'{m.train_label} ({len(src)})', 'method': m.name,
                          'setting': setting_label(setting),
                          'learning rate': setting['learning_rate'],
                          'hyperparameters': hyperparameters(setting), 'chosen': chosen, **r})
      print(f'{dataset} seed {seed} done ({time.perf_counter() - start:.0f}s)', flush=True)
  add_deltas(records, method='method')
  kd = {(r['dataset'], r['seed']): r['accuracy'] for r in records
        if r['method'] == 'KD' and r['chosen']}
  for r in records:
    if kd:
      r['vs_kd'] = r['accuracy'] - kd[(r['dataset'], r['seed'])]
  facts['wall_seconds'] = time.perf_counter() - start
  return records, facts


def save_tuned(config, records: list[dict], facts: dict) -> tuple[list[dict], dict, str]:
  """Writes records.json and setup.json (with ``facts``); returns them as read back."""
  out_dir = common.results_dir(config.results)
  common.save_records(records, os.path.join(out_dir, 'records.json'))
  mode = config.get('mode', 'default')
  setup = common.save_setup(out_dir, experiment=config.experiment,
                            command=command(config, '' if mode == 'default' else mode),
                            config=config, facts=facts)
  return common.load_results(out_dir)[0], setup, out_dir


def teacher_lines(records: Sequence[Mapping[str, Any]], setup: Mapping[str, Any]) -> str:
  """Per dataset: the evaluation teachers' test accuracy (mean ± std over teachers)."""
  config = common.config_of(setup)
  parts = []
  for d in config.datasets_run:
    acc = {r['teacher seed']: r['teacher accuracy'] for r in records if r['dataset'] == d}
    tv = setup['facts']['tuning_teacher_validation_accuracy'][d]
    parts.append(f'{d}: {config.datasets[d].teacher.model} {common.mean_std(list(acc.values()))}% '
                 f'over {len(acc)} teachers (seeds {", ".join(str(s) for s in sorted(acc))}; '
                 f'the tuning teacher: {100 * tv:.1f}% on validation)')
  return '; '.join(parts)


def protocol_note(setup: Mapping[str, Any]) -> str:
  """How the hyperparameters were chosen, with the split sizes, from setup.json."""
  config = common.config_of(setup)
  f = setup['facts']
  sizes = ', '.join(f'{d}: {f["validation_size"][d]} of {f["train_size"][d]}'
                    for d in config.datasets_run)
  per_seed = ('teacher i is paired with student seed i, so the teacher\'s variance enters every '
              'comparison' if config.get('teacher_per_seed', False) else
              f'one teacher (seed {config.teacher_seed}) for all seeds')
  return (f'Hyperparameters were chosen on validation data, never on test: '
          f'`kdjax.data.validation_split(fraction={config.tuning.fraction:g}, '
          f'seed={config.tuning.split_seed})` holds a stratified part of train out ({sizes} '
          f'examples); every setting of each method\'s grid (fixed before the runs) was trained '
          f'on the rest of train with seed {config.tuning.seed} (not an evaluation seed), '
          f'distilling from a teacher trained on that same part with seed {config.tuning.seed}, '
          f'and the best validation accuracy (ties: the first setting) was then trained on the '
          f'full train split for every seed and evaluated on test once. Each evaluation seed has '
          f'its own student initialisation and data order, shared by all methods of that seed; '
          f'{per_seed}. ' + (config.tuning.get('design_note', '') + ' '
                             if config.tuning.get('design_note', '') else ''))


def wall_note(records: Sequence[Mapping[str, Any]], setup: Mapping[str, Any]) -> str:
  """The run's wall time, the evaluation runs' training time and how many were restored."""
  f = setup['facts']
  restored = sum(bool(r.get('restored')) for r in records)
  return (f'Wall time of the run (tuning, teachers and students, shared 2-core CPU): '
          f'{f["wall_seconds"]:.0f} s; training time summed over the evaluation student runs '
          f'{sum(r["seconds"] for r in records):.0f} s; {restored} of {len(records)} evaluation '
          f'runs and {f.get("tuning_runs_restored", 0)} of {f.get("tuning_runs", 0)} tuning runs '
          f'were restored from the shared run cache '
          f'(`{common.config_of(setup).get("run_cache", "")}`, identical runs of experiments 1, '
          '6 and 7).')


def tuned_vs_kd_report(records: list[dict], setup: dict, out_dir: str, *,
                       plot_title: str) -> tuple[list[dict], dict]:
  """The rows, plots and comparisons of experiments 6 and 7 (every method vs KD and scratch).

  Returns:
    ``(rows, {name: Comparison})`` (:func:`summarise_vs_kd`, :func:`compare_vs_kd`).
  """
  rows = summarise_vs_kd(records)
  cmp = compare_vs_kd(records, rows)
  for row in rows:
    c = cmp.get(f'{label_of(row, ("dataset", "method", "setting"))} vs scratch')
    row[HOLM_SCRATCH] = stats.format_p(c.p_holm) if c else '-'
  config = common.config_of(setup)
  for dataset in config.datasets_run:
    sel = [dict(r, label=f"{r['method']}") for r in rows if r['dataset'] == dataset]
    scratch = next(r for r in sel if r['method'] == 'scratch')
    kd = next(r for r in sel if r['method'] == 'KD')
    common.errorbar_plot([r for r in sel if r['method'] not in ('scratch', 'KD')], x='label',
                         metric='accuracy', path=os.path.join(out_dir, f'{dataset}.png'),
                         title=f'{plot_title} on {dataset}', xlabel='objective',
                         baselines={'scratch': scratch['accuracy_mean'],
                                    'KD': kd['accuracy_mean']})
  return rows, cmp


def vs_kd_notes(records, setup, cmp, method_note: str) -> str:
  """The notes of experiments 6 and 7: protocol, grids, teachers, comparisons."""
  tuned = {f'{d}: {m}': rec for d, recs in setup['facts']['tuning'].items()
           for m, rec in recs.items()}
  return (method_note + ' ' + protocol_note(setup)
          + f'Teachers (test accuracy): {teacher_lines(records, setup)}. '
          'Δ columns are paired differences (percentage points); accuracies are mean ± std over '
          'seeds. ' + wall_note(records, setup) + ' Raw numbers: records.json; plots: '
          '<dataset>.png.\n\nValidation accuracy of every setting tried (the grid is in '
          'setup.json, `facts.tuning`). ' + tuning.edge_note(tuned) + '\n\n'
          + tuning.tuning_lines(tuned) + '\n\n' + common.comparison_lines(list(cmp.values())))


# ---------------------------------------------------------------------- experiment

def grid(config, axes: Mapping[str, Sequence[Any]]) -> list[dict]:
  """``config.tuning.learning_rates`` × the method's own axes (the learning rate first)."""
  return tuning.grid_of(learning_rate=[float(v) for v in config.tuning.learning_rates],
                        **{k: [float(v) for v in vs] for k, vs in axes.items()})


def methods(config, dataset: str) -> list[Method]:
  """Scratch, KD on the labeled set over (τ, α) and (MNIST-1D) KD on the transfer set."""
  out = [Method('scratch', grid(config, {}), lambda s, setup: None),
         Method('KD', grid(config, {'τ': config.temperatures, 'α': config.alphas}),
                lambda s, setup: kd_terms(s['α'], s['τ']))]
  if config.transfer.enabled and dataset == 'mnist1d':
    transfer = kdata.transfer_set('mnist1d', num_samples=config.transfer.num_samples,
                                  seed=config.transfer.seed, data_dir=config.data_dir or None)
    out.append(Method(
        'KD (transfer set)',
        tuning.grid_of(learning_rate=[float(v) for v in config.transfer.learning_rates],
                       τ=[float(v) for v in config.transfer.temperatures], α=[0.0]),
        lambda s, setup: kd_terms(0.0, s['τ']), train_data=lambda setup: transfer,
        num_steps=config.transfer.num_steps, train_label='transfer, unlabeled',
        key=f'KD transfer set n{config.transfer.num_samples} s{config.transfer.seed}'))
  return out


def curve_settings(record: Mapping[str, Any]) -> list[tuple[dict, bool]]:
  """For every τ of a KD grid: its best (α, lr) on validation; the overall choice marked.

  Examples:
    >>> rec = {'grid': [{'τ': 1.0, 'α': 0.1}, {'τ': 1.0, 'α': 0.5}, {'τ': 4.0, 'α': 0.1}],
    ...        'validation_accuracy': [0.5, 0.7, 0.6], 'chosen_index': 1}
    >>> [(s['τ'], s['α'], c) for s, c in curve_settings(rec)]
    [(1.0, 0.5, True), (4.0, 0.1, False)]
  """
  best: dict = {}
  for i, (s, a) in enumerate(zip(record['grid'], record['validation_accuracy'])):
    if s['τ'] not in best or a > best[s['τ']][1]:
      best[s['τ']] = (i, a)
  return [(dict(record['grid'][i]), i == record['chosen_index']) for i, _ in best.values()]


def collect(config) -> tuple[list[dict], dict]:
  """Tunes on validation, then trains the chosen settings (and the τ curve) for every seed."""
  common.enable_compilation_cache(config.get('compilation_cache', ''))

  def plan(method, rec):
    if method.name == 'KD' and config.get('test_curve', True):
      return curve_settings(rec)
    return [(rec['chosen'], True)]

  return run_tuned(config, lambda d: methods(config, d), plan)


def write(config, records: list[dict], facts: dict) -> list[dict]:
  """Writes records.json, setup.json, the table, plots and verdict; returns the table rows."""
  return report(*save_tuned(config, records, facts))


COLUMNS = TEMPERATURE_COLUMNS = (
    'dataset', 'train data', 'method', 'τ', 'α', 'learning rate', 'validation choice',
    'validation accuracy', 'seeds', ACC, DELTA, *stats.COLUMNS, AGREE)


def _validation_accuracy(setup, row) -> float:
  rec = setup['facts']['tuning'][row['dataset']][row['method']]
  for s, a in zip(rec['grid'], rec['validation_accuracy']):
    if setting_label(s) == row['setting']:
      return a
  raise KeyError(row['setting'])


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plots and verdict from the records alone; returns the table rows."""
  config = common.config_of(setup)
  keys = ('dataset', 'train data', 'method', 'setting', 'chosen')
  rows = summarise(records, keys)
  # Confirmatory family: each method's validation choice vs scratch. Exploratory family: the
  # test accuracy of every τ of the curve vs scratch (shown, not used for the verdict).
  main, curve = [], []
  for r in rows:
    if r['method'] == 'scratch':
      continue
    diffs = common.paired(records, setting_of(r, keys),
                          {'dataset': r['dataset'], 'method': 'scratch'})
    if r['chosen']:
      main.append((f'{label_of(r, keys[:4])} (validation choice) vs scratch', diffs))
    if r['method'] == 'KD':
      curve.append((f'{label_of(r, keys[:4])} vs scratch (τ curve)', diffs))
  cmp = {c.name: c for c in stats.compare(main)}
  cmp_curve = {c.name: c for c in stats.compare(curve)}
  for r in rows:
    hp = next(x['hyperparameters'] for x in records
              if x['dataset'] == r['dataset'] and x['method'] == r['method']
              and x['setting'] == r['setting'])
    lr = next(x['learning rate'] for x in records
              if x['dataset'] == r['dataset'] and x['setting'] == r['setting'])
    r['τ'] = f"{hp['τ']:g}" if 'τ' in hp else '-'
    r['α'] = f"{hp['α']:g}" if 'α' in hp else '-'
    r['learning rate'] = f'{lr:g}'
    r['validation choice'] = 'yes' if r['chosen'] else 'no (τ curve)'
    r['validation accuracy'] = f'{100 * _validation_accuracy(setup, r):.1f}'
    c = (cmp.get(f'{label_of(r, keys[:4])} (validation choice) vs scratch') if r['chosen']
         else cmp_curve.get(f'{label_of(r, keys[:4])} vs scratch (τ curve)'))
    r.update(stats.columns(c, delta=DELTA))
  for dataset in config.datasets_run:
    sel = [dict(r, tau=float(r['τ'])) for r in rows
           if r['dataset'] == dataset and r['method'] == 'KD']
    scratch = next(r for r in rows if r['dataset'] == dataset and r['method'] == 'scratch')
    common.errorbar_plot(sel, x='tau', metric='accuracy',
                         path=os.path.join(out_dir, f'{dataset}.png'),
                         title=f'KD on {dataset}: test accuracy vs τ (α, lr tuned per τ)',
                         xlabel='temperature τ', baselines={'scratch': scratch['accuracy_mean']},
                         xscale='log')
  verdicts = []
  for dataset in config.datasets_run:
    kd = next(r for r in rows if r['dataset'] == dataset and r['method'] == 'KD'
              and r['chosen'])
    c = cmp[f'{label_of(kd, keys[:4])} (validation choice) vs scratch']
    word = {stats.BETTER: 'holds', stats.WORSE: 'contradicted (KD is worse)'}.get(
        c.verdict, 'not reproduced (no significant difference)')
    kd_rows = [r for r in rows if r['dataset'] == dataset and r['method'] == 'KD']
    test_best = max(kd_rows, key=lambda r: r['accuracy_mean'])
    val_best = kd['τ']
    same = ('the same τ' if test_best['τ'] == val_best else
            f'τ={test_best["τ"]} (where validation chose τ={val_best})')
    rec = setup['facts']['tuning'][dataset]['KD']
    ties = sum(a == max(rec['validation_accuracy']) for a in rec['validation_accuracy'])
    tie_note = (f' ({ties} of {len(rec["grid"])} settings tie at the best validation accuracy; '
                'ties go to the first of the grid)' if ties > 1 else '')
    text = (f'**{dataset}**, labeled set: **{word}**. The validation choice, KD with '
            f'{kd["setting"]}{tie_note}: {kd[ACC]}% vs scratch {stats.summary(c)} ({c.wins}/{c.n} '
            f'seeds above scratch). On the τ curve (each τ with its validation-best α and lr), the '
            f'highest mean test accuracy is at {same}; that is a test-set observation, not a '
            f'choice.')
    tr = [r for r in rows if r['dataset'] == dataset and r['method'] == 'KD (transfer set)']
    for r in tr:
      ct = cmp[f'{label_of(r, keys[:4])} (validation choice) vs scratch']
      text += (f' KD alone on the unlabeled transfer set (Hinton\'s setup; {r["setting"]}, '
               f'chosen on validation): {r[ACC]}%, vs the labeled-set scratch student '
               f'{stats.summary(ct)}.')
    verdicts.append(text)
  students = ', '.join(f'{d}: {config.datasets[d].student.model} '
                       f'{dict(config.datasets[d].student.kwargs)}, '
                       f'{config.datasets[d].student.num_steps} steps'
                       for d in config.datasets_run)
  tuned = {f'{d}: {m}': rec for d, recs in setup['facts']['tuning'].items()
           for m, rec in recs.items()}
  transfer_note = (f'; on the transfer set α = 0 ({config.transfer.num_steps} steps). '
                   if config.transfer.enabled else
                   ' (KD on an unlabeled transfer set, Hinton\'s original setup, is tuned and '
                   'tested with its controls in experiments/results/transfer). ')
  notes = (
      f'Teachers (test accuracy): {teacher_lines(records, setup)}. Students (Adam, cosine '
      f'decay, batch {config.batch_size}): {students}. The loss is α·CE + (1−α)·τ²·KL(p_T^τ‖'
      f'p_S^τ)' + transfer_note
      + protocol_note(setup)
      + 'Rows marked "validation choice" are the settings chosen on validation; their '
      'comparisons with scratch form one Holm family, which the verdict uses. The other KD rows '
      'are the τ curve: for every τ of the grid, its best (α, lr) on validation, trained and '
      'tested like the choice; their comparisons with scratch (the chosen τ included) are a '
      'second, exploratory Holm family, shown and not used for the verdict. Δ is a paired '
      'difference (percentage points); accuracies are mean ± std over seeds. '
      + wall_note(records, setup) + ' Raw per-seed numbers: records.json; plots: '
      '<dataset>.png.\n\nValidation accuracy of every setting tried (grids in setup.json, '
      '`facts.tuning`). ' + tuning.edge_note(tuned) + '\n\n' + tuning.tuning_lines(tuned) + '\n\n'
      + common.comparison_lines(list(cmp.values())) + '\n\nExploratory (τ curve), '
      + common.comparison_lines(list(cmp_curve.values()))[0].lower()
      + common.comparison_lines(list(cmp_curve.values()))[1:])
  common.write_results(
      config.results, rows, TEMPERATURE_COLUMNS,
      title='KD vs scratch, with τ, α and the learning rates chosen on validation',
      finding='KD beats the same student trained from scratch (Hinton et al. 2015), at the '
      'temperature τ and weight α chosen on validation data.',
      verdict=' '.join(verdicts), command=setup['command'], notes=notes, out_dir=out_dir,
      dataset=dataset_names(config), seeds=common.seeds_of(records))
  return rows


def run(config) -> list[dict]:
  """Tunes, trains and evaluates every method for every dataset and seed; writes the results."""
  fresh_results(config)
  return write(config, *collect(config))
