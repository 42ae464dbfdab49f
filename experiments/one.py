"""ONE (on-the-fly native ensemble) on MNIST-1D: do ONE's branches beat the single-branch net?

Per seed: a ONE model over the 1-D CNN (:func:`kdjax.models.one_cnn1d`: the
first conv layers shared, ``m`` branches holding the last conv layer and the
classifier, a gate), trained with :func:`kdjax.online.make_one_step`; and
``baseline_members`` copies of the single-branch network (the zoo ``cnn1d``,
the layout of trunk + one branch) trained alone with the task cross-entropy.
The first baseline shares the ONE model's data order. Reported: each branch
deployed alone, the mean over branches, the gated ensemble (the model's
output), and the baselines alone and as an ensemble of independent models.

Usable from a notebook::

    from experiments import one
    from experiments.configs import one as cfg
    rows = one.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import os

import jax
import numpy as np

from experiments import common
from experiments import stats
from experiments.dml import eval_batches
from experiments.dml import fresh_workdir
from experiments.dml import init_key
from experiments.dml import jit_init
from experiments.dml import json_records
from experiments.dml import run_dir
from experiments.dml import train_loop
from experiments.takd import load_data
from kdjax import models
from kdjax import online
from kdjax import runs
from kdjax import schemes
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


DELTA = 'Δ vs baseline (paired)'
COLUMNS = ('model', 'evaluated', 'params', 'test accuracy', DELTA, *stats.COLUMNS, 'test NLL',
           'disagreement', 'seeds')
FINDING = ('ONE (Lan et al. 2018): the branches of an on-the-fly native '
           'ensemble, each deployed alone, beat the same single-branch network trained alone.')
BASELINE = 'CNN1D alone (baseline)'


def run(config) -> list[dict]:
  """Trains ONE and the single-branch baselines for every seed; writes results/<config.results>/."""
  fresh_workdir(config)
  train_src, test_src = load_data(config)
  sample_x = np.asarray(train_src[0]['x'])[None]
  m = config.num_branches
  model_kw = dict(channels=config.channels, kernel_sizes=tuple(config.kernel_sizes))
  one_model = models.one_cnn1d(10, num_branches=m, shared_layers=config.shared_layers,
                               gate_norm=config.gate_norm, **model_kw)
  base_model = models.create('cnn1d', 10, **model_kw)
  one_fwd, base_fwd = models.as_forward(one_model), models.as_forward(base_model)
  tx = runs.default_optimizer(config.learning_rate, config.num_steps)
  one_init, base_init = jit_init(one_model, sample_x), jit_init(base_model, sample_x)
  one_step = jax.jit(online.make_one_step(temperature=config.temperature), donate_argnums=0)
  base_step = jax.jit(steps.make_train_step(), donate_argnums=0)
  one_eval = jax.jit(online.make_heads_eval_step(one_fwd, feature='branch_logits'))
  base_eval = jax.jit(steps.make_eval_step(base_fwd))
  common_hp = {'num_steps': config.num_steps, 'batch_size': config.batch_size,
               'learning_rate': config.learning_rate, 'model': model_kw,
               'data_samples': config.data_samples}
  fit_kw = dict(num_steps=config.num_steps, batch_size=config.batch_size,
                progress=config.progress)

  params = {}
  records, timings, export_gaps = [], [], []

  def add(seed, model, evaluated, kind, accuracy, nll, disagreement=float('nan')):
    records.append({'seed': seed, 'model': model, 'evaluated': evaluated, 'kind': kind,
                    'accuracy': float(accuracy), 'nll': float(nll),
                    'disagreement': float(disagreement)})

  for seed in config.seeds:
    # Baselines: member g has seed + 1000·g (init and data order); member 0 shares
    # the ONE model's data order.
    members = []
    for g in range(config.baseline_members):
      s = seed + 1000 * g
      state = TrainState.create(apply_fn=base_fwd, variables=base_init(init_key(s)), tx=tx)
      fit = train_loop(state, base_step, train_src, seed=s,
                       workdir=run_dir(config, seed, f'baseline{g}', {**common_hp, 'seed': s}),
                       desc=f'baseline {g} seed {seed}', **fit_kw)
      timings.append(fit.seconds)
      ev = train.evaluate(base_eval, fit.state.variables, eval_batches(test_src))
      params['baseline'] = models.count_params(fit.state.params)
      members.append((base_model, fit.state.variables))
      add(seed, BASELINE, f'single model #{g}', 'member', ev['accuracy'], ev['loss'])
    base_members = [r for r in records if r['seed'] == seed and r['kind'] == 'member']
    add(seed, BASELINE, 'single model (mean over runs)', 'single',
        np.mean([r['accuracy'] for r in base_members]), np.mean([r['nll'] for r in base_members]))
    if len(members) > 1:
      ens = schemes.evaluate_ensemble(members, test_src)
      add(seed, f'CNN1D ×{len(members)} independent', 'ensemble (mean probability)', 'ensemble',
          ens['accuracy'], ens['nll'], ens['disagreement'])

    state = TrainState.create(apply_fn=one_fwd, variables=one_init(init_key(seed)), tx=tx)
    hp = {**common_hp, 'seed': seed, 'branches': m, 'temperature': config.temperature,
          'shared_layers': config.shared_layers, 'gate_norm': config.gate_norm}
    fit = train_loop(state, one_step, train_src, seed=seed,
                     workdir=run_dir(config, seed, 'one', hp), desc=f'ONE seed {seed}',
                     **fit_kw)
    timings.append(fit.seconds)
    params['one'] = models.count_params(fit.state.params)
    ev = online.evaluate_heads(one_eval, fit.state.variables, eval_batches(test_src),
                               prefix='branch', start=0)
    name = f'ONE ({m} branches)'
    for i in range(m):
      add(seed, name, f'branch {i} alone', 'branch', ev[f'accuracy/branch{i}'],
          ev[f'loss/branch{i}'])
    add(seed, name, 'branch mean', 'branch_mean',
        np.mean([ev[f'accuracy/branch{i}'] for i in range(m)]),
        np.mean([ev[f'loss/branch{i}'] for i in range(m)]))
    # The branches as standalone networks (trunk + branch i, gate dropped).
    exported = [one_model.export_branch(fit.state.variables, i) for i in range(m)]
    params['branch'] = models.count_params(exported[0][1]['params'])
    ens = schemes.evaluate_ensemble(exported, test_src)
    export_gaps.append(max(abs(a - ev[f'accuracy/branch{i}'])
                           for i, a in enumerate(ens['member_accuracy'])))
    add(seed, name, 'branches, mean probability', 'branch_ensemble', ens['accuracy'], ens['nll'],
        ens['disagreement'])
    add(seed, name, 'gated ensemble (model output)', 'gated', ev['accuracy'], ev['loss'])

  # Paired differences to the baseline single model (mean over runs) of the same seed.
  base = {r['seed']: r['accuracy'] for r in records if r['kind'] == 'single'}
  for r in records:
    r['delta'] = r['accuracy'] - base[r['seed']]
  out_dir = common.results_dir(config.results)
  common.save_records(json_records(records), os.path.join(out_dir, 'records.json'))
  setup = common.save_setup(
      out_dir, experiment='one', config=config,
      command='python -m experiments.run --config experiments/configs/one.py'
      + ('' if config.results == 'one' else ':quick'),
      facts={'train_size': len(train_src), 'test_size': len(test_src), 'params': params,
             'export_gap_points': 100 * float(max(export_gaps)),
             'train_seconds': float(sum(timings))})
  return report(common.load_results(out_dir)[0], setup, out_dir)


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plot and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  params = facts['params']
  m = config.num_branches
  for r in records:
    if r.get('disagreement') is None:
      r['disagreement'] = float('nan')
  agg = common.aggregate(records, ['model', 'evaluated', 'kind'],
                         ['accuracy', 'delta', 'nll', 'disagreement'],
                         percent=['accuracy', 'delta', 'disagreement'])
  single = {'kind': 'single'}
  family = [(f'{r["model"]}: {r["evaluated"]} vs baseline',
             common.paired(records, {'kind': r['kind'], 'evaluated': r['evaluated']}, single))
            for r in agg if r['kind'] not in ('single', 'member')]
  if any(r['kind'] == 'ensemble' for r in records):
    family.append((f'gated ensemble vs the ensemble of {config.baseline_members} independent '
                   'CNN1Ds', common.paired(records, {'kind': 'gated'}, {'kind': 'ensemble'})))
  cmp = {c.name: c for c in stats.compare(family)}

  def params_of(r):
    if r['model'] == BASELINE:
      return f"{params['baseline']:,}"
    if r['kind'] == 'ensemble':
      return f"{config.baseline_members * params['baseline']:,}"
    if r['kind'] in ('branch', 'branch_mean'):
      return f"{params['branch']:,}"
    return f"{params['one']:,}"

  rows = []
  for r in agg:
    c = cmp.get(f'{r["model"]}: {r["evaluated"]} vs baseline')
    rows.append({**r, 'params': params_of(r), 'test accuracy': r['accuracy'],
                 **stats.columns(c, delta=DELTA), 'test NLL': r['nll'],
                 'disagreement': r['disagreement'] if not np.isnan(r['disagreement_mean'])
                 else '—'})

  short = {'single': 'CNN1D alone', 'ensemble': f'CNN1D ×{config.baseline_members} ens.',
           'branch_mean': 'ONE branch mean', 'branch_ensemble': 'ONE branches, mean p',
           'gated': 'ONE gated ens.'}
  plot_rows = [{**r, 'label': short.get(r['kind']) or r['evaluated'].replace(' alone', '')
                .replace('branch', 'ONE branch')}
               for r in agg if r['kind'] != 'member']
  single_row = next(r for r in agg if r['kind'] == 'single')
  common.errorbar_plot(plot_rows, x='label', metric='accuracy',
                       path=os.path.join(out_dir, 'one_branches.png'),
                       title='ONE vs the single-branch CNN1D (MNIST-1D)', xlabel=' ',
                       baselines={'CNN1D alone (mean)': single_row['accuracy_mean']})

  name = f'ONE ({m} branches)'
  branch = [cmp[f'{name}: branch {i} alone vs baseline'] for i in range(m)]
  mean_c = cmp[f'{name}: branch mean vs baseline']
  gated = cmp[f'{name}: gated ensemble (model output) vs baseline']
  lines = [f'branch {i} alone: {stats.summary(c)}' for i, c in enumerate(branch)]
  lines.append(f'mean over branches: {stats.summary(mean_c)}')
  lines.append(f'gated ensemble: {stats.summary(gated)}')
  ens_name = (f'gated ensemble vs the ensemble of {config.baseline_members} independent '
              'CNN1Ds')
  if ens_name in cmp:
    lines.append(f'{ens_name}: {stats.summary(cmp[ens_name])} (the independent ensemble has '
                 f'{config.baseline_members}× the baseline\'s parameters and inference cost)')
  branch_verdicts = [c.verdict for c in branch] + [mean_c.verdict]
  if all(v == stats.BETTER for v in branch_verdicts):
    summary = ('Reproduced: every ONE branch, deployed alone, is significantly better than the '
               'single-branch baseline')
  elif mean_c.verdict == stats.BETTER:
    summary = ('Mostly reproduced: the branches are significantly better than the baseline on '
               'average, though not every branch')
  elif mean_c.verdict == stats.WORSE:
    summary = 'Refuted on our data: ONE\'s branches are significantly worse than the baseline'
  else:
    summary = ('Not reproduced: ONE\'s branches are not significantly better than the '
               'single-branch baseline')
  verdict = summary + '. ' + '; '.join(lines) + '.'
  notes = (
      f'Setup: MNIST-1D ({facts["train_size"]} train / {facts["test_size"]} test). ONE = '
      f'`kdjax.models.one_cnn1d(num_branches={m}, shared_layers={config.shared_layers}, '
      f'gate_norm={config.gate_norm}, channels={config.channels})`: the first '
      f'{config.shared_layers} conv layers shared, each branch the remaining conv layer(s) and '
      'the classifier, a gate (GAP → Dense → softmax) weighting the branch logits. Loss '
      f'Σ_i CE(y, z_i) + CE(y, z_e) + τ²·Σ_i KL(p_e^τ ‖ p_i^τ), τ = {config.temperature:g}, '
      'the ensemble target held constant (`kdjax.online.make_one_step`). Baseline: the zoo '
      '`cnn1d` with the same options (exactly trunk + one branch), trained alone with the '
      f'cross-entropy; {config.baseline_members} runs per seed (seeds seed + 1000·g), '
      'averaged as "single model (mean over runs)"; run #0 shares the ONE model\'s data order. '
      f'All: Adam with cosine decay, lr {config.learning_rate:g}, {config.num_steps} steps, batch '
      f'{config.batch_size}. "Δ" is the per-seed difference to the baseline\'s mean over runs; '
      'accuracies are mean ± std over seeds. A branch "alone" is the model\'s branch '
      'logits; the standalone networks cut out by `ONE.export_branch` (used for the "mean '
      'probability" ensemble of the branches) give the same accuracies up to '
      f'{facts["export_gap_points"]:.1f} points (float rounding of the grouped convolutions). '
      'Disagreement: mean over member pairs of the fraction of test examples whose top-1 '
      'predictions differ (the diversity an ensemble gains from).\n\n'
      + common.comparison_lines(list(cmp.values())) + '\n\n'
      f'Plot: `one_branches.png`. Total training time of the runs {facts["train_seconds"]:.0f} s '
      '(runs found complete in the workdir are restored, not retrained).')
  common.write_results(
      config.results, rows, COLUMNS, title='ONE: on-the-fly native ensemble vs single branch '
      '(MNIST-1D)', finding=FINDING, verdict=verdict, command=setup['command'], notes=notes,
      out_dir=out_dir, dataset='MNIST-1D', seeds=common.seeds_of(records))
  return rows
