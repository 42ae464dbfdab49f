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

import jax
import numpy as np

from experiments import common
from experiments import stats
from experiments.takd import DATASETS
from experiments.takd import load_data
from kdjax import checkpoint
from kdjax import models
from kdjax import runs
from kdjax import schemes
from kdjax import steps


DELTA = 'gain over scratch (paired)'
COLUMNS = ('teacher', 'teacher step', 'KD term', 'teacher test acc', 'student test acc', DELTA,
           *stats.COLUMNS, 'student KD loss (train)', 'agreement (test)', 'seeds')
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


def run(config) -> list[dict]:
  """Runs teachers, students and diagnostics for every seed; writes results/<config.results>/."""
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  train_src, test_src = load_data(config)
  teachers = {n: models.create(m, 10, **dict(kw)) for n, m, kw in config.teachers}
  s_name, s_model, s_kw = config.student
  student = models.create(s_model, 10, **dict(s_kw))
  alpha, tau = config.kd.alpha, config.kd.temperature
  full_kd = schemes.kd_terms(alpha, tau)
  stop = schemes.kd_until(config.kd_stop_steps, 1.0 - alpha)
  stopped_kd = (steps.task_ce(schemes.complement(stop)), steps.soft_kd(stop, temperature=tau))
  common_kw = dict(train_data=train_src, eval_data=test_src, batch_size=config.batch_size,
                   progress=config.progress)
  ckpt_steps = sorted(set(config.teacher_keep_steps) | {config.teacher_steps})
  records, curves = [], {}
  for seed in config.seeds:
    root = os.path.join(config.workdir, f'seed{seed}')
    scratch = runs.train_and_evaluate(
        student, num_steps=config.student_steps, learning_rate=config.student_lr, seed=seed,
        workdir=os.path.join(root, 'scratch', s_name), desc='student scratch', **common_kw)
    base = scratch.metrics['accuracy']
    records.append({'seed': seed, 'teacher': '— (scratch)', 'teacher_step': 0, 'kd_term': '—',
                    'teacher_accuracy': np.nan, 'accuracy': base, 'gain': 0.0,
                    'kd_loss_train': np.nan, 'agreement': np.nan})
    for t_name, t_model in teachers.items():
      t_res = runs.train_and_evaluate(
          t_model, num_steps=config.teacher_steps, learning_rate=config.teacher_lr, seed=seed,
          keep_steps=tuple(config.teacher_keep_steps),
          workdir=os.path.join(root, 'teachers', t_name), desc=f'teacher {t_name}', **common_kw)
      variants = [(s, 'full', full_kd) for s in ckpt_steps]
      variants.append((config.teacher_steps, f'stopped at {config.kd_stop_steps}', stopped_kd))
      for t_step, kd_label, terms in variants:
        tag = f'{t_name}@{t_step}'
        if kd_label != 'full':
          tag += f'-kdstop{config.kd_stop_steps}'
        workdir = os.path.join(root, 'students', s_name, tag)
        res = runs.train_and_evaluate(
            student, num_steps=config.student_steps, learning_rate=config.student_lr,
            seed=seed, terms=terms, teacher=t_model, teacher_checkpoint=t_res.checkpoint_dir,
            teacher_step=t_step, workdir=workdir, desc=f'student ← {tag}', **common_kw)
        t_vars = checkpoint.load_variables(t_res.checkpoint_dir, step=t_step)
        on_train = schemes.evaluate_distillation(student, res.state.variables, t_model, t_vars,
                                                 train_src, temperature=tau)
        on_test = schemes.evaluate_distillation(student, res.state.variables, t_model, t_vars,
                                                test_src, temperature=tau)
        records.append({
            'seed': seed, 'teacher': t_name, 'teacher_step': t_step, 'kd_term': kd_label,
            'teacher_accuracy': on_test['teacher_accuracy'], 'accuracy': res.metrics['accuracy'],
            'gain': res.metrics['accuracy'] - base, 'kd_loss_train': on_train['kd_loss'],
            'kd_loss_test': on_test['kd_loss'], 'agreement': on_test['agreement']})
        if kd_label == 'full' and t_step == config.teacher_steps:
          steps_, values = schemes.read_metrics(workdir)['train']['loss/kd']
          curves.setdefault(f'{t_name} (final)', []).append((steps_, values))

  out_dir = common.results_dir(config.results)
  common.save_records(records, os.path.join(out_dir, 'records.json'))
  _plot_kd_curves(curves, os.path.join(out_dir, 'kd_loss_curves.png'))  # from the workdir
  setup = common.save_setup(
      out_dir, experiment='eskd', config=config,
      command='python -m experiments.run --config experiments/configs/eskd.py'
      + ('' if config.mode == 'default' else f':{config.mode}'),
      facts={'train_size': len(train_src), 'test_size': len(test_src),
             'teacher_params': {n: models.count_params(_params(m, train_src))
                                for n, m in teachers.items()},
             'student_params': models.count_params(_params(student, train_src))})
  return report(common.load_results(out_dir)[0], setup, out_dir)


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plots (but the KD-term curves) and verdict from the records alone."""
  config, facts = common.config_of(setup), setup['facts']
  dataset = DATASETS[config.get('dataset', 'mnist1d')]
  s_name = config.student[0]
  alpha, tau = config.kd.alpha, config.kd.temperature
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
    rows.append({**r, 'teacher step': '—' if scratch_row else r['teacher_step'],
                 'KD term': r['kd_term'],
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
  notes = (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test); teachers '
      + ', '.join(f'{n} ({facts["teacher_params"][n]:,} params)' for n in names) +
      f' trained {config.teacher_steps} steps (lr {config.teacher_lr:g}) keeping checkpoints '
      f'at {tuple(ckpt_steps)}; student {s_name} ({facts["student_params"]:,} params) '
      f'{config.student_steps} steps (lr {config.student_lr:g}), Adam + cosine decay, batch '
      f'{config.batch_size}; KD α={alpha:g}, τ={tau:g} on the labeled training set; "stopped '
      f'at N": KD weight (1−α) for the first N updates, then CE alone (kd_until + complement). '
      'Accuracies: mean ± std over seeds; paired differences share the student '
      'initialisation and data order. Early checkpoints come from the same cosine-decayed '
      'teacher run (not a shorter schedule).'
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
  common.write_results(
      config.results, rows, COLUMNS,
      title=f'Efficacy of KD: early-stopped teachers and KD terms ({dataset})', finding=FINDING,
      verdict=verdict, command=setup['command'], notes=notes, out_dir=out_dir, dataset=dataset,
      seeds=common.seeds_of(records))
  return rows


def _params(model, src):
  """The parameter shapes of ``model`` on ``src``'s inputs (no compute)."""
  return jax.eval_shape(model.init, jax.random.key(0), src[0]['x'][None])['params']
