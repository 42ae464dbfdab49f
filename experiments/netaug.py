"""Experiment 5: NetAug on tiny vs large models (MNIST-1D, scikit-learn digits).

Finding tested (Cai et al. 2022): *NetAug helps tiny models but
not large ones* — a tiny model under-fits, and training it as a sub-network
of wider models gives it extra supervision; a large model over-fits, and the
same extra supervision does not help (the paper sees it hurt ResNet50). The
paper's argument is that tiny models need *more capacity, not more
regularisation*, so the tiny models are also trained with two standard
regularisers (label smoothing, Szegedy et al. 2016; decoupled weight decay,
AdamW, Loshchilov & Hutter 2019), as in :mod:`experiments.online_baselines`.

Protocol (:mod:`experiments.tuning`): every model's learning rate is chosen
on a stratified validation split of train with the tuning seed, separately
for plain training, NetAug (for the tiny models jointly with NetAug's α and
augmentation factor) and each regularised baseline (AdamW: jointly with its
decay), from a-priori grids recorded in ``setup.json``. The chosen settings
are then trained on the full train split for every evaluation seed and
evaluated on test once. All the runs of a seed share the initialisation key
and the data order, so the comparisons are paired by seed, with paired-t 95%
intervals and Holm-corrected p-values (:mod:`experiments.stats`).

The NetAug model's base is exported as a plain ``MLP``/``CNN1D``
(:func:`kdjax.models.export_base`) and evaluated alone, so the reported
accuracy is that of a model with exactly the baseline's architecture and
cost. Train accuracy is reported too, to show which regime (under- or
over-fitting) each model is in. The data is ``config.dataset``; on digits
(8×8 images) only MLPs run, since :class:`kdjax.models.NetAugCNN1D` is 1-D.

Usable from a notebook::

    from experiments import netaug
    from experiments.configs import netaug as cfg
    rows = netaug.run(cfg.get_config('quick'))

References:
  Cai, Gan, Zhu, Wang, Lin & Han, "Network Augmentation for Tiny Deep
  Learning", ICLR 2022, arXiv:2110.08890.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from experiments import common
from experiments import online_baselines
from experiments import stats
from experiments import tuning
from experiments.takd import DATASETS
from kdjax import checkpoint
from kdjax import data as kdata
from kdjax import models
from kdjax import schemes
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


PLAIN, NETAUG = 'plain', 'NetAug'
DELTA = 'Δ test vs plain (paired)'
VS = 'NetAug − this (paired)'
VS_COLUMNS = (VS, '95% CI (NetAug − this)', 'Holm p (NetAug − this)',
              'verdict (NetAug vs this)')
COLUMNS = ('model', 'size', 'params', 'training', 'chosen setting', 'test accuracy',
           'train accuracy', DELTA, *stats.COLUMNS, *VS_COLUMNS, 'seeds', 'wall time / run (s)')
FINDING = 'NetAug helps tiny models but not large ones (Cai et al. 2022).'
_SHORT = {'learning_rate': 'lr', 'weight_decay': 'wd', 'alpha': 'α',
          'augment_factor': 'augment factor'}


# ----------------------------------------------------------------- pure helpers

def diversity_of(augment_factor: float) -> int:
  """The diversity factor of an augmentation factor: widths ×2, ×3, …, ×factor.

  Examples:
    >>> diversity_of(2.0), diversity_of(3.0), diversity_of(4)
    (1, 2, 3)
  """
  d = int(round(float(augment_factor))) - 1
  if d < 1 or abs(float(augment_factor) - (d + 1)) > 1e-9:
    raise ValueError(f'`augment_factor` must be an integer >= 2; got {augment_factor}.')
  return d


def multipliers_of(augment_factor: float) -> tuple[float, ...]:
  """The augmented widths of an augmentation factor (:func:`kdjax.schemes.augment_multipliers`).

  Examples:
    >>> multipliers_of(3.0)
    (2.0, 3.0)
  """
  return tuple(float(m) for m in schemes.augment_multipliers(
      float(augment_factor), diversity_of(augment_factor)))


def format_setting(setting: Mapping[str, Any]) -> str:
  """``{'learning_rate': 0.01, 'alpha': 1.0}`` -> ``'lr 0.01, α 1'``.

  Examples:
    >>> format_setting({'learning_rate': 0.01, 'alpha': 1.0, 'augment_factor': 3.0})
    'lr 0.01, α 1, augment factor 3'
  """
  return ', '.join(f'{_SHORT.get(k, k)} {v:g}' if isinstance(v, (int, float)) else f'{k} {v}'
                   for k, v in setting.items())


def methods_of(config, size: str) -> list[dict]:
  """The tuned methods of a model of ``size``: plain, NetAug and (tiny) regularised baselines.

  Returns:
    ``[{'name', 'kind': 'plain' | 'netaug', 'label_smoothing', 'adamw'}]`` in table order.

  Examples:
    >>> c = {'regularised': [('label smoothing 0.1', 0.1, False)], 'regularised_sizes': ['tiny']}
    >>> [m['name'] for m in methods_of(c, 'tiny')]
    ['plain', 'NetAug', 'plain + label smoothing 0.1']
    >>> [m['name'] for m in methods_of(c, 'large')]
    ['plain', 'NetAug']
  """
  out = [{'name': PLAIN, 'kind': 'plain', 'label_smoothing': 0.0, 'adamw': False},
         {'name': NETAUG, 'kind': 'netaug', 'label_smoothing': 0.0, 'adamw': False}]
  if size in tuple(config.get('regularised_sizes', ())):
    out += [{**b, 'name': f'{PLAIN} + {b["name"]}', 'kind': 'plain'}
            for b in online_baselines.regularised_of(config)]
  return out


def grid(config, size: str, method: Mapping[str, Any]) -> list[dict]:
  """The a-priori search grid of one method for a model of ``size``.

  Plain training and label smoothing search the learning rate; AdamW the
  learning rate × weight decay; NetAug the learning rate, and for the sizes in
  ``config.tuning.netaug_sizes`` also α × the augmentation factor (other
  sizes: ``config.alpha``, ``config.augment_factor``).

  Examples:
    >>> from experiments.configs import netaug as cfg
    >>> c = cfg.get_config('quick')
    >>> grid(c, 'tiny', {'kind': 'netaug', 'adamw': False})[0]
    {'learning_rate': 0.01, 'alpha': 1.0, 'augment_factor': 3.0}
  """
  t = config.tuning
  axes = {'learning_rate': tuple(float(v) for v in t.learning_rates)}
  if method['kind'] == 'netaug':
    tuned = size in tuple(t.netaug_sizes)
    axes['alpha'] = tuple(float(v) for v in t.alphas) if tuned else (float(config.alpha),)
    axes['augment_factor'] = (tuple(float(v) for v in t.augment_factors) if tuned
                              else (float(config.augment_factor),))
  elif method['adamw']:
    axes['weight_decay'] = tuple(float(v) for v in t.weight_decays)
  return tuning.grid_of(**axes)


def comparisons(records: Sequence[Mapping[str, Any]]) -> dict[str, stats.Comparison]:
  """The experiment's Holm family of paired test-accuracy comparisons, per model.

  Every other training of a model against its plain training, and NetAug
  against each of the model's regularised baselines.

  Returns:
    ``{'<model>: <training> vs <baseline>': Comparison}``, in family order.
  """
  family = []
  models_ = list(dict.fromkeys(r['model'] for r in records))
  for model in models_:
    trainings = list(dict.fromkeys(r['training'] for r in records if r['model'] == model))
    for training in trainings:
      if training != PLAIN:
        family.append((f'{model}: {training} vs {PLAIN}', common.paired(
            records, {'model': model, 'training': training},
            {'model': model, 'training': PLAIN}, 'test_accuracy')))
    for training in trainings:
      if training.startswith(f'{PLAIN} + '):
        family.append((f'{model}: {NETAUG} vs {training}', common.paired(
            records, {'model': model, 'training': NETAUG},
            {'model': model, 'training': training}, 'test_accuracy')))
  return {c.name: c for c in stats.compare(family)}


def status_of(tiny: Sequence[str], large: Sequence[str]) -> str:
  """The finding's status from the tiny and large models' NetAug-vs-plain verdicts.

  Examples:
    >>> status_of(['better', 'better'], ['no significant difference'])
    'Reproduced'
    >>> status_of(['better', 'worse'], ['worse'])
    'Partly reproduced'
    >>> status_of(['no significant difference'], ['no significant difference'])
    'Not reproduced'
  """
  no_large_help = all(v != stats.BETTER for v in large)
  if tiny and large and no_large_help and all(v == stats.BETTER for v in tiny):
    return 'Reproduced'
  if tiny and large and no_large_help and any(v == stats.BETTER for v in tiny):
    return 'Partly reproduced'
  return 'Not reproduced'


def sampling_of(config, kind: str) -> str:
  """The NetAug width sampling of a model kind: ``config.sampling``, a string or ``{kind: str}``.

  Examples:
    >>> c = {'sampling': {'mlp': 'switch', 'cnn1d': 'host'}}
    >>> sampling_of({'sampling': 'host'}, 'mlp'), sampling_of(c, 'mlp')
    ('host', 'switch')
  """
  s = config['sampling']
  return s if isinstance(s, str) else s[kind]


def _sampling_text(config) -> str:
  s = config.sampling
  if isinstance(s, str):
    return f'sampling={s!r}'
  return 'sampling ' + ', '.join(f'{v!r} for {k}' for k, v in dict(s).items())


def _digest(hparams: Mapping[str, Any]) -> str:
  return hashlib.sha1(json.dumps(hparams, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _slug(name: str) -> str:
  return ''.join(ch if ch.isalnum() else '_' for ch in name.lower()).strip('_')


# ----------------------------------------------------------------- training

def fit_and_evaluate(state: TrainState, step_fn: Callable, *, train_src, eval_sets: dict,
                     eval_step: Callable, export: Optional[Callable] = None, num_steps: int,
                     batch_size: int, seed: int, rng: jax.Array, workdir: Optional[str],
                     teacher_variables: Any = None, progress: bool = False,
                     desc: str = 'train') -> tuple[TrainState, dict, float, bool]:
  """Trains ``state`` with ``step_fn`` (resuming from ``workdir``) and evaluates it.

  Like :func:`kdjax.runs.train_and_evaluate`, but for a prebuilt state and
  step (NetAug). ``export(variables) -> variables`` maps the trained
  variables to those that ``eval_step`` evaluates.

  Returns:
    ``(state, {'<set>_accuracy': ..., '<set>_loss': ...}, seconds, restored)``;
    ``restored``: the run was restored from a complete checkpoint.
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
                       checkpoint_every=num_steps, log_every=num_steps,
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
    metrics[f'{name}_accuracy'] = float(ev['accuracy'])
    metrics[f'{name}_loss'] = float(ev['loss'])
  restored = result.resumed_from is not None and result.resumed_from >= num_steps
  return result.state, metrics, time.perf_counter() - t0, restored


class _Model:
  """One model spec's modules, forward functions, jitted initialisers and steps.

  Everything is cached per setting and shared by the tuning and evaluation
  runs: a TrainState's ``apply_fn`` and ``tx`` are static, so fresh closures
  per run would recompile every step.
  """

  def __init__(self, config, spec, sample):
    self.config, self.spec, self.sample = config, spec, sample
    if spec.kind not in ('mlp', 'cnn1d'):
      raise ValueError(f'Unknown model kind {spec.kind!r}; use mlp or cnn1d.')
    self.plain = self._module(None, 'base')
    self.forward = models.as_forward(self.plain)
    self.init = jax.jit(lambda rng: models.init_variables(self.plain, rng, sample))
    self.eval_step = jax.jit(steps.make_eval_step(self.plain))
    self.num_params = models.count_params(
        jax.eval_shape(self.init, jax.random.key(0))['params'])
    self.txs = online_baselines.Optimizers(config.num_steps)
    self._cache: dict[Any, Any] = {}

  def _module(self, augment_factor: Optional[float], init_fan: str):
    kwargs = dict(self.spec.kwargs)
    if self.spec.kind == 'mlp':
      if augment_factor is None:
        return models.MLP(hidden=tuple(kwargs['hidden']), num_classes=10)
      return models.NetAugMLP(hidden=tuple(kwargs['hidden']), num_classes=10,
                              max_multiplier=float(augment_factor), init_fan=init_fan)
    if augment_factor is None:
      return models.CNN1D(num_classes=10, channels=kwargs['channels'])
    return models.NetAugCNN1D(num_classes=10, channels=kwargs['channels'],
                              max_multiplier=float(augment_factor), init_fan=init_fan)

  def _cached(self, key, build):
    if key not in self._cache:
      self._cache[key] = build()
    return self._cache[key]

  def _wide(self, augment_factor: float, init_fan: str):
    """``(module, forward, init, export)`` of the NetAug model."""
    def build():
      wide = self._module(augment_factor, init_fan)
      init = jax.jit(lambda rng: models.init_variables(wide, rng, self.sample))
      export = jax.jit(lambda v: models.export_base(wide, v)[1])
      return wide, models.as_forward(wide), init, export
    return self._cached(('wide', float(augment_factor), init_fan), build)

  def build(self, method: Mapping[str, Any], setting: Mapping[str, Any], init_rng: jax.Array,
            init_fan: Optional[str] = None):
    """``(state, step, export)`` of one run."""
    tx = self.txs(setting)
    if method['kind'] == 'plain':
      ls = float(method['label_smoothing'])
      step = self._cached(('plain', ls), lambda: jax.jit(
          steps.make_train_step(label_smoothing=ls), donate_argnums=0))
      state = TrainState.create(apply_fn=self.forward, variables=self.init(init_rng), tx=tx)
      return state, step, None
    factor, alpha = float(setting['augment_factor']), float(setting['alpha'])
    init_fan = init_fan or self.config.init_fan
    wide, forward, init, export = self._wide(factor, init_fan)
    sampling = sampling_of(self.config, self.spec.kind)

    def make_step():
      step = schemes.make_netaug_step(wide, multipliers_of(factor), alpha=alpha,
                                      sampling=sampling, donate=True)
      return jax.jit(step, donate_argnums=0) if sampling == 'switch' else step
    step = self._cached(('netaug', factor, alpha, init_fan), make_step)
    state = TrainState.create(apply_fn=forward, variables=init(init_rng), tx=tx)
    return state, step, export


def _hparams(config, spec, method, setting, init_fan: str) -> dict:
  """What a run's result depends on (its workdir's hash)."""
  return {'model': spec.to_dict(), 'method': dict(method), 'setting': dict(setting),
          'init_fan': init_fan, 'steps': config.num_steps, 'batch': config.batch_size,
          'dataset': config.dataset, 'sampling': sampling_of(config, spec.kind)}


def _seed_keys(seed: int):
  init_rng, _, step_rng = jax.random.split(jax.random.key(seed), 3)
  return init_rng, step_rng


def run(config) -> list[dict]:
  """Tunes on validation, trains every model's chosen settings per seed; returns the table rows."""
  if config.fresh and os.path.isdir(config.workdir):
    shutil.rmtree(config.workdir)
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  t_start = time.perf_counter()
  dataset = DATASETS[config.dataset]
  data_dir = config.data_dir or None
  train_src = kdata.load(config.dataset, 'train', data_dir=data_dir)
  test_src = kdata.load(config.dataset, 'test', data_dir=data_dir)
  t = config.tuning
  fit_src, val_src = tuning.validation_sources(train_src, fraction=t.fraction,
                                               seed=t.split_seed)
  sample = np.asarray(train_src[0]['x'])[None]
  fit_kw = dict(num_steps=config.num_steps, batch_size=config.batch_size,
                progress=config.progress)
  built = {}
  for key in config.run_models:
    spec = config.models[key]
    if spec.kind == 'cnn1d' and sample.ndim != 2:
      raise ValueError(f'Model {key!r} is a NetAugCNN1D, which takes 1-D inputs; '
                       f'{dataset} inputs have shape {sample.shape[1:]}. Run MLPs only.')
    built[key] = _Model(config, spec, sample)

  # 1. Validation search with the tuning seed (not checkpointed: cheaper to retrain).
  searches, tuning_runs = {}, []  # tuning_runs: (training seconds, read back from the workdir)
  for key in config.run_models:
    spec, m = config.models[key], built[key]
    for method in methods_of(config, spec.size):
      def score(setting, method=method, m=m, spec=spec):
        # The score of a finished tuning run is kept in the workdir (a rerun reads it back).
        hparams = {**_hparams(config, spec, method, setting, config.init_fan), 'seed': t.seed,
                   'split': ['train_fit', t.fraction, t.split_seed]}
        path = os.path.join(config.workdir, 'tuning',
                            f'{_slug(spec.label)}-{_slug(method["name"])}-{_digest(hparams)}.json')
        if os.path.isfile(path):
          with open(path) as f:
            saved = json.load(f)
          tuning_runs.append((saved['seconds'], True))
          return saved['validation_accuracy']
        init_rng, step_rng = _seed_keys(t.seed)
        state, step, export = m.build(method, setting, init_rng)
        _, metrics, seconds, _ = fit_and_evaluate(
            state, step, train_src=fit_src, eval_sets={'validation': val_src},
            eval_step=m.eval_step, export=export, seed=t.seed, rng=step_rng, workdir=None,
            desc=f'{spec.label} {method["name"]} tuning', **fit_kw)
        acc = metrics['validation_accuracy']
        tuning_runs.append((seconds, False))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
          json.dump({'validation_accuracy': acc, 'seconds': seconds, 'hparams': hparams}, f,
                    default=str)
        print(f'tuning {spec.label:14s} {method["name"]:30s} {format_setting(setting)}: '
              f'val {acc:.3f} ({seconds:.1f}s)', flush=True)
        return acc
      searches[f'{spec.label}: {method["name"]}'] = tuning.tune(
          grid(config, spec.size, method), score)
  tuning_seconds = time.perf_counter() - t_start

  # 2. Evaluation: the chosen settings on the full train split, every seed, test once.
  records = []
  eval_sets = {'test': test_src, 'train': train_src}
  for key in config.run_models:
    spec, m = config.models[key], built[key]
    runs_ = [(method['name'], method, searches[f'{spec.label}: {method["name"]}']['chosen'],
              None) for method in methods_of(config, spec.size)]
    if spec.size in tuple(config.ablation_sizes):
      netaug = runs_[1]
      for label, overrides in config.ablations.items():
        runs_.append((f'{NETAUG}, {label}', netaug[1], netaug[2],
                      dict(overrides).get('init_fan')))
    for seed in config.seeds:
      init_rng, step_rng = _seed_keys(seed)
      for name, method, setting, init_fan in runs_:
        state, step, export = m.build(method, setting, init_rng, init_fan=init_fan)
        hparams = _hparams(config, spec, method, setting, init_fan or config.init_fan)
        workdir = os.path.join(config.workdir, key, _slug(name), f'seed{seed}-{_digest(hparams)}')
        _, metrics, seconds, restored = fit_and_evaluate(
            state, step, train_src=train_src, eval_sets=eval_sets, eval_step=m.eval_step,
            export=export, seed=seed, rng=step_rng, workdir=workdir,
            desc=f'{spec.label} {name} s{seed}', **fit_kw)
        records.append({'model': spec.label, 'size': spec.size, 'training': name,
                        'setting': format_setting(setting), 'seed': seed,
                        'params': m.num_params, 'seconds': seconds, 'resumed': restored,
                        **metrics})
        print(f'{spec.label:14s} {name:30s} seed {seed}: test '
              f'{metrics["test_accuracy"]:.3f} train {metrics["train_accuracy"]:.3f} '
              f'({seconds:.1f}s)', flush=True)

  # Paired differences vs plain per (model, seed).
  by_key = {(r['model'], r['training'], r['seed']): r for r in records}
  for r in records:
    other = by_key[(r['model'], PLAIN, r['seed'])]
    r['delta_test'] = r['test_accuracy'] - other['test_accuracy']
    r['delta_train'] = r['train_accuracy'] - other['train_accuracy']
  out = common.results_dir(config.results)
  common.save_records(records, os.path.join(out, 'records.json'))
  mode = config.get('mode', 'default')
  setup = common.save_setup(
      out, experiment='netaug', config=config,
      command='python -m experiments.run --config experiments/configs/netaug.py'
      + ('' if mode == 'default' else f':{mode}'),
      facts={'train_size': len(train_src), 'fit_size': len(fit_src),
             'validation_size': len(val_src), 'test_size': len(test_src),
             'tuning': searches, 'tuning_seconds': tuning_seconds,
             'tuning_run_seconds': sum(sec for sec, _ in tuning_runs),
             'tuning_runs_read_back': sum(cached for _, cached in tuning_runs),
             'total_seconds': time.perf_counter() - t_start})
  return report(common.load_results(out)[0], setup, out)


# ----------------------------------------------------------------- report

def report(records: list[dict], setup: dict, out: str) -> list[dict]:
  """Writes the table, plots and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  dataset = DATASETS[config.dataset]
  seeds = common.seeds_of(records)
  rows = common.aggregate(
      records, ['model', 'size', 'training', 'setting'],
      ['test_accuracy', 'train_accuracy', 'delta_test', 'delta_train', 'seconds'],
      percent=['test_accuracy', 'train_accuracy', 'delta_test', 'delta_train'])
  cmp = comparisons(records)
  verdicts = {}
  for row in rows:
    model, training = row['model'], row['training']
    c = cmp.get(f'{model}: {training} vs {PLAIN}')
    row['params'] = f'{_params(records, model):,}'
    row['chosen setting'] = row['setting']
    row['test accuracy'] = row['test_accuracy']
    row['train accuracy'] = row['train_accuracy']
    row['wall time / run (s)'] = f'{row["seconds_mean"]:.1f}'
    row.update(stats.columns(c, delta=DELTA))
    vs = stats.columns(cmp.get(f'{model}: {NETAUG} vs {training}') if training.startswith(
        f'{PLAIN} + ') else None, delta=VS)
    row.update(dict(zip(VS_COLUMNS, (vs[VS], vs['95% CI'], vs['Holm p'], vs['verdict']))))
    if training == NETAUG:
      verdicts[model] = (row['size'], row['delta_test_mean'], row['delta_train_mean'], c)

  main_rows = [r for r in rows if r['training'] in (PLAIN, NETAUG)]
  common.errorbar_plot(main_rows, x='model', series='training', metric='test_accuracy',
                       path=os.path.join(out, 'netaug.png'),
                       title=f'NetAug vs plain training on {dataset}\n(mean ± std over seeds)')
  common.errorbar_plot(main_rows, x='model', series='training', metric='train_accuracy',
                       path=os.path.join(out, 'netaug_train.png'), ylabel='train accuracy (%)',
                       title='Train accuracy (under- vs over-fitting)')
  extra = {r['model'] for r in rows if r['training'] not in (PLAIN, NETAUG)}
  if extra:
    common.errorbar_plot([r for r in rows if r['model'] in extra], x='model',
                         series='training', metric='test_accuracy',
                         path=os.path.join(out, 'netaug_ablations.png'),
                         title='Tiny models: NetAug, regularised baselines, other settings')
  tiny = [v[3].verdict for v in verdicts.values() if v[0] == 'tiny']
  large = [v[3].verdict for v in verdicts.values() if v[0] == 'large']
  status = status_of(tiny, large)
  summary = '; '.join(f'{model} ({size}): {stats.summary(c)}'
                      for model, (size, _, _, c) in verdicts.items())
  verdict = (f'{status} on our data (NetAug helps a model when its paired test difference '
             f'to plain training, each with its own validation-tuned setting, is "better"). '
             f'NetAug − plain test accuracy: {summary}.' + _versus_regularised(cmp, records)
             + _mechanism(verdicts))
  notes = (
      f'Setup: {dataset} ({facts["train_size"]} train / {facts["test_size"]} test), '
      f'{config.num_steps} Adam steps (cosine decay to 0), batch {config.batch_size}. '
      'NetAug: the loss L(W_base) + α·L([W_base, W_aug]), one augmented width sampled per step '
      f'({_sampling_text(config)}) from ×2, …, ×r of every hidden layer for augmentation '
      f'factor r (diversity r − 1), init_fan={config.init_fan!r}; weights shared with the base '
      '(the base is the leading slice). For the models whose NetAug α and r are not searched '
      f'(sizes other than {", ".join(config.tuning.netaug_sizes)}): α = {config.alpha:g}, '
      f'r = {config.augment_factor:g}. '
      + _regularised_text(config) + _ablation_text(config) +
      'The NetAug rows evaluate the exported base alone (a plain model of the baseline\'s '
      'architecture); "params" counts the deployed base model. "Δ test vs plain" is the paired '
      'difference to the plain row of the same model; "NetAug − this" the paired difference of '
      'the model\'s NetAug row to this row. Train accuracy is measured on the full training set '
      'after training. Accuracies: mean ± std over seeds. Every run of a seed shares the '
      'initialisation key and the data order. Wall time is per run, including one-off '
      'compilations, on a shared 2-core CPU.\n\n'
      + _tuning_text(config, facts) + common.comparison_lines(list(cmp.values())) + '\n\n'
      'Plots: `netaug.png` (test accuracy), `netaug_train.png` (train accuracy), '
      '`netaug_ablations.png` (the models with extra rows, all of them). Raw per-seed numbers: '
      f'`records.json`. Wall time of the whole run {facts["total_seconds"]:.0f} s, of which the '
      f'validation search {facts["tuning_seconds"]:.0f} s '
      f'({sum(bool(r.get("resumed")) for r in records)} of {len(records)} evaluation runs '
      'restored from complete checkpoints in the workdir).' + _read_back(facts)
      + (f'\n\n{config.notes}' if config.get('notes') else ''))
  common.write_results(
      config.results, rows, COLUMNS, title=f'NetAug: tiny vs large models on {dataset}',
      finding=FINDING, verdict=verdict, command=setup['command'], notes=notes, out_dir=out,
      dataset=dataset, seeds=seeds)
  return rows


def _read_back(facts) -> str:
  """The note on tuning runs whose scores were read back from an earlier launch's workdir."""
  n = facts.get('tuning_runs_read_back', 0)
  if not n:
    return ''
  total = sum(len(t['grid']) for t in facts['tuning'].values())
  return (f' {n} of the {total} validation runs were read back from the workdir, where an '
          'earlier launch with the same settings (the first seeds of this table) had saved '
          f'their scores; their training took {facts["tuning_run_seconds"]:.0f} s in all.')


def _versus_regularised(cmp: Mapping[str, stats.Comparison], records) -> str:
  """The verdict sentences on the tiny models' regularised baselines."""
  parts = []
  for model in dict.fromkeys(r['model'] for r in records):
    regs = list(dict.fromkeys(r['training'] for r in records if r['model'] == model
                              and r['training'].startswith(f'{PLAIN} + ')))
    if regs:
      parts.append(f'{model}: ' + '; '.join(
          f'NetAug − ({b}) {stats.summary(cmp[f"{model}: {NETAUG} vs {b}"])}, '
          f'({b}) − plain {stats.summary(cmp[f"{model}: {b} vs {PLAIN}"])}' for b in regs))
  if not parts:
    return ''
  return (' Against the regularised baselines of the tiny models (the paper\'s argument: tiny '
          'models need capacity, not regularisation): ' + ' | '.join(parts) + '.')


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
    else:
      notes.append(f'{model}: neither test nor train accuracy rose (train {100 * dtr:+.1f} pp)')
  return (' Mechanism (mean train accuracy, NetAug − plain): ' + '; '.join(notes) + '.'
          ) if notes else ''


def _regularised_text(config) -> str:
  regs = online_baselines.regularised_of(config)
  sizes = tuple(config.get('regularised_sizes', ()))
  if not regs or not sizes:
    return ''
  return ('Regularised baselines (the plain model, cross-entropy; models of size '
          f'{", ".join(sizes)}): ' + '; '.join(
              f'"{PLAIN} + {b["name"]}": ' + ', '.join(
                  ([f'label smoothing {b["label_smoothing"]:g}'] if b['label_smoothing'] else [])
                  + (['decoupled weight decay (`optax.adamw`, the same cosine schedule; decay '
                      'searched below)'] if b['adamw'] else [])) for b in regs) + '. ')


def _ablation_text(config) -> str:
  if not config.get('ablations') or not tuple(config.get('ablation_sizes', ())):
    return ''
  return ('Extra NetAug settings on the models of size '
          f'{", ".join(config.ablation_sizes)} (rows "NetAug, ..."; not tuned: the NetAug row\'s '
          'chosen setting with ' + '; '.join(
              f'{label}: ' + ', '.join(f'{k}={v}' for k, v in dict(o).items())
              for label, o in config.ablations.items()) + '). ')


def _tuning_text(config, facts) -> str:
  t = config.tuning
  edges = tuning.edge_choices(facts['tuning'])
  edge_note = ('**At the edge of the grid:** ' + '; '.join(edges) + ' (a wider grid might move '
               'these choices).' if edges else 'No chosen value lies at an end of its grid.')
  narrowed = dict(t.get('narrowed_from') or {})
  changed = ''
  if narrowed:
    changed = ('Design change after a launch: a first launch of this run searched the wider '
               'grids ' + '; '.join(f'{axis} {tuple(float(v) for v in values)}'
                                    for axis, values in narrowed.items())
               + '; it was stopped for its runtime on the shared CPU before its validation '
               'search finished (no test run), and the grids were narrowed to the ones above '
               'for the runtime alone.')
  return (
      tuning.split_sentence(t, facts)
      + '; for every model and training method each setting of its grid '
      f'(fixed before the runs) trained on the other {facts["fit_size"]} with seed {t.seed} '
      '(not an evaluation seed) and was scored by validation accuracy (NetAug: of the exported '
      'base); the best (ties: the first) was then trained on the full training split for every '
      'seed and evaluated on test once. Learning rates searched: '
      f'{", ".join(f"{v:g}" for v in t.learning_rates)}; AdamW decays: '
      f'{", ".join(f"{v:g}" for v in t.weight_decays)}; NetAug α × augmentation factor '
      f'(sizes {", ".join(t.netaug_sizes)}): {", ".join(f"{v:g}" for v in t.alphas)} × '
      f'{", ".join(f"{v:g}" for v in t.augment_factors)}. NetAug\'s searches are larger than '
      'plain training\'s where α and r are searched too. ' + edge_note
      + (f' {changed}' if changed else '') + ' Validation accuracy per setting:\n\n'
      + tuning.tuning_lines(facts['tuning']) + '\n\n')


def _params(records, model) -> int:
  return next(r['params'] for r in records if r['model'] == model)
