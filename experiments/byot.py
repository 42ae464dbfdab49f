"""BYOT (be your own teacher): exits, the deepest head, and early exit.

Per seed: a network with an exit head after every stage — the 1-D CNN on
MNIST-1D (:func:`kdjax.models.byot_cnn1d`) or a small CIFAR ResNet on
scikit-learn digits (:func:`kdjax.models.byot_resnet`) — trained with
:func:`kdjax.online.make_byot_step` for each configured variant (BYOT with the
feature term averaged over the embedding, BYOT with the paper's sum, and a
control with the cross-entropy on every exit only: α = 0, λ = 0, i.e. deep
supervision without self-distillation); the same network without auxiliary
heads trained alone; and that plain network with each regularised baseline
(label smoothing, AdamW weight decay: BYOT also regularises,
:mod:`experiments.online_baselines`). All runs of a seed share the data order.
Every method's learning rate (and the weight decay) is chosen on a validation
split of the training set (:mod:`experiments.tuning`). Reported: the test
accuracy of every exit against the plain network, the deepest exits against
the regularised baselines, and the accuracy/compute trade-off of exiting at
the first head whose confidence passes a threshold
(:func:`experiments.early_exit.early_exit_table`, compute in XLA-counted FLOPs).

Usable from a notebook::

    from experiments import byot
    from experiments.configs import byot as cfg
    rows = byot.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import os

import jax
import numpy as np

from experiments import common
from experiments import early_exit
from experiments import online_baselines as ob
from experiments import report as report_lib
from experiments import stats
from experiments import tuning
from experiments.dml import eval_batches
from experiments.dml import fresh_workdir
from experiments.dml import init_key
from experiments.dml import jit_init
from experiments.dml import run_dir
from experiments.dml import train_loop
from experiments.takd import DATASETS
from experiments.takd import load_data
from kdjax import models
from kdjax import online
from kdjax import train
from kdjax.state import TrainState


DELTA = 'Δ vs plain (paired)'
FLOPS = 'FLOPs vs plain'
COLUMNS = ('model', 'exit', FLOPS, 'test accuracy', DELTA, *stats.COLUMNS, 'test NLL', 'seeds')
EXIT_COLUMNS = ('model', 'threshold', 'test accuracy', FLOPS, 'FLOPs vs deepest exit',
                'mean exit', 'exit shares (1/2/…)', 'seeds')
REG_COLUMNS = ('BYOT variant (deepest exit)', 'regularised baseline', 'Δ (paired)',
               *stats.COLUMNS)
FINDING = ('BYOT (Zhang et al. 2019): the shallow exits of a self-distilled '
           'network are usable classifiers (early exit trades little accuracy for much less '
           'compute), and the deepest head improves over the same network trained without '
           'auxiliary heads.')


def plain_name(config) -> str:
  """The plain network's model name, e.g. ``'CNN1D, no aux heads (baseline)'``."""
  return f'{ob.net_name(config)}, no aux heads (baseline)'


def byot_model(config):
  """The BYOT model of the config (over the CNN1D or a CIFAR ResNet)."""
  if config.get('net', 'cnn1d') == 'resnet':
    return models.byot_resnet(10, depth=config.depth, widths=tuple(config.widths))
  return models.byot_cnn1d(10, channels=config.channels, kernel_sizes=tuple(config.kernel_sizes))


def _threshold_label(t: float) -> str:
  return f'{t:g} (deepest only)' if t > 1 else f'{t:g}'


def run(config) -> list[dict]:
  """Tunes, then trains the BYOT variants and the plain networks; writes results."""
  fresh_workdir(config)
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  train_src, test_src = load_data(config)
  fit_src, val_src = tuning.validation_sources(
      train_src, fraction=config.tuning.fraction, seed=config.tuning.split_seed)
  sample_x = np.asarray(train_src[0]['x'])[None]
  model = byot_model(config)
  byot_fwd = models.as_forward(model)
  txs = ob.Optimizers(config.num_steps)
  timings = []
  plain_runs = ob.PlainRuns(config, sample_x, txs, timings)
  byot_init = jit_init(model, sample_x)
  byot_eval = jax.jit(online.make_heads_eval_step(byot_fwd, feature='exit_logits'))
  byot_steps = {
      name: jax.jit(online.make_byot_step(alpha=alpha, temperature=tau, feature_weight=lam,
                                          feature_reduction=reduction), donate_argnums=0)
      for name, alpha, tau, lam, reduction in config.variants}
  num_exits = model.num_exits
  input_shape = (1,) + tuple(sample_x.shape[1:])
  plain_flops = models.flops(plain_runs.model, input_shape)
  exit_costs = early_exit.exit_flops(model, input_shape)
  common_hp, fit_kw = ob.common_hparams(config), ob.fit_kwargs(config)
  thresholds = tuple(float(t) for t in config.thresholds)
  variants = {v[0]: v for v in config.variants}

  def train_byot(seed, setting, name, src, tag):
    # The same initialisation for every variant of a seed (one BYOT architecture).
    _, alpha, tau, lam, reduction = variants[name]
    state = TrainState.create(apply_fn=byot_fwd, variables=byot_init(init_key(seed)),
                              tx=txs(setting))
    hp = {**common_hp, **setting, 'seed': seed, 'alpha': alpha, 'temperature': tau,
          'feature_weight': lam, 'feature_reduction': reduction}
    fit = train_loop(state, byot_steps[name], src, seed=seed,
                     workdir=run_dir(config, seed, f'byot_{_slug(name)}', hp)
                     if tag == 'train' else None, desc=f'{name} seed {seed} ({tag})', **fit_kw)
    timings.append(fit.seconds)
    return fit

  def evaluate_exits(variables, src):
    return online.evaluate_heads(byot_eval, variables, eval_batches(src), prefix='exit',
                                 start=1)

  # Validation search: a BYOT variant scored by its deepest exit (the head the claim
  # is about), the plain networks by their accuracy.
  plain, regs = plain_name(config), list(zip(ob.regularised_of(config),
                                             ob.regularised_names(config)))
  tseed = config.tuning.seed

  def score_byot(name):
    def score(setting):
      fit = train_byot(tseed, setting, name, fit_src, 'train_fit')
      return evaluate_exits(fit.state.variables, val_src)[f'accuracy/exit{num_exits}']
    return score

  search = {name: tuning.tune(ob.grid(config), score_byot(name)) for name in variants}
  search[plain] = tuning.tune(ob.grid(config),
                              plain_runs.scorer(0.0, 'plain', fit_src, val_src))
  for b, reg_name in regs:
    score = plain_runs.scorer(b['label_smoothing'], 'regularised', fit_src, val_src)
    search[reg_name] = tuning.tune(ob.grid(config, b['adamw']), score)

  records, exit_records = [], []
  for seed in config.seeds:
    for b, reg_name in [(None, plain)] + regs:
      ls = 0.0 if b is None else b['label_smoothing']
      fit = plain_runs.train(seed, search[reg_name]['chosen'], ls, train_src, 'train',
                             'plain' if b is None else 'regularised')
      ev = train.evaluate(plain_runs.eval_step, fit.state.variables, eval_batches(test_src))
      records.append({'seed': seed, 'model': reg_name, 'exit': 'output',
                      'exit_index': num_exits, 'accuracy': ev['accuracy'], 'nll': ev['loss'],
                      'flops': plain_flops})

    for name in variants:
      fit = train_byot(seed, search[name]['chosen'], name, train_src, 'train')
      variables = fit.state.variables
      ev = evaluate_exits(variables, test_src)
      for k in range(1, num_exits + 1):
        records.append({'seed': seed, 'model': name, 'exit': f'exit {k}'
                        + (' (deepest)' if k == num_exits else ''), 'exit_index': k,
                        'accuracy': ev[f'accuracy/exit{k}'], 'nll': ev[f'loss/exit{k}'],
                        'flops': exit_costs[k - 1]})
      logits, labels = early_exit.collect_head_logits(
          byot_fwd, variables, eval_batches(test_src), feature='exit_logits')
      for row in early_exit.early_exit_table(logits, labels, thresholds, exit_costs=exit_costs):
        exit_records.append({
            'seed': seed, 'model': name, 'threshold': row['threshold'],
            'label': _threshold_label(row['threshold']), 'accuracy': row['accuracy'],
            'relative_cost': row['relative_cost'], 'flops_vs_plain': row['cost'] / plain_flops,
            'mean_stages': row['mean_stages'],
            **{f'exit{k}_fraction': row[f'exit{k}_fraction'] for k in range(1, num_exits + 1)}})

  # Paired differences to the plain network of the same seed.
  plain_acc = {r['seed']: r['accuracy'] for r in records if r['model'] == plain}
  for r in records:
    r['delta'] = r['accuracy'] - plain_acc[r['seed']]
  out_dir = common.results_dir(config.results)
  common.save_records([{'table': 'exits', **r} for r in records]
                      + [{'table': 'early_exit', **r} for r in exit_records],
                      os.path.join(out_dir, 'records.json'))
  mode = config.get('mode', 'default')
  setup = common.save_setup(
      out_dir, experiment='byot', config=config,
      command='python -m experiments.run --config experiments/configs/byot.py'
      + ('' if mode == 'default' else f':{mode}'),
      facts={'train_size': len(train_src), 'test_size': len(test_src),
             'fit_size': len(fit_src), 'validation_size': len(val_src), 'tuning': search,
             'plain_flops': float(plain_flops), 'exit_flops': [float(c) for c in exit_costs],
             'train_seconds': float(sum(timings))})
  return report(common.load_results(out_dir)[0], setup, out_dir)


def report(all_records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the tables, plots and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  records = [r for r in all_records if r['table'] == 'exits']
  exit_records = [r for r in all_records if r['table'] == 'early_exit']
  plain_flops, exit_costs = facts['plain_flops'], facts['exit_flops']
  num_exits = len(exit_costs)
  primary = config.variants[0][0]
  net, dataset = ob.net_name(config), DATASETS[config.get('dataset', 'mnist1d')]
  plain, regs = plain_name(config), ob.regularised_names(config)
  control = [name for name, alpha, _, lam, _ in config.variants if alpha == 0 and lam == 0]
  family = []
  for name, *_ in config.variants:
    for k in range(1, num_exits + 1):
      family.append((f'{name}: exit {k} vs plain', common.paired(
          records, {'model': name, 'exit_index': k}, {'model': plain})))
  if control:
    for k in range(1, num_exits + 1):
      family.append((f'{primary} − {control[0]}: exit {k}', common.paired(
          records, {'model': primary, 'exit_index': k}, {'model': control[0], 'exit_index': k})))
  for reg in regs:
    family.append((f'{reg}: exit {num_exits} vs plain', common.paired(
        records, {'model': reg}, {'model': plain})))
  for reg in regs:
    for name, *_ in config.variants:
      family.append((f'{name}: deepest exit vs {reg}', common.paired(
          records, {'model': name, 'exit_index': num_exits}, {'model': reg})))
  cmp = {c.name: c for c in stats.compare(family)}
  agg = common.aggregate(records, ['model', 'exit', 'exit_index'],
                         ['accuracy', 'delta', 'nll', 'flops'], percent=['accuracy', 'delta'])
  rows = []
  for r in agg:
    base = r['model'] == plain
    c = None if base else cmp[f'{r["model"]}: exit {r["exit_index"]} vs plain']
    rows.append({**r, 'test accuracy': r['accuracy'], 'test NLL': r['nll'],
                 FLOPS: f"{100 * r['flops_mean'] / plain_flops:.0f}%",
                 **stats.columns(c, delta=DELTA)})
  reg_rows = [{'BYOT variant (deepest exit)': name, 'regularised baseline': reg,
               **stats.columns(cmp[f'{name}: deepest exit vs {reg}'], delta='Δ (paired)')}
              for reg in regs for name, *_ in config.variants]

  fractions = [f'exit{k}_fraction' for k in range(1, num_exits + 1)]
  exit_agg = common.aggregate(exit_records, ['model', 'threshold', 'label'],
                              ['accuracy', 'relative_cost', 'flops_vs_plain', 'mean_stages',
                               *fractions],
                              percent=['accuracy', 'relative_cost', 'flops_vs_plain'])
  exit_rows = [{**r, 'threshold': r['label'], 'test accuracy': r['accuracy'],
                FLOPS: r['flops_vs_plain'],
                'FLOPs vs deepest exit': r['relative_cost'],
                'mean exit': f"{r['mean_stages_mean']:.2f}",
                'exit shares (1/2/…)': '/'.join(
                    f"{100 * r[f'{f}_mean']:.0f}%" for f in fractions)}
               for r in exit_agg]

  report_lib.write_table(exit_rows, EXIT_COLUMNS, os.path.join(out_dir, 'early_exit'),
                         title=f'BYOT early exit on {dataset} (mean ± std over seeds)')
  plain_row = next(r for r in agg if r['model'] == plain)
  reg_lines = {reg: next(
      r['accuracy_mean'] for r in agg if r['model'] == reg) for reg in regs}
  # Accuracy of every exit per variant, against the plain networks.
  common.errorbar_plot([r for r in agg if r['model'] in [v[0] for v in config.variants]],
                       x='exit_index', metric='accuracy',
                       series='model', path=os.path.join(out_dir, 'byot_exits.png'),
                       title=f'BYOT exits vs the plain {net} ({dataset})', xlabel='exit',
                       baselines={f'{net}, no aux heads': plain_row['accuracy_mean'],
                                  **reg_lines})
  # Early exit: accuracy against compute, every variant, mean ± std over seeds.
  common.errorbar_plot(exit_agg, x='flops_vs_plain_mean', metric='accuracy', series='model',
                       path=os.path.join(out_dir, 'early_exit_variants.png'),
                       title='Early exit: accuracy vs compute (thresholds as in the table)',
                       xlabel=f'mean FLOPs per example / FLOPs of the plain {net}',
                       baselines={f'{net}, no aux heads': plain_row['accuracy_mean']})
  # The library's plot for the primary variant, with each exit alone as reference points.
  primary_table = [{'threshold': r['threshold'], 'accuracy': r['accuracy_mean'],
                    'flops_vs_plain': r['flops_vs_plain_mean']}
                   for r in exit_agg if r['model'] == primary]
  head_points = [(exit_costs[k - 1] / plain_flops,
                  next(r['accuracy_mean'] for r in agg
                       if r['model'] == primary and r['exit_index'] == k))
                 for k in range(1, num_exits + 1)]
  early_exit.plot_early_exit(primary_table, os.path.join(out_dir, 'early_exit.png'),
                             x='flops_vs_plain', head_points=head_points,
                             title=f'{primary}: early exit (mean over '
                             f'{len(common.seeds_of(records))} seeds)')

  # Verdict.
  by = {(r['model'], r['exit_index']): r for r in rows}
  lines = []
  for name, *_ in config.variants:
    parts = []
    for k in range(1, num_exits + 1):
      r = by[(name, k)]
      parts.append(f"exit {k} {r['test accuracy']}% (Δ {r[DELTA]} {r['95% CI']}, "
                   f"{r['verdict']}) at {r[FLOPS]} FLOPs")
    lines.append(f'{name}: ' + '; '.join(parts))
  deepest = cmp[f'{primary}: exit {num_exits} vs plain']
  outcomes = {stats.BETTER: 'reproduced', stats.WORSE: 'refuted'}
  deep_outcome = outcomes.get(deepest.verdict, 'not reproduced')
  control_line = ''
  if control:
    control_line = (f' Self-distillation vs the CE-only control ({primary} − {control[0]}, '
                    'paired): ' + '; '.join(
                        f'exit {k} {stats.summary(cmp[f"{primary} − {control[0]}: exit {k}"])}'
                        for k in range(1, num_exits + 1)) + '.')
  primary_exits = [r for r in exit_agg if r['model'] == primary]
  plain_mean = plain_row['accuracy_mean']
  # "Usable": some threshold loses at most 1 point against the plain network with fewer FLOPs.
  cheaper = [r for r in primary_exits
             if r['accuracy_mean'] >= plain_mean - 0.01 and r['flops_vs_plain_mean'] < 1.0]
  best = min(cheaper, key=lambda r: r['flops_vs_plain_mean']) if cheaper else None
  if best is not None:
    early_line = (f"usable — with early exit at threshold {best['label']}, {primary} reaches "
                  f"{best['accuracy']}% at {best['flops_vs_plain']}% of the plain network's "
                  f"FLOPs (plain {net} {plain_row['accuracy']}%; criterion: mean accuracy "
                  'within 1 point of the plain network with fewer FLOPs, descriptive, not a '
                  'test)')
  else:
    early_line = ('not usable as a compute saving — no threshold keeps the mean accuracy within '
                  f"1 point of the plain {net} ({plain_row['accuracy']}%) with fewer FLOPs")
  shallow = '; '.join(
      f"exit {k} alone {by[(primary, k)]['test accuracy']}% at "
      f"{by[(primary, k)][FLOPS]} of the plain FLOPs"
      for k in range(1, num_exits))
  verdict = (
      f'(1) Shallow exits: {early_line}; {shallow}. '
      f'(2) Deepest head vs the plain network: {stats.summary(deepest)}; the finding that the '
      f'deepest head improves is {deep_outcome} on our data (against the plain network).'
      f'{control_line}')
  if regs:
    verdict += ' ' + _versus_regularised(cmp, [v[0] for v in config.variants], regs)
  variant_text = '; '.join(
      f'`{n}`: α={a:g}, τ={t:g}, λ={lam:g}, feature_reduction=\'{red}\'' for n, a, t, lam, red
      in config.variants)
  notes = (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test). BYOT = '
      + _architecture(config) + '. Each shallow exit gets (1−α)·CE + α·τ²·KL(deepest ‖ exit) + '
      'λ·‖F_exit − F_deepest‖² (targets held constant), the deepest exit the CE '
      f'(`kdjax.online.make_byot_step`). Variants: {variant_text}. Baseline: '
      + _baseline_text(config) + ', trained alone with the cross-entropy. '
      + (ob.regularised_notes(config) if regs else '')
      + f'All runs: Adam with cosine decay (AdamW for the weight-decay baseline), '
      f'{config.num_steps} steps, batch {config.batch_size}, each method\'s own learning rate '
      '(below); the runs of a seed share the data order (and the BYOT variants and the plain '
      'networks each their initialisation). '
      '"Δ" is the per-seed difference to the plain network; accuracies are mean ± std over '
      'seeds. FLOPs: XLA cost analysis per example (`kdjax.models.flops`, '
      '`experiments.early_exit.exit_flops`: exiting at exit k runs stages and heads 1..k); '
      f'plain {net} '
      f'{plain_flops:,.0f}, BYOT exits ' + ', '.join(f'{c:,.0f}' for c in exit_costs) + ' '
      '(the FLOPs column of an exit counts every shallow head checked before it; the deepest '
      'exit deployed alone, with the shallow heads dropped, costs what the plain network '
      'costs). Per variant: ' + ' | '.join(lines) + '.\n\n'
      + ob.tuning_notes(config, facts, 'the validation accuracy (for a BYOT variant: of its '
                        'deepest exit)')
      + ('## Deepest exits vs the regularised baselines\n\n'
         + report_lib.markdown_table(reg_rows, REG_COLUMNS) + '\n\n' if regs else '')
      + common.comparison_lines(list(cmp.values())) + '\n\n'
      '## Early exit\n\nEach test example leaves at the first exit whose top softmax '
      'probability reaches the threshold (the deepest exit answers otherwise); '
      '`experiments.early_exit.early_exit_table`. Also in `early_exit.md` / `.csv`.\n\n'
      + report_lib.markdown_table(exit_rows, EXIT_COLUMNS) + '\n\n'
      'Plots: `byot_exits.png` (accuracy of each exit), `early_exit.png` (accuracy vs compute '
      f'for {primary}, with each exit alone), `early_exit_variants.png` (all variants). Total '
      f'training time of the runs {facts["train_seconds"]:.0f} s (tuning included; runs found '
      'complete in the workdir are restored, not retrained).')
  common.write_results(
      config.results, rows, COLUMNS, title=f'BYOT: self-distilled exits vs the plain {net} '
      f'({dataset})', finding=FINDING, verdict=verdict, command=setup['command'], notes=notes,
      out_dir=out_dir, dataset=dataset, seeds=common.seeds_of(records))
  return rows


def _architecture(config) -> str:
  if config.get('net', 'cnn1d') == 'resnet':
    return (f'`kdjax.models.byot_resnet(depth={config.depth}, widths={tuple(config.widths)})`: '
            f'the {ob.net_name(config)} with an exit after each of its '
            f'{len(config.widths) - 1} stages (shallow exits: strided convs following the later '
            'stages\' widths, pooling, Dense; the last exit: the network\'s own classifier)')
  return (f'`kdjax.models.byot_cnn1d(channels={config.channels})`: the CNN1D with an exit after '
          'each of its 3 conv layers (exits 1–2: average pooling, 1×1 conv, Dense; exit 3: the '
          'CNN1D classifier)')


def _baseline_text(config) -> str:
  if config.get('net', 'cnn1d') == 'resnet':
    return (f'`kdjax.models.CifarResNet(depth={config.depth}, widths={tuple(config.widths)})` '
            '(the backbone without the shallow heads)')
  return 'the zoo `cnn1d` with the same options'


def _versus_regularised(cmp, variants, regs) -> str:
  """The verdict sentence on the deepest BYOT exits against the regularised baselines."""
  primary = variants[0]
  beaten = [reg for reg in regs
            if cmp[f'{primary}: deepest exit vs {reg}'].verdict == stats.BETTER]
  if len(beaten) == len(regs):
    head = (f'(3) Against the regularised baselines, {primary}\'s deepest exit is better '
            'than every one')
  elif not beaten:
    head = f'(3) Against the regularised baselines, {primary}\'s deepest exit is better than none'
  else:
    head = (f'(3) Against the regularised baselines, {primary}\'s deepest exit is better than '
            + ', '.join(beaten) + ' only')
  parts = [f'vs {reg}: ' + '; '.join(
      f'{name} {stats.summary(cmp[f"{name}: deepest exit vs {reg}"])}' for name in variants)
      for reg in regs]
  return head + '. Deepest exit − regularised baseline: ' + ' | '.join(parts) + '.'


def _slug(name: str) -> str:
  return ''.join(c if c.isalnum() else '_' for c in name.lower()).strip('_')
