"""TAKD on MNIST-1D and digits: does a teacher assistant beat direct KD when the gap is large?

A ladder of models (teacher first) is distilled along every path of
:func:`kdjax.schemes.assistant_paths` (direct ``T → S``, ``T → A → S`` for each
assistant, and the full ladder) by :func:`kdjax.schemes.takd_sweep`, for each
configured student, with the same KD objective in every link; each student is
also trained from scratch with the same seed (so the comparisons are paired).

With ``config.tuning`` (:func:`tune`), every learning rate of a run from scratch
and every distilled model's KD setting (learning rate, α, τ) are chosen on a
stratified validation split of the training set with a tuning seed that is not
an evaluation seed (:mod:`experiments.tuning`); the teacher keeps a fixed, stated
learning rate. The chosen settings are then trained on the full training split
for every seed and evaluated on test once; the results list every grid with
its validation accuracies and flag a choice at an end of its grid.

Usable from a notebook::

    from experiments import takd
    from experiments.configs import takd as cfg
    rows = takd.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from experiments import common
from experiments import stats
from experiments import tuning
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
TUNED_COLUMNS = ('student', 'path', 'assistants', 'setting (tuned)', 'test accuracy',
                 'gain over scratch', 'gain 95% CI', 'gain Holm p', 'gain verdict', DELTA,
                 *stats.COLUMNS, 'agreement w/ own teacher', 'seeds')
TUNED_GAP_COLUMNS = ('model', 'params', 'scratch setting', 'scratch', 'KD setting',
                     'direct KD from teacher', 'KD gain (paired)', *stats.COLUMNS, 'seeds')
FINDING = ('TAKD (Mirzadeh et al. 2020): when the teacher/student '
           'gap is large, distilling through a mid-sized teacher assistant beats direct KD, '
           'and the full chain of assistants is best.')


HISTORY = ('Design change after earlier runs: the results these replace trained every student '
           'and link with hand-picked, untuned settings (the config\'s `student_lr` and `kd`) '
           'and fewer seeds; the validation tuning and the larger seed set were adopted after '
           'them, with the same ladders, steps and batch sizes.')
WIDENED = ('A second design change, from validation accuracies only: a first tuned run of this '
           'mode searched the learning-rate grids without their largest value and chose the top '
           'of both grids for every model, so one larger learning rate was added to both grids '
           'and the run repeated (its tuning and evaluation runs of unchanged settings were '
           'restored from the workdir; the wall time below is that of the repeat).')
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


def kd_models(names: Sequence[str], students: Sequence[str]) -> list[str]:
  """The models trained by a KD link on some path of some student, in ladder order.

  Every path of :func:`kdjax.schemes.assistant_paths` on the ladder cut at each
  student counts; each of these models gets one tuned KD setting, used by every
  link into it (whatever its teacher on the path).

  Examples:
    >>> kd_models(['T', 'A1', 'A2', 'S'], ['S'])
    ['A1', 'A2', 'S']
    >>> kd_models(['T', 'A', 'S1', 'S2'], ['S1'])
    ['A', 'S1']
  """
  used = set()
  for student in students:
    sub = list(names[:list(names).index(student) + 1])
    for path in schemes.assistant_paths(sub):
      used.update(path[1:])
  return [n for n in names[1:] if n in used]


def kd_grid(tuning_config) -> list[dict]:
  """The a-priori KD grid: learning rate × α × τ (the last axis varies fastest).

  Examples:
    >>> g = kd_grid({'learning_rates': (1e-2,), 'alphas': (0.1, 0.5), 'temperatures': (4.0,)})
    >>> [(s['alpha'], s['temperature']) for s in g]
    [(0.1, 4.0), (0.5, 4.0)]
  """
  lrs = tuning_config.get('kd_learning_rates') or tuning_config['learning_rates']
  return tuning.grid_of(learning_rate=tuple(lrs),
                        alpha=tuple(tuning_config['alphas']),
                        temperature=tuple(tuning_config['temperatures']))


def scratch_grid(tuning_config) -> list[dict]:
  """The a-priori learning-rate grid of the runs from scratch.

  Examples:
    >>> scratch_grid({'learning_rates': (3e-3, 1e-2)})
    [{'learning_rate': 0.003}, {'learning_rate': 0.01}]
  """
  return tuning.grid_of(learning_rate=tuple(tuning_config['learning_rates']))


def setting_text(setting: Mapping[str, Any]) -> str:
  """``'lr 0.01, α 0.1, τ 4'``: a setting for the tables.

  Examples:
    >>> setting_text({'learning_rate': 0.01, 'alpha': 0.1, 'temperature': 4.0})
    'lr 0.01, α 0.1, τ 4'
    >>> setting_text({'learning_rate': 0.003})
    'lr 0.003'
  """
  short = {'learning_rate': 'lr', 'alpha': 'α', 'temperature': 'τ'}
  return ', '.join(f'{short.get(k, k)} {v:g}' for k, v in setting.items())


def _run_dir(config, kind: str, name: str, spec: Mapping[str, Any]) -> str:
  """``<workdir>/tuning/<kind>_<name>-<hash of spec>``: a changed setting never resumes."""
  digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
  return os.path.join(config.workdir, 'tuning', f'{kind}_{name}-{digest[:10]}')


def tune(config, ladder: Mapping[str, Any], train_src, scratch_models: Sequence[str],
         distilled: Sequence[str]) -> tuple[dict, dict, dict, dict]:
  """Chooses every learning rate and KD setting on a validation split of train.

  The teacher is trained once on "train minus validation" with the tuning seed
  (at its fixed, stated learning rate); each scratch model's learning rate
  and each distilled model's KD setting (lr, α, τ, on direct KD from that
  teacher) are the best of their grids on the validation split.

  Returns:
    ``(search records, {model: scratch setting}, {model: KD setting}, facts)``.
  """
  t = config.tuning
  fit_src, val_src = tuning.validation_sources(train_src, fraction=t.fraction, seed=t.split_seed)
  names = list(ladder)
  teacher = names[0]
  base = {'dataset': config.get('dataset', 'mnist1d'), 'data_samples': config.data_samples,
          'fraction': t.fraction, 'split_seed': t.split_seed, 'seed': t.seed,
          'batch_size': config.batch_size}
  spec_of = {n: [m, dict(kw)] for n, m, kw in config.ladder}
  runs_done = []

  def train(name, steps, setting, kind, **kw):
    spec = {**base, 'model': spec_of[name], 'steps': steps, 'setting': setting,
            'teacher': kw.get('teacher_spec')}
    kw.pop('teacher_spec', None)
    r = runs.train_and_evaluate(
        ladder[name], train_data=fit_src, eval_data=val_src, num_steps=steps,
        learning_rate=setting['learning_rate'], batch_size=config.batch_size, seed=t.seed,
        workdir=_run_dir(config, kind, name, spec), progress=config.progress,
        desc=f'tune {kind} {name} {setting_text(setting)}', **kw)
    runs_done.append(r.fit.resumed_from is not None)
    return r

  teacher_run = train(teacher, config.teacher_steps, {'learning_rate': config.teacher_lr},
                      'teacher')
  teacher_spec = {'model': spec_of[teacher], 'steps': config.teacher_steps,
                  'learning_rate': config.teacher_lr}
  search, scratch, kd = {}, {}, {}
  for n in names[1:]:
    if n in scratch_models:
      rec = tuning.tune(scratch_grid(t), lambda s, n=n: train(
          n, config.student_steps, s, 'scratch').metrics['accuracy'])
      search[f'{n} from scratch'] = rec
      scratch[n] = rec['chosen']
    if n in distilled:
      rec = tuning.tune(kd_grid(t), lambda s, n=n: train(
          n, config.student_steps, s, 'kd', teacher=ladder[teacher],
          teacher_checkpoint=teacher_run.checkpoint_dir, teacher_spec=teacher_spec,
          terms=schemes.kd_terms(s['alpha'], s['temperature'])).metrics['accuracy'])
      search[f'{n}: KD (direct from {teacher}; every link into {n})'] = rec
      kd[n] = rec['chosen']
  facts = {'fit_size': len(fit_src), 'validation_size': len(val_src), 'tuning': search,
           'tuning_teacher_validation_accuracy': teacher_run.metrics['accuracy'],
           'tuning_runs': len(runs_done), 'tuning_runs_restored': int(sum(runs_done))}
  return search, scratch, kd, facts


def run(config) -> list[dict]:
  """Runs the sweep for every seed and student; writes results/<config.results>/.

  With ``config.tuning``, the learning rate of every run from scratch and the
  KD setting (lr, α, τ) of every distilled model are first chosen on a
  validation split (:func:`tune`); the chosen settings are then trained on the
  full training split for every seed and evaluated on test once.
  """
  start = time.time()
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  train_src, test_src = load_data(config)
  names = [n for n, _, _ in config.ladder]
  ladder = {n: models.create(m, 10, **dict(kw)) for n, m, kw in config.ladder}
  teacher = names[0]
  num_params = {n: models.count_params(jax.eval_shape(
      ladder[n].init, jax.random.key(0), train_src[0]['x'][None])['params']) for n in names}
  scratch_models = names[1:] if config.scratch_all else list(config.students)
  distilled = kd_models(names, config.students)
  tuned = bool(config.get('tuning'))
  facts = {}
  if tuned:
    _, scratch_setting, kd_setting, facts = tune(config, ladder, train_src, scratch_models,
                                                 distilled)
    facts['tuning_seconds'] = time.time() - start
  else:
    scratch_setting = {n: {'learning_rate': config.student_lr} for n in scratch_models}
    kd_setting = {n: {'learning_rate': config.student_lr, 'alpha': config.kd.alpha,
                      'temperature': config.kd.temperature} for n in distilled}
  lr = {teacher: config.teacher_lr, **{n: s['learning_rate'] for n, s in kd_setting.items()}}

  def terms(name):
    return schemes.kd_terms(kd_setting[name]['alpha'], kd_setting[name]['temperature'])

  # Chains with settings other than the config's untuned ones live elsewhere (a changed
  # setting never resumes a link; the untuned settings keep the plain `chains` directory).
  untuned = {'learning_rate': config.student_lr, 'alpha': config.kd.alpha,
             'temperature': config.kd.temperature}
  chains_dir = 'chains' if all(s == untuned for s in kd_setting.values()) else (
      'chains-' + hashlib.sha1(json.dumps([lr, kd_setting], sort_keys=True).encode())
      .hexdigest()[:10])
  records, link_records = [], []
  for seed in config.seeds:
    root = os.path.join(config.workdir, f'seed{seed}')
    scratch = {}
    for n in scratch_models:
      r = runs.train_and_evaluate(
          ladder[n], train_data=train_src, eval_data=test_src, num_steps=config.student_steps,
          learning_rate=scratch_setting[n]['learning_rate'], batch_size=config.batch_size,
          seed=seed, progress=config.progress,
          workdir=os.path.join(root, 'scratch', f'{n}-lr{scratch_setting[n]["learning_rate"]:g}'),
          desc=f'{n} scratch')
      scratch[n] = r.metrics['accuracy']
    teacher_acc = None
    for student in config.students:
      sub = names[:names.index(student) + 1]
      out = schemes.takd_sweep(
          {n: ladder[n] for n in sub}, train_data=train_src, eval_data=test_src,
          workdir=os.path.join(root, chains_dir),
          num_steps={n: config.teacher_steps if n == teacher else config.student_steps
                     for n in sub},
          learning_rate={n: lr[n] for n in sub}, seed=seed, batch_size=config.batch_size,
          terms=terms, progress=config.progress)
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
  facts = {'train_size': len(train_src), 'test_size': len(test_src), 'params': num_params,
           **facts}
  if tuned:
    facts.update({'scratch_settings': scratch_setting, 'kd_settings': kd_setting,
                  'wall_seconds': time.time() - start})
  setup = common.save_setup(
      out_dir, experiment='takd', config=config,
      command='python -m experiments.run --config experiments/configs/takd.py'
      + ('' if config.mode == 'default' else f':{config.mode}'), facts=facts)
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
  tuned = 'tuning' in facts

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
  def link_name(model):
    if tuned and model in config.students:  # the same comparison as the student's direct path
      return f'{teacher} → {model} vs {model} from scratch'
    return f'{teacher} → {model} (direct KD) vs {model} from scratch'

  for model in dict.fromkeys(r['model'] for r in links):
    if link_name(model) in dict(family):
      continue
    family.append((link_name(model),
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
        'gain Holm p': stats.format_p(g.p_holm) if g else '—',
        'gain verdict': g.verdict if g else '—',
        **stats.columns(c, delta=DELTA),
        'agreement w/ own teacher': r['agreement'] if is_chain else '—',
        'setting (tuned)': _row_setting(r, facts, teacher, config) if tuned else ''})
  order = {n: i for i, n in enumerate(names)}
  rows.sort(key=lambda r: (-order[r['student']] if r['student'] != teacher else -99,
                           '(' not in r['path'], r['path'].count('→'), r['path']))

  gap = common.aggregate(links, ['model'], ['scratch', 'kd', 'gain'],
                         percent=['scratch', 'kd', 'gain'])
  gap.sort(key=lambda r: order[r['model']])
  for r in gap:
    c = cmp[link_name(r['model'])]
    if tuned:
      r.update({'scratch setting': setting_text(facts['scratch_settings'][r['model']]),
                'KD setting': setting_text(facts['kd_settings'][r['model']])})
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
  gap_md = markdown_table(gap, TUNED_GAP_COLUMNS if tuned else GAP_COLUMNS)
  setup_note = tuned_setup_note(setup) if tuned else (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test), teacher '
      f'{teacher} trained {config.teacher_steps} steps (lr {config.teacher_lr:g}), every other '
      f'link and every scratch run {config.student_steps} steps (lr {config.student_lr:g}), '
      f'Adam + cosine decay, batch {config.batch_size}; KD objective in every link '
      f'α·CE + (1−α)·τ²·KL with α={config.kd.alpha:g}, τ={config.kd.temperature:g}, on the '
      'labeled training set. Accuracies: mean ± std over seeds; "paired" columns are per-seed '
      'differences (scratch, direct and TA students of one seed share the initialisation and '
      'data order). Links shared by several paths are trained once '
      '(kdjax.schemes.takd_sweep).')
  notes = (
      setup_note + '\n\n## Direct KD as the gap grows\n\nEach model distilled directly from '
      'the teacher (the first link of its paths) against the same model from scratch:\n\n'
      + gap_md +
      '\n\n' + common.comparison_lines(list(cmp.values())) +
      '\n\nPlots: `takd_paths.png`, `kd_gain_vs_size.png`.'
      + (f'\n\n{config.notes}' if config.get('notes') else ''))
  common.write_results(
      config.results, rows, TUNED_COLUMNS if tuned else COLUMNS,
      title=f'TAKD: teacher assistants vs direct KD ({dataset})', finding=FINDING,
      verdict=summary, command=setup['command'], notes=notes, out_dir=out_dir, dataset=dataset,
      seeds=seeds)
  return rows


def _row_setting(row: Mapping[str, Any], facts: Mapping[str, Any], teacher: str, config) -> str:
  """The setting of a table row: the student's tuned KD or scratch setting, the teacher's lr."""
  if row['student'] == teacher:
    return f'lr {config.teacher_lr:g} (fixed, not tuned)'
  if row['path'].endswith('(scratch)'):
    return setting_text(facts['scratch_settings'][row['student']])
  return setting_text(facts['kd_settings'][row['student']])


def tuned_setup_note(setup: Mapping[str, Any]) -> str:
  """The setup and tuning protocol of a tuned run, from setup.json alone."""
  config, f = common.config_of(setup), setup['facts']
  t = config.tuning
  dataset = DATASETS[config.get('dataset', 'mnist1d')]
  teacher = config.ladder[0][0]
  grid = t.to_dict() if hasattr(t, 'to_dict') else dict(t)
  kd_lrs = grid.get('kd_learning_rates') or grid['learning_rates']
  return (
      f'Setup: {dataset} ({f["train_size"]} train / {f["test_size"]} test). The teacher '
      f'{teacher} is trained from scratch for every seed (seed i for evaluation seed i) for '
      f'{config.teacher_steps} steps at a fixed learning rate {config.teacher_lr:g} (stated, not '
      f'tuned); every other run (each KD link and each run from scratch) takes '
      f'{config.student_steps} steps; Adam + cosine decay, batch {config.batch_size}; KD '
      'objective of a link α·CE + (1−α)·τ²·KL on the labeled training set. Accuracies: mean ± '
      'std over seeds; "paired" columns are per-seed differences (scratch, direct and TA '
      'students of one seed share the initialisation and data order). Links shared by several '
      'paths are trained once (kdjax.schemes.takd_sweep).\n\n'
      'Hyperparameters were chosen on validation data, never on test: '
      f'`kdjax.data.validation_split(fraction={t.fraction:g}, seed={t.split_seed})` holds '
      f'{f["validation_size"]} of the {f["train_size"]} training examples out (stratified by '
      f'label). A tuning teacher was trained on the other {f["fit_size"]} with seed {t.seed} '
      '(not an evaluation seed; validation accuracy '
      f'{100 * f["tuning_teacher_validation_accuracy"]:.1f}%). Decided before the runs: each '
      'model trained from scratch gets its own learning rate (grid '
      f'{", ".join(f"{v:g}" for v in grid["learning_rates"])}); each distilled model X gets one '
      'KD setting (learning rate × α × τ, grid lr '
      f'{", ".join(f"{v:g}" for v in kd_lrs)} × α '
      f'{", ".join(f"{v:g}" for v in grid["alphas"])} × τ '
      f'{", ".join(f"{v:g}" for v in grid["temperatures"])}), chosen on direct KD '
      f'{teacher} → X from the tuning teacher and then used by every link into X on every path '
      '(so a TA chain\'s last link shares the student\'s direct-KD setting, and a T → A link '
      'is the same run in every path through A). Every setting trained on the fit part with '
      f'seed {t.seed}; the best validation accuracy (ties: the first of the grid) was then '
      'trained on the full training split for every evaluation seed and evaluated on test once. '
      + tuning.edge_note(f['tuning'])
      + (f' {t.design_note}' if t.get('design_note') else '')
      + (f' {HISTORY}' if config.mode in ('default', 'digits') else '')
      + (f' {WIDENED}' if config.mode == 'default' else '')
      + '\n\nValidation accuracy per setting:\n\n' + tuning.tuning_lines(f['tuning'])
      + f'\n\nWall time of the run (tuning and evaluation, shared 2-core CPU): '
      f'{f["wall_seconds"]:.0f} s, of which tuning {f["tuning_seconds"]:.0f} s '
      f'({f["tuning_runs"]} tuning runs, {f["tuning_runs_restored"]} restored from the workdir).')
