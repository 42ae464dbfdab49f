"""Born-again networks (BAN) and sequential-KD ensembles vs independent ensembles.

Tests two published findings on one set of runs: BAN (Furlanello et al.
2018): generation 2 or later beats generation 1, the generations beat their
teacher, and their ensemble beats a single model; and the control of Cho &
Hariharan (2019): an ensemble of sequentially distilled models does
not beat an ensemble of as many independently trained ones. The data is
``config.dataset`` (MNIST-1D or scikit-learn digits, :func:`experiments.takd.load_data`).

Usable from a notebook::

    from experiments import ban
    from experiments.configs import ban as cfg
    rows = ban.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

from experiments import common
from experiments import dml
from experiments import eskd
from experiments import stats
from experiments import tuning
from experiments.eskd import format_setting
from experiments.takd import DATASETS
from experiments.takd import load_data
from kdjax import models
from kdjax import runs
from kdjax import schemes


DELTA = 'Δ vs S0 (paired)'
COLUMNS = ('model', 'members', 'setting', 'test accuracy', DELTA, *stats.COLUMNS, 'NLL',
           'disagreement', 'seeds')
# The columns of an untuned run's report (the committed results before validation tuning).
LEGACY_COLUMNS = tuple(c for c in COLUMNS if c != 'setting')
FINDING = ('BAN (Furlanello et al. 2018): born-again generation 2 or more beats '
           'generation 1, and the ensemble of generations beats a single model. Efficacy of KD '
           '(Cho & Hariharan 2019): ensembles of a sequential-KD chain do not beat '
           'ensembles of independently trained models.')


def variant_axes(config, variant: Sequence[Any]) -> dict[str, list[float]]:
  """The (α, τ) axes searched for one BAN objective ``(name, α, τ)``.

  ``config.tuning.kd_grids[name]`` gives them; a variant without one keeps its
  own α and τ (the paper's BAN objective, α = 0, τ = 1, is a definition, not a
  hyperparameter).

  Examples:
    >>> from experiments.configs import ban as cfg
    >>> c = cfg.get_config('default')
    >>> variant_axes(c, ('ban', 0.0, 1.0)), variant_axes(c, ('ban_kd', 0.1, 4.0))['alpha']
    ({'alpha': [0.0], 'temperature': [1.0]}, [0.1, 0.5])
  """
  name, alpha, tau = variant
  grids = config.tuning.get('kd_grids') or {}
  g = grids.get(name, {})
  return {'alpha': [float(v) for v in g.get('alpha', (alpha,))],
          'temperature': [float(v) for v in g.get('temperature', (tau,))]}


def tuning_grids(config) -> dict[str, list[dict]]:
  """The a-priori grid of every search: the scratch model's and each BAN objective's students.

  The scratch search sets the learning rate of generation 0 and of the
  independent models; each objective's search (learning rate, and α, τ where
  :func:`variant_axes` has more than one value) sets its born-again students',
  shared by all generations 1 … k.

  Examples:
    >>> from experiments.configs import ban as cfg
    >>> grids = tuning_grids(cfg.get_config('quick'))
    >>> list(grids), len(grids['scratch']), grids['ban'][0]
    (['scratch', 'ban'], 2, {'learning_rate': 0.003, 'alpha': 0.0, 'temperature': 1.0})
  """
  lrs = [float(v) for v in config.tuning.learning_rates]
  grids = {'scratch': tuning.grid_of(learning_rate=lrs)}
  for v in config.variants:
    grids[v[0]] = tuning.grid_of(learning_rate=lrs, **variant_axes(config, v))
  return grids


def chosen_settings(config, facts: Mapping[str, Any]) -> dict[str, dict]:
  """``{'scratch': {learning_rate}, <variant>: {learning_rate, alpha, temperature}}`` used.

  From ``facts['tuning']`` for a tuned run; else the config's fixed values.

  Examples:
    >>> from experiments.configs import ban as cfg
    >>> c = cfg.get_config('default')
    >>> c.learning_rate = 1e-2
    >>> chosen_settings(c, {})['ban_kd']
    {'learning_rate': 0.01, 'alpha': 0.1, 'temperature': 4.0}
  """
  searches = facts.get('tuning')
  if searches:
    return {k: dict(t['chosen']) for k, t in searches.items()}
  lr = float(config.learning_rate)
  return {'scratch': {'learning_rate': lr},
          **{n: {'learning_rate': lr, 'alpha': float(a), 'temperature': float(t)}
             for n, a, t in config.variants}}


def run(config) -> list[dict]:
  """Tunes on validation, runs independent models and BAN chains for every seed.

  With ``config.tuning`` (:mod:`experiments.tuning`): the scratch learning
  rate is chosen on a stratified validation split of train with the tuning
  seed; the scratch model trained with it on train minus validation is the
  teacher of every setting of each BAN objective's grid (its generation 1,
  scored on validation). The chosen settings are then trained on the full
  training split for every seed and evaluated on test once. Runs are
  checkpointed under ``config.workdir`` in directories named by their
  settings; complete runs are restored instead of retrained. Writes
  results/<config.results>/.
  """
  start = time.time()
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  train_src, test_src = load_data(config)
  name, registry_name, kw = config.model
  model = models.create(registry_name, 10, **dict(kw))
  k = config.generations
  dataset = config.get('dataset', 'mnist1d')
  counts = {'runs': 0, 'restored': 0}
  base_hp = {'model': [name, registry_name, dict(kw)], 'dataset': dataset,
             'data_samples': config.data_samples, 'batch_size': config.batch_size,
             'num_steps': config.num_steps}
  common_kw = dict(batch_size=config.batch_size, num_steps=config.num_steps,
                   progress=config.progress, checkpoint_every=config.num_steps)

  def count(res):
    counts['runs'] += 1
    counts['restored'] += res.fit.resumed_from is not None
    return res

  def scratch(src, eval_src, seed, lr, tag):
    hp = {**base_hp, 'learning_rate': lr, 'data': src.split}
    return count(runs.train_and_evaluate(
        model, train_data=src, eval_data=eval_src, seed=seed, learning_rate=lr,
        workdir=dml.run_dir(config, seed, f'scratch_{tag}', hp), desc=f'{tag} seed {seed}',
        **common_kw))

  facts = {'train_size': len(train_src), 'test_size': len(test_src)}
  t = config.get('tuning')
  if t:
    fit_src, val_src = tuning.validation_sources(train_src, fraction=t.fraction,
                                                 seed=t.split_seed)
    grids = tuning_grids(config)
    searches = {'scratch': tuning.tune(grids['scratch'], lambda s: scratch(
        fit_src, val_src, t.seed, s['learning_rate'], 'tune').metrics['accuracy'])}
    teacher = scratch(fit_src, val_src, t.seed, searches['scratch']['chosen']['learning_rate'],
                      'tune')  # restored: the chosen run of the search

    def score(s, variant):
      hp = {**base_hp, **s, 'variant': variant, 'data': fit_src.split,
            'teacher_learning_rate': searches['scratch']['chosen']['learning_rate']}
      return count(runs.train_and_evaluate(
          model, train_data=fit_src, eval_data=val_src, seed=t.seed,
          learning_rate=s['learning_rate'], terms=schemes.kd_terms(s['alpha'], s['temperature']),
          teacher=model, teacher_checkpoint=teacher.checkpoint_dir,
          workdir=dml.run_dir(config, t.seed, f'{variant}_gen1_tune', hp),
          desc=f'{variant} gen 1 (tune)', **common_kw)).metrics['accuracy']

    for v in config.variants:
      searches[v[0]] = tuning.tune(grids[v[0]], lambda s, v=v: score(s, v[0]))
    facts.update({'fit_size': len(fit_src), 'validation_size': len(val_src),
                  'tuning': searches, 'tuning_runs': counts['runs'],
                  'tuning_runs_restored': counts['restored']})
  chosen = chosen_settings(config, facts)
  records = []

  def add(seed, label, group, members, s0_acc):
    out = schemes.evaluate_ensemble(members, test_src)
    records.append({'seed': seed, 'model': label, 'group': group, 'members': len(members),
                    'accuracy': out['accuracy'], 'vs_s0': out['accuracy'] - s0_acc,
                    'nll': out['nll'], 'disagreement': out['disagreement']})

  for seed in config.seeds:
    indep = [scratch(train_src, test_src, seed + 1000 * g, chosen['scratch']['learning_rate'],
                     f'independent{g}') for g in range(k + 1)]
    members = [(model, r.state.variables) for r in indep]
    s0 = indep[0].metrics['accuracy']
    add(seed, 'S0 (scratch, BAN teacher)', 'single', members[:1], s0)
    for g in range(1, k + 1):
      add(seed, f'independent #{g} (scratch)', 'single', members[g:g + 1], s0)
    add(seed, f'independent ensemble #1–{k}', 'ensemble', members[1:], s0)
    add(seed, f'independent ensemble #0–{k}', 'ensemble', members, s0)
    for variant, _, _ in config.variants:
      s = chosen[variant]
      hp = {**base_hp, **s, 'generations': k, 'data': train_src.split,
            'teacher_learning_rate': chosen['scratch']['learning_rate']}
      chain = schemes.born_again(
          model, generations=k, workdir=dml.run_dir(config, seed, variant, hp), seed=seed,
          terms=schemes.kd_terms(s['alpha'], s['temperature']),
          teacher_checkpoint=indep[0].checkpoint_dir, train_data=train_src, eval_data=test_src,
          learning_rate=s['learning_rate'], **common_kw)
      counts['runs'] += k
      counts['restored'] += sum(bool(r) for r in chain.reused[1:])
      gens = [(model, r.state.variables) for r in chain.links[1:]]
      for g in range(1, k + 1):
        add(seed, f'{variant} gen {g}', 'single', gens[g - 1:g], s0)
      add(seed, f'{variant} ensemble gen 1–{k}', 'ensemble', gens, s0)
      add(seed, f'{variant} ensemble gen 0–{k}', 'ensemble', members[:1] + gens, s0)

  out_dir = common.results_dir(config.results)
  common.save_records(records, os.path.join(out_dir, 'records.json'))
  facts.update({'wall_seconds': time.time() - start, 'runs': counts['runs'],
                'runs_restored': counts['restored']})
  setup = common.save_setup(
      out_dir, experiment='ban', config=config,
      command='python -m experiments.run --config experiments/configs/ban.py'
      + ('' if config.mode == 'default' else f':{config.mode}'), facts=facts)
  return report(common.load_results(out_dir)[0], setup, out_dir)


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plot and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  dataset = DATASETS[config.get('dataset', 'mnist1d')]
  name, registry_name, kw = config.model
  k = config.generations
  seeds = common.seeds_of(records)
  agg = common.aggregate(records, ['model', 'members'],
                         ['accuracy', 'vs_s0', 'nll', 'disagreement'],
                         percent=['accuracy', 'vs_s0', 'disagreement'])
  s0 = 'S0 (scratch, BAN teacher)'
  family = [(f'{r["model"]} vs S0', common.paired(records, {'model': r['model']}, {'model': s0}))
            for r in agg if r['model'] != s0 and not r['model'].startswith('independent #')]

  comparisons = []  # (variant, kind, name)

  def compare(variant, kind, text, a, b):
    label = f'{variant}: {text}'
    family.append((label, common.paired(records, {'model': a}, {'model': b})))
    comparisons.append((variant, kind, label))

  for variant, _, _ in config.variants:
    for g in range(2, k + 1):
      compare(variant, 'gen', f'gen {g} vs gen 1', f'{variant} gen {g}', f'{variant} gen 1')
    compare(variant, 'ensemble', f'ensemble gen 1–{k} vs gen {k} alone',
            f'{variant} ensemble gen 1–{k}', f'{variant} gen {k}')
    compare(variant, 'control', f'ensemble gen 0–{k} vs independent ensemble #0–{k}',
            f'{variant} ensemble gen 0–{k}', f'independent ensemble #0–{k}')
    compare(variant, 'control', f'ensemble gen 1–{k} vs independent ensemble #1–{k}',
            f'{variant} ensemble gen 1–{k}', f'independent ensemble #1–{k}')
  for variant, _, _ in config.variants:
    for g in range(1, k + 1):
      comparisons.append((variant, 'teacher', f'{variant} gen {g} vs S0'))
  cmp = {c.name: c for c in stats.compare(family)}
  rows = [{**r, 'test accuracy': r['accuracy'],
           **stats.columns(cmp.get(f'{r["model"]} vs S0'), delta=DELTA),
           'NLL': r['nll'], 'disagreement': r['disagreement'] if r['members'] > 1 else '—'}
          for r in agg]

  by_model = {r['model']: r for r in agg}
  gen_rows = []
  for variant, _, _ in config.variants:
    gen_rows.append({**by_model['S0 (scratch, BAN teacher)'], 'generation': 0,
                     'series': variant})
    for g in range(1, k + 1):
      gen_rows.append({**by_model[f'{variant} gen {g}'], 'generation': g, 'series': variant})
  common.errorbar_plot(
      gen_rows, x='generation', metric='accuracy', series='series',
      path=os.path.join(out_dir, 'ban_generations.png'),
      title=f'BAN generations of {name} ({dataset})', xlabel='generation (0 = scratch teacher)',
      baselines={f'independent ensemble of {k + 1}':
                 by_model[f'independent ensemble #0–{k}']['accuracy_mean'],
                 **{f'{v} ensemble gen 0–{k}': by_model[f'{v} ensemble gen 0–{k}']['accuracy_mean']
                    for v, _, _ in config.variants}})

  def outcome(kind):
    parts = []
    for variant, _, _ in config.variants:
      found = [cmp[label] for w, kd, label in comparisons if w == variant and kd == kind]
      parts.append(f'{variant}: ' + ', '.join(
          f'{c.name.split(": ", 1)[-1]} {stats.format_delta(c)} {stats.format_ci(c)} '
          f'({c.verdict})' for c in found))
    return '; '.join(parts)

  dis = {v: by_model[f'{v} ensemble gen 0–{k}']['disagreement_mean'] for v, _, _ in config.variants}
  indep_dis = by_model[f'independent ensemble #0–{k}']['disagreement_mean']
  def status(kind, variant):
    found = [cmp[label].verdict for w, kd, label in comparisons if kd == kind and w == variant]
    if found and all(v == stats.TOO_FEW for v in found):
      return 'undetermined (one seed)'
    return (stats.BETTER in found, stats.WORSE in found)

  def said_one(kind, variant, positive):
    s = status(kind, variant)
    if isinstance(s, str):
      return s
    better, worse = s
    if positive:  # the finding claims "better"
      return 'reproduced' if better else ('contradicted' if worse else 'not reproduced')
    if better:  # the finding claims "not better"
      return 'contradicted'
    return ('holds (the BAN ensemble is significantly worse)' if worse
            else 'not contradicted (no significant difference)')

  def said(kind, positive):
    return ', '.join(f'{v} {said_one(kind, v, positive)}' for v, _, _ in config.variants)

  summary = (
      f'Summary: BAN generation ≥ 2 beats generation 1: '
      f'{said("gen", True) if k > 1 else "n/a"}; ensemble of generations beats a single '
      f'model: {said("ensemble", True)}; sequential-KD ensembles do not beat as many '
      f'independently trained models (Efficacy of KD): {said("control", False)}.')
  verdict = ' '.join([
      summary,
      f'(1) Later BAN generations vs generation 1: {outcome("gen") if k > 1 else "n/a (k = 1)"}.',
      f'(2) Generations vs their teacher: {outcome("teacher")}.',
      f'(3) Ensemble of generations vs the last generation: {outcome("ensemble")}.',
      f'(4) Efficacy control, BAN ensembles vs as many independent models: {outcome("control")}'
      ' (mean pairwise disagreement of the gen 0–k ensembles: '
      + ', '.join(f'{v} {100 * d:.1f}%' for v, d in dis.items())
      + f'; independent: {100 * indep_dis:.1f}%).'])
  tuned = bool(facts.get('tuning'))
  if tuned:
    chosen = chosen_settings(config, facts)
    for r in rows:
      owner = next((v for v, _, _ in config.variants if r['model'].startswith(f'{v} ')),
                   'scratch')
      r['setting'] = format_setting(chosen[owner])
    notes = (
        f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test); every '
        f'model is {name} ({registry_name} {dict(kw)}) trained {config.num_steps} steps '
        f'(Adam + cosine decay, batch {config.batch_size}). BAN objectives (loss '
        'α·CE + (1−α)·τ²·KL to the previous generation): '
        + ', '.join(f'`{v}`' + (' (α, τ searched)' if _searched(config, (v, a, t))
                                else f' α={a:g}, τ={t:g} (fixed)')
                    for v, a, t in config.variants) +
        '. The setting column gives each row\'s learning rate (and α, τ), chosen on validation '
        '(below): the scratch search sets generation 0 and the independent models, each '
        'objective\'s search its born-again students, one setting for all generations 1 … k '
        '(decided before the runs: a student fitting soft targets need not share the scratch '
        'model\'s rate, and tuning every generation separately would multiply the searches). '
        f'Independent model #g and BAN generation g share seed (seed + 1000·g): same '
        'initialisation and data order; every seed has its own generation 0. Ensembles average '
        f'softmax probabilities. Test accuracy: mean ± std over seeds; "{DELTA}" is the paired '
        'difference to the scratch teacher.\n\n' + tuning_notes(config, facts) + '\n\n'
        + common.comparison_lines(list(cmp.values())) + '\n\nPlot: `ban_generations.png`.'
        + (f'\n\n{config.notes}' if config.get('notes') else '') + '\n\n' + eskd.wall_note(facts))
  else:  # an untuned run's committed report, as it was written
    notes = (
        f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test); every '
        f'model is {name} '
        f'({registry_name} {dict(kw)}) trained {config.num_steps} steps (lr '
        f'{config.learning_rate:g}, Adam + cosine decay, batch {config.batch_size}). BAN '
        'variants (loss α·CE + (1−α)·τ²·KL to the previous generation): '
        + ', '.join(f'`{v}` α={a:g}, τ={t:g}' for v, a, t in config.variants) +
        f'. Independent model #g and BAN generation g share seed (seed + 1000·g): same '
        'initialisation and data order. Ensembles average softmax probabilities. Test accuracy: '
        f'mean ± std over seeds; "{DELTA}" is the paired difference to the scratch teacher.\n\n'
        + common.comparison_lines(list(cmp.values())) +
        '\n\nPlot: `ban_generations.png`.' + (f'\n\n{config.notes}' if config.get('notes') else ''))
  common.write_results(
      config.results, rows, COLUMNS if tuned else LEGACY_COLUMNS,
      title=f'Born-again networks and ensembles ({dataset})',
      finding=FINDING, verdict=verdict, command=setup['command'], notes=notes, out_dir=out_dir,
      dataset=dataset, seeds=seeds)
  return rows


def tuning_notes(config, facts: Mapping[str, Any]) -> str:
  """The validation protocol, every grid with its validation accuracies, and the edge check."""
  t = config.tuning
  return (
      tuning.split_sentence(t, facts)
      + f'. With seed {t.seed} (not an evaluation seed), every setting of '
      f'the scratch grid below (fixed before the runs) trained the model on the other '
      f'{facts["fit_size"]}; the best on validation became the tuning generation 0, from which '
      'every setting of each objective\'s grid trained a generation 1 on the same examples, '
      'scored on validation. The best settings (ties: the first) were then trained on the full '
      'training split for every seed and evaluated on test once. '
      + tuning.widened_note(t) + tuning.edge_note(facts['tuning']) + '\n\n'
      + tuning.tuning_lines(facts['tuning']))


def _searched(config, variant) -> bool:
  axes = variant_axes(config, variant)
  return len(axes['alpha']) * len(axes['temperature']) > 1
