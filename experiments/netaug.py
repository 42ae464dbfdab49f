"""Experiment 5: NetAug on tiny vs large models (MNIST-1D, scikit-learn digits).

Finding tested (Cai et al. 2022): *NetAug helps tiny models but
not large ones* — a tiny model under-fits, and training it as a sub-network
of wider models gives it extra supervision; a large model over-fits, and the
same extra supervision does not help (the paper sees it hurt ResNet50).

Each model is trained normally and with NetAug for the same steps, optimizer,
data order and seeds. The NetAug model's base is exported as a plain
``MLP``/``CNN1D`` (:func:`kdjax.models.export_base`) and evaluated alone, so
the reported accuracy is that of a model with exactly the baseline's
architecture and cost. Train accuracy is reported too, to show which regime
(under- or over-fitting) each model is in. The data is ``config.dataset``; on
digits (8×8 images) only MLPs run, since :class:`kdjax.models.NetAugCNN1D` is 1-D.

Usable from a notebook::

    from experiments import netaug
    from experiments.configs import netaug as cfg
    rows = netaug.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, Optional

import jax
import numpy as np

from experiments import common
from experiments import stats
from experiments.takd import DATASETS
from kdjax import checkpoint
from kdjax import data as kdata
from kdjax import models
from kdjax import runs
from kdjax import schemes
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


DELTA = 'Δ test vs plain (paired)'
COLUMNS = ('model', 'size', 'params', 'training', 'test accuracy', 'train accuracy', DELTA,
           *stats.COLUMNS, 'seeds', 'wall time / run (s)')
_KINDS = {'mlp': 'MLP', 'cnn1d': 'CNN'}


def fit_and_evaluate(state: TrainState, step_fn: Callable, *, train_src, eval_sets: dict,
                     eval_step: Callable, export: Optional[Callable] = None, num_steps: int,
                     batch_size: int, seed: int, rng: jax.Array, workdir: Optional[str],
                     teacher_variables: Any = None, progress: bool = False,
                     desc: str = 'train') -> tuple[TrainState, dict, float]:
  """Trains ``state`` with ``step_fn`` (resuming from ``workdir``) and evaluates it.

  Like :func:`kdjax.runs.train_and_evaluate`, but for a prebuilt state and
  step (NetAug, weight distillation). ``export(variables) -> variables``
  maps the trained variables to those that ``eval_step`` evaluates.

  Returns:
    ``(state, {'<set>_accuracy': ..., '<set>_loss': ...}, seconds)``.
  """
  t0 = time.perf_counter()
  data_iter = kdata.training_data(train_src, batch_size=batch_size, seed=seed)
  ckpt = None
  if workdir is not None:
    ckpt = checkpoint.Checkpointer(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                   max_to_keep=1)
  try:
    result = train.fit(state, step_fn, data_iter, num_steps=num_steps, rng=rng,
                       teacher_variables=teacher_variables, checkpointer=ckpt,
                       checkpoint_every=num_steps, log_every=min(500, num_steps),
                       progress=progress, desc=desc)
  finally:
    if ckpt is not None:
      ckpt.close()
  variables = result.state.variables
  if export is not None:
    variables = export(variables)
  metrics = {}
  for name, src in eval_sets.items():
    batches = kdata.make_pipeline(src, batch_size=500, seed=0, shuffle=False,
                                  drop_remainder=False, num_epochs=1)
    ev = train.evaluate(eval_step, variables, iter(batches))
    metrics[f'{name}_accuracy'] = ev['accuracy']
    metrics[f'{name}_loss'] = ev['loss']
  return result.state, metrics, time.perf_counter() - t0


def _models(spec, *, augment_factor: float, init_fan: str):
  """``(plain base module, NetAug module)`` for a model spec."""
  kwargs = dict(spec.kwargs)
  if spec.kind == 'mlp':
    plain = models.MLP(hidden=tuple(kwargs['hidden']), num_classes=10)
    wide = models.NetAugMLP(hidden=tuple(kwargs['hidden']), num_classes=10,
                            max_multiplier=augment_factor, init_fan=init_fan)
  elif spec.kind == 'cnn1d':
    plain = models.CNN1D(num_classes=10, channels=kwargs['channels'])
    wide = models.NetAugCNN1D(num_classes=10, channels=kwargs['channels'],
                              max_multiplier=augment_factor, init_fan=init_fan)
  else:
    raise ValueError(f'Unknown model kind {spec.kind!r}; use mlp or cnn1d.')
  return plain, wide


def state_fn(model, sample, tx) -> Callable[[jax.Array], TrainState]:
  """A jitted ``rng -> TrainState`` (one compilation instead of many eager ops).

  The forward function is built once, so that every state it creates has the
  same static ``apply_fn`` (and ``tx``) and a jitted step compiles only once.
  """
  forward = models.as_forward(model)
  return jax.jit(lambda rng: TrainState.create(
      apply_fn=forward, variables=models.init_variables(model, rng, sample), tx=tx))


_state_fn = state_fn


def _variants(config, spec) -> list[tuple[str, dict]]:
  """``[(training label, NetAug settings)]``: the main setting, plus ablations for tiny models."""
  main = dict(alpha=config.alpha, augment_factor=config.augment_factor,
              diversity=config.diversity, init_fan=config.init_fan)
  out = [('NetAug', main)]
  if spec.size in config.ablation_sizes:
    for label, overrides in config.ablations.items():
      out.append((f'NetAug, {label}', {**main, **dict(overrides)}))
  return out


def run(config) -> list[dict]:
  """Trains every configured model plainly and with NetAug; returns the table rows."""
  if config.fresh and os.path.isdir(config.workdir):
    shutil.rmtree(config.workdir)
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  dataset = DATASETS[config.dataset]
  data_dir = config.data_dir or None
  train_src = kdata.load(config.dataset, 'train', data_dir=data_dir)
  test_src = kdata.load(config.dataset, 'test', data_dir=data_dir)
  eval_sets = {'test': test_src, 'train': train_src}
  sample = np.asarray(train_src[0]['x'])[None]
  records = []
  for key in config.run_models:
    spec = config.models[key]
    if spec.kind == 'cnn1d' and sample.ndim != 2:
      raise ValueError(f'Model {key!r} is a NetAugCNN1D, which takes 1-D inputs; '
                       f'{dataset} inputs have shape {sample.shape[1:]}. Run MLPs only.')
    tx = runs.default_optimizer(spec.learning_rate, config.num_steps)
    # Steps, forward functions, initialisers and exports are built once per model and
    # shared by the seeds: a TrainState's apply_fn and tx are static, so fresh closures
    # per seed would recompile every step.
    plain, _ = _models(spec, augment_factor=config.augment_factor, init_fan=config.init_fan)
    eval_step = jax.jit(steps.make_eval_step(plain))
    num_params = models.count_params(jax.eval_shape(
        lambda rng: models.init_variables(plain, rng, sample), jax.random.key(0))['params'])
    methods = {'plain': (_state_fn(plain, sample, tx),
                         jax.jit(steps.make_train_step(), donate_argnums=0), None)}
    for label, setting in _variants(config, spec):
      _, wide = _models(spec, augment_factor=setting['augment_factor'],
                        init_fan=setting['init_fan'])
      multipliers = schemes.augment_multipliers(setting['augment_factor'], setting['diversity'])
      step = schemes.make_netaug_step(wide, multipliers, alpha=setting['alpha'],
                                      sampling=config.sampling, donate=True)
      if config.sampling == 'switch':
        step = jax.jit(step, donate_argnums=0)
      methods[label] = (_state_fn(wide, sample, tx), step,
                        jax.jit(lambda v, m=wide: models.export_base(m, v)[1]))
    for seed in config.seeds:
      init_rng, _, step_rng = jax.random.split(jax.random.key(seed), 3)
      for method, (new_state, step_fn, export) in methods.items():
        state = new_state(init_rng)
        tag = ''.join(ch if ch.isalnum() else '_' for ch in method.lower())
        workdir = os.path.join(config.workdir, key, tag, f'seed{seed}')
        _, metrics, seconds = fit_and_evaluate(
            state, step_fn, train_src=train_src, eval_sets=eval_sets, eval_step=eval_step,
            export=export, num_steps=config.num_steps, batch_size=config.batch_size,
            seed=seed, rng=step_rng, workdir=workdir, progress=config.progress,
            desc=f'{spec.label} {method} s{seed}')
        records.append({'model': spec.label, 'size': spec.size, 'training': method,
                        'seed': seed, 'params': num_params, 'seconds': seconds, **metrics})
        print(f'{spec.label:14s} {method:22s} seed {seed}: test '
              f'{metrics["test_accuracy"]:.3f} train {metrics["train_accuracy"]:.3f} '
              f'({seconds:.1f}s)', flush=True)

  # Paired differences NetAug - plain per (model, seed).
  by_key = {(r['model'], r['training'], r['seed']): r for r in records}
  for r in records:
    other = by_key[(r['model'], 'plain', r['seed'])]
    r['delta_test'] = r['test_accuracy'] - other['test_accuracy']
    r['delta_train'] = r['train_accuracy'] - other['train_accuracy']
  out = common.results_dir(config.results)
  common.save_records(records, os.path.join(out, 'records.json'))
  mode = config.get('mode', 'default')
  setup = common.save_setup(
      out, experiment='netaug', config=config,
      command='python -m experiments.run --config experiments/configs/netaug.py'
      + ('' if mode == 'default' else f':{mode}'),
      facts={'train_size': len(train_src), 'test_size': len(test_src)})
  return report(common.load_results(out)[0], setup, out)


def report(records: list[dict], setup: dict, out: str) -> list[dict]:
  """Writes the table, plots and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  dataset = DATASETS[config.dataset]
  seeds = common.seeds_of(records)
  rows = common.aggregate(
      records, ['model', 'size', 'training'],
      ['test_accuracy', 'train_accuracy', 'delta_test', 'delta_train', 'seconds'],
      percent=['test_accuracy', 'train_accuracy', 'delta_test', 'delta_train'])
  family = [(f'{row["model"]}: {row["training"]} vs plain',
             common.paired(records, {'model': row['model'], 'training': row['training']},
                           {'model': row['model'], 'training': 'plain'}, 'test_accuracy'))
            for row in rows if row['training'] != 'plain']
  cmp = {c.name: c for c in stats.compare(family)}
  verdicts = {}
  for row in rows:
    c = cmp.get(f'{row["model"]}: {row["training"]} vs plain')
    row['params'] = f'{_params(records, row["model"]):,}'
    row['test accuracy'] = row['test_accuracy']
    row['train accuracy'] = row['train_accuracy']
    row['wall time / run (s)'] = f'{row["seconds_mean"]:.1f}'
    row.update(stats.columns(c, delta=DELTA))
    if row['training'] == 'NetAug':
      verdicts[row['model']] = (row['size'], row['delta_test_mean'], row['delta_train_mean'], c)

  main_rows = [r for r in rows if r['training'] in ('plain', 'NetAug')]
  common.errorbar_plot(main_rows, x='model', series='training', metric='test_accuracy',
                       path=os.path.join(out, 'netaug.png'),
                       title=f'NetAug vs plain training on {dataset}\n(mean ± std over seeds)')
  common.errorbar_plot(main_rows, x='model', series='training', metric='train_accuracy',
                       path=os.path.join(out, 'netaug_train.png'), ylabel='train accuracy (%)',
                       title='Train accuracy (under- vs over-fitting)')
  ablated = {r['model'] for r in rows if r['training'] not in ('plain', 'NetAug')}
  if ablated:
    common.errorbar_plot([r for r in rows if r['model'] in ablated], x='model',
                         series='training', metric='test_accuracy',
                         path=os.path.join(out, 'netaug_ablations.png'),
                         title='NetAug settings on the tiny models')
  tiny = [v[3].verdict for v in verdicts.values() if v[0] == 'tiny']
  large = [v[3].verdict for v in verdicts.values() if v[0] == 'large']
  no_large_help = all(v != stats.BETTER for v in large)
  if tiny and large and no_large_help and all(v == stats.BETTER for v in tiny):
    status = 'Reproduced'
  elif tiny and large and no_large_help and any(v == stats.BETTER for v in tiny):
    status = 'Partly reproduced'
  else:
    status = 'Not reproduced'
  summary = '; '.join(f'{model} ({size}): {stats.summary(c)}'
                      for model, (size, _, _, c) in verdicts.items())
  verdict = (f'{status} on our data (main setting; NetAug helps a model when its paired test '
             f'difference to plain training is "better"). NetAug − plain test accuracy: '
             f'{summary}.' + _mechanism(verdicts))
  multipliers = schemes.augment_multipliers(config.augment_factor, config.diversity)
  ablation_text = ''
  if ablated:
    ablation_text = (
        ' Ablations on the tiny models (rows "NetAug, ..."): ' + '; '.join(
            f'{label}: {", ".join(f"{k}={v}" for k, v in dict(o).items())}'
            for label, o in config.ablations.items()) + ' (other settings as the main one).')
  lr_text = _learning_rates([config.models[key] for key in config.run_models])
  notes = (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test), '
      f'{config.num_steps} Adam steps (cosine decay; lr per model'
      f'{" as in the demo" if config.dataset == "mnist1d" else ""}: {lr_text}), batch '
      f'{config.batch_size}. '
      f'Main NetAug setting: α = {config.alpha:g}, augmented widths '
      f'×{", ×".join(f"{m:g}" for m in multipliers)} of every hidden layer (augmentation '
      f'factor {config.augment_factor:g}, diversity {config.diversity}; one width sampled per '
      f'step, sampling={config.sampling!r}), init_fan={config.init_fan!r}; weights shared '
      'with the base (the base is the leading slice).' + ablation_text + ' The NetAug rows '
      'evaluate the exported base alone (a plain model of the baseline\'s architecture); '
      '"params" counts the deployed base model. Train accuracy is measured on the full '
      'training set after training. Accuracies: mean ± std over seeds. Wall time is per run, '
      'including the one-off compilation in the first seed, on a shared 2-core CPU.\n\n'
      + common.comparison_lines(list(cmp.values())) + '\n\n'
      'Plots: `netaug.png` (test accuracy), `netaug_train.png` (train accuracy), '
      '`netaug_ablations.png` (tiny models, all settings). Raw per-seed numbers: '
      '`records.json`.' + (f'\n\n{config.notes}' if config.get('notes') else ''))
  common.write_results(
      config.results, rows, COLUMNS, title=f'NetAug: tiny vs large models on {dataset}',
      finding='NetAug helps tiny models but not large ones (Cai et al. 2022).',
      verdict=verdict, command=setup['command'], notes=notes, out_dir=out, dataset=dataset,
      seeds=seeds)
  return rows


def _mechanism(verdicts) -> str:
  """A reading of the tiny models' train-accuracy changes against the paper's mechanism."""
  notes = []
  for model, (size, dt, dtr, _) in verdicts.items():
    if size != 'tiny':
      continue
    if dtr < -0.01:
      notes.append(f'{model}: train accuracy fell as well ({100 * dtr:+.1f} pp), so NetAug '
                   'made its under-fitting worse, the opposite of the mechanism the paper '
                   'proposes')
    elif dtr > 0.01:
      notes.append(f'{model}: train accuracy rose ({100 * dtr:+.1f} pp), consistent with the '
                   "paper's mechanism (less under-fitting)")
    elif dt > 0:
      notes.append(f'{model}: test accuracy rose while train accuracy did not move '
                   f'({100 * dtr:+.1f} pp), so the gain is not less under-fitting but better '
                   'generalisation')
  return (' Mechanism (train accuracy): ' + '; '.join(notes) + '.') if notes else ''


def _learning_rates(specs) -> str:
  """``'MLP 3e-3, CNN 1e-2'`` (one rate per model kind), else one rate per model label."""
  def sci(lr):
    return np.format_float_scientific(lr, trim='-', exp_digits=1)

  by_kind = {}
  for spec in specs:
    by_kind.setdefault(spec.kind, {})[spec.learning_rate] = None
  if all(len(rates) == 1 for rates in by_kind.values()):
    return ', '.join(f'{_KINDS.get(kind, kind)} {sci(next(iter(rates)))}'
                     for kind, rates in by_kind.items())
  return ', '.join(f'{spec.label} {sci(spec.learning_rate)}' for spec in specs)


def _params(records, model) -> int:
  return next(r['params'] for r in records if r['model'] == model)
