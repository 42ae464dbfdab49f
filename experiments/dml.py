"""Deep mutual learning (DML) on MNIST-1D: do mutually trained peers beat independent ones?

For each cohort (``config.cohorts``: e.g. two or four MLPs, stacked and
vmapped, and a mixed CNN1D + MLP cohort, a tuple of states as in the DML
paper's experiments) and each seed, the same cohort is trained twice with
:func:`kdjax.cohort.make_cohort_step`: with the mutual KL (DML,
``kl_weight=1``) and without it (``kl_weight=0``: ``K`` independently trained
peers). Both runs share the peers' initialisations, the data order and the
optimizers, so the per-seed difference isolates the mutual KL term.

This module also holds the small training helpers that :mod:`experiments.one`
and :mod:`experiments.byot` reuse (:func:`init_key`, :func:`jit_init`,
:func:`train_loop`, :func:`run_dir`, :func:`eval_batches`).

Usable from a notebook::

    from experiments import dml
    from experiments.configs import dml as cfg
    rows = dml.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
import optax

from experiments import common
from experiments import stats
from experiments import tuning
from experiments.takd import DATASETS
from experiments.takd import load_data
from kdjax import checkpoint
from kdjax import cohort as kcohort
from kdjax import data as kdata
from kdjax import models
from kdjax import runs
from kdjax import train
from kdjax.state import TrainState


DELTA = 'Δ vs independent (paired)'
COLUMNS = ('cohort', 'peer', 'method', 'test accuracy', DELTA, *stats.COLUMNS,
           'ensemble accuracy', 'Δ ensemble (paired)', 'ensemble 95% CI', 'ensemble verdict',
           'test NLL', 'train accuracy', 'seeds')
FINDING = ('Deep mutual learning (Zhang et al. 2018): peers trained '
           'together with the mutual KL beat the same peers trained independently.')
METHODS = (('independent', 0.0), ('DML', 1.0))  # (name, kl_weight)


# ----------------------------------------------------------------- helpers

def init_key(seed: int) -> jax.Array:
  """The initialisation key of ``seed``.

  The ``'rbg'`` implementation: its random bits compile in about a second on
  this CPU, where threefry's take several seconds per model.
  """
  return jax.random.key(seed, impl='rbg')


def jit_init(model, sample_x) -> Callable[[jax.Array], dict]:
  """``key -> variables`` of a Linen ``model``, jitted (one compile per model)."""
  return jax.jit(lambda key: models.init_variables(model, key, sample_x))


def run_dir(config, seed: int, name: str, hparams: Mapping[str, Any]) -> Optional[str]:
  """``<workdir>/seed<seed>/<name>-<hash of hparams>``: a changed setting never resumes."""
  if not config.workdir:
    return None
  digest = hashlib.sha1(json.dumps(hparams, sort_keys=True, default=str).encode()).hexdigest()
  return os.path.join(config.workdir, f'seed{seed}', f'{name}-{digest[:8]}')


def train_loop(state, step_fn: Callable, train_src, *, num_steps: int, batch_size: int,
               seed: int, workdir: Optional[str], progress: bool = False,
               desc: str = 'train') -> train.FitResult:
  """Runs a jitted ``step_fn(state, None, batch, rng)`` with :func:`kdjax.train.fit`.

  The data order and step key come from ``seed``. With a ``workdir``, the final
  state is checkpointed there, and a run whose checkpoint is complete is
  restored instead of retrained.
  """
  data_iter = kdata.training_data(train_src, batch_size=batch_size, seed=seed)
  ckpt = None if workdir is None else checkpoint.Checkpointer(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), max_to_keep=1)
  try:
    return train.fit(state, step_fn, data_iter, num_steps=num_steps, rng=jax.random.key(seed),
                     checkpointer=ckpt, checkpoint_every=num_steps, log_every=num_steps,
                     progress=progress, desc=desc)
  finally:
    if ckpt is not None:
      ckpt.close()


def eval_batches(src, batch_size: int = 500):
  """One ordered pass over ``src`` (the last batch padded and masked)."""
  return iter(kdata.make_pipeline(src, batch_size=batch_size, seed=0, shuffle=False,
                                  drop_remainder=False, num_epochs=1))


def json_records(records: Sequence[Mapping[str, Any]]) -> list[dict]:
  """``records`` with NaN (a metric that does not apply) written as ``None`` (JSON null)."""
  return [{k: None if isinstance(v, float) and np.isnan(v) else v for k, v in r.items()}
          for r in records]


def fresh_workdir(config) -> None:
  """Deletes ``config.workdir`` when ``config.fresh`` is set (no resume)."""
  if config.get('fresh', False) and config.workdir and os.path.isdir(config.workdir):
    shutil.rmtree(config.workdir)


# ----------------------------------------------------------------- cohorts

class _Arch:
  """One peer architecture: its module, forward function, optimizer and jitted init.

  ``learning_rate`` (default: the spec's) and ``weight_decay`` (> 0: AdamW,
  decoupled weight decay, with the same cosine schedule) set the optimizer.
  """

  def __init__(self, name: str, spec: Sequence[Any], num_steps: int, sample_x,
               learning_rate: Optional[float] = None, weight_decay: float = 0.0):
    registry_name, kwargs, spec_lr = spec
    self.name = name
    self.registry_name = registry_name
    self.kwargs = dict(kwargs)
    self.learning_rate = float(spec_lr if learning_rate is None else learning_rate)
    self.weight_decay = float(weight_decay)
    self.module = models.create(registry_name, 10, **self.kwargs)
    # One forward function and optimizer object per architecture: the train
    # states of every seed then share their static fields, so each jitted step
    # compiles once per experiment.
    self.forward = models.as_forward(self.module)
    self.tx = optimizer(self.learning_rate, num_steps, self.weight_decay)
    self.init = jit_init(self.module, sample_x)
    self.init_cohort = jax.jit(
        lambda keys: kcohort.init_cohort(self.forward, self.tx, keys, init_fn=self.init))
    self.conv = registry_name.startswith(('cnn', 'plain_cnn', 'resnet', 'wrn'))

  def state(self, key: jax.Array) -> TrainState:
    return TrainState.create(apply_fn=self.forward, variables=self.init(key), tx=self.tx)


def optimizer(learning_rate: float, num_steps: int, weight_decay: float = 0.0):
  """Adam with cosine decay (:func:`kdjax.runs.default_optimizer`); AdamW if ``weight_decay``.

  AdamW (``optax.adamw``, Loshchilov & Hutter 2019) decays the weights by
  ``lr_t · weight_decay`` per step, decoupled from the Adam moments, with the
  same cosine-decayed ``lr_t``; it decays every parameter (biases too).
  """
  if not weight_decay:
    return runs.default_optimizer(learning_rate, num_steps)
  return optax.adamw(optax.cosine_decay_schedule(learning_rate, max(num_steps, 1)),
                     weight_decay=weight_decay)


def _build_cohort(archs: Sequence[_Arch], keys: jax.Array, unroll: bool):
  if len({a.name for a in archs}) == 1:  # one architecture: stacked peers
    return archs[0].init_cohort(keys), unroll
  return kcohort.CohortState.create(tuple(a.state(keys[k]) for k, a in enumerate(archs))), False


def methods_of(config) -> list[dict]:
  """The config's methods as ``{'name', 'kl_weight', 'label_smoothing', 'weight_decay'}``.

  ``config.methods`` holds ``(name, kl_weight, label_smoothing, weight_decay)``
  tuples; without it, :data:`METHODS` (independent peers and DML).

  Examples:
    >>> [m['name'] for m in methods_of({})]
    ['independent', 'DML']
  """
  specs = config.get('methods') or [(n, w, 0.0, 0.0) for n, w in METHODS]
  return [{'name': n, 'kl_weight': float(w), 'label_smoothing': float(ls),
           'weight_decay': float(wd)} for n, w, ls, wd in specs]


def _tuning_grid(config, method: Mapping[str, Any]) -> list[dict]:
  axes = {'learning_rate': tuple(config.tuning.learning_rates)}
  if method['weight_decay']:  # the method's decay is a grid too (its value is a flag)
    axes['weight_decay'] = tuple(config.tuning.weight_decays)
  return tuning.grid_of(**axes)


def run(config) -> list[dict]:
  """Trains every cohort with each method; writes results/<config.results>/.

  With ``config.tuning``, each (cohort, method)'s learning rate (and weight
  decay, for a method with one) is first chosen on a validation split of the
  training set (:mod:`experiments.tuning`), with the tuning seed; the chosen
  setting is then trained on the full training split for every seed.
  """
  fresh_workdir(config)
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  train_src, test_src = load_data(config)
  sample_x = np.asarray(train_src[0]['x'])[None]
  method_list = methods_of(config)
  tuned = bool(config.get('tuning'))
  if tuned:
    fit_src, val_src = tuning.validation_sources(
        train_src, fraction=config.tuning.fraction, seed=config.tuning.split_seed)
  arch_cache: dict[Any, _Arch] = {}

  def arch(name, learning_rate=None, weight_decay=0.0):
    key = (name, learning_rate, weight_decay)
    if key not in arch_cache:
      arch_cache[key] = _Arch(name, config.archs[name], config.num_steps, sample_x,
                              learning_rate, weight_decay)
    return arch_cache[key]

  steps_cache: dict[Any, Callable] = {}
  timings = []

  def train_cohort(cohort_name, peer_names, method, setting, seed, src, tag):
    """Trains one cohort; returns ``(fit result, eval step, archs)``."""
    archs = [arch(n, setting.get('learning_rate'), setting.get('weight_decay', 0.0))
             for n in peer_names]
    keys = jax.random.split(init_key(seed), len(archs))
    cohort, unroll = _build_cohort(
        archs, keys, unroll=config.unroll_conv and all(a.conv for a in archs))
    step_key = (cohort_name, method['name'])
    if step_key not in steps_cache:  # compiled once, reused over seeds
      step = kcohort.make_cohort_step(temperature=config.temperature,
                                      kl_weight=method['kl_weight'],
                                      label_smoothing=method['label_smoothing'],
                                      unroll_peers=unroll)
      steps_cache[step_key] = jax.jit(kcohort.as_fit_step(step), donate_argnums=0)
    if cohort_name not in steps_cache:
      steps_cache[cohort_name] = jax.jit(kcohort.make_cohort_eval_step(unroll_peers=unroll))
    hparams = {'cohort': [(a.registry_name, a.kwargs, a.learning_rate) for a in archs],
               'kl_weight': method['kl_weight'], 'temperature': config.temperature,
               'num_steps': config.num_steps, 'batch_size': config.batch_size,
               'data_samples': config.data_samples}
    # Only non-default settings enter the hash, so earlier runs' directories stay valid.
    extra = {'label_smoothing': method['label_smoothing'],
             'weight_decay': setting.get('weight_decay', 0.0),
             'dataset': config.get('dataset', 'mnist1d'), 'data': tag}
    hparams.update({k: v for k, v in extra.items() if v not in (0.0, 'mnist1d', 'train')})
    name = f'{_slug(cohort_name)}_{_method_slug(method["name"])}'
    fit = train_loop(cohort, steps_cache[step_key], src, num_steps=config.num_steps,
                     batch_size=config.batch_size, seed=seed,
                     # Tuning runs are not checkpointed (saving costs more than retraining).
                     workdir=run_dir(config, seed, name, hparams) if tag == 'train' else None,
                     progress=config.progress,
                     desc=f'{cohort_name} {method["name"]} seed {seed} ({tag})')
    timings.append(fit.seconds)
    return fit, steps_cache[cohort_name], archs

  # Tuning: per cohort and method, the setting with the best mean peer validation accuracy.
  search, chosen = {}, {}
  for cohort_name, peer_names in config.cohorts:
    for method in method_list:
      if not tuned:
        chosen[(cohort_name, method['name'])] = {}
        continue

      def score(setting, cohort_name=cohort_name, peer_names=peer_names, method=method):
        fit, eval_step, archs = train_cohort(cohort_name, peer_names, method, setting,
                                             config.tuning.seed, fit_src, 'train_fit')
        ev = kcohort.evaluate_cohort(eval_step, fit.state, eval_batches(val_src))
        return float(np.mean([ev[f'accuracy/{i}'] for i in range(len(archs))]))

      t = tuning.tune(_tuning_grid(config, method), score)
      search[f'{cohort_name}: {method["name"]}'] = t
      chosen[(cohort_name, method['name'])] = t['chosen']

  records = []
  for seed in config.seeds:
    for cohort_name, peer_names in config.cohorts:
      for method in method_list:
        fit, eval_step, archs = train_cohort(cohort_name, peer_names, method,
                                             chosen[(cohort_name, method['name'])], seed,
                                             train_src, 'train')
        k = len(archs)
        test = kcohort.evaluate_cohort(eval_step, fit.state, eval_batches(test_src))
        train_eval = kcohort.evaluate_cohort(eval_step, fit.state, eval_batches(train_src))
        groups = [(f'mean of {k}', list(range(k)))]
        if len({a.name for a in archs}) > 1:
          groups += [(n, [i for i, a in enumerate(archs) if a.name == n])
                     for n in dict.fromkeys(a.name for a in archs)]
        for peer, idx in groups:
          records.append({
              'seed': seed, 'cohort': cohort_name, 'peer': peer, 'method': method['name'],
              'peers': k, 'mean_row': peer.startswith('mean'),
              'accuracy': float(np.mean([test[f'accuracy/{i}'] for i in idx])),
              'nll': float(np.mean([test[f'loss/{i}'] for i in idx])),
              'train_accuracy': float(np.mean([train_eval[f'accuracy/{i}'] for i in idx])),
              'ensemble_accuracy': test['ensemble_accuracy'] if peer.startswith('mean')
              else float('nan'),
              'peer_accuracies': [test[f'accuracy/{i}'] for i in idx],
              'seconds': fit.seconds, 'resumed': fit.resumed_from is not None})

  # Paired differences DML − independent (same seed, cohort, peer group).
  by_key = {(r['seed'], r['cohort'], r['peer'], r['method']): r for r in records}
  for r in records:
    if r['method'] == 'DML':
      ind = by_key[(r['seed'], r['cohort'], r['peer'], 'independent')]
      r['delta_accuracy'] = r['accuracy'] - ind['accuracy']
      r['delta_ensemble'] = r['ensemble_accuracy'] - ind['ensemble_accuracy']
  out_dir = common.results_dir(config.results)
  common.save_records(json_records(records), os.path.join(out_dir, 'records.json'))
  mode = config.get('mode', 'default' if config.results == 'dml' else 'quick')
  facts = {'train_size': len(train_src), 'test_size': len(test_src),
           'train_seconds': float(sum(timings))}
  if tuned:
    facts.update({'fit_size': len(fit_src), 'validation_size': len(val_src), 'tuning': search})
  setup = common.save_setup(
      out_dir, experiment='dml', config=config,
      command='python -m experiments.run --config experiments/configs/dml.py'
      + ('' if mode == 'default' else f':{mode}'), facts=facts)
  return report(common.load_results(out_dir)[0], setup, out_dir)


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plots and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  for r in records:
    for k in ('ensemble_accuracy', 'delta_ensemble'):
      if k in r and r[k] is None:
        r[k] = float('nan')
  groups = list(dict.fromkeys((r['cohort'], r['peer']) for r in records))
  family = []
  for cohort_name, peer in groups:
    sel = {'cohort': cohort_name, 'peer': peer}
    family.append((f'{cohort_name} ({peer}): DML vs independent, peer accuracy',
                   common.paired(records, {**sel, 'method': 'DML'},
                                 {**sel, 'method': 'independent'})))
    if peer.startswith('mean'):
      family.append((f'{cohort_name} ({peer}): DML vs independent, ensemble accuracy',
                     common.paired(records, {**sel, 'method': 'DML'},
                                   {**sel, 'method': 'independent'}, 'ensemble_accuracy')))
  # Regularised baselines (label smoothing, weight decay): DML against each, peer accuracy.
  extra = [m['name'] for m in methods_of(config) if m['name'] not in ('DML', 'independent')]
  for b in extra:
    for cohort_name, peer in groups:
      sel = {'cohort': cohort_name, 'peer': peer}
      family.append((f'{cohort_name} ({peer}): DML vs {b}, peer accuracy',
                     common.paired(records, {**sel, 'method': 'DML'}, {**sel, 'method': b})))
  cmp = {c.name: c for c in stats.compare(family)}
  keys = ['cohort', 'peer', 'method']
  agg = common.aggregate(records, keys, ['accuracy', 'nll', 'train_accuracy',
                                         'ensemble_accuracy'],
                         percent=['accuracy', 'train_accuracy', 'ensemble_accuracy'])
  paired_rows = [r for r in records if r['method'] == 'DML']
  deltas = {(r['cohort'], r['peer']): r for r in common.aggregate(
      paired_rows, ['cohort', 'peer'], ['delta_accuracy', 'delta_ensemble'],
      percent=['delta_accuracy', 'delta_ensemble'])}

  rows = []
  for r in agg:
    mean_row = r['peer'].startswith('mean')
    dml = r['method'] == 'DML'
    peer_c = cmp[f"{r['cohort']} ({r['peer']}): DML vs independent, peer accuracy"] if dml else None
    ens_c = (cmp[f"{r['cohort']} ({r['peer']}): DML vs independent, ensemble accuracy"]
             if dml and mean_row else None)
    row = {**r, 'test accuracy': r['accuracy'], 'test NLL': r['nll'],
           'train accuracy': r['train_accuracy'],
           'ensemble accuracy': r['ensemble_accuracy'] if mean_row else '—',
           **stats.columns(peer_c, delta=DELTA),
           'Δ ensemble (paired)': stats.format_delta(ens_c) if ens_c else '—',
           'ensemble 95% CI': stats.format_ci(ens_c) if ens_c else '—',
           'ensemble verdict': ens_c.verdict if ens_c else '—'}
    rows.append(row)

  for r in agg:
    r['group'] = f"{r['cohort']}: {r['peer']}" if not r['peer'].startswith('mean') \
        else r['cohort']
  dataset = DATASETS[config.get('dataset', 'mnist1d')]
  common.errorbar_plot(agg, x='group', metric='accuracy', series='method',
                       path=os.path.join(out_dir, 'dml_peers.png'),
                       title=f'DML vs independent peers ({dataset}): peer test accuracy',
                       xlabel='cohort (peer)')
  delta_rows = [{**d, 'group': f"{d['cohort']}: {d['peer']}" if not d['peer'].startswith('mean')
                 else d['cohort']} for d in deltas.values()]
  common.errorbar_plot(delta_rows, x='group', metric='delta_accuracy',
                       path=os.path.join(out_dir, 'dml_delta.png'),
                       title='DML − independent peer accuracy (paired over seeds)',
                       xlabel='cohort (peer)', ylabel='Δ test accuracy (points)',
                       baselines={'no difference': 0.0})
  ens = [r for r in agg if r['peer'].startswith('mean')]
  common.errorbar_plot(ens, x='group', metric='ensemble_accuracy', series='method',
                       path=os.path.join(out_dir, 'dml_ensemble.png'),
                       title='DML vs independent peers: ensemble test accuracy',
                       xlabel='cohort')

  mean_verdicts = {c: cmp[f'{c} ({p}): DML vs independent, peer accuracy']
                   for c, p in groups if p.startswith('mean')}
  holds = [c for c, v in mean_verdicts.items() if v.verdict == stats.BETTER]
  fails = [c for c, v in mean_verdicts.items() if v.verdict != stats.BETTER]
  if not fails:
    summary = 'Reproduced: DML peers beat independently trained ones in every cohort tested'
  elif not holds:
    summary = ('Not reproduced: in no cohort are DML peers significantly better than '
               'independent ones')
  else:
    summary = (f'Partly reproduced: DML peers are significantly better than independent ones '
               f'in {", ".join(holds)}, not in {", ".join(fails)}')
  lines = [f'{c}: {stats.summary(v)}' for c, v in mean_verdicts.items()]
  nll = {(r['cohort'], r['method']): r['nll'] for r in rows if r['peer'].startswith('mean')}
  nll_line = 'Mean peer test NLL, independent → DML: ' + '; '.join(
      f"{c} {nll[(c, 'independent')]} → {nll[(c, 'DML')]}" for c in mean_verdicts) + '.'
  verdict = (summary + '. Mean peer accuracy, DML − independent: ' + '; '.join(lines) + '. '
             + nll_line)
  if extra:
    verdict += ' ' + _versus_regularised(cmp, groups, extra)

  tuned = bool(config.get('tuning'))
  arch_lines = ', '.join(f'{n} = `{spec[0]}` {dict(spec[1])}'
                         + ('' if tuned else f' (lr {float(spec[2]):g})')
                         for n, spec in config.archs.items()
                         if any(n in peers for _, peers in config.cohorts))
  mean_records = [r for r in records if r['mean_row']]
  resumed = sum(r['resumed'] for r in mean_records)
  notes = (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test). Peers: '
      f'{arch_lines}; Adam with cosine decay, {config.num_steps} steps, batch '
      f'{config.batch_size}. Each cohort '
      f'is trained with `kdjax.cohort.make_cohort_step(temperature={config.temperature:g}, '
      'kl_weight=1)` (DML: peer k minimises CE + 1/(K−1) Σ_l τ²·KL(p_l ‖ p_k), targets held '
      'constant) and with `kl_weight=0` (the same step: K independent peers). Both runs of a '
      'seed share the peer initialisations, the data order and the optimizers, so "Δ" is a '
      'paired per-seed difference. Same-architecture cohorts are one stacked state '
      '(vmapped'
      + (', unrolled for conv peers' if config.unroll_conv else '') +
      '); the mixed cohort is a tuple of states in one jitted step. "peer" rows: the mean over '
      'all peers of a cohort, and for a mixed cohort each architecture separately. Ensemble: '
      'argmax of the mean of the peers\' probabilities. Train accuracy is measured on the full '
      'training set after training. Accuracies: mean ± std over seeds.\n\n'
      + (_tuning_notes(config, facts, extra) if tuned or extra else '')
      + common.comparison_lines(list(cmp.values())) + '\n\n'
      'Plots: `dml_peers.png` (peer accuracy), `dml_delta.png` (the paired differences), '
      '`dml_ensemble.png` (ensemble accuracy). '
      f'Total training time of the runs {facts["train_seconds"]:.0f} s ({resumed} of '
      f'{len(mean_records)} runs restored from complete checkpoints in the workdir).')
  common.write_results(
      config.results, rows, COLUMNS, title=f'Deep mutual learning vs independent peers ({dataset})',
      finding=FINDING, verdict=verdict, command=setup['command'], notes=notes, out_dir=out_dir,
      dataset=dataset, seeds=common.seeds_of(records))
  return rows


def _versus_regularised(cmp: Mapping[str, stats.Comparison], groups, extra) -> str:
  """The verdict sentence on DML against the regularised independent baselines."""
  parts = []
  for cohort_name, peer in groups:
    got = [(b, cmp[f'{cohort_name} ({peer}): DML vs {b}, peer accuracy']) for b in extra]
    parts.append(f'{cohort_name} ({peer}): ' + '; '.join(f'vs {b} {stats.summary(c)}'
                                                         for b, c in got))
  means = [(c, p) for c, p in groups if p.startswith('mean')]
  beats = [all(cmp[f'{c} ({p}): DML vs {b}, peer accuracy'].verdict == stats.BETTER
               for b in extra) for c, p in means]
  if all(beats):
    head = ('Against the regularised independent baselines, DML\'s mean peer is better in '
            'every cohort')
  elif not any(beats):
    head = ('Against the regularised independent baselines, DML\'s mean peer is not better '
            'than all of them in any cohort')
  else:
    head = ('Against the regularised independent baselines, DML\'s mean peer beats all of them '
            'in ' + ', '.join(c for (c, _), b in zip(means, beats) if b) + ' only')
  return head + '. DML − regularised baseline, peer accuracy: ' + ' | '.join(parts) + '.'


def _tuning_notes(config, facts: Mapping[str, Any], extra: Sequence[str]) -> str:
  """The notes on the regularised baselines and the validation search."""
  text = ''
  methods = {m['name']: m for m in methods_of(config)}
  if extra:
    text += ('Regularised baselines (independent peers, `kl_weight=0`): ' + '; '.join(
        f'{b}: ' + ', '.join(
            ([f'label smoothing {methods[b]["label_smoothing"]:g}']
             if methods[b]['label_smoothing'] else [])
            + (['decoupled weight decay (`optax.adamw`, same cosine schedule; decay tuned '
                'below)'] if methods[b]['weight_decay'] else []))
        for b in extra) + '. ')
  if config.get('tuning'):
    t = config.tuning
    text += (
        tuning.split_sentence(t, facts)
        + '; for every cohort and method each setting below trained on the '
        f'other {facts["fit_size"]} with seed {t.seed}, and the one with the best mean peer '
        'validation accuracy (ties: the first) was then trained on the full training split '
        'for every seed and evaluated on test once (one learning rate for all peers of a '
        'cohort). ' + tuning.widened_note(t) + tuning.edge_note(facts['tuning'])
        + ' Validation accuracy (mean peer) per setting:\n\n'
        + tuning.tuning_lines(facts['tuning']) + '\n\n')
  return text


def _method_slug(name: str) -> str:
  return name if name.isalnum() else _slug(name)


def _slug(name: str) -> str:
  return ''.join(c if c.isalnum() else '_' for c in name.lower()).strip('_')
