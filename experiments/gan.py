"""GAN feature distillation on 8x8 digits: does a distilled student generator beat a lone one?

Per seed, a class-conditional WGAN-GP teacher generator
(:func:`kdjax.models.gan_generator_teacher`, width 32) is trained against a
projection critic on the scikit-learn digits train split, then a student
generator of a quarter of its width is trained two ways, with the same
initialisation, data order and number of updates:

* ``student alone``: the same WGAN-GP game from scratch (fresh critic, the
  initialisation the teacher's critic started from);
* ``student distilled``: GAN compression's terms (Li et al. 2020; Aguinaldo
  et al. 2019): L1 to the teacher's image for the same noise and label,
  intermediate feature matching through 1x1 adapters, and the adversarial
  term against a critic initialised from the teacher's and fine-tuned
  (:func:`kdjax.gan.make_gan_distill_step`).

The evaluation space is a small digits classifier (a plain CNN trained once
on the train split), FID's formula in its embedding (a stand-in for the
Inception network): the Fréchet distance of each generator's samples to the
real test digits (lower is better), the classifier's accuracy on the
generated digits of each class (conditional accuracy), and the mean L1
distance to the teacher's image for the same noise and label. Distilled vs
alone is compared paired by seed (Holm-corrected). Usable from a notebook::

    from experiments import gan
    from experiments.configs import gan as cfg
    rows = gan.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from experiments import stats
from experiments.dml import fresh_workdir
from experiments.dml import init_key
from experiments.dml import jit_init
from experiments.dml import json_records
from experiments.dml import run_dir
from experiments.dml import train_loop
from experiments.takd import load_data
from experiments.transformer import _cached
from experiments.transformer import _store
from kdjax import checkpoint
from kdjax import data as kdata
from kdjax import gan
from kdjax import models
from kdjax import steps
from kdjax import train
from kdjax._adversarial import AdversarialState
from kdjax.state import TrainState


STUDENTS = ('student distilled',)
MODELS = ('real (train split)', 'teacher', 'student alone') + STUDENTS
DELTA = 'Δ FD vs alone (paired)'
COLUMNS = ('model', 'Fréchet distance to test digits', DELTA, *stats.COLUMNS,
           'conditional accuracy', 'Δ cond. acc. (paired)', 'cond. acc. verdict',
           'L1 to teacher', 'Δ L1 to teacher (paired)', 'L1 verdict', 'params', 'seeds')
FINDING = ('GAN compression (Li et al. 2020) / Compressing GANs with KD (Aguinaldo et al. '
           "2019): a small student generator trained to match the teacher's images and "
           'intermediate features (plus the adversarial loss against a critic initialised from '
           "the teacher's) produces better samples than the same student trained as a GAN "
           'alone.')
METRICS = (('Fréchet distance', 'frechet', True), ('conditional accuracy', 'cond_accuracy', False),
           ('L1 to teacher', 'teacher_l1', True))  # (label, record key, lower is better)


# --------------------------------------------------------------------- data

def _raw_images(src) -> tuple[np.ndarray, np.ndarray]:
  """A digits source's images back in ``[0, 1]`` (the generators' range) and labels."""
  arrays = src.arrays()
  meta = src.info
  x = arrays['x'] * np.asarray(meta.std, np.float32) + np.asarray(meta.mean, np.float32)
  return np.clip(x, 0.0, 1.0).astype(np.float32), arrays['label'].astype(np.int32)


def image_source(images: np.ndarray, labels: np.ndarray) -> list[dict]:
  """``[{'x': [8, 8, 1] in [0, 1], 'label', 'id'}]``: the real images the GAN steps read."""
  return [{'x': images[i], 'label': np.int32(labels[i]), 'id': np.int32(i)}
          for i in range(len(labels))]


def eval_labels(per_class: int, num_classes: int = 10) -> np.ndarray:
  """``[num_classes · per_class]`` labels, ``per_class`` of each class in order."""
  return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


# --------------------------------------------------------------- evaluation

def make_featurizer(forward, variables, meta):
  """``images [N, 8, 8, 1] in [0, 1] -> (embedding [N, D], logits [N, 10])`` of the classifier."""
  mean, std = np.asarray(meta.mean, np.float32), np.asarray(meta.std, np.float32)

  @jax.jit
  def features(images):
    out = forward(variables, (images - mean) / std, train=False)
    return out.features['embedding'], out.logits

  def run(images):
    emb, logits = features(jnp.asarray(images))
    return np.asarray(emb, np.float64), np.asarray(logits, np.float64)

  return run


def evaluate_generator(images: np.ndarray, labels: np.ndarray, featurize, real_stats,
                       teacher_images: Optional[np.ndarray]) -> dict:
  """Fréchet distance to the real statistics, conditional accuracy, L1 to the teacher."""
  emb, logits = featurize(images)
  out = {'frechet': gan.frechet_distance(*gan.gaussian_statistics(emb), *real_stats),
         'cond_accuracy': gan.conditional_accuracy(logits, labels)['accuracy']}
  out['per_class_accuracy'] = gan.conditional_accuracy(logits, labels)['per_class'].tolist()
  out['teacher_l1'] = (float(np.mean(np.abs(images - teacher_images)))
                       if teacher_images is not None else 0.0)
  return out


# ----------------------------------------------------------------- training

def _players(generator, g_vars, critic, c_vars, config, aux=None, *,
             teacher: bool = False) -> AdversarialState:
  """``AdversarialState`` of a generator and a critic, each with its own Adam (WGAN-GP's β₂)."""
  lr, b1 = (config.teacher_lr, config.teacher_b1) if teacher else (config.lr, config.b1)
  tx = lambda: optax.adam(lr, b1=b1, b2=config.b2)  # noqa: E731
  return AdversarialState(
      student=TrainState.create(apply_fn=models.linen_forward(generator), variables=g_vars,
                                tx=tx(), aux_params=aux),
      critic=TrainState.create(apply_fn=models.linen_forward(critic), variables=c_vars,
                               tx=tx()))


def _fit(state, step_fn, source, *, num_steps, config, seed, workdir, teacher_variables=None,
         desc='train') -> train.FitResult:
  """:func:`kdjax.train.fit` of a GAN step, checkpointed (and resumed) under ``workdir``."""
  ckpt = None if workdir is None else checkpoint.Checkpointer(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), max_to_keep=1)
  try:
    return train.fit(state, step_fn, kdata.training_data(source, batch_size=config.batch_size,
                                                         seed=seed),
                     num_steps=num_steps, rng=jax.random.key(seed),
                     teacher_variables=teacher_variables, checkpointer=ckpt,
                     checkpoint_every=num_steps, log_every=max(num_steps // 4, 1),
                     progress=config.progress, desc=desc, compiled=config.compiled)
  finally:
    if ckpt is not None:
      ckpt.close()


def train_classifier(config, train_src):
  """The Fréchet feature space: a plain CNN trained with cross-entropy on the train split."""
  model = models.create(config.classifier_model, 10, **dict(config.classifier))
  forward = models.linen_forward(model)
  sample = train_src.read_batch(np.arange(config.batch_size))['x']
  variables = jit_init(model, sample)(init_key(config.classifier_seed))
  state = TrainState.create(apply_fn=forward, variables=variables,
                            tx=optax.adam(optax.cosine_decay_schedule(
                                config.classifier_lr, config.classifier_steps)))
  hp = {k: config[k] for k in ('classifier_model', 'classifier_steps', 'classifier_lr',
                               'classifier_seed', 'batch_size', 'data_samples')}
  fit = train_loop(state, jax.jit(steps.make_distill_step((steps.task_ce(1.0),))), train_src,
                   num_steps=config.classifier_steps, batch_size=config.batch_size,
                   seed=config.classifier_seed,
                   workdir=run_dir(config, config.classifier_seed, 'classifier',
                                   {**hp, **config.classifier}),
                   progress=config.progress, desc='classifier')
  return forward, fit.state.variables, fit.seconds, models.count_params(
      fit.state.variables['params'])


def run(config) -> list[dict]:
  """Trains the classifier, then per seed the teacher GAN and both students; writes results."""
  fresh_workdir(config)
  train_src, test_src = load_data(config)
  x_train, y_train = _raw_images(train_src)
  x_test, y_test = _raw_images(test_src)
  source = image_source(x_train, y_train)
  c_fwd, c_vars, c_seconds, c_params = train_classifier(config, train_src)
  featurize = make_featurizer(c_fwd, c_vars, train_src.info)
  test_emb, test_logits = featurize(x_test)
  real_stats = gan.gaussian_statistics(test_emb)
  train_emb, _ = featurize(x_train)
  real_floor = gan.frechet_distance(*gan.gaussian_statistics(train_emb), *real_stats)
  classifier_accuracy = float(np.mean(test_logits.argmax(-1) == y_test))

  z = config.noise_dim
  teacher = models.create('gan_generator_teacher', 10, **dict(config.teacher))
  student = models.create('gan_generator_student', 10, **dict(config.student))
  critic = models.create('gan_critic', 10, **dict(config.critic))
  labels = eval_labels(config.eval_per_class)
  sample_inputs = gan.generator_inputs(jnp.asarray(y_train[:config.batch_size]),
                                       jax.random.key(0), z)
  g_init = {'teacher': jit_init(teacher, sample_inputs),
            'student': jit_init(student, sample_inputs)}
  c_init = jit_init(critic, {'image': jnp.asarray(x_train[:config.batch_size]),
                             'label': jnp.asarray(y_train[:config.batch_size])})
  gan_kw = dict(noise_dim=z, gp_weight=config.gp_weight, critic_steps=config.critic_steps)
  gan_step = jax.jit(gan.make_gan_step(**gan_kw), donate_argnums=0)
  distill_step = jax.jit(gan.make_gan_distill_step(
      teacher, output_weight=config.output_weight, feature_weight=config.feature_weight,
      adversarial_weight=config.adversarial_weight, output_loss=config.output_loss,
      features=tuple(config.features), **gan_kw), donate_argnums=0)
  generate = {name: jax.jit(lambda v, y, k, m=m: gan.generate(m, v, y, k, noise_dim=z))
              for name, m in (('teacher', teacher), ('student', student))}
  hp = {k: config[k] for k in ('num_steps', 'batch_size', 'lr', 'b1', 'b2', 'noise_dim',
                               'gp_weight', 'critic_steps', 'data_samples')}
  teacher_hp = {k: config[k] for k in ('teacher_steps', 'teacher_lr', 'teacher_b1')}
  records, timings = [], [c_seconds]
  for seed in config.seeds:
    key = init_key(seed)
    c_vars0 = c_init(jax.random.fold_in(key, 2))
    t_state = _players(teacher, g_init['teacher'](jax.random.fold_in(key, 0)), critic, c_vars0,
                       config, teacher=True)
    t_fit = _fit(t_state, gan_step, source, num_steps=config.teacher_steps, config=config,
                 seed=seed, workdir=run_dir(config, seed, 'teacher', {
                     **hp, **teacher_hp, **config.teacher,
                     'critic': config.critic}), desc=f'teacher seed {seed}')
    timings.append(t_fit.seconds)
    t_vars, t_critic = t_fit.state.student.variables, t_fit.state.critic.variables
    eval_key = jax.random.key(10_000 + seed)  # one noise draw shared by every generator
    t_images = np.asarray(generate['teacher'](t_vars, labels, eval_key))
    t_eval = evaluate_generator(t_images, labels, featurize, real_stats, None)
    records.append({'seed': seed, 'model': 'teacher', **t_eval, 'seconds': t_fit.seconds,
                    'resumed': t_fit.resumed_from is not None,
                    'params': models.count_params(t_vars['params']),
                    **({'samples': _grid(t_images, config)} if seed == config.seeds[0] else {})})
    s_vars = g_init['student'](jax.random.fold_in(key, 1))
    for name in ('student alone',) + STUDENTS:
      path = run_dir(config, seed, name.replace(' ', '_'), {
          **hp, **teacher_hp, 'teacher': config.teacher,
          'student': config.student, 'critic': config.critic,
          **({k: config[k] for k in ('output_weight', 'feature_weight', 'adversarial_weight',
                                     'output_loss', 'features')} if name in STUDENTS else {})})
      cached = _cached(path)
      if cached is not None:
        records.append(cached)
        continue
      if name == 'student alone':
        state = _players(student, s_vars, critic, c_vars0, config)
        fit = _fit(state, gan_step, source, num_steps=config.num_steps, config=config,
                   seed=seed, workdir=None, desc=f'{name} seed {seed}')
      else:
        inputs = gan.generator_inputs(jnp.asarray(y_train[:8]), jax.random.key(0), z)
        aux = gan.init_feature_adapters(
            models.linen_forward(student)(s_vars, inputs, train=False),
            models.linen_forward(teacher)(t_vars, inputs, train=False),
            jax.random.fold_in(key, 3), features=tuple(config.features))
        state = _players(student, s_vars, critic, t_critic, config, aux=aux)
        fit = _fit(state, distill_step, source, num_steps=config.num_steps, config=config,
                   seed=seed, workdir=None, teacher_variables=t_vars,
                   desc=f'{name} seed {seed}')
      g_vars = fit.state.student.variables
      images = np.asarray(generate['student'](g_vars, labels, eval_key))
      record = {'seed': seed, 'model': name,
                **evaluate_generator(images, labels, featurize, real_stats, t_images),
                'seconds': fit.seconds, 'resumed': False,
                'params': models.count_params(g_vars['params']),
                'final_metrics': {k: float(v) for k, v in fit.history[-1].items()
                                  if isinstance(v, (int, float))} if fit.history else {}}
      if seed == config.seeds[0]:
        record['samples'] = _grid(images, config)
      _store(path, {**record, 'resumed': True})
      records.append(record)
      timings.append(fit.seconds)
  real_grid = np.concatenate([x_train[y_train == c][:config.grid_columns]
                              for c in range(10)])
  out_dir = common.results_dir(config.results)
  common.save_records(json_records(records), os.path.join(out_dir, 'records.json'))
  setup = common.save_setup(
      out_dir, experiment='gan', config=config,
      command='python -m experiments.run --config experiments/configs/gan.py'
      + ('' if config.results == 'gan' else ':quick'),
      facts={'train_size': len(train_src), 'test_size': len(test_src),
             'train_seconds': float(sum(timings)), 'classifier_seconds': c_seconds,
             'classifier_test_accuracy': classifier_accuracy,
             'classifier_params': c_params,
             'feature_dim': int(test_emb.shape[1]),
             'real_train_frechet': real_floor,
             'real_grid': _grid(real_grid, config, every=1)})
  return report(common.load_results(out_dir)[0], setup, out_dir)


def _grid(images: np.ndarray, config, every: Optional[int] = None) -> list:
  """The first ``grid_columns`` images of each class, ``[10, columns, 8, 8]`` rounded lists."""
  images = np.asarray(images)[..., 0]
  if every is None:  # eval order: ``eval_per_class`` of each class in turn
    images = images.reshape(10, config.eval_per_class, *images.shape[1:])
  else:
    images = images.reshape(10, -1, *images.shape[1:])
  return images[:, :config.grid_columns].round(3).tolist()


# ------------------------------------------------------------------ report

def plot_samples(grids: Mapping[str, Any], path: str, title: str) -> None:
  """One panel per model: rows = classes 0..9, columns = samples."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = list(grids)
  fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 3.4), squeeze=False)
  for ax, name in zip(axes[0], names):
    g = np.asarray(grids[name])  # [10, columns, 8, 8]
    rows, cols = g.shape[:2]
    canvas = np.full((rows * 9 - 1, cols * 9 - 1), 0.12)  # light grey separators
    for r in range(rows):
      for c in range(cols):
        canvas[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = g[r, c]
    ax.imshow(canvas, cmap='gray_r', vmin=0.0, vmax=1.0, interpolation='nearest')
    ax.set_title(name, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([4 + 9 * r for r in range(rows)], [str(r) for r in range(rows)], fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def comparisons(records) -> dict[str, stats.Comparison]:
  """Distilled vs alone on every metric, one Holm family; improvements are positive.

  For the lower-is-better metrics (Fréchet distance, L1 to the teacher) the
  per-seed difference is ``alone − distilled``, so ``'better'`` always means
  the distilled student improved.
  """
  family = []
  for label, key, lower in METRICS:
    for m in STUDENTS:
      d = common.paired(records, {'model': m}, {'model': 'student alone'}, key)
      family.append((f'{m} vs alone, {label}', -d if lower else d))
  return {c.name: c for c in stats.compare(family)}


def summary(c: stats.Comparison, name: str) -> str:
  """:func:`experiments.stats.summary` in the metric's unit (accuracy points, or distance units)."""
  if 'accuracy' in name:
    return stats.summary(c)
  if c.n < 2:
    return f'{stats.format_delta(c, scale=1.0, digits=3)} (n = {c.n}) → {c.verdict}'
  return (f'{stats.format_delta(c, scale=1.0, digits=3)}, 95% CI '
          f'{stats.format_ci(c, scale=1.0, digits=3)}, Holm p {stats.format_p(c.p_holm)} → '
          f'{c.verdict}')


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, sample grids and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  cmp = comparisons(records)
  agg = common.aggregate([r for r in records if r['model'] in MODELS], ['model'],
                         ['frechet', 'cond_accuracy', 'teacher_l1'], percent=['cond_accuracy'])
  agg = sorted(agg, key=lambda r: MODELS.index(r['model']))
  params = {r['model']: r['params'] for r in records}
  real = {'model': MODELS[0],
          'Fréchet distance to test digits': f"{facts['real_train_frechet']:.3f}",
          **stats.columns(None, delta=DELTA),
          'conditional accuracy': f"{100 * facts['classifier_test_accuracy']:.1f} (test set)",
          'Δ cond. acc. (paired)': '—', 'cond. acc. verdict': '—', 'L1 to teacher': '—',
          'Δ L1 to teacher (paired)': '—', 'L1 verdict': '—', 'params': '—', 'seeds': '—'}
  rows = [real]
  for r in agg:
    name = r['model']
    fd, acc, l1 = (cmp.get(f'{name} vs alone, {label}') for label, _, _ in METRICS)
    row = {**r, 'Fréchet distance to test digits': r['frechet'], 'conditional accuracy':
           r['cond_accuracy'], 'L1 to teacher': '—' if name == 'teacher' else r['teacher_l1'],
           'params': params[name], **stats.columns(fd, delta=DELTA)}
    if fd is not None:
      row[DELTA] = stats.format_delta(fd, scale=1.0, digits=3)
      row['95% CI'] = stats.format_ci(fd, scale=1.0, digits=3)
    row['Δ cond. acc. (paired)'] = stats.format_delta(acc) if acc else '—'
    row['cond. acc. verdict'] = acc.verdict if acc else '—'
    row['Δ L1 to teacher (paired)'] = stats.format_delta(l1, scale=1.0, digits=4) if l1 else '—'
    row['L1 verdict'] = l1.verdict if l1 else '—'
    rows.append(row)
  grids = {'real (train)': facts['real_grid']}
  grids.update({r['model']: r['samples'] for r in records if r.get('samples') is not None})
  seed0 = common.seeds_of(records)[0]
  plot_samples(grids, os.path.join(out_dir, 'gan_samples.png'),
               f'Digits 0-9 (rows); generators of seed {seed0}, the same noise per column')
  common.errorbar_plot([r for r in agg], x='model', metric='frechet',
                       path=os.path.join(out_dir, 'gan_frechet.png'), percent=False,
                       title='Fréchet distance to the test digits (classifier features)',
                       ylabel='Fréchet distance (lower is better)', xlabel='model')
  fd = cmp[f'{STUDENTS[0]} vs alone, Fréchet distance']
  if fd.verdict == stats.BETTER:
    verdict = 'Reproduced: the distilled student generator has a lower Fréchet distance to ' \
              'the real digits than the student trained alone'
  elif fd.verdict == stats.WORSE:
    verdict = 'Contradicted: the distilled student has a higher Fréchet distance than the ' \
              'student trained alone'
  else:
    verdict = ('Not reproduced: no significant difference in Fréchet distance between the '
               'distilled student and the student trained alone')
  verdict += ' (' + '; '.join(f'{name}: {summary(c, name)}' for name, c in cmp.items()) + ').'
  means = {r['model']: r for r in agg}
  caveat = ''
  if means[STUDENTS[0]]['frechet_mean'] < means['teacher']['frechet_mean']:
    caveat = (
        f' The distilled student\'s Fréchet distance ({means[STUDENTS[0]]["frechet_mean"]:.2f}) '
        f'is lower than its own teacher\'s ({means["teacher"]["frechet_mean"]:.2f}): the teacher '
        f'is a short run ({config.teacher_steps} updates at lr {config.teacher_lr:g}, sized to '
        'the CPU budget), and the '
        "distilled student's critic starts from the teacher's trained critic, a head start the "
        'student alone does not get. The comparison is of the GAN compression recipe as a '
        'whole (matching terms and inherited critic), not of the matching terms alone.')
  verdict += caveat
  t = config.teacher
  notes = (
      f'Setup: scikit-learn digits ({facts["train_size"]} train / {facts["test_size"]} test), '
      'images in [0, 1]. Generators (`kdjax.models.GanGenerator`, noise '
      f'{config.noise_dim} + label embedding, DCGAN-style transposed convs): teacher width '
      f'{t.get("width", 32)} ({params["teacher"]} params), student width '
      f'{config.student.get("width", 8)} ({params["student alone"]} params); projection critic '
      f'widths {tuple(config.critic.get("widths", (32, 64)))}. WGAN-GP (λ = '
      f'{config.gp_weight:g}, {config.critic_steps} critic update(s) per generator update), '
      f'batch {config.batch_size}. Teacher: {config.teacher_steps} updates per seed, Adam lr '
      f'{config.teacher_lr:g} (β = {config.teacher_b1:g}, {config.b2:g}) for both players. '
      f'Both students: Adam lr {config.lr:g} (β = {config.b1:g}, {config.b2:g}) for both '
      f'players, {config.num_steps} updates, the same generator initialisation and data order '
      'per seed; '
      "alone: a fresh critic (the teacher critic's initialisation); distilled: "
      f'{config.output_weight:g}·{config.output_loss.upper()}(G_S(z, y), G_T(z, y)) + '
      f'{config.feature_weight:g}·Σ MSE(adapter(F_S), F_T) over {", ".join(config.features)} '
      f'(1x1 conv adapters) + {config.adversarial_weight:g}·(−D(G_S(z, y), y)), the critic '
      "initialised from the teacher's trained critic and fine-tuned on real vs student images. "
      f'Evaluation: {10 * config.eval_per_class} generated digits ({config.eval_per_class} per '
      'class) from one noise draw per seed shared by every generator. Feature space: '
      f'`{config.classifier_model}` trained with cross-entropy on the train split '
      f'({config.classifier_steps} updates, {facts["classifier_params"]} params, '
      f'{facts["feature_dim"]}-d embedding), test accuracy '
      f'{100 * facts["classifier_test_accuracy"]:.1f}%. Fréchet distance: FID\'s formula between '
      'Gaussians fitted to the embeddings of the generated digits and of the '
      f'{facts["test_size"]} test digits (`kdjax.gan.frechet_distance`); the "real" row is the '
      'train split against the test split (the floor for a perfect generator, up to sample '
      'size). Conditional accuracy: the classifier\'s accuracy on the generated digits, against '
      'the labels they were generated for. L1 to teacher: mean |G_S(z, y) − G_T(z, y)| per '
      'pixel. Mean ± std over seeds; every Δ is an improvement of distilled over alone '
      '(alone − distilled for the distances).\n\n'
      + 'Paired comparisons (' + stats.CRITERION + '; every Δ an improvement of distilled '
      'over alone):\n\n' + '\n'.join(f'- {name}: {summary(c, name)}' for name, c in cmp.items())
      + '\n\n'
      'Plots: `gan_samples.png` (real train digits and the generators of seed '
      f'{seed0}, rows = classes 0-9, the same noise in each column), `gan_frechet.png` '
      f'(Fréchet distance, mean ± std). Total training time {facts["train_seconds"]:.0f} s.')
  common.write_results(
      config.results, rows, COLUMNS, title='GAN feature distillation (8x8 digits)',
      finding=FINDING, verdict=verdict, command=setup['command'], notes=notes, out_dir=out_dir,
      dataset='scikit-learn digits (8x8, class-conditional generation)',
      seeds=common.seeds_of(records))
  return rows
