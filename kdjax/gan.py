"""GAN feature distillation: conditional GAN training, student generators, Fréchet distance.

Three steps, one builder (:func:`make_gan_distill_step`), all with the
engine's signature ``step(state, teacher_variables, batch, rng) -> (state,
metrics)`` so that :func:`kdjax.train.fit` drives, checkpoints and resumes
them:

* **GAN training** (:func:`make_gan_step`, no teacher): a class-conditional
  generator against a WGAN-GP critic. Trains the teacher, and the student
  alone (the baseline).
* **Student distillation** (Aguinaldo et al. 2019; Li et al. 2020, GAN
  compression): for the same noise and label as the teacher, the student
  generator matches the teacher's image (L1 or MSE), its intermediate
  features through trainable 1x1 conv adapters (``state.aux_params
  ['adapters']``, :func:`init_feature_adapters`), and fools a critic
  initialised from the teacher's. By default the critic is fine-tuned on real
  images against the student's as in GAN compression (``train_critic=True``);
  ``train_critic=False`` keeps the teacher's critic frozen.

The state is an :class:`AdversarialState` ``(student, critic)``: the
generator is the ``student`` player (the two-player machinery is shared with
holistic segmentation KD). A batch is ``{'x': [B, H, W, C] real images in
[0, 1], 'label': [B]}`` (optionally ``'mask'``); the noise is drawn inside
the step from its key, so a resumed run repeats an uninterrupted one. The
generator's inputs are ``{'noise': [B, Z], 'label': [B]}`` (the models of
:class:`kdjax.models.GanGenerator`), the critic's ``{'image', 'label'}``.

Evaluation (host, NumPy float64): :func:`frechet_distance` between Gaussians
fitted to features (:func:`gaussian_statistics`), the FID formula of Heusel et
al. 2017 — here in the feature space of a small digits classifier, a stand-in
for FID's Inception network — and :func:`conditional_accuracy`, that
classifier's accuracy on generated digits of each class.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _adversarial
from kdjax import _update
from kdjax import losses
from kdjax._adversarial import AdversarialState
from kdjax._update import batch_mean
from kdjax._update import Weight
from kdjax.models._wrap import as_forward
from kdjax.models._wrap import ForwardFn
from kdjax.models._wrap import ModelOutput


ADAPTERS = 'adapters'  # the feature adapters' key in ``TrainState.aux_params``
OUTPUT_LOSSES = ('l1', 'mse')


def generator_inputs(labels: jax.Array, key: jax.Array, noise_dim: int) -> dict:
  """``{'noise': N(0, 1) [B, noise_dim], 'label': [B]}``: a generator's inputs.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> inputs = generator_inputs(jnp.array([1, 2]), jax.random.key(0), 8)
    >>> inputs['noise'].shape, inputs['label'].tolist()
    ((2, 8), [1, 2])
  """
  labels = jnp.asarray(labels).astype(jnp.int32)
  return {'noise': jax.random.normal(key, (labels.shape[0], int(noise_dim)), jnp.float32),
          'label': labels}


def generate(generator: Union[ForwardFn, nn.Module], variables: Mapping[str, Any],
             labels: jax.Array, key: jax.Array, *, noise_dim: int = 32) -> jax.Array:
  """Images of a generator for ``labels`` with noise drawn from ``key`` (eval mode).

  Args:
    generator: the generator's forward function or Linen module.
    variables: its variables.
    labels: ``[B]`` class labels.
    key: PRNG key of the noise.
    noise_dim: noise size ``Z``.

  Returns:
    ``[B, H, W, C]`` images.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.models import function_forward
    >>> g = function_forward(lambda p, x: x['noise'][:, :, None, None] * p['w'])
    >>> generate(g, {'params': {'w': jnp.ones(())}}, jnp.arange(3), jax.random.key(2),
    ...          noise_dim=4).shape
    (3, 4, 1, 1)
  """
  forward = as_forward(generator)
  return forward(variables, generator_inputs(labels, key, noise_dim), train=False).logits


def feature_adapter(teacher_channels: int) -> nn.Module:
  """The trainable 1x1 conv mapping a student feature to the teacher's width.

  Examples:
    >>> feature_adapter(64).features, feature_adapter(64).kernel_size
    (64, (1, 1))
  """
  return nn.Conv(int(teacher_channels), (1, 1))


def _feature(out: ModelOutput, key: str, who: str) -> jax.Array:
  if key not in out.features:
    raise ValueError(f'`features`: {who} has no feature {key!r}; available: '
                     f'{sorted(out.features)}.')
  return out.features[key]


def init_feature_adapters(student_output: ModelOutput, teacher_output: ModelOutput,
                          rng: jax.Array, *, features: Sequence[str] = ('stage2', 'stage3')
                          ) -> dict:
  """Initialises one 1x1 adapter per feature: ``{'adapters': {name: params}}`` for ``aux_params``.

  Args:
    student_output: a student generator's forward pass on sample inputs.
    teacher_output: the teacher's on the same inputs.
    rng: PRNG key.
    features: the matched features (same spatial size in both models).

  Returns:
    ``{'adapters': {name: conv params}}``, for ``TrainState.create(aux_params=...)``.

  Raises:
    ValueError: for a feature missing from either model, or of different
      spatial sizes.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.models import ModelOutput
    >>> s = ModelOutput(None, {'stage2': jnp.zeros((1, 4, 4, 4))}, {})
    >>> t = ModelOutput(None, {'stage2': jnp.zeros((1, 4, 4, 16))}, {})
    >>> aux = init_feature_adapters(s, t, jax.random.key(0), features=('stage2',))
    >>> aux['adapters']['stage2']['kernel'].shape
    (1, 1, 4, 16)
  """
  out = {}
  for i, name in enumerate(features):
    s = _feature(student_output, name, 'the student')
    t = _feature(teacher_output, name, 'the teacher')
    if s.shape[:-1] != t.shape[:-1]:
      raise ValueError(f'`features`: {name!r} has shape {s.shape} in the student and {t.shape} '
                       'in the teacher; they must differ in channels only.')
    out[name] = feature_adapter(t.shape[-1]).init(jax.random.fold_in(rng, i), s)['params']
  return {ADAPTERS: out}


def _check_batch(batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
  for key in ('x', 'label'):
    if key not in batch:
      raise ValueError(f"`batch` must hold 'x' (real images) and 'label', got {sorted(batch)}.")
  x, labels = jnp.asarray(batch['x']), jnp.asarray(batch['label'])
  if x.ndim != 4:
    raise ValueError(f"`batch['x']` must be real images [B, H, W, C], got shape {x.shape}.")
  if labels.shape != x.shape[:1]:
    raise ValueError(f"`batch['label']` must be [B] = {x.shape[:1]}, got shape {labels.shape}.")
  return x, labels


def _same_shape(a: jax.Array, b: jax.Array, what: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f'{what}: got {a.shape} and {b.shape}.')


def make_gan_step(*, noise_dim: int = 32, num_classes: int = 10, gp_weight: float = 10.0,
                  critic_steps: int = 1, axis_name: Optional[str] = None,
                  skip_nonfinite: bool = True):
  """The conditional WGAN-GP step: the teacher GAN, or a student generator alone.

  :func:`make_gan_distill_step` without a teacher: only the adversarial term
  (weight 1), the critic trained on real against generated images. Call it as
  ``step(state, None, batch, rng)`` with an :class:`AdversarialState`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax import models
    >>> from kdjax.state import TrainState
    >>> g, d = models.GanGenerator(width=2), models.GanCritic(widths=(2,))
    >>> batch = {'x': jnp.zeros((4, 8, 8, 1)), 'label': jnp.arange(4)}
    >>> def players(key):
    ...   inputs = generator_inputs(batch['label'], key, 4)
    ...   g_vars = models.init_variables(g, key, inputs)
    ...   d_vars = models.init_variables(d, key, {'image': batch['x'], 'label': batch['label']})
    ...   make = lambda m, v: TrainState.create(apply_fn=m, variables=v, tx=optax.adam(1e-3))
    ...   return AdversarialState(make(g, g_vars), make(d, d_vars))
    >>> state = jax.eval_shape(players, jax.random.key(0))  # shapes only: no compilation
    >>> new, metrics = jax.eval_shape(make_gan_step(noise_dim=4), state, None, batch,
    ...                               jax.random.key(1))
    >>> new.critic.params['score']['kernel'].shape, 'critic/loss/gp' in metrics
    ((32, 1), True)
  """
  return make_gan_distill_step(None, noise_dim=noise_dim, num_classes=num_classes,
                               gp_weight=gp_weight, critic_steps=critic_steps,
                               axis_name=axis_name, skip_nonfinite=skip_nonfinite)


def make_gan_distill_step(
    teacher: Union[None, ForwardFn, nn.Module], *, output_weight: Weight = 0.0,
    feature_weight: Weight = 0.0, adversarial_weight: Weight = 1.0, output_loss: str = 'l1',
    features: Sequence[str] = ('stage2', 'stage3'), train_critic: bool = True,
    noise_dim: int = 32, num_classes: int = 10, gp_weight: float = 10.0,
    critic_steps: int = 1, axis_name: Optional[str] = None, skip_nonfinite: bool = True):
  """Builds the student-generator distillation step (GAN compression terms).

  For noise ``z ~ N(0, I)`` drawn in the step and the batch's labels ``y``,
  the student ``G_S`` minimises, averaged over the valid rows,

  * ``output_weight ·`` ``|G_S(z, y) − G_T(z, y)|`` (``output_loss='l1'``,
    Li et al. 2020) or its square (``'mse'``, Aguinaldo et al. 2019), the mean
    over pixels;
  * ``feature_weight ·`` ``Σ_f mean (r_f(F_S,f) − F_T,f)²`` over ``features``,
    ``r_f`` the 1x1 conv adapters in ``state.aux_params['adapters']``
    (:func:`init_feature_adapters`; Li et al. 2020's intermediate feature
    distillation);
  * ``adversarial_weight ·`` ``−D(G_S(z, y), y)``, the WGAN generator loss
    against ``state.critic``.

  Before the student's update, with ``train_critic`` (default, GAN
  compression: the critic starts from the teacher's and is fine-tuned) the
  critic takes ``critic_steps`` WGAN-GP updates on real images ``batch['x']``
  against the student's (held constant), penalty weight ``gp_weight``;
  ``train_critic=False`` keeps the critic frozen. Without a teacher (every
  distillation weight 0) this is conditional GAN training
  (:func:`make_gan_step`). The critic's and the student's randomness (the
  penalty's interpolation, the noise) come from two independent halves of
  ``rng``, each folded with its player's own step.

  Args:
    teacher: the teacher generator's forward function or Linen module
      (``None``: ``output_weight`` and ``feature_weight`` must be 0).
    output_weight, feature_weight, adversarial_weight: term weights (floats
      or schedules ``step -> weight``; 0 leaves a term out).
    output_loss: ``'l1'`` or ``'mse'``.
    features: the matched features of both generators.
    train_critic: fine-tune the critic in the step (else frozen).
    noise_dim: noise size ``Z`` of the generators.
    num_classes: label classes (labels out of range are masked out under
      ``jit`` and reported, see :func:`kdjax._update.clean_labels`).
    gp_weight: WGAN-GP penalty weight λ (Gulrajani et al.: 10).
    critic_steps: critic updates per step (WGAN-GP: 5).
    axis_name: device axis under ``pmap`` / ``shard_map``.
    skip_nonfinite: keep a player's old state on its non-finite update.

  Returns:
    ``step(state, teacher_variables, batch, rng) -> (state, metrics)``.
    ``state`` is an :class:`AdversarialState` (a plain generator
    :class:`~kdjax.state.TrainState` is allowed when ``adversarial_weight`` is
    0 and the critic is not trained). Metrics: ``loss``, ``loss/<term>``
    (``output``, ``feature``, ``adversarial``), ``distance/teacher`` (the mean
    L1 distance to the teacher's images, with a teacher), ``grad_norm``,
    ``skipped`` (either player), ``invalid_labels``, ``invalid_label``, and
    the critic's ``critic/loss``, ``critic/loss/wasserstein`` (``D(fake) −
    D(real)``), ``critic/loss/gp``, ``critic/grad_norm``, ``critic/skipped``.

  Raises:
    ValueError: at build time for a negative weight, a distillation weight
      without a teacher, an unknown ``output_loss``, ``noise_dim < 1``, no
      ``features`` with a feature weight, ``critic_steps < 1``; at trace time
      (naming the argument) for a batch without ``'x'`` or ``'label'``,
      ``batch['x']`` not ``[B, H, W, C]``, labels not ``[B]``, generated
      images of another shape than ``batch['x']`` or the teacher's, a missing
      feature or adapter, or a state that is not an :class:`AdversarialState`
      when the critic is used.

  References:
    Aguinaldo, Chiang, Gain, Patil, Pearson & Feizi, "Compressing GANs using
    Knowledge Distillation", 2019, arXiv:1902.00159.
    Li, Lin, Ding, Liu, Zhu & Han, "GAN Compression: Efficient Architectures
    for Interactive Conditional GANs", CVPR 2020, arXiv:2003.08936.
    Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training of
    Wasserstein GANs", NeurIPS 2017, arXiv:1704.00028.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax import models
    >>> from kdjax.state import TrainState
    >>> t, s, d = models.GanGenerator(width=4), models.GanGenerator(width=1), models.GanCritic()
    >>> batch = {'x': jnp.zeros((2, 8, 8, 1)), 'label': jnp.array([3, 5])}
    >>> def players(key):
    ...   inputs = generator_inputs(batch['label'], key, 4)
    ...   t_vars, s_vars = (models.init_variables(m, key, inputs) for m in (t, s))
    ...   aux = init_feature_adapters(models.as_forward(s)(s_vars, inputs, train=False),
    ...                               models.as_forward(t)(t_vars, inputs, train=False), key)
    ...   d_vars = models.init_variables(d, key, {'image': batch['x'], 'label': batch['label']})
    ...   return t_vars, AdversarialState(
    ...       TrainState.create(apply_fn=s, variables=s_vars, tx=optax.adam(1e-3), aux_params=aux),
    ...       TrainState.create(apply_fn=d, variables=d_vars, tx=optax.adam(1e-3)))
    >>> t_vars, state = jax.eval_shape(players, jax.random.key(0))  # shapes only
    >>> state.student.aux_params['adapters']['stage2']['kernel'].shape  # 2w -> 2·4 channels
    (1, 1, 2, 8)
    >>> step = make_gan_distill_step(t, output_weight=1.0, feature_weight=1.0, noise_dim=4)
    >>> _, m = jax.eval_shape(step, state, t_vars, batch, jax.random.key(1))
    >>> sorted(k for k in m if k.startswith('loss/'))
    ['loss/adversarial', 'loss/feature', 'loss/output']
  """
  weights = {'output': output_weight, 'feature': feature_weight,
             'adversarial': adversarial_weight}
  enabled = {k: _update.term_enabled(w, f'{k}_weight') for k, w in weights.items()}
  _adversarial.check_critic_options(gp_weight, critic_steps)
  if output_loss not in OUTPUT_LOSSES:
    raise ValueError(f'`output_loss` must be one of {OUTPUT_LOSSES}, got {output_loss!r}.')
  if int(noise_dim) < 1:
    raise ValueError(f'`noise_dim` must be >= 1, got {noise_dim}.')
  features = tuple(features)
  if enabled['feature'] and not features:
    raise ValueError('`features` is empty, but `feature_weight` is not 0.')
  distill = [k for k in ('output', 'feature') if enabled[k]]
  if teacher is None and distill:
    raise ValueError(f'Distillation weights {[f"{k}_weight" for k in distill]} need a '
                     '`teacher`.')
  teacher_fn = as_forward(teacher) if teacher is not None else None

  def step(state, teacher_variables, batch, rng):
    adversarial = isinstance(state, AdversarialState)
    if enabled['adversarial'] or train_critic:
      _adversarial.check_state(state, 'The adversarial term (or training the critic)')
    student = state.student if adversarial else state
    real, labels = _check_batch(batch)
    rows = {'label': labels, 'mask': batch.get('mask', jnp.ones(labels.shape, bool))}
    clean, label_metrics = _update.clean_labels(rows, num_classes, axis_name=axis_name)
    mask, labels = clean['mask'], clean['label']
    critic_rng, student_rng = _adversarial.player_keys(rng)
    key = jax.random.fold_in(student_rng, student.step)  # the student update's own key
    inputs = generator_inputs(labels, jax.random.fold_in(key, 0), noise_dim)
    t_out = None
    if teacher_fn is not None:
      if teacher_variables is None:
        raise ValueError('`teacher_variables` is None, but the step was built with a teacher.')
      t_out = jax.lax.stop_gradient(teacher_fn(teacher_variables, inputs, train=False))
      _same_shape(t_out.logits, real, "The teacher's images and `batch['x']` must have one "
                  'shape')

    def forward(params, key):
      return student.apply_fn({'params': params, **student.model_state}, inputs, train=True,
                              rngs={'dropout': key})

    def score_fn(critic, params, images):
      return _adversarial.critic_scores(critic, params, {'image': images, 'label': labels})

    critic, critic_metrics = (state.critic if adversarial else None), {}
    if adversarial and train_critic:
      fake = jax.lax.stop_gradient(forward(student.params, key).logits).astype(jnp.float32)
      _same_shape(fake, real, "The generated images and `batch['x']` must have one shape")
      critic, critic_metrics = _adversarial.critic_update(
          critic, lambda p, v: score_fn(critic, p, v), real.astype(jnp.float32), fake,
          critic_rng, mask=mask, gp_weight=gp_weight, critic_steps=critic_steps,
          axis_name=axis_name, skip_nonfinite=skip_nonfinite)

    def loss_fn(trainable, key):
      out = forward(trainable['params'], key)
      images = out.logits
      _same_shape(images, real, "The generated images and `batch['x']` must have one shape")
      mean = lambda v: batch_mean(v, mask, axis_name)  # noqa: E731
      parts, extra = {}, {}
      if t_out is not None:
        diff = images.astype(jnp.float32) - t_out.logits.astype(jnp.float32)
        extra['distance/teacher'] = _update.psum(mean(jnp.abs(diff)), axis_name)
        if enabled['output']:
          parts['output'] = mean(jnp.abs(diff) if output_loss == 'l1' else jnp.square(diff))
      if enabled['feature']:
        adapters = trainable['aux'].get(ADAPTERS, {})
        total_f = 0.0
        for name in features:
          if name not in adapters:
            raise ValueError(f"`state.aux_params['{ADAPTERS}']` has no adapter for feature "
                             f'{name!r} (see init_feature_adapters); has {sorted(adapters)}.')
          s = _feature(out, name, 'the student')
          t = _feature(t_out, name, 'the teacher')
          adapted = feature_adapter(t.shape[-1]).apply({'params': adapters[name]}, s)
          total_f = total_f + losses.hint_l2(adapted, t)
        parts['feature'] = mean(total_f)
      if enabled['adversarial']:
        scores = score_fn(critic, jax.lax.stop_gradient(critic.params), images)
        parts['adversarial'] = mean(losses.holistic_generator_loss(scores))
      total = 0.0
      for name in ('output', 'feature', 'adversarial'):
        if enabled[name]:
          total = total + _update.term_weight(weights[name], student.step) * parts[name]
      return jnp.asarray(total, jnp.float32), (out.model_state, parts, extra)

    new_student, info, metrics = _update.update(student, loss_fn, student_rng,
                                                axis_name=axis_name,
                                                skip_nonfinite=skip_nonfinite)
    metrics.update(info.aux[1])
    metrics.update(label_metrics)
    metrics = _adversarial.join_metrics(metrics, critic_metrics)
    if adversarial:
      return AdversarialState(student=new_student, critic=critic), metrics
    return new_student, metrics

  return step


# ------------------------------------------------------------------ evaluation

def gaussian_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, float64) of ``[N, D]`` features.

  Examples:
    >>> mu, sigma = gaussian_statistics([[0.0], [2.0]])
    >>> mu.tolist(), sigma.tolist()
    ([1.0], [[2.0]])
  """
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f'`features` must be [N, D] with N >= 2, got shape {f.shape}.')
  return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *,
                     eps: float = 1e-6) -> float:
  r"""Fréchet (2-Wasserstein) distance between two Gaussians, squared, as in FID.

  ``d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2})``, the matrix square root
  by ``scipy.linalg.sqrtm`` in float64 on the host. If the product is singular
  enough for the root to be non-finite, ``eps·I`` is added to both
  covariances (as pytorch-fid does); a negligible imaginary part from
  round-off is dropped.

  Args:
    mu1, mu2: ``[D]`` means.
    sigma1, sigma2: ``[D, D]`` covariances.
    eps: the regulariser of singular products.

  Returns:
    The distance (a Python float, ``>= 0`` up to round-off).

  Raises:
    ValueError: for mismatched shapes, or a root with a large imaginary part.

  References:
    Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter, "GANs Trained by a
    Two Time-Scale Update Rule Converge to a Local Nash Equilibrium" (FID),
    NeurIPS 2017, arXiv:1706.08500. Dowson & Landau, "The Fréchet distance
    between multivariate normal distributions", J. Multivariate Anal. 1982.

  Examples:
    >>> # 1-D: (μ₁ − μ₂)² + (σ₁ − σ₂)² = 1 + 1
    >>> round(frechet_distance([0.0], [[1.0]], [1.0], [[4.0]]), 6)
    2.0
  """
  from scipy import linalg  # pylint: disable=import-outside-toplevel

  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(
      np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
    raise ValueError(f'`mu1`, `mu2` must be [D] and `sigma1`, `sigma2` [D, D]; got '
                     f'{mu1.shape}, {mu2.shape}, {s1.shape}, {s2.shape}.')
  root = linalg.sqrtm(s1 @ s2)
  if not np.all(np.isfinite(root)):
    offset = eps * np.eye(d)
    root = linalg.sqrtm((s1 + offset) @ (s2 + offset))
  if np.iscomplexobj(root):
    if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
      raise ValueError(f'The matrix square root has an imaginary part of '
                       f'{np.max(np.abs(root.imag)):.3g}.')
    root = root.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(root))


def feature_frechet_distance(features_a: Any, features_b: Any) -> float:
  """:func:`frechet_distance` between Gaussians fitted to two ``[N, D]`` feature sets.

  Examples:
    >>> import numpy as np
    >>> f = np.random.default_rng(0).normal(size=(500, 3))
    >>> abs(feature_frechet_distance(f, f)) < 1e-8
    True
  """
  return frechet_distance(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


def conditional_accuracy(logits: Any, labels: Any, *, num_classes: int = 10) -> dict:
  """A classifier's accuracy on generated images, overall and per conditioning class.

  Args:
    logits: ``[N, num_classes]`` classifier logits of generated images.
    labels: ``[N]`` the labels the images were generated for.
    num_classes: classes.

  Returns:
    ``{'accuracy': float, 'per_class': [num_classes] float64 (NaN for a class
    without images)}``.

  Examples:
    >>> out = conditional_accuracy([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]], [0, 1, 1],
    ...                            num_classes=2)
    >>> out['accuracy'], out['per_class'].tolist()
    (0.6666666666666666, [1.0, 0.5])
  """
  logits, labels = np.asarray(logits), np.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f'`logits` must be [N, C] and `labels` [N]; got {logits.shape} and '
                     f'{labels.shape}.')
  right = (logits.argmax(-1) == labels).astype(np.float64)
  per_class = np.array([right[labels == c].mean() if np.any(labels == c) else np.nan
                        for c in range(num_classes)])
  return {'accuracy': float(right.mean()), 'per_class': per_class}
