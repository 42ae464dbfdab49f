"""On the Efficacy of KD (ESKD) on MNIST-1D and digits: early-stopped teachers and KD terms.

For every seed: each teacher is trained once, keeping checkpoints at
``teacher_keep_steps`` (``train_and_evaluate(keep_steps=...)``); the student
is distilled from each checkpoint (``teacher_step=``), from each final teacher
with the KD term stopped after ``kd_stop_steps`` updates
(:func:`kdjax.schemes.kd_until`), and trained from scratch with the same seed.
The diagnostic of Cho & Hariharan (2019, §4): the student's converged KD loss
(τ²·KL to its teacher on the training set, :func:`kdjax.schemes.evaluate_distillation`)
against its test accuracy, and the KD-term training curves (``metrics.csv``,
:func:`kdjax.schemes.read_metrics`). The data is ``config.dataset`` (MNIST-1D or
scikit-learn digits, :func:`experiments.takd.load_data`).

Usable from a notebook::

    from experiments import eskd
    from experiments.configs import eskd as cfg
    rows = eskd.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from experiments import common
from experiments import dml
from experiments import stats
from experiments import tuning
from experiments.takd import DATASETS
from experiments.takd import load_data
from kdjax import checkpoint
from kdjax import models
from kdjax import runs
from kdjax import schemes
from kdjax import steps


DELTA = 'gain over scratch (paired)'
COLUMNS = ('teacher', 'teacher step', 'KD term', 'student setting', 'teacher test acc',
           'student test acc', DELTA,
           *stats.COLUMNS, 'student KD loss (train)', 'agreement (test)', 'seeds')
# The columns of the untuned design's committed report (mode cnn4): no per-row setting.
LEGACY_COLUMNS = tuple(c for c in COLUMNS if c != 'student setting')
FINDING = ('On the Efficacy of KD (Cho & Hariharan 2019): bigger '
           'teachers are not always better teachers, because the student cannot mimic them '
           '(its KD loss stays high); an early-stopped teacher beats a fully trained large one; '
           'stopping the KD term early in student training helps.')


def _plot_kd_loss_vs_accuracy(records, teachers, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4.2))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  steps_seen = sorted({r['teacher_step'] for r in records if r['kd_term'] == 'full'})
  markers = dict(zip(steps_seen, 'os^DvP*X'))
  for i, t in enumerate(teachers):
    for s in steps_seen:
      pts = [r for r in records if r['teacher'] == t and r['teacher_step'] == s
             and r['kd_term'] == 'full']
      if pts:
        ax.scatter([r['kd_loss_train'] for r in pts], [100 * r['accuracy'] for r in pts],
                   color=colors[i % len(colors)], marker=markers[s], s=36,
                   label=f'{t} @ {s}')
  ax.set_xlabel('student KD loss τ²·KL(teacher ‖ student), training set')
  ax.set_ylabel('student test accuracy (%)')
  ax.set_title('KD loss vs student accuracy (one point per seed)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2, title='teacher @ checkpoint step', title_fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_kd_curves(curves, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4))
  for label, series in curves.items():
    common_steps = series[0][0]
    values = np.stack([v for s, v in series if len(s) == len(common_steps)])
    ax.plot(common_steps, values.mean(0), label=label)
  ax.set_yscale('log')
  ax.set_xlabel('student step')
  ax.set_ylabel('training loss/kd (τ²·KL, batch mean)')
  ax.set_title('KD term during training, by teacher (mean over seeds)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def tuning_grids(config) -> dict[str, list[dict]]:
  """The a-priori grid of every search: the scratch student's and each teacher's KD student.

  The scratch student searches the learning rate; the KD student of each
  teacher searches the learning rate × α × τ of ``α·CE + (1−α)·τ²·KL``, with
  the teacher's final checkpoint and the full KD term. The chosen setting of a
  teacher is then used for every variant of that teacher (its early
  checkpoints and the stopped KD term), so those comparisons change only the
  checkpoint or the stop.

  Examples:
    >>> from experiments.configs import eskd as cfg
    >>> grids = tuning_grids(cfg.get_config('quick'))
    >>> list(grids), len(grids['scratch']), len(grids['KD from T'])
    (['scratch', 'KD from T'], 2, 4)
  """
  t = config.tuning
  lrs = [float(v) for v in t.learning_rates]
  grids = {'scratch': tuning.grid_of(learning_rate=lrs)}
  for name, _, _ in config.teachers:
    grids[f'KD from {name}'] = tuning.grid_of(
        learning_rate=lrs, alpha=[float(v) for v in t.alphas],
        temperature=[float(v) for v in t.temperatures])
  return grids


def chosen_settings(config, facts: Mapping[str, Any]) -> dict[str, dict]:
  """``{'scratch': {...}, <teacher>: {learning_rate, alpha, temperature}}`` the runs used.

  Tuned runs take them from ``facts['tuning']``; an untuned config (the committed
  ``cnn4`` run) from ``config.student_lr`` and ``config.kd``.

  Examples:
    >>> from experiments.configs import eskd as cfg
    >>> c = cfg.get_config('cnn4')
    >>> chosen_settings(c, {})['cnn64']
    {'learning_rate': 0.01, 'alpha': 0.1, 'temperature': 4.0}
  """
  searches = facts.get('tuning')
  if searches:
    return {'scratch': dict(searches['scratch']['chosen']),
            **{n: dict(searches[f'KD from {n}']['chosen']) for n, _, _ in config.teachers}}
  kd = {'alpha': float(config.kd.alpha), 'temperature': float(config.kd.temperature)}
  lr = {'learning_rate': float(config.student_lr)}
  return {'scratch': lr, **{n: {**lr, **kd} for n, _, _ in config.teachers}}


def kd_objectives(setting: Mapping[str, Any], kd_stop_steps: int) -> dict[str, tuple]:
  """``{'full': terms, 'stopped': terms}``: the KD objective and its early-stopped version.

  ``'stopped'`` weighs the KD term ``1 − α`` for the first ``kd_stop_steps``
  updates and 0 after, and the CE term ``α`` then 1 (:func:`kdjax.schemes.kd_until`).

  Examples:
    >>> sorted(kd_objectives({'alpha': 0.1, 'temperature': 4.0}, 5))
    ['full', 'stopped']
  """
  alpha, tau = float(setting['alpha']), float(setting['temperature'])
  stop = schemes.kd_until(kd_stop_steps, 1.0 - alpha)
  return {'full': schemes.kd_terms(alpha, tau),
          'stopped': (steps.task_ce(schemes.complement(stop)),
                      steps.soft_kd(stop, temperature=tau))}


def format_setting(setting: Mapping[str, Any]) -> str:
  """``'lr 0.003, α 0.1, τ 4'``: a student setting for the table.

  Examples:
    >>> format_setting({'learning_rate': 3e-3, 'alpha': 0.1, 'temperature': 4.0})
    'lr 0.003, α 0.1, τ 4'
  """
  short = {'learning_rate': 'lr', 'alpha': 'α', 'temperature': 'τ'}
  return ', '.join(f'{short.get(k, k)} {float(v):g}' for k, v in setting.items())


def tuning_notes(config, facts: Mapping[str, Any]) -> str:
  """The validation protocol, every grid with its validation accuracies, and the edge check."""
  t = config.tuning
  teachers = ', '.join(f'{n} {100 * a:.1f}%'
                       for n, a in facts['tuning_teacher_validation_accuracy'].items())
  return (
      tuning.split_sentence(t, facts)
      + f'. With seed {t.seed} (not an evaluation seed), every teacher was '
      f'trained on the other {facts["fit_size"]} (validation accuracy: {teachers}); every '
      'setting of each grid below (fixed before the runs) trained the student on those '
      'examples (scratch, or with full KD from the final checkpoint of that teacher) and was '
      'scored on validation; the best (ties: the first) was then trained on the full training '
      'split for every seed and evaluated on test once. '
      + tuning.edge_note(facts['tuning']) + '\n\n' + tuning.tuning_lines(facts['tuning']))


def wall_note(facts: Mapping[str, Any]) -> str:
  """The wall time of the run that wrote the records and how many runs it restored."""
  return (f'Wall time of the run (tuning and evaluation, shared 2-core CPU): '
          f'{facts["wall_seconds"]:.0f} s; {facts["runs_restored"]} of {facts["runs"]} training '
          'runs were restored from complete checkpoints in the workdir.')


def _spec(spec) -> list:
  name, registry_name, kw = spec
  return [name, registry_name, dict(kw)]


def run(config) -> list[dict]:
  """Tunes the students on validation, runs every seed; writes results/<config.results>/.

  With ``config.tuning`` (:mod:`experiments.tuning`): the teachers are trained
  on train minus validation with the tuning seed; the scratch student's
  learning rate and each teacher's KD student's (learning rate, α, τ) are
  chosen on validation (:func:`tuning_grids`); then, for every seed, teachers
  and students are trained on the full training split and evaluated on test
  once. Runs are checkpointed under ``config.workdir`` in directories named by
  their settings, and a complete run is restored instead of retrained.
  """
  start = time.time()
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  train_src, test_src = load_data(config)
  teachers = {n: models.create(m, 10, **dict(kw)) for n, m, kw in config.teachers}
  specs = {n: _spec(s) for n, s in zip(teachers, config.teachers)}
  s_name, s_model, s_kw = config.student
  student = models.create(s_model, 10, **dict(s_kw))
  dataset = config.get('dataset', 'mnist1d')
  diag_tau = float(config.get('diagnostic_temperature') or config.kd.temperature)
  counts = {'runs': 0, 'restored': 0}

  def train(model, spec, src, eval_src, seed, name, hparams, **kw):
    hp = {'model': spec, 'dataset': dataset, 'data_samples': config.data_samples,
          'batch_size': config.batch_size, 'data': src.split, **hparams}
    res = runs.train_and_evaluate(
        model, train_data=src, eval_data=eval_src, batch_size=config.batch_size,
        progress=config.progress, seed=seed, workdir=dml.run_dir(config, seed, name, hp),
        checkpoint_every=hparams['num_steps'], log_every=100, desc=f'{name} seed {seed}', **kw)
    counts['runs'] += 1
    counts['restored'] += res.fit.resumed_from is not None
    return res

  def train_teacher(t_name, src, seed, keep=()):
    return train(teachers[t_name], specs[t_name], src, test_src if src is train_src else val_src,
                 seed, f'teacher_{t_name}',
                 {'num_steps': config.teacher_steps, 'learning_rate': config.teacher_lr,
                  'keep_steps': list(keep)},
                 num_steps=config.teacher_steps, learning_rate=config.teacher_lr,
                 keep_steps=tuple(keep))

  def train_student(src, eval_src, seed, setting, *, kd=None, t_name=None, t_res=None,
                    t_step=None):
    hp = {'num_steps': config.student_steps, 'learning_rate': setting['learning_rate']}
    kw = {}
    if kd is not None:
      hp.update(alpha=setting['alpha'], temperature=setting['temperature'], kd=kd,
                teacher=specs[t_name], teacher_step=t_step, teacher_lr=config.teacher_lr,
                teacher_steps=config.teacher_steps,
                kd_stop_steps=config.kd_stop_steps if kd == 'stopped' else 0)
      kw = dict(terms=kd_objectives(setting, config.kd_stop_steps)[kd], teacher=teachers[t_name],
                teacher_checkpoint=t_res.checkpoint_dir, teacher_step=t_step)
    name = 'scratch' if kd is None else f'{t_name}@{t_step}-{kd}'
    return train(student, _spec(config.student), src, eval_src, seed, f'student_{name}', hp,
                 num_steps=config.student_steps, learning_rate=setting['learning_rate'], **kw)

  facts = {'train_size': len(train_src), 'test_size': len(test_src)}
  t = config.get('tuning')
  fit_src, val_src = tuning.validation_sources(
      train_src, fraction=t.fraction, seed=t.split_seed) if t else (None, None)
  if t:
    grids = tuning_grids(config)
    searches = {'scratch': tuning.tune(grids['scratch'], lambda s: train_student(
        fit_src, val_src, t.seed, s).metrics['accuracy'])}
    tuning_teachers = {}
    for t_name in teachers:
      t_res = train_teacher(t_name, fit_src, t.seed)
      tuning_teachers[t_name] = float(t_res.metrics['accuracy'])  # on validation
      searches[f'KD from {t_name}'] = tuning.tune(
          grids[f'KD from {t_name}'], lambda s, t_name=t_name, t_res=t_res: train_student(
              fit_src, val_src, t.seed, s, kd='full', t_name=t_name, t_res=t_res,
              t_step=config.teacher_steps).metrics['accuracy'])
    facts.update({'fit_size': len(fit_src), 'validation_size': len(val_src),
                  'tuning': searches, 'tuning_teacher_validation_accuracy': tuning_teachers,
                  'tuning_runs': counts['runs'], 'tuning_runs_restored': counts['restored']})
  chosen = chosen_settings(config, facts)

  ckpt_steps = sorted(set(config.teacher_keep_steps) | {config.teacher_steps})
  stopped_label = f'stopped at {config.kd_stop_steps}'
  records, curves = [], {}
  for seed in config.seeds:
    scratch = train_student(train_src, test_src, seed, chosen['scratch'])
    base = scratch.metrics['accuracy']
    records.append({'seed': seed, 'teacher': '— (scratch)', 'teacher_step': 0, 'kd_term': '—',
                    'teacher_accuracy': np.nan, 'accuracy': base, 'gain': 0.0,
                    'kd_loss_train': np.nan, 'agreement': np.nan,
                    'learning_rate': chosen['scratch']['learning_rate'],
                    'seconds': scratch.seconds})
    for t_name, t_model in teachers.items():
      t_res = train_teacher(t_name, train_src, seed, keep=config.teacher_keep_steps)
      setting = chosen[t_name]
      variants = [(s, 'full') for s in ckpt_steps] + [(config.teacher_steps, 'stopped')]
      for t_step, kd in variants:
        res = train_student(train_src, test_src, seed, setting, kd=kd, t_name=t_name,
                            t_res=t_res, t_step=t_step)
        t_vars = checkpoint.load_variables(t_res.checkpoint_dir, step=t_step)
        on_train = schemes.evaluate_distillation(student, res.state.variables, t_model, t_vars,
                                                 train_src, temperature=diag_tau)
        on_test = schemes.evaluate_distillation(student, res.state.variables, t_model, t_vars,
                                                test_src, temperature=diag_tau)
        records.append({
            'seed': seed, 'teacher': t_name, 'teacher_step': t_step,
            'kd_term': 'full' if kd == 'full' else stopped_label,
            'teacher_accuracy': on_test['teacher_accuracy'], 'accuracy': res.metrics['accuracy'],
            'gain': res.metrics['accuracy'] - base, 'kd_loss_train': on_train['kd_loss'],
            'kd_loss_test': on_test['kd_loss'], 'agreement': on_test['agreement'],
            **setting, 'seconds': res.seconds})
        if kd == 'full' and t_step == config.teacher_steps:
          workdir = os.path.dirname(res.checkpoint_dir)
          steps_, values = schemes.read_metrics(workdir)['train']['loss/kd']
          curves.setdefault(f'{t_name} (final)', []).append((steps_, values))

  out_dir = common.results_dir(config.results)
  common.save_records(dml.json_records(records), os.path.join(out_dir, 'records.json'))
  _plot_kd_curves(curves, os.path.join(out_dir, 'kd_loss_curves.png'))  # from the workdir
  facts.update({'teacher_params': {n: models.count_params(_params(m, train_src))
                                   for n, m in teachers.items()},
                'student_params': models.count_params(_params(student, train_src)),
                'wall_seconds': time.time() - start, 'runs': counts['runs'],
                'runs_restored': counts['restored']})
  setup = common.save_setup(
      out_dir, experiment='eskd', config=config,
      command='python -m experiments.run --config experiments/configs/eskd.py'
      + ('' if config.mode == 'default' else f':{config.mode}'), facts=facts)
  return report(common.load_results(out_dir)[0], setup, out_dir)


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plots (but the KD-term curves) and verdict from the records alone."""
  config, facts = common.config_of(setup), setup['facts']
  dataset = DATASETS[config.get('dataset', 'mnist1d')]
  s_name = config.student[0]
  chosen = chosen_settings(config, facts)
  diag_tau = float(config.get('diagnostic_temperature') or config.kd.temperature)
  ckpt_steps = sorted(set(config.teacher_keep_steps) | {config.teacher_steps})
  for r in records:
    for k in ('teacher_accuracy', 'kd_loss_train', 'agreement'):
      r[k] = np.nan if r.get(k) is None else r[k]
  final = config.teacher_steps
  names = [n for n, _, _ in config.teachers]
  largest = names[-1]
  stopped = f'stopped at {config.kd_stop_steps}'
  scratch = {'teacher': '— (scratch)'}
  family = []
  for t in names:
    for s in ckpt_steps:
      family.append((f'{t}@{s} (full KD) vs scratch', common.paired(
          records, {'teacher': t, 'teacher_step': s, 'kd_term': 'full'}, scratch)))
    family.append((f'{t}@{final} (KD {stopped}) vs scratch', common.paired(
        records, {'teacher': t, 'teacher_step': final, 'kd_term': stopped}, scratch)))
  lines = []  # (group, comparison name)
  for t in names:
    for s in ckpt_steps[:-1]:
      name = f'{t}: checkpoint {s} vs final ({final})'
      family.append((name, common.paired(
          records, {'teacher': t, 'teacher_step': s, 'kd_term': 'full'},
          {'teacher': t, 'teacher_step': final, 'kd_term': 'full'})))
      lines.append((f'{t}: checkpoint', name))
    name = f'{t}: KD term {stopped} vs full KD'
    family.append((name, common.paired(
        records, {'teacher': t, 'teacher_step': final, 'kd_term': stopped},
        {'teacher': t, 'teacher_step': final, 'kd_term': 'full'})))
    lines.append((f'{t}: KD term', name))
  for t in names[:-1]:
    name = f'final {t} vs final {largest} as teacher'
    family.append((name, common.paired(
        records, {'teacher': t, 'teacher_step': final, 'kd_term': 'full'},
        {'teacher': largest, 'teacher_step': final, 'kd_term': 'full'})))
    lines.append(('final', name))
  cmp = {c.name: c for c in stats.compare(family)}

  agg = common.aggregate(records, ['teacher', 'teacher_step', 'kd_term'],
                         ['teacher_accuracy', 'accuracy', 'gain', 'kd_loss_train', 'agreement'],
                         percent=['teacher_accuracy', 'accuracy', 'gain', 'agreement'])
  rows = []
  for r in agg:
    scratch_row = r['teacher'].startswith('—')
    label = f'{r["teacher"]}@{r["teacher_step"]} (' + (
        'full KD' if r['kd_term'] == 'full' else f'KD {r["kd_term"]}') + ') vs scratch'
    setting = chosen['scratch' if scratch_row else r['teacher']]
    rows.append({**r, 'teacher step': '—' if scratch_row else r['teacher_step'],
                 'KD term': r['kd_term'], 'student setting': format_setting(setting),
                 'teacher test acc': '—' if scratch_row else r['teacher_accuracy'],
                 'student test acc': r['accuracy'],
                 **stats.columns(None if scratch_row else cmp[label], delta=DELTA),
                 'student KD loss (train)': '—' if scratch_row else r['kd_loss_train'],
                 'agreement (test)': '—' if scratch_row else r['agreement']})

  _plot_kd_loss_vs_accuracy(records, names, os.path.join(out_dir, 'kd_loss_vs_acc.png'))
  common.errorbar_plot(
      [r for r in agg if r['kd_term'] == 'full'], x='teacher_step', metric='accuracy',
      series='teacher', path=os.path.join(out_dir, 'student_acc_vs_teacher_step.png'),
      title='Student accuracy by teacher checkpoint (ESKD)', xlabel='teacher checkpoint step',
      baselines={'student scratch': np.mean([r['accuracy'] for r in records
                                             if r['teacher'].startswith('—')])})

  def acc(t, s, kd='full'):
    return np.asarray([r['accuracy'] for r in records
                       if r['teacher'] == t and r['teacher_step'] == s and r['kd_term'] == kd])

  kd_by_teacher = {t: np.mean([r['kd_loss_train'] for r in records
                               if r['teacher'] == t and r['teacher_step'] == final
                               and r['kd_term'] == 'full']) for t in names}
  acc_by_teacher = {t: acc(t, final).mean() for t in names}
  pts = np.asarray([(r['kd_loss_train'], r['accuracy']) for r in records
                    if r['kd_term'] == 'full'])
  corr = float(np.corrcoef(pts.T)[0, 1]) if len(pts) > 2 else float('nan')

  def outcome(prefix):
    found = [cmp[name].verdict for group, name in lines if group.startswith(prefix)]
    if found and all(v == stats.TOO_FEW for v in found):
      return 'undetermined (one seed)'
    better = stats.BETTER in found
    worse = stats.WORSE in found
    if better and worse:
      return 'mixed'
    if better:
      return 'reproduced'
    return 'contradicted' if worse else 'not reproduced (no significant difference)'

  verdict = ' '.join([
      f'(1) Bigger teachers are not always better: {outcome("final")}; student accuracy with '
      'the final teachers: ' + ', '.join(f'{t} {100 * a:.1f}%' for t, a in acc_by_teacher.items())
      + '.',
      '(2) KD loss: the student\'s converged KD loss on the training set is '
      + ', '.join(f'{v:.3f} ({t})' for t, v in kd_by_teacher.items()) +
      f' for the final teachers; over all distilled students, corr(KD loss, accuracy) = '
      f'{corr:+.2f}.',
      f'(3) Early-stopped {largest} teacher beats the fully trained one: '
      f'{outcome(f"{largest}: checkpoint")}.',
      f'(4) Stopping the KD term after {config.kd_stop_steps} updates helps: '
      + ', '.join(f'{t} teacher {outcome(f"{t}: KD term")}' for t in names) + '.'])
  tuned = bool(facts.get('tuning'))
  notes = _legacy_notes(config, facts, cmp) if not tuned else (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test); teachers '
      + ', '.join(f'{n} ({facts["teacher_params"][n]:,} params)' for n in names) +
      f' trained {config.teacher_steps} steps (lr {config.teacher_lr:g}, fixed: the '
      'early-stopping checkpoints of one schedule are the design) keeping checkpoints '
      f'at {tuple(ckpt_steps)}; student {s_name} ({facts["student_params"]:,} params) '
      f'{config.student_steps} steps, Adam + cosine decay, batch {config.batch_size}; '
      'student settings chosen on validation (below; each teacher\'s KD setting is used for '
      'all its checkpoints and for its stopped KD term). KD: α·CE + (1−α)·τ²·KL on the '
      'labeled training set; "stopped at N": KD weight (1−α) for the first N updates, then '
      'CE alone (kd_until + complement). "student '
      f'KD loss" is τ²·KL(teacher ‖ student) at τ={diag_tau:g} for every student (one '
      'temperature, so that the teachers are comparable), on the training set. '
      'Accuracies: mean ± std over seeds; each seed has its own teachers and student '
      'initialisation and data order, shared by all students of that seed (paired '
      'differences). Early checkpoints come from the same cosine-decayed '
      'teacher run (not a shorter schedule).'
      + ('' if config.mode != 'default' else
         ' A first design distilled the TAKD ladder\'s cnn4 instead; its students varied too '
         'much across seeds for paired comparisons, so the student became the demo\'s '
         'reference MLP. That run is in `cnn4_student/` (mode `cnn4`; its table gives the '
         'spread).')
      + '\n\n' + tuning_notes(config, facts)
      + '\n\n' + common.comparison_lines(list(cmp.values())) +
      '\n\nPlots: `kd_loss_vs_acc.png` (the paper\'s diagnostic: KD loss vs student accuracy, '
      'teachers of different sizes and checkpoints), `kd_loss_curves.png` (training KD term by '
      'teacher, from the run\'s metrics, not regenerated from the records), '
      '`student_acc_vs_teacher_step.png`.' + (f'\n\n{config.notes}' if config.get('notes') else '')
      + ('\n\n' + wall_note(facts) if 'wall_seconds' in facts else ''))
  common.write_results(
      config.results, rows, COLUMNS if tuned else LEGACY_COLUMNS,
      title=f'Efficacy of KD: early-stopped teachers and KD terms ({dataset})', finding=FINDING,
      verdict=verdict, command=setup['command'], notes=notes, out_dir=out_dir, dataset=dataset,
      seeds=common.seeds_of(records))
  return rows


def _legacy_notes(config, facts: Mapping[str, Any], cmp) -> str:
  """The notes of the untuned design (mode cnn4), as its committed report has them."""
  dataset = DATASETS[config.get('dataset', 'mnist1d')]
  names = [n for n, _, _ in config.teachers]
  ckpt_steps = sorted(set(config.teacher_keep_steps) | {config.teacher_steps})
  return (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test); teachers '
      + ', '.join(f'{n} ({facts["teacher_params"][n]:,} params)' for n in names) +
      f' trained {config.teacher_steps} steps (lr {config.teacher_lr:g}) keeping checkpoints '
      f'at {tuple(ckpt_steps)}; student {config.student[0]} ({facts["student_params"]:,} '
      f'params) {config.student_steps} steps (lr {config.student_lr:g}), Adam + cosine decay, '
      f'batch {config.batch_size}; KD α={config.kd.alpha:g}, τ={config.kd.temperature:g} on the '
      'labeled training set; "stopped at N": KD weight (1−α) for the first N updates, then CE '
      'alone (kd_until + complement). Accuracies: mean ± std over seeds; paired differences '
      'share the student initialisation and data order. Early checkpoints come from the same '
      'cosine-decayed teacher run (not a shorter schedule).'
      + ('' if config.mode != 'default' else
         ' A first design distilled the TAKD ladder\'s cnn4 instead; its students varied too '
         'much across seeds for paired comparisons, so the student became the demo\'s '
         'reference MLP. That run is in `cnn4_student/` (mode `cnn4`; its table gives the '
         'spread).')
      + '\n\n' + common.comparison_lines(list(cmp.values())) +
      '\n\nPlots: `kd_loss_vs_acc.png` (the paper\'s diagnostic: KD loss vs student accuracy, '
      'teachers of different sizes and checkpoints), `kd_loss_curves.png` (training KD term by '
      'teacher, from the run\'s metrics, not regenerated from the records), '
      '`student_acc_vs_teacher_step.png`.' + (f'\n\n{config.notes}' if config.get('notes') else ''))


def _params(model, src):
  """The parameter shapes of ``model`` on ``src``'s inputs (no compute)."""
  return jax.eval_shape(model.init, jax.random.key(0), src[0]['x'][None])['params']
