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

from experiments import common
from experiments import stats
from experiments.takd import DATASETS
from experiments.takd import load_data
from kdjax import models
from kdjax import runs
from kdjax import schemes


DELTA = 'Δ vs S0 (paired)'
COLUMNS = ('model', 'members', 'test accuracy', DELTA, *stats.COLUMNS, 'NLL', 'disagreement',
           'seeds')
FINDING = ('BAN (Furlanello et al. 2018): born-again generation 2 or more beats '
           'generation 1, and the ensemble of generations beats a single model. Efficacy of KD '
           '(Cho & Hariharan 2019): ensembles of a sequential-KD chain do not beat '
           'ensembles of independently trained models.')


def run(config) -> list[dict]:
  """Runs independent models and BAN chains for every seed; writes results/<config.results>/."""
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  train_src, test_src = load_data(config)
  name, registry_name, kw = config.model
  model = models.create(registry_name, 10, **dict(kw))
  k = config.generations
  common_kw = dict(train_data=train_src, eval_data=test_src, batch_size=config.batch_size,
                   num_steps=config.num_steps, learning_rate=config.learning_rate,
                   progress=config.progress)
  records = []

  def add(seed, label, group, members, s0_acc):
    out = schemes.evaluate_ensemble(members, test_src)
    records.append({'seed': seed, 'model': label, 'group': group, 'members': len(members),
                    'accuracy': out['accuracy'], 'vs_s0': out['accuracy'] - s0_acc,
                    'nll': out['nll'], 'disagreement': out['disagreement']})

  for seed in config.seeds:
    root = os.path.join(config.workdir, f'seed{seed}')
    indep = [runs.train_and_evaluate(model, seed=seed + 1000 * g,
                                     workdir=os.path.join(root, 'independent', f'm{g}'),
                                     desc=f'independent {g}', **common_kw)
             for g in range(k + 1)]
    members = [(model, r.state.variables) for r in indep]
    s0 = indep[0].metrics['accuracy']
    add(seed, 'S0 (scratch, BAN teacher)', 'single', members[:1], s0)
    for g in range(1, k + 1):
      add(seed, f'independent #{g} (scratch)', 'single', members[g:g + 1], s0)
    add(seed, f'independent ensemble #1–{k}', 'ensemble', members[1:], s0)
    add(seed, f'independent ensemble #0–{k}', 'ensemble', members, s0)
    for variant, alpha, tau in config.variants:
      chain = schemes.born_again(
          model, generations=k, workdir=os.path.join(root, variant), seed=seed,
          terms=schemes.kd_terms(alpha, tau), teacher_checkpoint=indep[0].checkpoint_dir,
          **common_kw)
      gens = [(model, r.state.variables) for r in chain.links[1:]]
      for g in range(1, k + 1):
        add(seed, f'{variant} gen {g}', 'single', gens[g - 1:g], s0)
      add(seed, f'{variant} ensemble gen 1–{k}', 'ensemble', gens, s0)
      add(seed, f'{variant} ensemble gen 0–{k}', 'ensemble', members[:1] + gens, s0)

  out_dir = common.results_dir(config.results)
  common.save_records(records, os.path.join(out_dir, 'records.json'))
  setup = common.save_setup(
      out_dir, experiment='ban', config=config,
      command='python -m experiments.run --config experiments/configs/ban.py'
      + ('' if config.mode == 'default' else f':{config.mode}'),
      facts={'train_size': len(train_src), 'test_size': len(test_src)})
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
  notes = (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test); every model '
      f'is {name} '
      f'({registry_name} {dict(kw)}) trained {config.num_steps} steps (lr '
      f'{config.learning_rate:g}, Adam + cosine decay, batch {config.batch_size}). BAN '
      'variants (loss α·CE + (1−α)·τ²·KL to the previous generation): '
      + ', '.join(f'`{v}` α={a:g}, τ={t:g}' for v, a, t in config.variants) +
      f'. Independent model #g and BAN generation g share seed (seed + 1000·g): same '
      'initialisation and data order. Ensembles average softmax probabilities. Test accuracy: mean '
      f'± std over seeds; "{DELTA}" is the paired difference to the scratch teacher.\n\n'
      + common.comparison_lines(list(cmp.values())) +
      '\n\nPlot: `ban_generations.png`.' + (f'\n\n{config.notes}' if config.get('notes') else ''))
  common.write_results(
      config.results, rows, COLUMNS, title=f'Born-again networks and ensembles ({dataset})',
      finding=FINDING, verdict=verdict, command=setup['command'], notes=notes, out_dir=out_dir,
      dataset=dataset, seeds=seeds)
  return rows
