"""Structured distillation losses for semantic segmentation (Liu et al. 2019).

Pixel-wise KD, pair-wise similarity KD and the holistic (Wasserstein critic)
terms. Maps and features are channels-last (``[B, H, W, C]``); every loss
returns one value per example ``[B]`` (or per score, for the critic terms) and
never reduces over the batch.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from kdjax.losses import _checks
from kdjax.losses._logits import kl_distillation


def pixelwise_kd(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Pixel-wise distillation: per-pixel KL between class distributions, averaged.

  ``ℓ_pi = 1/|P| \sum_{i∈P} τ²·KL(softmax(t_i/τ) ‖ softmax(s_i/τ))`` over the
  valid pixels ``P`` of each image. The paper (Liu et al. 2019, Eq. 1) uses no
  temperature, i.e. the default τ = 1, where the ``τ²`` factor is 1. For τ ≠ 1
  the factor is kept, as in :func:`kdjax.losses.kl_distillation`, so gradient
  magnitudes stay comparable across temperatures. KL(teacher ‖ student) differs
  from the authors' soft cross-entropy only by the teacher entropy, which does
  not depend on the student.

  Args:
    student_logits: ``[B, H, W, C]`` student class logits.
    teacher_logits: ``[B, H, W, C]`` teacher class logits (resize either map
      beforehand if the resolutions differ).
    temperature: softmax temperature τ > 0.
    where: optional boolean mask broadcastable to ``[B, H, W]``; pixels where it
      is False (e.g. the ignore label) are left out of the mean, which equals
      averaging over the kept pixels only. An image with no valid pixel gives 0.

  Returns:
    ``[B]`` per-image loss, in at least float32.

  Raises:
    ValueError: for inputs that are not rank 4 or differ in shape, non-floating
      inputs, a bad mask, or ``temperature <= 0``.

  References:
    Liu, Chen, Liu, Qin, Luo & Wang, "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019, arXiv:1903.04197.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import pixelwise_kd
    >>> s = jnp.zeros((1, 2, 2, 3))
    >>> t = s.at[0, 0, 0, 0].set(jnp.log(4.0))
    >>> pixelwise_kd(s, t)  # one pixel of four has KL = log(2)/3
    Array([0.0577...], dtype=float32)
  """
  _checks.check_rank(student_logits, 4, 'student_logits')
  _checks.check_same_shape(student_logits, teacher_logits, 'student_logits', 'teacher_logits')
  _checks.check_positive(temperature, 'temperature')
  s = _checks.as_float(student_logits, 'student_logits')
  t = _checks.as_float(teacher_logits, 'teacher_logits')
  where = _checks.check_where(where, s.shape[:-1])
  pixel_where = None if where is None else where[..., None]
  per_pixel = kl_distillation(s, t, temperature=temperature, where=pixel_where)
  return _checks.masked_mean(per_pixel, where, axis=(1, 2))


def _pool_size(pool_size, name: str = 'pool_size') -> Optional[tuple[int, int]]:
  if pool_size is None:
    return None
  if isinstance(pool_size, int):
    pool_size = (pool_size, pool_size)
  try:
    pool_size = tuple(pool_size)
  except TypeError:
    raise ValueError(
        f'`{name}` must be None, an int or a pair of ints, got {pool_size!r}.') from None
  ints = all(isinstance(b, int) and not isinstance(b, bool) for b in pool_size)
  if len(pool_size) != 2 or not ints or min(pool_size) < 1:
    raise ValueError(f'`{name}` must be None, a positive int or a pair of them, got {pool_size!r}.')
  return pool_size


def _window_sum(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  """Sums of non-overlapping ``window``s of ``[B, H, W, C]``, ceil mode (zero padding)."""
  b, h, w, c = x.shape
  bh, bw = window
  nh, nw = -(-h // bh), -(-w // bw)
  pad = ((0, 0), (0, nh * bh - h), (0, nw * bw - w), (0, 0))
  return jnp.pad(x, pad).reshape(b, nh, bh, nw, bw, c).sum(axis=(2, 4))


def _average_pool(x: jax.Array, window: tuple[int, int],
                  where: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Non-overlapping ``window`` average pooling of ``[B, H, W, C]``, ceil mode.

  Windows at the bottom/right border that stick out of the map average only
  the pixels that exist; with a ``[B, H, W]`` mask, only the valid pixels
  (``x`` must already be 0 at the others). Returns the pooled map and a
  ``[B, H', W']`` mask of the windows that hold at least one (valid) pixel.
  """
  valid = jnp.ones(x.shape[:-1], x.dtype) if where is None else where.astype(x.dtype)
  count = _window_sum(valid[..., None], window)
  return _window_sum(x, window) / jnp.maximum(count, 1.0), count[..., 0] > 0


def _node_similarity(features: jax.Array) -> jax.Array:
  """Cosine similarity ``[B, N, N]`` between the ``N = H·W`` spatial nodes."""
  b, h, w, c = features.shape
  f = features.reshape(b, h * w, c)
  eps = jnp.finfo(f.dtype).tiny ** 0.5
  norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(f), axis=-1, keepdims=True), eps**2))
  f = f / norm
  return jnp.einsum('bic,bjc->bij', f, f)


def pairwise_similarity_kd(
    student_features: jax.Array,
    teacher_features: jax.Array,
    *,
    pool_size: Union[None, int, Sequence[int]] = None,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Pair-wise distillation of the spatial self-similarity of feature maps.

  Each spatial position (after optional pooling) is a node ``f_i``;
  ``a_ij = f_iᵀ f_j / (‖f_i‖ ‖f_j‖)`` and
  ``ℓ_pa = 1/N² \sum_{i,j} (a^S_ij − a^T_ij)²`` over the ``N`` nodes
  (Liu et al. 2019, Eq. 2). Because only node-to-node similarities are
  compared, the student and teacher channel counts may differ.

  ``pool_size = (β_h, β_w)`` follows the paper's meaning: it is the spatial
  *window* that average pooling aggregates into one node (stride = window), so
  an ``H × W`` map gives ``ceil(H/β_h) × ceil(W/β_w)`` nodes; border windows
  that stick out average the pixels that exist. A zero feature vector has
  similarity 0 with every node (its norm is clamped away from 0).

  Args:
    student_features: ``[B, H, W, C_S]`` student feature map.
    teacher_features: ``[B, H, W, C_T]`` teacher feature map, same ``B, H, W``.
    pool_size: ``None`` (every position is a node), an int ``β`` or a pair
      ``(β_h, β_w)`` of pooling window sizes.
    where: optional boolean mask broadcastable to ``[B, H, W]`` selecting the
      valid pixels (e.g. not padding or the ignore label). Masked pixels are
      treated as if they did not exist: without pooling they are not nodes;
      with pooling each node averages the valid pixels of its window, and a
      window without any is not a node. The mean runs over the ``N_v²`` pairs
      of valid nodes, so the loss equals that of the valid nodes alone (a
      rectangular mask equals cropping both maps; with pooling, when the
      crop starts on the window grid). An image with no valid pixel gives 0.

  Returns:
    ``[B]`` per-image loss, in at least float32.

  Raises:
    ValueError: for inputs that are not rank 4, differ in ``B, H, W``, are not
      floating, a bad mask or a bad ``pool_size``.

  References:
    Liu, Chen, Liu, Qin, Luo & Wang, "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019, arXiv:1903.04197.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import pairwise_similarity_kd
    >>> f_s = jnp.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])   # [1, 2, 1, 2]: orthogonal nodes
    >>> f_t = jnp.array([[[[1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]]]])  # parallel nodes
    >>> pairwise_similarity_kd(f_s, f_t)
    Array([0.5], dtype=float32)
    >>> junk = lambda f: jnp.concatenate([f, 7.0 + f[:, :1]], axis=1)  # a third row
    >>> valid = jnp.array([True, True, False])[:, None]  # [H, W], broadcast over B
    >>> pairwise_similarity_kd(junk(f_s), junk(f_t), where=valid)
    Array([0.5], dtype=float32)
  """
  _checks.check_rank(student_features, 4, 'student_features')
  _checks.check_rank(teacher_features, 4, 'teacher_features')
  if jnp.shape(student_features)[:3] != jnp.shape(teacher_features)[:3]:
    raise ValueError(
        '`student_features` and `teacher_features` must agree in [B, H, W], got '
        f'{jnp.shape(student_features)} and {jnp.shape(teacher_features)}.')
  window = _pool_size(pool_size)
  s = _checks.as_float(student_features, 'student_features')
  t = _checks.as_float(teacher_features, 'teacher_features')
  dtype = jnp.promote_types(s.dtype, t.dtype)
  s, t = s.astype(dtype), t.astype(dtype)
  where = _checks.check_where(where, s.shape[:-1])
  if where is not None:
    s, t = (jnp.where(where[..., None], x, 0.0) for x in (s, t))
  if window is not None:
    (s, nodes), (t, _) = _average_pool(s, window, where), _average_pool(t, window, where)
    where = None if where is None else nodes
  diff = _node_similarity(s) - _node_similarity(t)
  if where is None:
    return jnp.mean(jnp.square(diff), axis=(1, 2))
  nodes = where.reshape(where.shape[0], -1)
  pairs = nodes[:, :, None] & nodes[:, None, :]
  return _checks.masked_mean(jnp.square(diff), pairs, axis=(1, 2))


def holistic_discriminator_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  r"""Wasserstein critic loss of holistic distillation: ``D(fake) − D(real)``.

  The critic ``D`` scores (segmentation map, image) pairs and maximises
  ``D(Q_T | I) − D(Q_S | I)``, so its loss to minimise is
  ``fake − real`` with ``real = D(teacher map)`` and ``fake = D(student map)``
  (Liu et al. 2019, Eq. 3, the negated holistic term). The critic network, the
  conditioning on the image and its Lipschitz constraint are the caller's:
  add :func:`gradient_penalty` (WGAN-GP) or clip the critic's weights. In the
  critic step the student map is a constant (the step decides, e.g. with
  ``jax.lax.stop_gradient`` outside this function).

  Args:
    real_scores: ``[...]`` critic scores of the teacher's maps.
    fake_scores: ``[...]`` critic scores of the student's maps, same shape.

  Returns:
    ``[...]`` per-example critic loss ``fake − real``, in at least float32.

  Raises:
    ValueError: for mismatched shapes or non-floating scores.

  References:
    Liu, Chen, Liu, Qin, Luo & Wang, "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019, arXiv:1903.04197.
    Arjovsky, Chintala & Bottou, "Wasserstein GAN", ICML 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import holistic_discriminator_loss
    >>> holistic_discriminator_loss(jnp.array([2.0, 0.5]), jnp.array([1.0, 1.0]))
    Array([-1. ,  0.5], dtype=float32)
  """
  _checks.check_same_shape(real_scores, fake_scores, 'real_scores', 'fake_scores')
  real = _checks.as_float(real_scores, 'real_scores')
  fake = _checks.as_float(fake_scores, 'fake_scores')
  dtype = jnp.promote_types(real.dtype, fake.dtype)
  return fake.astype(dtype) - real.astype(dtype)


def holistic_generator_loss(fake_scores: jax.Array) -> jax.Array:
  r"""Holistic distillation loss of the student (generator): ``−D(fake)``.

  The student is trained to raise the critic's score of its own segmentation
  map, ``−D(Q_S | I)`` (Liu et al. 2019, Eq. 3; the teacher term is constant
  for the student). Add it to the student objective with the paper's weight.

  Args:
    fake_scores: ``[...]`` critic scores of the student's maps.

  Returns:
    ``[...]`` per-example loss ``−fake``, in at least float32.

  Raises:
    ValueError: for non-floating scores.

  References:
    Liu, Chen, Liu, Qin, Luo & Wang, "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019, arXiv:1903.04197.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import holistic_generator_loss
    >>> holistic_generator_loss(jnp.array([1.0, -2.0]))
    Array([-1.,  2.], dtype=float32)
  """
  return -_checks.as_float(fake_scores, 'fake_scores')


def gradient_penalty(
    critic_fn: Callable[[jax.Array], jax.Array],
    real: jax.Array,
    fake: jax.Array,
    *,
    key: jax.Array,
) -> jax.Array:
  r"""WGAN-GP gradient penalty ``(‖∇_x̂ D(x̂)‖₂ − 1)²`` per example.

  ``x̂ = ε·real + (1 − ε)·fake`` with one ``ε ~ U[0, 1]`` per example, drawn as
  ``jax.random.uniform(key, (B,))``. The gradient is taken of
  ``sum_b D(x̂)_b`` with respect to ``x̂``, which gives each example's own
  gradient as long as the critic treats examples independently (no batch
  statistics). The norm is over all non-batch axes, with a zero gradient norm
  handled safely (its derivative is taken as 0). Differentiate the result
  with respect to the critic's parameters (close over them in ``critic_fn``);
  multiply by the penalty weight (Gulrajani et al.: λ = 10) yourself.

  Args:
    critic_fn: maps ``[B, ...]`` inputs to ``[B]`` (or ``[B, 1]``) scores. For
      the holistic critic, close over the image it is conditioned on.
    real: ``[B, ...]`` real inputs (the teacher's maps).
    fake: ``[B, ...]`` fake inputs (the student's maps), same shape.
    key: a PRNG key for the interpolation weights.

  Returns:
    ``[B]`` per-example penalty, in at least float32.

  Raises:
    ValueError: for mismatched shapes, rank-0 or non-floating inputs, or a
      ``critic_fn`` whose output does not hold one score per example.

  References:
    Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training of
    Wasserstein GANs", NeurIPS 2017, arXiv:1704.00028.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.losses import gradient_penalty
    >>> critic = lambda x: 2.0 * x.sum(axis=(1, 2))   # gradient norm 2·sqrt(4) = 4
    >>> gradient_penalty(critic, jnp.ones((3, 2, 2)), jnp.zeros((3, 2, 2)),
    ...                  key=jax.random.key(0))
    Array([9., 9., 9.], dtype=float32)
  """
  if not callable(critic_fn):
    raise ValueError(f'`critic_fn` must be callable, got {type(critic_fn).__name__}.')
  _checks.check_same_shape(real, fake, 'real', 'fake')
  _checks.check_min_rank(real, 1, 'real')
  r = _checks.as_float(real, 'real')
  f = _checks.as_float(fake, 'fake')
  dtype = jnp.promote_types(r.dtype, f.dtype)
  r, f = r.astype(dtype), f.astype(dtype)
  batch = r.shape[0]
  eps = jax.random.uniform(key, (batch,), dtype=dtype).reshape((batch,) + (1,) * (r.ndim - 1))
  x_hat = eps * r + (1.0 - eps) * f

  def total_score(x):
    scores = jnp.asarray(critic_fn(x))
    if scores.size != batch or (scores.ndim and scores.shape[0] != batch):
      raise ValueError(
          f'`critic_fn` must return one score per example ([{batch}] or [{batch}, 1]), '
          f'got shape {scores.shape}.')
    return jnp.sum(scores)

  grads = jax.grad(total_score)(x_hat).reshape(batch, -1)
  sq = jnp.sum(jnp.square(grads), axis=-1)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return jnp.square(norm - 1.0)
