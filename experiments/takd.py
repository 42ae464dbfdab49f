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

import jax
import numpy as np

from experiments import common
from experiments import stats
from experiments.report import markdown_table
from kdjax import data as kdata
from kdjax import models
from kdjax import runs
from kdjax import schemes


DELTA = 'vs direct KD (paired)'
COLUMNS = ('student', 'path', 'assistants', 'test accuracy', 'gain over scratch', 'gain 95% CI',
           'gain verdict', DELTA, *stats.COLUMNS, 'agreement w/ own teacher', 'seeds')
GAP_COLUMNS = ('model', 'params', 'scratch', 'direct KD from teacher', 'KD gain (paired)',
               *stats.COLUMNS, 'seeds')
FINDING = ('TAKD (Mirzadeh et al. 2020): when the teacher/student '
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


def verdict_of(diffs: np.ndarray) -> str:
  """The verdict of one paired comparison on its own (paired t, no multiplicity correction).

  Kept for code written against the old helper; a results table should put all of
  its comparisons through :func:`experiments.stats.compare` (Holm-corrected).
  """
  return stats.compare({'': np.asarray(diffs, np.float64)})[0].verdict


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
  common.enable_compilation_cache(config.get('compilation_cache', ''))
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
  out_dir = common.results_dir(config.results)
  common.save_records(records + [{'kind': 'direct_link', **r} for r in links],
                      os.path.join(out_dir, 'records.json'))
  setup = common.save_setup(
      out_dir, experiment='takd', config=config,
      command='python -m experiments.run --config experiments/configs/takd.py'
      + ('' if config.mode == 'default' else f':{config.mode}'),
      facts={'train_size': len(train_src), 'test_size': len(test_src), 'params': num_params})
  return report(common.load_results(out_dir)[0], setup, out_dir)


def report(all_records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the tables, plots and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  dataset = DATASETS[config.get('dataset', 'mnist1d')]
  names = [n for n, _, _ in config.ladder]
  teacher = names[0]
  num_params = facts['params']
  records = [r for r in all_records if r.get('kind') != 'direct_link']
  links = [r for r in all_records if r.get('kind') == 'direct_link']
  for r in records:
    for k in ('vs_direct', 'agreement'):
      r[k] = np.nan if r.get(k) is None else r[k]
  seeds = common.seeds_of(records)

  # The family: every assistant path vs direct KD, every KD path vs the student from scratch,
  # and direct KD vs scratch for every model distilled from the teacher.
  family = []
  for student in config.students:
    paths = list(dict.fromkeys(r['path'] for r in records
                               if r['student'] == student and r['num_links'] >= 1))
    direct = f'{teacher} → {student}'
    for path in paths:
      if path != direct:
        family.append((f'{path} vs direct KD', common.paired(
            records, {'path': path}, {'path': direct})))
      family.append((f'{path} vs {student} from scratch', common.paired(
          records, {'path': path}, {'path': f'{student} (scratch)'})))
  for model in dict.fromkeys(r['model'] for r in links):
    family.append((f'{teacher} → {model} (direct KD) vs {model} from scratch',
                   stats.paired_differences(common.by_seed(links, 'kd', model=model),
                                            common.by_seed(links, 'scratch', model=model))))
  cmp = {c.name: c for c in stats.compare(family)}

  agg = common.aggregate(records, ['student', 'path', 'assistants'],
                         ['accuracy', 'gain', 'vs_direct', 'agreement'],
                         percent=['accuracy', 'gain', 'vs_direct', 'agreement'])
  rows = []
  for r in agg:
    is_chain = '(' not in r['path']
    vs_direct = is_chain and '(direct' not in r['assistants']
    c = cmp.get(f'{r["path"]} vs direct KD') if vs_direct else None
    g = cmp.get(f'{r["path"]} vs {r["student"]} from scratch') if is_chain else None
    rows.append({
        **r, 'test accuracy': r['accuracy'],
        'gain over scratch': stats.format_delta(g) if g else '—',
        'gain 95% CI': stats.format_ci(g) if g else '—',
        'gain verdict': g.verdict if g else '—',
        **stats.columns(c, delta=DELTA),
        'agreement w/ own teacher': r['agreement'] if is_chain else '—'})
  order = {n: i for i, n in enumerate(names)}
  rows.sort(key=lambda r: (-order[r['student']] if r['student'] != teacher else -99,
                           '(' not in r['path'], r['path'].count('→'), r['path']))

  gap = common.aggregate(links, ['model'], ['scratch', 'kd', 'gain'],
                         percent=['scratch', 'kd', 'gain'])
  gap.sort(key=lambda r: order[r['model']])
  for r in gap:
    c = cmp[f'{teacher} → {r["model"]} (direct KD) vs {r["model"]} from scratch']
    r.update({'params': f'{num_params[r["model"]]:,}', 'direct KD from teacher': r['kd'],
              **stats.columns(c, delta='KD gain (paired)')})

  _plot_paths([r for r in rows if '(' not in r['path'] or r['path'].endswith('(scratch)')],
              config.students, os.path.join(out_dir, 'takd_paths.png'), dataset)
  common.errorbar_plot(
      [{**r, 'params': num_params[r['model']]} for r in gap], x='params', metric='gain',
      path=os.path.join(out_dir, 'kd_gain_vs_size.png'), xscale='log',
      title=f'Direct KD from {teacher}: gain over scratch by student size',
      xlabel='student parameters', ylabel='KD − scratch (accuracy points)')

  # The verdict, from the Holm-corrected paired comparisons against direct KD.
  vs_direct = [c for name, c in cmp.items() if name.endswith(' vs direct KD')]
  significant = [c for c in vs_direct if c.verdict == stats.BETTER]
  worse = [c for c in vs_direct if c.verdict == stats.WORSE]
  full_parts, best_parts, scratch_parts, full_better = [], [], [], []
  for student in config.students:
    mine = [c for c in vs_direct if c.name.split(' vs ')[0].endswith(f'→ {student}')]
    gains = [c for name, c in cmp.items() if name.endswith(f' vs {student} from scratch')
             and not name.startswith(f'{teacher} → {student} (direct')]
    if gains:
      top = max(gains, key=lambda c: c.mean)
      scratch_parts.append(f'{student}: {top.name.split(" vs ")[0]} {stats.summary(top)}')
    if mine:
      full = max(mine, key=lambda c: c.name.count('→'))
      full_parts.append(f'{student} {stats.summary(full)}')
      full_better.append(full.verdict == stats.BETTER)
      best = max(mine, key=lambda c: c.mean)
      best_parts.append(f'{student}: {best.name.split(" vs ")[0]} '
                        f'({stats.format_delta(best)} points, {best.wins}/{best.n} seeds)')
  if not significant:
    label = 'Not reproduced'
    passed = 'No assistant path is significantly better than direct KD after the Holm correction'
  else:
    label = 'Reproduced' if full_better and all(full_better) else 'Partly reproduced'
    passed = (f'{len(significant)} of {len(vs_direct)} assistant paths are significantly better '
              'than direct KD: ' + '; '.join(c.name for c in significant))
  if worse:
    passed += (f'; {len(worse)} significantly worse: ' + '; '.join(c.name for c in worse))
  teacher_by_seed = common.by_seed(records, student=teacher)
  gap_parts = []
  for student in config.students:
    scratch = common.by_seed(records, path=f'{student} (scratch)')
    d = stats.paired_differences({s: teacher_by_seed[s] for s in scratch}, scratch)
    gap_parts.append(f'{student} {common.mean_std(d)}')
  summary = (
      f'{label} ({len(seeds)} seeds). {passed}. Full ladder vs direct KD: '
      f'{"; ".join(full_parts)}. Nominally best path: {"; ".join(best_parts)}. Teacher − '
      f'student gap (both from scratch, mean ± std over seeds): {"; ".join(gap_parts)} points. '
      f'Best KD path vs the same student from scratch: {"; ".join(scratch_parts)}.')
  if len(gap) >= 2:
    shrinks = gap[-1]['gain_mean'] < gap[0]['gain_mean']
    summary += (
        f' Direct KD gain over scratch by student size ({gap[0]["model"]} … {gap[-1]["model"]}): '
        + ', '.join(f'{r["model"]} {r["KD gain (paired)"]} {r["95% CI"]} ({r["verdict"]})'
                    for r in gap) + ' points, so the mean gain '
        + ('shrinks' if shrinks else 'does not shrink') + ' as the teacher/student gap grows'
        + (' and turns negative.' if gap[-1]['gain_mean'] < 0 else '.'))
  gap_md = markdown_table(gap, GAP_COLUMNS)
  notes = (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test), teacher '
      f'{teacher} trained {config.teacher_steps} steps (lr {config.teacher_lr:g}), every other '
      f'link and every scratch run {config.student_steps} steps (lr {config.student_lr:g}), '
      f'Adam + cosine decay, batch {config.batch_size}; KD objective in every link '
      f'α·CE + (1−α)·τ²·KL with α={config.kd.alpha:g}, τ={config.kd.temperature:g}, on the '
      'labeled training set. Accuracies: mean ± std over seeds; "paired" columns are per-seed '
      'differences (scratch, direct and TA students of one seed share the initialisation and '
      'data order). Links shared by several paths are trained once '
      '(kdjax.schemes.takd_sweep).\n\n'
      '## Direct KD as the gap grows\n\nEach model distilled directly from the teacher '
      '(the first link of its paths) against the same model from scratch:\n\n' + gap_md +
      '\n\n' + common.comparison_lines(list(cmp.values())) +
      '\n\nPlots: `takd_paths.png`, `kd_gain_vs_size.png`.'
      + (f'\n\n{config.notes}' if config.get('notes') else ''))
  common.write_results(
      config.results, rows, COLUMNS,
      title=f'TAKD: teacher assistants vs direct KD ({dataset})', finding=FINDING,
      verdict=summary, command=setup['command'], notes=notes, out_dir=out_dir, dataset=dataset,
      seeds=seeds)
  return rows
