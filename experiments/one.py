"""ONE (on-the-fly native ensemble): do ONE's branches beat the single-branch network?

Per seed: a ONE model (the first layers shared, ``m`` branches holding the
last layers and the classifier, a gate), trained with
:func:`kdjax.online.make_one_step`, over the 1-D CNN on MNIST-1D
(:func:`kdjax.models.one_cnn1d`) or a small CIFAR ResNet on scikit-learn digits
(:func:`kdjax.models.one_resnet`); ``baseline_members`` copies of the
single-branch network (the layout of trunk + one branch) trained alone with
the task cross-entropy; and the same single network with each regularised
baseline (label smoothing, AdamW weight decay: ONE also regularises,
:mod:`experiments.online_baselines`). The first baseline run and the
regularised baselines share the ONE model's data order. Every method's
learning rate (and the weight decay) is chosen on a validation split of the
training set (:mod:`experiments.tuning`). Reported: each branch deployed
alone, the mean over branches, the gated ensemble (the model's output), the
baselines alone and as an ensemble of independent models, and ONE against
each regularised baseline.

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
from experiments import online_baselines as ob
from experiments import report as report_lib
from experiments import stats
from experiments import tuning
from experiments.dml import eval_batches
from experiments.dml import fresh_workdir
from experiments.dml import init_key
from experiments.dml import jit_init
from experiments.dml import json_records
from experiments.dml import run_dir
from experiments.dml import train_loop
from experiments.takd import DATASETS
from experiments.takd import load_data
from kdjax import models
from kdjax import online
from kdjax import schemes
from kdjax import train
from kdjax.state import TrainState


DELTA = 'Δ vs baseline (paired)'
COLUMNS = ('model', 'evaluated', 'params', 'test accuracy', DELTA, *stats.COLUMNS, 'test NLL',
           'disagreement', 'seeds')
REG_COLUMNS = ('ONE output', 'regularised baseline', 'Δ (paired)', *stats.COLUMNS)
FINDING = ('ONE (Lan et al. 2018): the branches of an on-the-fly native '
           'ensemble, each deployed alone, beat the same single-branch network trained alone.')


def baseline_name(config) -> str:
  """The plain single network's model name, e.g. ``'CNN1D alone (baseline)'``."""
  return f'{ob.net_name(config)} alone (baseline)'


def one_name(config) -> str:
  return f'ONE ({config.num_branches} branches)'


def one_model(config):
  """The ONE model of the config (over the CNN1D or a CIFAR ResNet)."""
  if config.get('net', 'cnn1d') == 'resnet':
    return models.one_resnet(10, depth=config.depth, widths=tuple(config.widths),
                             num_branches=config.num_branches, gate_norm=config.gate_norm)
  return models.one_cnn1d(10, num_branches=config.num_branches,
                          shared_layers=config.shared_layers, gate_norm=config.gate_norm,
                          channels=config.channels, kernel_sizes=tuple(config.kernel_sizes))


def run(config) -> list[dict]:
  """Tunes, then trains ONE and the single-branch baselines for every seed; writes results."""
  fresh_workdir(config)
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  train_src, test_src = load_data(config)
  fit_src, val_src = tuning.validation_sources(
      train_src, fraction=config.tuning.fraction, seed=config.tuning.split_seed)
  sample_x = np.asarray(train_src[0]['x'])[None]
  m = config.num_branches
  model = one_model(config)
  one_fwd = models.as_forward(model)
  txs = ob.Optimizers(config.num_steps)
  timings = []
  base_runs = ob.PlainRuns(config, sample_x, txs, timings)
  one_init = jit_init(model, sample_x)
  one_step = jax.jit(online.make_one_step(temperature=config.temperature), donate_argnums=0)
  one_eval = jax.jit(online.make_heads_eval_step(one_fwd, feature='branch_logits'))
  common_hp, fit_kw = ob.common_hparams(config), ob.fit_kwargs(config)

  def train_one(seed, setting, src, tag):
    state = TrainState.create(apply_fn=one_fwd, variables=one_init(init_key(seed)),
                              tx=txs(setting))
    hp = {**common_hp, **setting, 'seed': seed, 'branches': m, 'temperature': config.temperature,
          'shared_layers': config.get('shared_layers'), 'gate_norm': config.gate_norm}
    fit = train_loop(state, one_step, src, seed=seed,
                     workdir=run_dir(config, seed, 'one', hp) if tag == 'train' else None,
                     desc=f'ONE seed {seed} ({tag})', **fit_kw)
    timings.append(fit.seconds)
    return fit

  def branch_accuracies(variables, src):
    ev = online.evaluate_heads(one_eval, variables, eval_batches(src), prefix='branch', start=0)
    return ev, [ev[f'accuracy/branch{i}'] for i in range(m)]

  # Validation search: ONE scored by its mean branch accuracy (the claim is about the
  # branches deployed alone), every baseline by its accuracy.
  name, base_name = one_name(config), baseline_name(config)
  regs = list(zip(ob.regularised_of(config), ob.regularised_names(config)))
  tseed = config.tuning.seed

  search = {name: tuning.tune(ob.grid(config), lambda s: float(np.mean(
      branch_accuracies(train_one(tseed, s, fit_src, 'train_fit').state.variables,
                        val_src)[1])))}
  search[base_name] = tuning.tune(ob.grid(config),
                                  base_runs.scorer(0.0, 'baseline', fit_src, val_src))
  for b, reg_name in regs:
    score = base_runs.scorer(b['label_smoothing'], 'regularised', fit_src, val_src)
    search[reg_name] = tuning.tune(ob.grid(config, b['adamw']), score)

  params = {}
  records, export_gaps = [], []

  def add(seed, model_name, evaluated, kind, accuracy, nll, disagreement=float('nan')):
    records.append({'seed': seed, 'model': model_name, 'evaluated': evaluated, 'kind': kind,
                    'accuracy': float(accuracy), 'nll': float(nll),
                    'disagreement': float(disagreement)})

  for seed in config.seeds:
    # Baselines: member g has seed + 1000·g (init and data order); member 0 shares
    # the ONE model's data order.
    members = []
    for g in range(config.baseline_members):
      s = seed + 1000 * g
      fit = base_runs.train(s, search[base_name]['chosen'], 0.0, train_src, 'train', f'baseline{g}')
      ev = train.evaluate(base_runs.eval_step, fit.state.variables, eval_batches(test_src))
      params['baseline'] = models.count_params(fit.state.params)
      members.append((base_runs.model, fit.state.variables))
      add(seed, base_name, f'single model #{g}', 'member', ev['accuracy'], ev['loss'])
    base_members = [r for r in records if r['seed'] == seed and r['kind'] == 'member']
    add(seed, base_name, 'single model (mean over runs)', 'single',
        np.mean([r['accuracy'] for r in base_members]), np.mean([r['nll'] for r in base_members]))
    if len(members) > 1:
      ens = schemes.evaluate_ensemble(members, test_src)
      add(seed, f'{ob.net_name(config)} ×{len(members)} independent',
          'ensemble (mean probability)', 'ensemble', ens['accuracy'], ens['nll'],
          ens['disagreement'])
    for b, reg_name in regs:
      fit = base_runs.train(seed, search[reg_name]['chosen'], b['label_smoothing'], train_src,
                            'train', 'regularised')
      ev = train.evaluate(base_runs.eval_step, fit.state.variables, eval_batches(test_src))
      add(seed, reg_name, 'single model', 'regularised', ev['accuracy'], ev['loss'])

    fit = train_one(seed, search[name]['chosen'], train_src, 'train')
    params['one'] = models.count_params(fit.state.params)
    ev, accs = branch_accuracies(fit.state.variables, test_src)
    for i in range(m):
      add(seed, name, f'branch {i} alone', 'branch', accs[i], ev[f'loss/branch{i}'])
    add(seed, name, 'branch mean', 'branch_mean', np.mean(accs),
        np.mean([ev[f'loss/branch{i}'] for i in range(m)]))
    # The branches as standalone networks (trunk + branch i, gate dropped).
    exported = [model.export_branch(fit.state.variables, i) for i in range(m)]
    params['branch'] = models.count_params(exported[0][1]['params'])
    ens = schemes.evaluate_ensemble(exported, test_src)
    export_gaps.append(max(abs(a - accs[i]) for i, a in enumerate(ens['member_accuracy'])))
    add(seed, name, 'branches, mean probability', 'branch_ensemble', ens['accuracy'], ens['nll'],
        ens['disagreement'])
    add(seed, name, 'gated ensemble (model output)', 'gated', ev['accuracy'], ev['loss'])

  # Paired differences to the baseline single model (mean over runs) of the same seed.
  base = {r['seed']: r['accuracy'] for r in records if r['kind'] == 'single'}
  for r in records:
    r['delta'] = r['accuracy'] - base[r['seed']]
  out_dir = common.results_dir(config.results)
  common.save_records(json_records(records), os.path.join(out_dir, 'records.json'))
  mode = config.get('mode', 'default')
  setup = common.save_setup(
      out_dir, experiment='one', config=config,
      command='python -m experiments.run --config experiments/configs/one.py'
      + ('' if mode == 'default' else f':{mode}'),
      facts={'train_size': len(train_src), 'test_size': len(test_src),
             'fit_size': len(fit_src), 'validation_size': len(val_src), 'tuning': search,
             'params': params, 'export_gap_points': 100 * float(max(export_gaps)),
             'train_seconds': float(sum(timings))})
  return report(common.load_results(out_dir)[0], setup, out_dir)


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plot and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  params = facts['params']
  m = config.num_branches
  net, name = ob.net_name(config), one_name(config)
  regs = ob.regularised_names(config)
  dataset = DATASETS[config.get('dataset', 'mnist1d')]
  for r in records:
    if r.get('disagreement') is None:
      r['disagreement'] = float('nan')
  agg = common.aggregate(records, ['model', 'evaluated', 'kind'],
                         ['accuracy', 'delta', 'nll', 'disagreement'],
                         percent=['accuracy', 'delta', 'disagreement'])
  single = {'kind': 'single'}
  family = [(f'{r["model"]}: {r["evaluated"]} vs baseline',
             common.paired(records, {'model': r['model'], 'evaluated': r['evaluated']}, single))
            for r in agg if r['kind'] not in ('single', 'member')]
  ens_name = (f'gated ensemble vs the ensemble of {config.baseline_members} independent '
              f'{net}s')
  if any(r['kind'] == 'ensemble' for r in records):
    family.append((ens_name, common.paired(records, {'kind': 'gated'}, {'kind': 'ensemble'})))
  outputs = (('branch mean', 'branch mean'), ('gated ensemble', 'gated ensemble (model output)'))
  for reg in regs:
    for label, evaluated in outputs:
      family.append((f'{name}: {label} vs {reg}', common.paired(
          records, {'model': name, 'evaluated': evaluated}, {'model': reg})))
  cmp = {c.name: c for c in stats.compare(family)}

  def params_of(r):
    if r['kind'] in ('member', 'single', 'regularised'):
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
  reg_rows = [{'ONE output': label, 'regularised baseline': reg,
               **stats.columns(cmp[f'{name}: {label} vs {reg}'], delta='Δ (paired)')}
              for reg in regs for label, _ in outputs]

  short = {'single': f'{net} alone', 'ensemble': f'{net} ×{config.baseline_members} ens.',
           'branch_mean': 'ONE branch mean', 'branch_ensemble': 'ONE branches, mean p',
           'gated': 'ONE gated ens.'}
  plot_rows = [{**r, 'label': short.get(r['kind']) or (
                   _short_regularised(r['model'], net) if r['kind'] == 'regularised' else
                   r['evaluated'].replace(' alone', '').replace('branch', 'ONE branch'))}
               for r in agg if r['kind'] != 'member']
  single_row = next(r for r in agg if r['kind'] == 'single')
  common.errorbar_plot(plot_rows, x='label', metric='accuracy',
                       path=os.path.join(out_dir, 'one_branches.png'),
                       title=f'ONE vs the single-branch {net} ({dataset})', xlabel=' ',
                       baselines={f'{net} alone (mean)': single_row['accuracy_mean']})

  branch = [cmp[f'{name}: branch {i} alone vs baseline'] for i in range(m)]
  mean_c = cmp[f'{name}: branch mean vs baseline']
  gated = cmp[f'{name}: gated ensemble (model output) vs baseline']
  lines = [f'branch {i} alone: {stats.summary(c)}' for i, c in enumerate(branch)]
  lines.append(f'mean over branches: {stats.summary(mean_c)}')
  lines.append(f'gated ensemble: {stats.summary(gated)}')
  if ens_name in cmp:
    lines.append(f'{ens_name}: {stats.summary(cmp[ens_name])} (the independent ensemble has '
                 f'{config.baseline_members}× the baseline\'s parameters and inference cost)')
  branch_verdicts = [c.verdict for c in branch] + [mean_c.verdict]
  if all(v == stats.BETTER for v in branch_verdicts):
    summary = ('Reproduced against the plain baseline: every ONE branch, deployed alone, is '
               'significantly better than the single-branch network')
  elif mean_c.verdict == stats.BETTER:
    summary = ('Mostly reproduced against the plain baseline: the branches are significantly '
               'better than the baseline on average, though not every branch')
  elif mean_c.verdict == stats.WORSE:
    summary = 'Refuted on our data: ONE\'s branches are significantly worse than the baseline'
  else:
    summary = ('Not reproduced: ONE\'s branches are not significantly better than the '
               'single-branch baseline')
  verdict = summary + '. ' + '; '.join(lines) + '.'
  if regs:
    verdict += ' ' + _versus_regularised(cmp, name, regs)
  notes = (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test). ONE = '
      + _architecture(config) + ', a gate (GAP → Dense → softmax) weighting the branch logits. '
      f'Loss Σ_i CE(y, z_i) + CE(y, z_e) + τ²·Σ_i KL(p_e^τ ‖ p_i^τ), τ = {config.temperature:g}, '
      'the ensemble target held constant (`kdjax.online.make_one_step`). Baseline: '
      + _baseline_text(config) + ' (exactly trunk + one branch), trained alone with the '
      f'cross-entropy; {config.baseline_members} runs per seed (seeds seed + 1000·g), '
      'averaged as "single model (mean over runs)"; run #0 shares the ONE model\'s data order. '
      + (ob.regularised_notes(config) if regs else '')
      + f'All: Adam with cosine decay (AdamW for the weight-decay baseline), {config.num_steps} '
      f'steps, batch {config.batch_size}, each method\'s own learning rate (below). "Δ" is the '
      'per-seed difference to the baseline\'s mean over runs; accuracies are mean ± std over '
      'seeds. A branch "alone" is the model\'s branch '
      'logits; the standalone networks cut out by `ONE.export_branch` (used for the "mean '
      'probability" ensemble of the branches) give the same accuracies up to '
      f'{facts["export_gap_points"]:.1f} points (float rounding of the grouped convolutions). '
      'Disagreement: mean over member pairs of the fraction of test examples whose top-1 '
      'predictions differ (the diversity an ensemble gains from).\n\n'
      + ob.tuning_notes(config, facts, 'the validation accuracy (for ONE: the mean over its '
                        'branches deployed alone)')
      + ('## ONE vs the regularised baselines\n\n'
         + report_lib.markdown_table(reg_rows, REG_COLUMNS) + '\n\n' if regs else '')
      + common.comparison_lines(list(cmp.values())) + '\n\n'
      f'Plot: `one_branches.png`. Total training time of the runs {facts["train_seconds"]:.0f} s '
      '(tuning included; runs found complete in the workdir are restored, not retrained).')
  common.write_results(
      config.results, rows, COLUMNS, title=f'ONE: on-the-fly native ensemble vs single branch '
      f'({dataset})', finding=FINDING, verdict=verdict, command=setup['command'], notes=notes,
      out_dir=out_dir, dataset=dataset, seeds=common.seeds_of(records))
  return rows


def _short_regularised(model_name: str, net: str) -> str:
  """A short plot label of a regularised baseline.

  Examples:
    >>> _short_regularised('CNN1D + label smoothing 0.1', 'CNN1D')
    '+ LS 0.1'
  """
  return (model_name.replace(f'{net} + ', '+ ').replace('label smoothing', 'LS')
          .replace(' weight decay', ''))


def _architecture(config) -> str:
  m = config.num_branches
  if config.get('net', 'cnn1d') == 'resnet':
    stages = len(config.widths) - 1
    return (f'`kdjax.models.one_resnet(depth={config.depth}, widths={tuple(config.widths)}, '
            f'num_branches={m}, gate_norm={config.gate_norm})`: the stem and the first '
            f'{stages - 1} stages shared, each branch the last stage, pooling and the classifier')
  return (f'`kdjax.models.one_cnn1d(num_branches={m}, shared_layers={config.shared_layers}, '
          f'gate_norm={config.gate_norm}, channels={config.channels})`: the first '
          f'{config.shared_layers} conv layers shared, each branch the remaining conv layer(s) '
          'and the classifier')


def _baseline_text(config) -> str:
  if config.get('net', 'cnn1d') == 'resnet':
    return (f'`kdjax.models.CifarResNet(depth={config.depth}, widths={tuple(config.widths)})` '
            f'({ob.net_name(config)})')
  return 'the zoo `cnn1d` with the same options'


def _versus_regularised(cmp, name: str, regs) -> str:
  """The verdict sentence on ONE against the regularised baselines."""
  means = {reg: cmp[f'{name}: branch mean vs {reg}'] for reg in regs}
  gated = {reg: cmp[f'{name}: gated ensemble vs {reg}'] for reg in regs}
  beaten = [reg for reg, c in means.items() if c.verdict == stats.BETTER]
  if len(beaten) == len(regs):
    head = 'Against the regularised baselines, the mean ONE branch is better than every one'
  elif not beaten:
    head = 'Against the regularised baselines, the mean ONE branch is better than none'
  else:
    head = ('Against the regularised baselines, the mean ONE branch is better than '
            + ', '.join(beaten) + ' only')
  parts = [f'vs {reg}: branch mean {stats.summary(means[reg])}; gated ensemble '
           f'{stats.summary(gated[reg])}' for reg in regs]
  return head + '. ' + ' | '.join(parts) + '.'
