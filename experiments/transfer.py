"""Transfer-set controls: how much of transfer-set KD's gain is the teacher's soft targets?

The demo's headline compares an MLP trained on 4,000 labeled MNIST-1D examples
for 3,000 steps with the same MLP distilled on 50,000 fresh generated inputs
for 10,000 steps: more data and KD are mixed. This experiment separates them.
Per seed (teacher and students all retrained) it trains the student

* ``scratch``: cross-entropy on the labeled set;
* ``KD (labeled)``: ``α·CE + (1−α)·τ²·KL`` on the labeled set;
* ``transfer KD``: ``τ²·KL`` to the teacher on the transfer inputs (the demo's);
* ``transfer, true labels``: cross-entropy on the same inputs with the labels
  the generator drew them with;
* ``transfer, hard labels``: cross-entropy on the same inputs against the
  teacher's argmax (:func:`kdjax.losses.hard_label_distillation`).

The three transfer students run the same number of steps. Each method's
learning rate (and the transfer KD temperature) is chosen on a generated
validation set, disjoint from the labeled and transfer sets, by the runs of
``config.tuning_seed`` over ``config.grid``; every grid point is recorded.
Test accuracy is then measured once per seed and method. Comparisons are
paired by seed with Holm's correction (:mod:`experiments.stats`).

Usable from a notebook::

    from experiments import transfer
    from experiments.configs import transfer as cfg
    rows = transfer.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from experiments import common
from experiments import stats
from experiments import tuning
from experiments.dml import fresh_workdir
from experiments.dml import run_dir
from experiments.takd import load_data
from kdjax import data as kdata
from kdjax import models
from kdjax import runs
from kdjax import steps


SCRATCH, KD, TRANSFER_KD, TRUE_LABELS, HARD_LABELS = (
    'scratch', 'KD (labeled)', 'transfer KD', 'transfer, true labels', 'transfer, hard labels')
METHODS = (SCRATCH, KD, TRANSFER_KD, TRUE_LABELS, HARD_LABELS)
DELTA = 'transfer KD − this row (paired)'
COLUMNS = ('method', 'train data', 'steps', 'learning rate', 'τ', 'validation accuracy',
           'test accuracy', DELTA, *stats.COLUMNS, 'seeds')
FINDING = ('Hinton et al. 2015: a student distilled on the teacher\'s soft targets over '
           'unlabeled transfer inputs learns more than one trained on the teacher\'s hard '
           'labels for the same inputs; soft targets carry the teacher\'s "dark knowledge". '
           'Also measured: how much of the transfer set\'s gain over the labeled-only '
           'student comes from the extra inputs (their true labels) rather than from KD.')
# The comparisons, method − baseline, one Holm family.
FAMILY = ((TRANSFER_KD, HARD_LABELS), (TRANSFER_KD, TRUE_LABELS), (TRANSFER_KD, SCRATCH),
          (TRUE_LABELS, SCRATCH), (HARD_LABELS, SCRATCH), (KD, SCRATCH))


def grid(config, method: str) -> list[dict]:
  """The settings tried for ``method``: learning rates (× temperatures for transfer KD)."""
  temps = config.grid.transfer_temperature if method == TRANSFER_KD else (None,)
  return tuning.grid_of(learning_rate=[float(v) for v in config.grid.learning_rate],
                        temperature=[None if t is None else float(t) for t in temps])


def _best(trials: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
  return trials[tuning.select([t['validation_accuracy'] for t in trials])]


def _search(trials: Sequence[Mapping[str, Any]]) -> dict:
  """``trials`` as a :func:`experiments.tuning.tune` record (for ``tuning_lines``)."""
  settings = [{k: t[k] for k in ('learning_rate', 'temperature') if t[k] is not None}
              for t in trials]
  scores = [t['validation_accuracy'] for t in trials]
  return {'grid': settings, 'validation_accuracy': scores,
          'chosen': settings[tuning.select(scores)]}


def terms(config, method: str, temperature) -> tuple | None:
  """The objective of ``method`` (``None``: supervised cross-entropy)."""
  if method in (SCRATCH, TRUE_LABELS):
    return None
  if method == KD:
    return (steps.task_ce(config.kd.alpha),
            steps.soft_kd(1 - config.kd.alpha, temperature=config.kd.temperature))
  if method == TRANSFER_KD:
    return (steps.soft_kd(1.0, temperature=temperature),)
  return (steps.hard_kd(1.0),)


class Data:
  """The labeled train/test sources, the transfer inputs (with and without labels), validation."""

  def __init__(self, config):
    self.train, self.test = load_data(config)
    labeled = kdata.mnist1d_config(config.data_samples) if config.data_samples else None
    kw = dict(labeled_config=labeled, data_dir=config.data_dir or None)
    self.transfer = kdata.transfer_set(num_samples=config.transfer.num_samples,
                                       seed=config.transfer.seed, **kw)
    self.transfer_labeled = kdata.transfer_set(num_samples=config.transfer.num_samples,
                                               seed=config.transfer.seed, labeled=True, **kw)
    self.validation = kdata.transfer_set(num_samples=config.validation.num_samples,
                                         seed=config.validation.seed, labeled=True, **kw)

  def train_data(self, method: str):
    return {SCRATCH: self.train, KD: self.train, TRUE_LABELS: self.transfer_labeled}.get(
        method, self.transfer)


def _train(config, data: Data, method: str, seed: int, setting: Mapping[str, Any],
           teacher, teacher_ckpt: str, eval_data, phase: str) -> runs.RunResult:
  student = models.create(config.student.model, 10, **dict(config.student.kwargs))
  objective = terms(config, method, setting['temperature'])
  num_steps = config.labeled_steps if method in (SCRATCH, KD) else config.transfer_steps
  hp = {'method': method, **setting, 'steps': num_steps, 'student': config.student.to_dict(),
        'batch_size': config.batch_size, 'eval': phase}
  needs_teacher = objective is not None
  return runs.train_and_evaluate(
      student, train_data=data.train_data(method), eval_data=eval_data, num_steps=num_steps,
      learning_rate=setting['learning_rate'], batch_size=config.batch_size, seed=seed,
      terms=objective, teacher=teacher if needs_teacher else None,
      teacher_checkpoint=teacher_ckpt if needs_teacher else None,
      workdir=run_dir(config, seed, method.replace(' ', '_').replace(',', ''), hp),
      progress=config.progress, desc=f'{method} seed {seed} ({phase})')


def _teacher(config, data: Data, seed: int):
  teacher = models.create(config.teacher.model, 10, **dict(config.teacher.kwargs))
  res = runs.train_and_evaluate(
      teacher, train_data=data.train, eval_data=data.test, num_steps=config.teacher.num_steps,
      learning_rate=config.teacher.learning_rate, batch_size=config.batch_size, seed=seed,
      workdir=run_dir(config, seed, 'teacher', config.teacher.to_dict()),
      progress=config.progress, desc=f'teacher seed {seed}')
  return teacher, res.checkpoint_dir, res


def run(config) -> list[dict]:
  """Tunes every method on validation, trains it per seed, writes results/<config.results>/."""
  fresh_workdir(config)
  data = Data(config)
  teachers = {}

  def teacher_of(seed):
    if seed not in teachers:
      teachers[seed] = _teacher(config, data, seed)
    return teachers[seed]

  records, chosen = [], {}
  for method in METHODS:
    teacher, t_ckpt, _ = teacher_of(config.tuning_seed)
    trials = []
    for setting in grid(config, method):
      res = _train(config, data, method, config.tuning_seed, setting, teacher, t_ckpt,
                   data.validation, 'validation')
      trials.append({'phase': 'tuning', 'method': method, 'seed': config.tuning_seed,
                     **setting, 'validation_accuracy': float(res.metrics['accuracy']),
                     'seconds': float(res.seconds)})
    records += trials
    chosen[method] = {k: _best(trials)[k] for k in ('learning_rate', 'temperature')}
  for seed in config.seeds:
    teacher, t_ckpt, t_res = teacher_of(seed)
    records.append({'phase': 'test', 'method': 'teacher', 'seed': seed,
                    'test_accuracy': float(t_res.metrics['accuracy']),
                    'seconds': float(t_res.seconds)})
    for method in METHODS:
      res = _train(config, data, method, seed, chosen[method], teacher, t_ckpt, data.test, 'test')
      records.append({'phase': 'test', 'method': method, 'seed': seed, **chosen[method],
                      'test_accuracy': float(res.metrics['accuracy']),
                      'seconds': float(res.seconds)})
  out_dir = common.results_dir(config.results)
  common.save_records(records, os.path.join(out_dir, 'records.json'))
  dup = kdata.near_duplicates(data.validation.arrays()['x'], data.transfer.arrays()['x'])
  setup = common.save_setup(
      out_dir, experiment='transfer', config=config,
      command='python -m experiments.run --config experiments/configs/transfer.py'
      + ('' if config.results == 'transfer' else ':quick'),
      facts={'train_size': len(data.train), 'test_size': len(data.test),
             'transfer_size': len(data.transfer), 'validation_size': len(data.validation),
             'validation_inputs_repeating_transfer_inputs': int(len(dup)),
             'train_seconds': float(sum(r['seconds'] for r in records))})
  return report(common.load_results(out_dir)[0], setup, out_dir)


def _chosen(records, method: str) -> Mapping[str, Any]:
  return next(r for r in records if r['phase'] == 'test' and r['method'] == method)


def chosen_settings(records: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
  """Each method's validation choice, ``{'learning_rate', 'temperature'}``, in a run's records.

  The demo (``experiments/configs/demo.py``) trains with these.

  Examples:
    >>> recs = [{'phase': 'test', 'method': m, 'seed': 0, 'learning_rate': 0.01,
    ...          'temperature': 2.0 if m == TRANSFER_KD else None} for m in METHODS]
    >>> chosen_settings(recs)[TRANSFER_KD]
    {'learning_rate': 0.01, 'temperature': 2.0}
  """
  return {m: {k: _chosen(records, m)[k] for k in ('learning_rate', 'temperature')}
          for m in METHODS}


def readme_sentence(records: Sequence[Mapping[str, Any]]) -> str:
  """The sentence the README quotes about the demo's comparison, generated from ``records``."""
  test = [r for r in records if r['phase'] == 'test']
  cmp = comparisons(test)
  acc = {m: common.mean_std([r['test_accuracy'] for r in test if r['method'] == m])
         for m in ('teacher',) + METHODS}
  n = len(common.seeds_of(test))
  return (
      f'Over {n} seeds (`experiments/results/transfer/`, settings tuned on a validation '
      f'set): scratch {acc[SCRATCH]}%, KD on the labeled set {acc[KD]}% (KD − scratch '
      f'{stats.summary(cmp[f"{KD} vs {SCRATCH}"])}), and on the 50,000 transfer inputs: '
      f'teacher soft targets {acc[TRANSFER_KD]}%, the teacher\'s hard labels '
      f'{acc[HARD_LABELS]}%, the true labels {acc[TRUE_LABELS]}% (teacher {acc["teacher"]}%). '
      f'Soft − hard labels: {stats.summary(cmp[f"{TRANSFER_KD} vs {HARD_LABELS}"])}; '
      f'soft targets − true labels: {stats.summary(cmp[f"{TRANSFER_KD} vs {TRUE_LABELS}"])}.')


def comparisons(test_records: Sequence[Mapping[str, Any]]) -> dict[str, stats.Comparison]:
  """:data:`FAMILY`, paired by seed, Holm-corrected; keyed ``'<method> vs <baseline>'``."""
  family = [(f'{m} vs {b}', common.paired(test_records, {'method': m}, {'method': b},
                                          'test_accuracy')) for m, b in FAMILY]
  return {c.name: c for c in stats.compare(family)}


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plot and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  test = [r for r in records if r['phase'] == 'test']
  tried = [r for r in records if r['phase'] == 'tuning']
  cmp = comparisons(test)
  agg = common.aggregate(test, ['method'], ['test_accuracy'], percent=['test_accuracy'])
  rows = []
  for r in agg:
    method = r['method']
    trials = [t for t in tried if t['method'] == method]
    pick = _best(trials) if trials else {}
    c = cmp.get(f'{TRANSFER_KD} vs {method}')
    rows.append({
        **r, 'test accuracy': r['test_accuracy'],
        'train data': ('labeled' if method in ('teacher', SCRATCH, KD)
                       else f'{facts["transfer_size"]:,} transfer inputs'),
        'steps': (config.teacher.num_steps if method == 'teacher' else config.labeled_steps
                  if method in (SCRATCH, KD) else config.transfer_steps),
        'learning rate': (f'{config.teacher.learning_rate:g}' if method == 'teacher'
                          else f'{pick["learning_rate"]:g}'),
        'τ': (f'{pick["temperature"]:g}' if pick.get('temperature') is not None
              else f'{config.kd.temperature:g}' if method == KD else '—'),
        'validation accuracy': (f'{100 * pick["validation_accuracy"]:.1f}' if pick else '—'),
        **stats.columns(c, delta=DELTA)})
  common.errorbar_plot(agg, x='method', metric='test_accuracy',
                       path=os.path.join(out_dir, 'transfer.png'),
                       title='Transfer-set controls, CNN1D -> MLP(100, 100) on MNIST-1D')
  plot_tuning(tried, os.path.join(out_dir, 'transfer_tuning.png'))
  soft_hard = cmp[f'{TRANSFER_KD} vs {HARD_LABELS}']
  outcome = {stats.BETTER: 'Reproduced', stats.WORSE: 'Contradicted'}.get(
      soft_hard.verdict, 'Not reproduced')
  verdict = (
      f'{outcome}: soft targets vs the teacher\'s hard labels on the same transfer inputs '
      f'{stats.summary(soft_hard)}. ' + readme_sentence(records))
  searches = {m: _search([t for t in tried if t['method'] == m]) for m in METHODS}
  edge = tuning.edge_choices(searches)
  edge_note = (f' Chosen values at an end of their grid (a wider grid might move them): '
               f'{"; ".join(edge)}.' if edge else '')
  notes = (
      f'Setup: MNIST-1D ({facts["train_size"]} labeled train / {facts["test_size"]} test); '
      f'transfer inputs: {facts["transfer_size"]:,} generated with seed '
      f'{config.transfer.seed}; validation: {facts["validation_size"]:,} generated with seed '
      f'{config.validation.seed} ({facts["validation_inputs_repeating_transfer_inputs"]} '
      f'repeat a transfer input). Teacher {config.teacher.model} retrained per seed; student '
      f'{config.student.model}{tuple(config.student.kwargs.get("hidden", ()))}, Adam with '
      f'cosine decay, batch {config.batch_size}. Labeled KD: α = {config.kd.alpha:g}, '
      f'τ = {config.kd.temperature:g} (the demo\'s, not tuned). The Δ column is transfer KD '
      f'minus that row, so "better" means transfer KD is better.\n\n'
      f'Tuning (seed {config.tuning_seed}, validation accuracy per grid point; the best is '
      f'used for every seed).{edge_note}\n\n{tuning.tuning_lines(searches)}\n\n'
      + common.comparison_lines(list(cmp.values()))
      + '\n\nPlots: `transfer.png`, `transfer_tuning.png`. Raw numbers: `records.json`.')
  common.write_results(
      config.results, rows, COLUMNS, title='Transfer-set controls on MNIST-1D',
      finding=FINDING, verdict=verdict, command=setup['command'], notes=notes, out_dir=out_dir,
      dataset='MNIST-1D (labeled, generated transfer and validation inputs)',
      seeds=common.seeds_of(test))
  return rows


def plot_tuning(tried: Sequence[Mapping[str, Any]], path: str) -> None:
  """Validation accuracy against the learning rate, one line per method (and τ)."""
  series = [dict(t, series=t['method'] + (f' τ={t["temperature"]:g}' if t['temperature'] else ''),
                 validation_accuracy_mean=t['validation_accuracy'], validation_accuracy_std=0.0)
            for t in tried]
  common.errorbar_plot(series, x='learning_rate', metric='validation_accuracy', path=path,
                       series='series', xscale='log', xlabel='peak learning rate',
                       ylabel='validation accuracy (%)',
                       title=f'Tuning runs (seed {tried[0]["seed"]})' if tried else '')
