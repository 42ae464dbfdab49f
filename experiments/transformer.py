"""Transformer distillation (MobileBERT-style) on token sequences: does layer transfer help?

Per seed, a 4-block transformer teacher (by default width 128, 4 heads) is
trained with cross-entropy, then a thin student of the same depth and heads
(by default width 32) is
trained four ways with the same number of updates, the same initialisation
and the same data order:

* ``scratch``: cross-entropy only;
* ``logit KD``: ``0.5·CE + 0.5·τ²·KL`` (τ = 4);
* ``+attn+hidden``: logit KD plus, for every layer ``l``, the per-head
  attention KL and the hidden-state MSE through a trained linear projection
  (MobileBERT's transfer terms, all layers at once);
* ``progressive``: :func:`kdjax.schemes.progressive_transfer`, one stage per
  layer (that layer's transfer terms, lower layers frozen), then logit KD on
  all parameters for the rest of the budget.

Each student is compared with scratch, paired by seed (Holm-corrected). The
test-set attention KL to the teacher (mean over layers and heads) shows
whether the attention was transferred. The inputs are token sequences: an
MNIST-1D signal as 10 patches of 4 steps, or (``config.dataset = 'digits'``)
an 8×8 digit as 8 row tokens of 8 pixels (:func:`kdjax.models.tokens_of`).
Usable from a notebook::

    from experiments import transformer
    from experiments.configs import transformer as cfg
    rows = transformer.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments import stats
from experiments.dml import fresh_workdir
from experiments.dml import init_key
from experiments.dml import jit_init
from experiments.dml import json_records
from experiments.dml import run_dir
from experiments.dml import train_loop
from experiments.takd import load_data
from kdjax import data as kdata
from kdjax import losses
from kdjax import models
from kdjax import runs
from kdjax import schemes
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


STUDENTS = ('logit KD', '+attn+hidden', 'progressive')
MODELS = ('teacher', 'scratch') + STUDENTS
DELTA = 'Δ vs scratch (paired)'
COLUMNS = ('model', 'test accuracy', DELTA, *stats.COLUMNS, 'attention KL to teacher',
           'test NLL', 'params', 'seeds')
FINDING = ('MobileBERT (Sun et al. 2020) / TinyBERT (Jiao et al. 2020): a thin student of the '
           "teacher's depth learns better with layer-wise attention-distribution and "
           'hidden-state transfer (all at once, or progressively layer by layer) than from '
           'scratch or from the logits alone.')


def _arrays(src) -> tuple[np.ndarray, np.ndarray]:
  batch = src.read_batch(np.arange(len(src)))
  return np.asarray(batch['x']), np.asarray(batch['label'])


def evaluate(forward, variables, x: np.ndarray, y: np.ndarray, depth: int,
             teacher_attention=None) -> dict:
  """Accuracy, NLL, each layer's attention maps, and the attention KL to the teacher's."""
  out = jax.jit(lambda v, xx: forward(v, xx, train=False))(variables, x)
  logits = np.asarray(out.logits)
  att = [out.features[f'attention{l}'] for l in range(1, depth + 1)]
  result = {'accuracy': float(np.mean(np.argmax(logits, -1) == y)),
            'nll': float(np.mean(losses.cross_entropy(out.logits, jnp.asarray(y)))),
            'attention': att}
  if teacher_attention is not None:
    result['attention_kl'] = float(np.mean([
        np.mean(losses.attention_kl(s, t)) for s, t in zip(att, teacher_attention)]))
  return result


def _cached(path: str | None):
  if path and os.path.isfile(os.path.join(path, 'record.json')):
    with open(os.path.join(path, 'record.json')) as f:
      return json.load(f)
  return None


def _store(path: str | None, record: Mapping[str, Any]) -> None:
  if path:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, 'record.json'), 'w') as f:
      json.dump(record, f)


def run(config) -> list[dict]:
  """Trains the teacher and the four students per seed; writes results/<config.results>/."""
  fresh_workdir(config)
  train_src, test_src = load_data(config)
  x_test, y_test = _arrays(test_src)
  sample = train_src.read_batch(np.arange(min(config.batch_size, len(train_src))))['x']
  teacher = models.create('transformer_teacher', 10, patch=config.patch, **dict(config.teacher))
  student = models.create('transformer_student', 10, patch=config.patch, **dict(config.student))
  depth = student.depth
  t_fwd, s_fwd = models.linen_forward(teacher), models.linen_forward(student)
  t_init, s_init = jit_init(teacher, sample), jit_init(student, sample)
  kd_terms = (steps.task_ce(config.ce_weight),
              steps.soft_kd(config.kd_weight, temperature=config.temperature))
  objectives = {
      'scratch': (steps.task_ce(1.0),),
      'logit KD': kd_terms,
      '+attn+hidden': kd_terms + steps.transformer_layer_terms(
          range(1, depth + 1), attention_weight=config.attention_weight,
          hidden_weight=config.hidden_weight)}
  step_fns = {name: jax.jit(steps.make_distill_step(
      terms, None if name == 'scratch' else t_fwd, teacher_metrics=False), donate_argnums=0)
      for name, terms in objectives.items()}
  teacher_step = jax.jit(steps.make_distill_step((steps.task_ce(1.0),)), donate_argnums=0)
  s_tx = runs.default_optimizer(config.student_lr, config.num_steps)
  final_steps = config.num_steps - depth * config.stage_steps
  if final_steps < 0:
    raise ValueError(f'`num_steps` {config.num_steps} < depth × `stage_steps`.')
  hp = {k: config[k] for k in ('num_steps', 'batch_size', 'student_lr', 'data_samples',
                               'patch', 'ce_weight', 'kd_weight', 'temperature',
                               'attention_weight', 'hidden_weight', 'stage_steps', 'dataset')}
  records, timings, maps = [], [], {}
  for seed in config.seeds:
    key = init_key(seed)
    t_hp = {k: config[k] for k in ('teacher_steps', 'teacher_lr', 'batch_size',
                                   'data_samples', 'patch', 'dataset')}
    t_state = TrainState.create(apply_fn=t_fwd, variables=t_init(key),
                                tx=runs.default_optimizer(config.teacher_lr,
                                                          config.teacher_steps))
    t_fit = train_loop(t_state, teacher_step, train_src, num_steps=config.teacher_steps,
                       batch_size=config.batch_size, seed=seed,
                       workdir=run_dir(config, seed, 'teacher', {**t_hp, **config.teacher}),
                       progress=config.progress, desc=f'teacher seed {seed}')
    t_vars = t_fit.state.variables
    t_eval = evaluate(t_fwd, t_vars, x_test, y_test, depth)
    timings.append(t_fit.seconds)
    rows = {'teacher': (t_eval, t_fit.seconds, t_fit.resumed_from is not None,
                        models.count_params(t_vars['params']))}
    s_vars = s_init(jax.random.fold_in(key, 1))
    s_sample = s_fwd(s_vars, sample, train=False)
    t_sample = t_fwd(t_vars, sample, train=False)
    for name in ('scratch',) + STUDENTS:
      path = run_dir(config, seed, f'student_{name}', {**hp, 'student': config.student,
                                                       'teacher': config.teacher})
      cached = _cached(path)
      if cached is not None:
        records.append(cached)
        continue
      if name == 'progressive':
        result = schemes.progressive_transfer(
            s_fwd, s_vars, t_fwd, t_vars,
            lambda i: kdata.training_data(train_src, batch_size=config.batch_size,
                                          seed=1000 * seed + i),
            num_layers=depth, stage_steps=config.stage_steps, final_steps=final_steps,
            optimizer=lambda n: runs.default_optimizer(config.student_lr, n),
            rng=jax.random.key(seed), sample_x=sample, final_terms=kd_terms,
            attention_weight=config.attention_weight, hidden_weight=config.hidden_weight,
            progress=config.progress, log_every=max(config.stage_steps, 1))
        variables, seconds = result.variables, float(sum(s.seconds for s in result.stages))
      else:
        init = steps.init_terms(objectives[name], s_sample, jax.random.fold_in(key, 2), t_sample)
        state = TrainState.create(apply_fn=s_fwd, variables=s_vars, tx=s_tx, **init)
        fit = train.fit(state, step_fns[name],
                        kdata.training_data(train_src, batch_size=config.batch_size, seed=seed),
                        num_steps=config.num_steps, rng=jax.random.key(seed),
                        teacher_variables=None if name == 'scratch' else t_vars,
                        log_every=config.num_steps, progress=config.progress,
                        desc=f'{name} seed {seed}')
        variables, seconds = fit.state.variables, fit.seconds
      ev = evaluate(s_fwd, variables, x_test, y_test, depth, t_eval['attention'])
      record = {'seed': seed, 'model': name, 'accuracy': ev['accuracy'], 'nll': ev['nll'],
                'attention_kl': ev['attention_kl'], 'seconds': seconds, 'resumed': False,
                'params': models.count_params(variables['params'])}
      if seed == config.seeds[0]:
        record['attention_example'] = np.asarray(
            jnp.stack(ev['attention'])[:, 0]).round(4).tolist()  # [layers, heads, L, L]
      _store(path, {**record, 'resumed': True})
      records.append(record)
      timings.append(seconds)
    t_rec = {'seed': seed, 'model': 'teacher', 'accuracy': t_eval['accuracy'],
             'nll': t_eval['nll'], 'attention_kl': 0.0, 'seconds': t_fit.seconds,
             'resumed': t_fit.resumed_from is not None,
             'params': rows['teacher'][3]}
    if seed == config.seeds[0]:
      t_rec['attention_example'] = np.asarray(
          jnp.stack(t_eval['attention'])[:, 0]).round(4).tolist()
    records.append(t_rec)
  del maps
  out_dir = common.results_dir(config.results)
  common.save_records(json_records(records), os.path.join(out_dir, 'records.json'))
  setup = common.save_setup(
      out_dir, experiment='transformer', config=config,
      command='python -m experiments.run --config experiments/configs/transformer.py'
      + _mode_suffix(config),
      facts={'train_size': len(train_src), 'test_size': len(test_src),
             'train_seconds': float(sum(timings)), 'tokens': int(t_sample.features[
                 'hidden0'].shape[1]), 'token_size': int(
                     models.tokens_of(sample, config.patch).shape[-1]),
             'test_label_example': int(y_test[0])})
  return report(common.load_results(out_dir)[0], setup, out_dir)


def _mode_suffix(config) -> str:
  """``''`` for the default run, else ``':<mode>'`` (configs without ``mode``: by results)."""
  mode = config.get('mode') or ('default' if config.results == 'transformer' else 'quick')
  return '' if mode == 'default' else f':{mode}'


DATA_NAMES = {'mnist1d': 'MNIST-1D', 'digits': 'digits'}


def _tokens_text(config, facts) -> str:
  """How an input becomes tokens, for the setup notes."""
  if config.dataset == 'digits':
    return (f'each 8×8 image read as {facts["tokens"]} row tokens of '
            f'{facts["token_size"]} pixels')
  return f'each signal cut into {facts["tokens"]} tokens of {config.patch} steps'


def plot_attention(records, path: str, layer: int) -> None:
  """Teacher vs each student: head-by-head attention maps of one test example at ``layer``."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  ex = {r['model']: np.asarray(r['attention_example']) for r in records
        if r.get('attention_example') is not None}
  names = [m for m in MODELS if m in ex]
  heads = ex[names[0]].shape[1]
  fig, axes = plt.subplots(len(names), heads, figsize=(1.8 * heads, 1.8 * len(names)),
                           squeeze=False)
  for i, name in enumerate(names):
    for h in range(heads):
      ax = axes[i][h]
      ax.imshow(ex[name][layer - 1, h], vmin=0.0, vmax=1.0, cmap='viridis')
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(f'head {h + 1}', fontsize=8)
      if h == 0:
        ax.set_ylabel(name, fontsize=8)
  fig.suptitle(f'Layer {layer} attention (query rows × key columns), test example 0', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plots and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  data = DATA_NAMES.get(config.dataset, config.dataset)
  cmp = common.versus_scratch(records, STUDENTS, {'accuracy': 'accuracy'})
  kl_cmp = {m: stats.compare([(m, common.paired(records, {'model': m}, {'model': 'scratch'},
                                                'attention_kl'))])[0] for m in STUDENTS}
  agg = common.aggregate(records, ['model'], ['accuracy', 'nll', 'attention_kl'],
                         percent=['accuracy'])
  agg = sorted(agg, key=lambda r: MODELS.index(r['model']))
  params = {r['model']: r['params'] for r in records}
  rows = []
  for r in agg:
    c = cmp.get(f"{r['model']} vs scratch, accuracy")
    kl = f"{r['attention_kl_mean']:.3f} ± {r['attention_kl_std']:.3f}"
    rows.append({**r, 'test accuracy': r['accuracy'], **stats.columns(c, delta=DELTA),
                 'attention KL to teacher': '—' if r['model'] == 'teacher' else kl,
                 'test NLL': r['nll'], 'params': params[r['model']]})
  common.errorbar_plot([r for r in agg], x='model', metric='accuracy',
                       path=os.path.join(out_dir, 'transformer_accuracy.png'),
                       title=f'Transformer KD on {data}: test accuracy (mean ± std)',
                       xlabel='model')
  depth = int(config.student['depth'])
  plot_attention(records, os.path.join(out_dir, 'transformer_attention.png'), layer=depth)
  plot_attention(records, os.path.join(out_dir, 'transformer_attention_layer1.png'), layer=1)
  verdict = common.reproduced_versus_scratch(cmp, STUDENTS, 'accuracy')
  kl_means = {r['model']: r['attention_kl_mean'] for r in agg}
  kl_line = ('Attention KL to the teacher on the test set (mean over layers and heads): '
             + ', '.join(f'{m} {kl_means[m]:.3f}' for m in ('scratch',) + STUDENTS)
             + '; lower than scratch for '
             + (', '.join(m for m in STUDENTS if kl_cmp[m].mean < 0 and kl_cmp[m].high < 0)
                or 'none') + ' (paired 95% CI below 0).')
  t, s = config.teacher, config.student
  final = int(config.num_steps) - depth * int(config.stage_steps)
  notes = (
      f'Setup: {config.dataset} ({facts["train_size"]} train / {facts["test_size"]} test), '
      f'{_tokens_text(config, facts)}. '
      f'`kdjax.models.Transformer` (pre-LN, learned positions, mean pool): teacher width '
      f'{t["width"]}, {t["depth"]} blocks, {t["heads"]} heads ({params["teacher"]} params), '
      f'{config.teacher_steps} steps at lr {config.teacher_lr:g}; student width {s["width"]}, '
      f'{s["depth"]} blocks, {s["heads"]} heads ({params["scratch"]} params). Every student: '
      f'Adam with cosine decay from {config.student_lr:g}, {config.num_steps} updates, batch '
      f'{config.batch_size}, the same initialisation and data order per seed. logit KD = '
      f'{config.ce_weight:g}·CE + {config.kd_weight:g}·τ²·KL (τ = {config.temperature:g}). '
      f'+attn+hidden adds, for every layer, `attention_distribution` (weight '
      f'{config.attention_weight:g}: per-head KL(teacher ‖ student) of the attention rows) '
      f'and `hidden_transfer` (weight {config.hidden_weight:g}: MSE of a trained linear map of '
      'the student\'s block output to the teacher\'s). progressive: '
      f'`kdjax.schemes.progressive_transfer`, {depth} stages of {config.stage_steps} updates '
      '(layer l\'s two terms; only block l, plus the embeddings in stage 1, is trained), then '
      f'{final} updates of logit KD on all parameters: the same {config.num_steps} updates in '
      'total. Accuracies: mean ± std over seeds.\n\n'
      + (config.get('notes') + '\n\n' if config.get('notes') else '')
      + kl_line + '\n\n'
      + common.comparison_lines(list(cmp.values())) + '\n\n'
      'Plots: `transformer_accuracy.png` (test accuracy), `transformer_attention.png` and '
      '`transformer_attention_layer1.png` (the last and first layers\' attention maps of '
      f'test example 0, seed {common.seeds_of(records)[0]}, teacher vs students, one column '
      f'per head). Total training time {facts["train_seconds"]:.0f} s.')
  common.write_results(
      config.results, rows, COLUMNS, title='Transformer distillation (MobileBERT-style, '
      f'{data} tokens)', finding=FINDING, verdict=verdict + ' ' + kl_line,
      command=setup['command'], notes=notes, out_dir=out_dir, dataset=f'{config.dataset} '
      'as token sequences', seeds=common.seeds_of(records))
  return rows
