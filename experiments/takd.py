"""TAKD on MNIST-1D and digits: does a teacher assistant beat direct KD when the gap is large?

A ladder of models (teacher first) is distilled along every path of
:func:`kdjax.schemes.assistant_paths` (direct ``T → S``, ``T → A → S`` for each
assistant, and the full ladder) by :func:`kdjax.schemes.takd_sweep`, for each
configured student, with the same KD objective in every link; each student is
also trained from scratch with the same seed (so the comparisons are paired).

Usable from a notebook::

    from experiments import takd
    from experiments.configs import takd as cfg
    rows = takd.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from scipy import stats

from experiments import common
from experiments import report
from kdjax import data as kdata
from kdjax import models
from kdjax import runs
from kdjax import schemes


COLUMNS = ('student', 'path', 'assistants', 'test accuracy', 'gain over scratch',
           'vs direct KD (paired)', 'agreement w/ own teacher', 'seeds')
GAP_COLUMNS = ('model', 'params', 'scratch', 'direct KD from teacher', 'KD gain (paired)',
               'seeds')
FINDING = ('TAKD (Mirzadeh et al. 2020, seed 000; METHODS.md §B–C): when the teacher/student '
           'gap is large, distilling through a mid-sized teacher assistant beats direct KD, '
           'and the full chain of assistants is best.')


DATASETS = {'mnist1d': 'MNIST-1D', 'digits': 'scikit-learn digits'}


def load_data(config):
  """The train/test sources of ``config.dataset``.

  ``config.data_samples`` > 0 shrinks the data for smoke runs: a small
  generated MNIST-1D, or the first 80% / 20% of that many digits records.
  """
  dataset = config.get('dataset', 'mnist1d')
  data_dir = config.data_dir or None
  n = config.data_samples
  if dataset == 'mnist1d':
    cfg = kdata.mnist1d_config(n) if n else None
    return (kdata.load('mnist1d', 'train', data_dir=data_dir, config=cfg),
            kdata.load('mnist1d', 'test', data_dir=data_dir, config=cfg))
  if dataset == 'digits':
    train, test = ('train', 'test') if not n else (f'train[:{n - n // 5}]', f'test[:{n // 5}]')
    return (kdata.load('digits', train, data_dir=data_dir),
            kdata.load('digits', test, data_dir=data_dir))
  raise ValueError(f'Unknown takd dataset {dataset!r}; use one of {sorted(DATASETS)}.')


def paired(values: np.ndarray) -> str:
  """``mean ± std`` in percentage points of per-seed differences."""
  return common.mean_std(values)


def verdict_of(diffs: np.ndarray) -> str:
  """'better' / 'worse' / 'within noise': mean paired difference against 2 standard errors."""
  if diffs.size < 2:
    return 'one seed only'
  se = diffs.std(ddof=1) / np.sqrt(diffs.size)
  mean = diffs.mean()
  if mean > 2 * se and mean > 0:
    return 'better'
  if mean < -2 * se and mean < 0:
    return 'worse'
  return 'within noise'


def _plot_paths(rows, students, path, dataset='MNIST-1D'):
  """Student accuracy (mean ± std) by assistants, one panel per student, scratch dashed."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  chains = [r for r in rows if not r['path'].endswith('(scratch)')]
  fig, axes = plt.subplots(1, len(students), figsize=(5.5 * len(students), 4), squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for i, (student, ax) in enumerate(zip(students, axes[0])):
    mine = sorted((r for r in chains if r['student'] == student),
                  key=lambda r: (r['path'].count('→'), r['path']))
    cats = [r['assistants'] for r in mine]
    ax.errorbar(range(len(mine)), [100 * r['accuracy_mean'] for r in mine],
                yerr=[100 * r['accuracy_std'] for r in mine], marker='o', capsize=3,
                color=colors[i % len(colors)], label=f'student {student} (KD)')
    for r in rows:
      if r['path'] == f'{student} (scratch)':
        ax.axhline(100 * r['accuracy_mean'], linestyle='--', linewidth=1,
                   color=colors[i % len(colors)], label=f'{student} from scratch')
    ax.set_xticks(range(len(cats)), cats, rotation=20, ha='right', fontsize=7)
    ax.set_xlabel('teacher assistants on the path (teacher → … → student)')
    ax.set_ylabel('student test accuracy (%)')
    ax.set_title(f'student {student}', fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f'TAKD paths on {dataset} (mean ± std over seeds)', fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config) -> list[dict]:
  """Runs the sweep for every seed and student; writes results/<config.results>/."""
  t0 = time.perf_counter()
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  dataset = DATASETS[config.get('dataset', 'mnist1d')]
  train_src, test_src = load_data(config)
  names = [n for n, _, _ in config.ladder]
  ladder = {n: models.create(m, 10, **dict(kw)) for n, m, kw in config.ladder}
  teacher = names[0]
  num_params = {n: models.count_params(jax.eval_shape(
      ladder[n].init, jax.random.key(0), train_src[0]['x'][None])['params']) for n in names}
  kd = schemes.kd_terms(config.kd.alpha, config.kd.temperature)
  records, link_records = [], []
  for seed in config.seeds:
    root = os.path.join(config.workdir, f'seed{seed}')
    scratch = {}
    for n in (names[1:] if config.scratch_all else config.students):
      r = runs.train_and_evaluate(
          ladder[n], train_data=train_src, eval_data=test_src, num_steps=config.student_steps,
          learning_rate=config.student_lr, batch_size=config.batch_size, seed=seed,
          workdir=os.path.join(root, 'scratch', n), progress=config.progress,
          desc=f'{n} scratch')
      scratch[n] = r.metrics['accuracy']
    teacher_acc = None
    for student in config.students:
      sub = names[:names.index(student) + 1]
      out = schemes.takd_sweep(
          {n: ladder[n] for n in sub}, train_data=train_src, eval_data=test_src,
          workdir=os.path.join(root, 'chains'),
          num_steps={n: config.teacher_steps if n == teacher else config.student_steps
                     for n in sub},
          learning_rate={n: config.teacher_lr if n == teacher else config.student_lr
                         for n in sub},
          seed=seed, batch_size=config.batch_size, terms=kd, progress=config.progress)
      direct = out[(teacher, student)].final.metrics['accuracy']
      for path, res in out.items():
        acc = res.final.metrics['accuracy']
        records.append({
            'seed': seed, 'student': student, 'path': ' → '.join(path),
            'assistants': ', '.join(path[1:-1]) or '— (direct KD)', 'num_links': len(path) - 1,
            'accuracy': acc, 'gain': acc - scratch[student], 'vs_direct': acc - direct,
            'agreement': res.final.metrics['agreement'], 'scratch': scratch[student]})
        teacher_acc = res.links[0].metrics['accuracy']
        x = path[1]  # the T → X link of this path: direct KD of X
        if x in scratch:
          link_records.append({'seed': seed, 'model': x,
                               'kd': res.links[1].metrics['accuracy'],
                               'scratch': scratch[x]})
    records.append({'seed': seed, 'student': teacher, 'path': f'{teacher} (teacher, scratch)',
                    'assistants': '', 'num_links': 0, 'accuracy': teacher_acc, 'gain': 0.0,
                    'vs_direct': 0.0, 'agreement': 1.0, 'scratch': teacher_acc})
    for n in config.students:
      records.append({'seed': seed, 'student': n, 'path': f'{n} (scratch)', 'assistants': '',
                      'num_links': 0, 'accuracy': scratch[n], 'gain': 0.0, 'vs_direct': np.nan,
                      'agreement': np.nan, 'scratch': scratch[n]})

  # Deduplicate link records (a T → X link appears in several paths of one seed).
  seen, links = set(), []
  for r in link_records:
    if (r['seed'], r['model']) not in seen:
      seen.add((r['seed'], r['model']))
      links.append({**r, 'gain': r['kd'] - r['scratch']})

  agg = common.aggregate(records, ['student', 'path', 'assistants'],
                         ['accuracy', 'gain', 'vs_direct', 'agreement'],
                         percent=['accuracy', 'gain', 'vs_direct', 'agreement'])
  rows = []
  for r in agg:
    is_chain = '(' not in r['path']
    rows.append({
        **r, 'test accuracy': r['accuracy'],
        'gain over scratch': r['gain'] if is_chain else '—',
        'vs direct KD (paired)': (r['vs_direct'] if is_chain and '(direct' not in r['assistants']
                                  else '—'),
        'agreement w/ own teacher': r['agreement'] if is_chain else '—'})
  order = {n: i for i, n in enumerate(names)}
  rows.sort(key=lambda r: (-order[r['student']] if r['student'] != teacher else -99,
                           '(' not in r['path'], r['path'].count('→'), r['path']))

  gap = common.aggregate(links, ['model'], ['scratch', 'kd', 'gain'],
                         percent=['scratch', 'kd', 'gain'])
  gap.sort(key=lambda r: order[r['model']])
  for r in gap:
    r.update({'params': f'{num_params[r["model"]]:,}', 'direct KD from teacher': r['kd'],
              'KD gain (paired)': r['gain']})

  out_dir = common.results_dir(config.results)
  common.save_records(records + [{'kind': 'direct_link', **r} for r in links],
                      os.path.join(out_dir, 'records.json'))
  _plot_paths([r for r in rows if '(' not in r['path'] or r['path'].endswith('(scratch)')],
              config.students, os.path.join(out_dir, 'takd_paths.png'), dataset)
  common.errorbar_plot(
      [{**r, 'params': num_params[r['model']]} for r in gap], x='params', metric='gain',
      path=os.path.join(out_dir, 'kd_gain_vs_size.png'), xscale='log',
      title=f'Direct KD from {teacher}: gain over scratch by student size',
      xlabel='student parameters', ylabel='KD − scratch (accuracy points)')

  # The verdict, from the per-seed paired differences against direct KD.
  lines, full_parts, best_parts, scratch_parts = [], [], [], []
  for student in config.students:
    per_path, per_gain = {}, {}
    for r in records:
      if r['student'] == student and r['num_links'] >= 2:
        per_path.setdefault(r['path'], []).append(r['vs_direct'])
      if r['student'] == student and r['num_links'] >= 1:
        per_gain.setdefault(r['path'], []).append(r['gain'])
    if per_gain:
      top = max(per_gain, key=lambda p: np.mean(per_gain[p]))
      d = np.asarray(per_gain[top])
      scratch_parts.append(f'{student}: {top} {paired(d)} ({verdict_of(d)})')
    for path, diffs in per_path.items():
      d = np.asarray(diffs)
      lines.append(f'{path}: {paired(d)} points vs direct KD, better in {int(np.sum(d > 0))}/'
                   f'{d.size} seeds → {verdict_of(d)}')
    if per_path:
      full_path = max(per_path, key=lambda p: p.count('→'))
      d = np.asarray(per_path[full_path])
      full_parts.append(f'{student} {paired(d)} ({verdict_of(d)}, better in '
                        f'{int(np.sum(d > 0))}/{d.size} seeds)')
      best = max(per_path, key=lambda p: np.mean(per_path[p]))
      best_parts.append(f'{student}: {best} ({paired(np.asarray(per_path[best]))})')
  significant = [l for l in lines if l.endswith('→ better')]
  # With n seeds, a path with no true effect is called 'better' when t_{n-1} > 2; over m
  # paths, how likely are at least k such calls by chance (paths taken as independent)?
  n_seeds = len(config.seeds)
  chance = float(stats.t.sf(2.0, n_seeds - 1)) if n_seeds > 1 else 1.0
  p_chance = float(stats.binom.sf(len(significant) - 1, len(lines), chance)) if lines else 1.0
  if not significant:
    label = 'Not reproduced'
    passed = 'No assistant path is significantly better than direct KD. '
  else:
    label = 'Partly reproduced' if p_chance < 0.05 else 'Not reproduced'
    passed = (
        f'{len(significant)} of {len(lines)} assistant paths pass the criterion '
        f'({"; ".join(significant)}), but with {n_seeds} seeds a path with no effect passes '
        f'with probability {chance:.0%}, so {len(significant)} or more of {len(lines)} passes '
        f'happen by chance with probability {p_chance:.2f} (paths taken as independent)'
        + ('; that is not evidence for TAKD. ' if p_chance >= 0.05 else '. '))
  teacher_by_seed = {r['seed']: r['accuracy'] for r in records if r['student'] == teacher}
  gap_parts = []
  for student in config.students:
    d = np.asarray([teacher_by_seed[r['seed']] - r['accuracy'] for r in records
                    if r['path'] == f'{student} (scratch)'])
    gap_parts.append(f'{student} {paired(d)}')
  summary = (
      f'{label} ({n_seeds} seeds, paired by seed, criterion: mean difference beyond two '
      'standard errors). ' + passed
      + f'Full ladder vs direct KD: {"; ".join(full_parts)}. Nominally best path: '
      f'{"; ".join(best_parts)}. Teacher − student gap (both from scratch, paired): '
      f'{"; ".join(gap_parts)} points. Best KD path vs the same student from scratch: '
      f'{"; ".join(scratch_parts)}.')
  if len(gap) >= 2:
    shrinks = gap[-1]['gain_mean'] < gap[0]['gain_mean']
    summary += (
        f' Direct KD gain over scratch by student size ({gap[0]["model"]} … {gap[-1]["model"]}): '
        + ', '.join(f'{r["model"]} {r["gain"]}' for r in gap) + ' points, so the gain '
        + ('shrinks' if shrinks else 'does not shrink') + ' as the teacher/student gap grows'
        + (' and turns negative.' if gap[-1]['gain_mean'] < 0 else '.'))
  gap_md = report.markdown_table(gap, GAP_COLUMNS)
  notes = (
      f'Setup: {dataset} ({len(train_src)} train / {len(test_src)} test), teacher '
      f'{teacher} trained {config.teacher_steps} steps (lr {config.teacher_lr:g}), every other '
      f'link and every scratch run {config.student_steps} steps (lr {config.student_lr:g}), '
      f'Adam + cosine decay, batch {config.batch_size}; KD objective in every link '
      f'α·CE + (1−α)·τ²·KL with α={config.kd.alpha:g}, τ={config.kd.temperature:g}, on the '
      'labeled training set. Mean ± std over seeds '
      f'{tuple(config.seeds)}; "paired" columns are per-seed differences (scratch, direct and '
      'TA students of one seed share the initialisation and data order). Links shared by '
      'several paths are trained once (kdjax.schemes.takd_sweep).\n\n'
      'Paired differences against direct KD:\n\n' + '\n'.join(f'- {l}' for l in lines) +
      '\n\n## Direct KD as the gap grows\n\nEach model distilled directly from the teacher '
      '(the first link of its paths) against the same model from scratch:\n\n' + gap_md +
      '\n\nPlots: `takd_paths.png`, `kd_gain_vs_size.png`. Wall time of the call that wrote '
      'this file: '
      f'{time.perf_counter() - t0:.0f} s (runs found complete in the workdir are restored, not '
      'retrained).' + (f'\n\n{config.notes}' if config.get('notes') else ''))
  common.write_results(
      config.results, rows, COLUMNS,
      title=f'TAKD: teacher assistants vs direct KD ({dataset})', finding=FINDING,
      verdict=summary, command='python -m experiments.run --config experiments/configs/takd.py'
      + ('' if config.mode == 'default' else f':{config.mode}'), notes=notes)
  return rows
