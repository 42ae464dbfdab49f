"""BYOT (be your own teacher) on MNIST-1D: exits, the deepest head, and early exit.

Per seed: the 1-D CNN with an exit head after every conv layer
(:func:`kdjax.models.byot_cnn1d`), trained with
:func:`kdjax.online.make_byot_step` for each configured variant (BYOT with the
feature term averaged over the embedding, BYOT with the paper's sum, and a
control with the cross-entropy on every exit only: α = 0, λ = 0, i.e. deep
supervision without self-distillation); and the same network without auxiliary
heads (the zoo ``cnn1d``) trained alone. All runs of a seed share the data
order. Reported: the test accuracy of every exit against the plain network,
and the accuracy/compute trade-off of exiting at the first head whose
confidence passes a threshold (:func:`experiments.early_exit.early_exit_table`, compute
in XLA-counted FLOPs).

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
from experiments import report as report_lib
from experiments import stats
from experiments.dml import eval_batches
from experiments.dml import fresh_workdir
from experiments.dml import init_key
from experiments.dml import jit_init
from experiments.dml import run_dir
from experiments.dml import train_loop
from experiments.takd import load_data
from kdjax import models
from kdjax import online
from kdjax import runs
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


DELTA = 'Δ vs plain (paired)'
COLUMNS = ('model', 'exit', 'FLOPs vs plain CNN1D', 'test accuracy', DELTA, *stats.COLUMNS,
           'test NLL', 'seeds')
EXIT_COLUMNS = ('model', 'threshold', 'test accuracy', 'FLOPs vs plain CNN1D',
                'FLOPs vs deepest exit', 'mean exit', 'exit shares (1/2/…)', 'seeds')
FINDING = ('BYOT (Zhang et al. 2019): the shallow exits of a self-distilled '
           'network are usable classifiers (early exit trades little accuracy for much less '
           'compute), and the deepest head improves over the same network trained without '
           'auxiliary heads.')
PLAIN = 'CNN1D, no aux heads (baseline)'


def _threshold_label(t: float) -> str:
  return f'{t:g} (deepest only)' if t > 1 else f'{t:g}'


def run(config) -> list[dict]:
  """Trains the BYOT variants and the plain network; writes results/<config.results>/."""
  fresh_workdir(config)
  train_src, test_src = load_data(config)
  sample_x = np.asarray(train_src[0]['x'])[None]
  model_kw = dict(channels=config.channels, kernel_sizes=tuple(config.kernel_sizes))
  byot_model = models.byot_cnn1d(10, **model_kw)
  plain_model = models.create('cnn1d', 10, **model_kw)
  byot_fwd, plain_fwd = models.as_forward(byot_model), models.as_forward(plain_model)
  tx = runs.default_optimizer(config.learning_rate, config.num_steps)
  byot_init, plain_init = jit_init(byot_model, sample_x), jit_init(plain_model, sample_x)
  plain_step = jax.jit(steps.make_train_step(), donate_argnums=0)
  plain_eval = jax.jit(steps.make_eval_step(plain_fwd))
  byot_eval = jax.jit(online.make_heads_eval_step(byot_fwd, feature='exit_logits'))
  byot_steps = {
      name: jax.jit(online.make_byot_step(alpha=alpha, temperature=tau, feature_weight=lam,
                                          feature_reduction=reduction), donate_argnums=0)
      for name, alpha, tau, lam, reduction in config.variants}
  num_exits = byot_model.num_exits
  input_shape = (1,) + tuple(sample_x.shape[1:])
  plain_flops = models.flops(plain_model, input_shape)
  exit_costs = early_exit.exit_flops(byot_model, input_shape)
  common_hp = {'num_steps': config.num_steps, 'batch_size': config.batch_size,
               'learning_rate': config.learning_rate, 'model': model_kw,
               'data_samples': config.data_samples}
  fit_kw = dict(num_steps=config.num_steps, batch_size=config.batch_size,
                progress=config.progress)
  thresholds = tuple(float(t) for t in config.thresholds)

  records, exit_records, timings = [], [], []
  for seed in config.seeds:
    state = TrainState.create(apply_fn=plain_fwd, variables=plain_init(init_key(seed)), tx=tx)
    fit = train_loop(state, plain_step, train_src, seed=seed,
                     workdir=run_dir(config, seed, 'plain', {**common_hp, 'seed': seed}),
                     desc=f'plain seed {seed}', **fit_kw)
    timings.append(fit.seconds)
    ev = train.evaluate(plain_eval, fit.state.variables, eval_batches(test_src))
    records.append({'seed': seed, 'model': PLAIN, 'exit': 'output', 'exit_index': num_exits,
                    'accuracy': ev['accuracy'], 'nll': ev['loss'], 'flops': plain_flops})

    for name, alpha, tau, lam, reduction in config.variants:
      # The same initialisation for every variant of a seed (one BYOT architecture).
      state = TrainState.create(apply_fn=byot_fwd, variables=byot_init(init_key(seed)), tx=tx)
      hp = {**common_hp, 'seed': seed, 'alpha': alpha, 'temperature': tau,
            'feature_weight': lam, 'feature_reduction': reduction}
      fit = train_loop(state, byot_steps[name], train_src, seed=seed,
                       workdir=run_dir(config, seed, f'byot_{_slug(name)}', hp),
                       desc=f'{name} seed {seed}', **fit_kw)
      timings.append(fit.seconds)
      variables = fit.state.variables
      ev = online.evaluate_heads(byot_eval, variables, eval_batches(test_src), prefix='exit',
                                 start=1)
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
  plain_acc = {r['seed']: r['accuracy'] for r in records if r['model'] == PLAIN}
  for r in records:
    r['delta'] = r['accuracy'] - plain_acc[r['seed']]
  out_dir = common.results_dir(config.results)
  common.save_records([{'table': 'exits', **r} for r in records]
                      + [{'table': 'early_exit', **r} for r in exit_records],
                      os.path.join(out_dir, 'records.json'))
  setup = common.save_setup(
      out_dir, experiment='byot', config=config,
      command='python -m experiments.run --config experiments/configs/byot.py'
      + ('' if config.results == 'byot' else ':quick'),
      facts={'train_size': len(train_src), 'test_size': len(test_src),
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
  control = [name for name, alpha, _, lam, _ in config.variants if alpha == 0 and lam == 0]
  family = []
  for name, *_ in config.variants:
    for k in range(1, num_exits + 1):
      family.append((f'{name}: exit {k} vs plain', common.paired(
          records, {'model': name, 'exit_index': k}, {'model': PLAIN})))
  if control:
    for k in range(1, num_exits + 1):
      family.append((f'{primary} − {control[0]}: exit {k}', common.paired(
          records, {'model': primary, 'exit_index': k}, {'model': control[0], 'exit_index': k})))
  cmp = {c.name: c for c in stats.compare(family)}
  agg = common.aggregate(records, ['model', 'exit', 'exit_index'],
                         ['accuracy', 'delta', 'nll', 'flops'], percent=['accuracy', 'delta'])
  rows = []
  for r in agg:
    base = r['model'] == PLAIN
    c = None if base else cmp[f'{r["model"]}: exit {r["exit_index"]} vs plain']
    rows.append({**r, 'test accuracy': r['accuracy'], 'test NLL': r['nll'],
                 'FLOPs vs plain CNN1D': f"{100 * r['flops_mean'] / plain_flops:.0f}%",
                 **stats.columns(c, delta=DELTA)})

  fractions = [f'exit{k}_fraction' for k in range(1, num_exits + 1)]
  exit_agg = common.aggregate(exit_records, ['model', 'threshold', 'label'],
                              ['accuracy', 'relative_cost', 'flops_vs_plain', 'mean_stages',
                               *fractions],
                              percent=['accuracy', 'relative_cost', 'flops_vs_plain'])
  exit_rows = [{**r, 'threshold': r['label'], 'test accuracy': r['accuracy'],
                'FLOPs vs plain CNN1D': r['flops_vs_plain'],
                'FLOPs vs deepest exit': r['relative_cost'],
                'mean exit': f"{r['mean_stages_mean']:.2f}",
                'exit shares (1/2/…)': '/'.join(
                    f"{100 * r[f'{f}_mean']:.0f}%" for f in fractions)}
               for r in exit_agg]

  report_lib.write_table(exit_rows, EXIT_COLUMNS, os.path.join(out_dir, 'early_exit'),
                         title='BYOT early exit on MNIST-1D (mean ± std over seeds)')
  plain_row = next(r for r in agg if r['model'] == PLAIN)
  # Accuracy of every exit per variant, against the plain network.
  common.errorbar_plot([r for r in agg if r['model'] != PLAIN], x='exit_index', metric='accuracy',
                       series='model', path=os.path.join(out_dir, 'byot_exits.png'),
                       title='BYOT exits vs the plain CNN1D (MNIST-1D)', xlabel='exit',
                       baselines={'CNN1D, no aux heads': plain_row['accuracy_mean']})
  # Early exit: accuracy against compute, every variant, mean ± std over seeds.
  common.errorbar_plot(exit_agg, x='flops_vs_plain_mean', metric='accuracy', series='model',
                       path=os.path.join(out_dir, 'early_exit_variants.png'),
                       title='Early exit: accuracy vs compute (thresholds as in the table)',
                       xlabel='mean FLOPs per example / FLOPs of the plain CNN1D',
                       baselines={'CNN1D, no aux heads': plain_row['accuracy_mean']})
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
                   f"{r['verdict']}) at {r['FLOPs vs plain CNN1D']} FLOPs")
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
                  f"FLOPs (plain CNN1D {plain_row['accuracy']}%; criterion: mean accuracy "
                  'within 1 point of the plain network with fewer FLOPs, descriptive, not a '
                  'test)')
  else:
    early_line = ('not usable as a compute saving — no threshold keeps the mean accuracy within '
                  f"1 point of the plain CNN1D ({plain_row['accuracy']}%) with fewer FLOPs")
  shallow = '; '.join(
      f"exit {k} alone {by[(primary, k)]['test accuracy']}% at "
      f"{by[(primary, k)]['FLOPs vs plain CNN1D']} of the plain FLOPs"
      for k in range(1, num_exits))
  verdict = (
      f'(1) Shallow exits: {early_line}; {shallow}. '
      f'(2) Deepest head vs the plain network: {stats.summary(deepest)}; the finding that the '
      f'deepest head improves is {deep_outcome} on our data.{control_line}')
  variant_text = '; '.join(
      f'`{n}`: α={a:g}, τ={t:g}, λ={lam:g}, feature_reduction=\'{red}\'' for n, a, t, lam, red
      in config.variants)
  notes = (
      f'Setup: MNIST-1D ({facts["train_size"]} train / {facts["test_size"]} test). BYOT = '
      f'`kdjax.models.byot_cnn1d(channels={config.channels})`: the CNN1D with an exit after each '
      'of its 3 conv layers (exits 1–2: average pooling, 1×1 conv, Dense; exit 3: the CNN1D '
      'classifier). Each shallow exit gets (1−α)·CE + α·τ²·KL(deepest ‖ exit) + '
      'λ·‖F_exit − F_deepest‖² (targets held constant), the deepest exit the CE '
      f'(`kdjax.online.make_byot_step`). Variants: {variant_text}. Baseline: the zoo `cnn1d` '
      'with the same options, trained alone with the cross-entropy. All runs: Adam with cosine '
      f'decay, lr {config.learning_rate:g}, {config.num_steps} steps, batch {config.batch_size}; '
      'the runs of a seed share the data order (and the BYOT variants the initialisation). '
      '"Δ" is the per-seed difference to the plain network; accuracies are mean ± std over '
      'seeds. FLOPs: XLA cost analysis per example (`kdjax.models.flops`, '
      '`experiments.early_exit.exit_flops`: exiting at exit k runs stages and heads 1..k); '
      'plain CNN1D '
      f'{plain_flops:,.0f}, BYOT exits ' + ', '.join(f'{c:,.0f}' for c in exit_costs) + ' '
      '(the FLOPs column of an exit counts every shallow head checked before it; the deepest '
      'exit deployed alone, with the shallow heads dropped, costs what the plain network '
      'costs). Per variant: ' + ' | '.join(lines) + '.\n\n'
      + common.comparison_lines(list(cmp.values())) + '\n\n'
      '## Early exit\n\nEach test example leaves at the first exit whose top softmax '
      'probability reaches the threshold (the deepest exit answers otherwise); '
      '`experiments.early_exit.early_exit_table`. Also in `early_exit.md` / `.csv`.\n\n'
      + report_lib.markdown_table(exit_rows, EXIT_COLUMNS) + '\n\n'
      'Plots: `byot_exits.png` (accuracy of each exit), `early_exit.png` (accuracy vs compute '
      f'for {primary}, with each exit alone), `early_exit_variants.png` (all variants). Total '
      f'training time of the runs {facts["train_seconds"]:.0f} s (runs found complete in the '
      'workdir are restored, not retrained).')
  common.write_results(
      config.results, rows, COLUMNS, title='BYOT: self-distilled exits vs the plain CNN1D '
      '(MNIST-1D)', finding=FINDING, verdict=verdict, command=setup['command'], notes=notes,
      out_dir=out_dir, dataset='MNIST-1D', seeds=common.seeds_of(records))
  return rows


def _slug(name: str) -> str:
  return ''.join(c if c.isalnum() else '_' for c in name.lower()).strip('_')
