"""Feature-map distillation losses (per-example).

Features are channels-last: ``[..., H, W, C]`` for spatial maps and
``[B, ...]`` for the flattened losses, which average over their trailing
``feature_ndim`` axes. No loss reduces over examples and none calls
``stop_gradient``; adapters, regressors and paraphrasers are the caller's
models.

Masks (``where=``) follow one convention: a masked entry is left out as if it
had been sliced away (also out of every normalisation), averages count only the
kept entries, a fully masked example gives 0, and masked entries get no
gradient. The flattened losses (:func:`hint_l2`, :func:`factor_transfer`,
:func:`vid`) mask feature entries (a mask broadcastable to the input shape);
the spatial ones (:func:`attention_transfer`, :func:`nst_mmd`) mask positions
(a mask broadcastable to ``[..., H, W]``).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from kdjax.losses import _checks


# Floor on vector norms before dividing: ``x / max(‖x‖, _NORM_EPS)``. An
# all-zero vector normalises to zero and has a finite (zero-scaled) gradient.
_NORM_EPS = 1e-12


def _l2_normalize(x: jax.Array, axis=-1) -> jax.Array:
  """``x / max(‖x‖₂, 1e-12)`` along ``axis``, with finite gradients at zero."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS**2))


def _floats(*named) -> list[jax.Array]:
  """Casts each ``(array, name)`` to a common float dtype (>= float32)."""
  arrays = [_checks.as_float(x, name) for x, name in named]
  dtype = jnp.result_type(*arrays)
  return [x.astype(dtype) for x in arrays]


def _feature_axes(x, feature_ndim: Optional[int], name: str) -> tuple[int, ...]:
  """The trailing axes averaged by a flattened per-example loss."""
  ndim = jnp.ndim(x)
  if feature_ndim is None:
    if ndim < 2:
      raise ValueError(
          f'`{name}` must have at least 2 dimensions [batch, ...] when '
          f'`feature_ndim` is None, got shape {jnp.shape(x)}.')
    feature_ndim = ndim - 1
  if (isinstance(feature_ndim, bool) or not isinstance(feature_ndim, int)
      or not 1 <= feature_ndim <= ndim):
    raise ValueError(
        f'`feature_ndim` must be an int in [1, {ndim}] for `{name}` of shape '
        f'{jnp.shape(x)}, got {feature_ndim!r}.')
  return tuple(range(ndim - feature_ndim, ndim))


def _flatten_where(where: Optional[jax.Array], ndim: int) -> Optional[jax.Array]:
  """Flattens the trailing ``ndim`` axes of a (broadcast) mask, keeping ``None``."""
  if where is None:
    return None
  return where.reshape(where.shape[:where.ndim - ndim] + (-1,))


def _zero_masked(x: jax.Array, where: Optional[jax.Array]) -> jax.Array:
  """``x`` with masked entries set to 0, so they add nothing (and get no gradient)."""
  return x if where is None else jnp.where(where, x, 0.0)


def _check_spatial_pair(s, t, name_s: str, name_t: str) -> None:
  """Checks two ``[..., H, W, C]`` maps that may differ only in channels."""
  _checks.check_min_rank(s, 3, name_s)
  _checks.check_min_rank(t, 3, name_t)
  if jnp.shape(s)[:-1] != jnp.shape(t)[:-1]:
    raise ValueError(
        f'`{name_s}` and `{name_t}` must agree on all but the channel axis '
        f'[..., H, W], got shapes {jnp.shape(s)} and {jnp.shape(t)}.')


def hint_l2(
    student_features: jax.Array,
    teacher_features: jax.Array,
    *,
    feature_ndim: Optional[int] = None,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""FitNets hint loss: per-example mean squared error between features.

  ``loss = mean_f (s_f − t_f)²`` over the trailing ``feature_ndim`` axes. The
  regressor ``r`` that maps the student's guided layer to the teacher's hint
  shape (a 1×1 conv or a dense layer) is the caller's model: pass ``r(F_S)``.
  The paper's ``½‖·‖²`` is a sum; the mean used here only rescales it.

  Args:
    student_features: ``[B, ...]`` (adapted) student features.
    teacher_features: ``[B, ...]`` teacher hint, same shape.
    feature_ndim: number of trailing axes averaged per example. ``None`` (the
      default) averages all axes after the first: ``[B, ...] -> [B]``. With
      ``feature_ndim=k`` the result has the leading ``ndim − k`` axes.
    where: optional boolean mask broadcastable to the feature shape; only
      positions where it is True enter the mean, which equals slicing them
      out. A fully masked example gives 0.

  Returns:
    Per-example loss with the leading (non-averaged) axes, in at least float32.

  Raises:
    ValueError: for mismatched shapes, non-floating inputs, a bad
      ``feature_ndim`` or a bad mask.

  References:
    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
    arXiv:1412.6550.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import hint_l2
    >>> hint_l2(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]]))
    Array([2.5], dtype=float32)
  """
  _checks.check_same_shape(student_features, teacher_features,
                           'student_features', 'teacher_features')
  axes = _feature_axes(student_features, feature_ndim, 'student_features')
  s, t = _floats((student_features, 'student_features'),
                 (teacher_features, 'teacher_features'))
  where = _checks.check_where(where, s.shape)
  return _checks.masked_mean(jnp.square(_zero_masked(s - t, where)), where, axis=axes)


def _attention_map(f: jax.Array, p, where: Optional[jax.Array]) -> jax.Array:
  """``[..., H, W, C] -> [..., H·W]``: normalised ``mean_c |F_c|^p`` over kept positions."""
  f = _zero_masked(f, None if where is None else where[..., None])
  a = jnp.mean(jnp.abs(f) ** p, axis=-1)
  return _l2_normalize(a.reshape(a.shape[:-2] + (-1,)), axis=-1)


def attention_transfer(
    student_features: jax.Array,
    teacher_features: jax.Array,
    *,
    p: float = 2,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Activation-based attention transfer (AT).

  The spatial attention map of a feature map ``F`` of shape ``[H, W, C]`` is
  ``a = mean_c |F_c|^p`` flattened to ``H·W`` and L2-normalised,
  ``â = a / max(‖a‖₂, 1e-12)`` (the floor only matters for an all-zero map,
  which normalises to zero). The loss is ``mean_{hw} (â_S − â_T)²``, the
  convention of the authors' code; the paper's ``‖â_S − â_T‖_2`` is a
  monotone function of it. A mean or a sum over channels gives the same
  normalised map, so student and teacher may have different channel counts.

  Args:
    student_features: ``[..., H, W, C_s]`` student feature map (NHWC).
    teacher_features: ``[..., H, W, C_t]`` teacher feature map; all axes but
      the channel axis must match the student's.
    p: exponent ``p >= 1`` (the paper uses 2). Values below 1 are rejected:
      ``|x|^p`` then has an infinite gradient at the exact zeros ReLU features
      are full of.
    where: optional boolean mask broadcastable to ``[..., H, W]`` selecting
      the valid spatial positions (e.g. not padding). Masked positions are
      left out of the attention maps, of their normalisation and of the mean,
      which equals computing the loss on the kept positions only (e.g. a
      rectangular mask equals cropping both maps). An example with no valid
      position gives 0.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for inputs of rank < 3, mismatched ``[..., H, W]``,
      non-floating inputs, a bad mask or ``p < 1``.

  References:
    Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer",
    ICLR 2017, arXiv:1612.03928.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import attention_transfer
    >>> s = jnp.array([1.0, 0.0]).reshape(1, 1, 2, 1)  # all attention left
    >>> t = jnp.array([[0.0, 0.0], [3.0, 3.0]]).reshape(1, 1, 2, 2)  # all right
    >>> attention_transfer(s, t)  # â_S = [1, 0], â_T = [0, 1]
    Array([1.], dtype=float32)
  """
  _check_spatial_pair(student_features, teacher_features,
                      'student_features', 'teacher_features')
  if not _checks.is_traced(p) and not p >= 1:
    raise ValueError(f'`p` must be >= 1, got {p}.')
  s, t = _floats((student_features, 'student_features'),
                 (teacher_features, 'teacher_features'))
  where = _checks.check_where(where, s.shape[:-1])
  diff = _attention_map(s, p, where) - _attention_map(t, p, where)
  return _checks.masked_mean(jnp.square(diff), _flatten_where(where, 2), axis=-1)


def nst_mmd(
    student_features: jax.Array,
    teacher_features: jax.Array,
    *,
    kernel: str = 'polynomial',
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Neuron selectivity transfer: squared MMD between channel distributions.

  Each channel's spatial map is one sample: ``[..., H, W, C]`` becomes ``C``
  vectors of length ``H·W``, each L2-normalised over ``H·W``. With the
  student samples ``s_i`` and teacher samples ``t_j`` the loss is the biased
  squared MMD

  ``MMD² = mean_{i,i'} k(s_i, s_i') + mean_{j,j'} k(t_j, t_j') − 2 mean_{i,j} k(s_i, t_j)``.

  Args:
    student_features: ``[..., H, W, C_s]`` student feature map.
    teacher_features: ``[..., H, W, C_t]`` teacher feature map; all axes but
      the channel axis must match the student's.
    kernel: ``'polynomial'`` for ``k(x, y) = (xᵀy)²`` (the paper's main
      choice, ``d = 2, c = 0``) or ``'linear'`` for ``k(x, y) = xᵀy``.
    where: optional boolean mask broadcastable to ``[..., H, W]`` selecting
      the valid spatial positions. Each channel's sample vector is restricted
      to the kept positions (before its normalisation), which equals
      computing the loss on the kept positions only (e.g. a rectangular mask
      equals cropping both maps). The mean over channel pairs is unchanged.
      An example with no valid position has all-zero samples and gives 0.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for inputs of rank < 3, mismatched ``[..., H, W]``,
      non-floating inputs, a bad mask or an unknown ``kernel``.

  References:
    Huang & Wang, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer", arXiv:1707.01219, 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import nst_mmd
    >>> s = jnp.array([1.0, 0.0]).reshape(1, 1, 2, 1)
    >>> t = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
    >>> nst_mmd(s, t)  # k(s,s) = k(t,t) = 1, k(s,t) = 0
    Array([2.], dtype=float32)
    >>> nst_mmd(s, jnp.concatenate([s, t], axis=-1), kernel='linear')
    Array([0.5], dtype=float32)
  """
  if kernel not in ('polynomial', 'linear'):
    raise ValueError(f"`kernel` must be 'polynomial' or 'linear', got {kernel!r}.")
  _check_spatial_pair(student_features, teacher_features,
                      'student_features', 'teacher_features')
  s, t = _floats((student_features, 'student_features'),
                 (teacher_features, 'teacher_features'))
  where = _checks.check_where(where, s.shape[:-1])

  def samples(f):
    f = _zero_masked(f, None if where is None else where[..., None])
    f = f.reshape(f.shape[:-3] + (-1, f.shape[-1]))  # [..., HW, C]
    return _l2_normalize(f, axis=-2)

  s, t = samples(s), samples(t)

  def mean_kernel(x, y):
    gram = jnp.einsum('...nc,...nd->...cd', x, y)
    k = jnp.square(gram) if kernel == 'polynomial' else gram
    return jnp.mean(k, axis=(-2, -1))

  return mean_kernel(s, s) + mean_kernel(t, t) - 2.0 * mean_kernel(s, t)


def factor_transfer(
    student_factors: jax.Array,
    teacher_factors: jax.Array,
    *,
    p: int = 1,
    feature_ndim: Optional[int] = None,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Factor transfer (FT): distance between L2-normalised factors.

  Each example's factor is flattened over its trailing ``feature_ndim`` axes
  and L2-normalised, ``F̂ = F / max(‖F‖₂, 1e-12)``. The loss is
  ``mean_f |F̂_S − F̂_T|^p``: for ``p=1`` (the paper's choice) this is the
  paper's ``‖F̂_T − F̂_S‖_1`` divided by the number of factor elements ``n``
  (the authors' code averages); for ``p=2`` it is ``‖F̂_T − F̂_S‖²_2 / n``.
  The paraphraser (teacher side) and translator (student side) networks that
  produce the factors are the caller's models.

  Args:
    student_factors: ``[B, ...]`` translated student factors.
    teacher_factors: ``[B, ...]`` paraphrased teacher factors, same shape.
    p: 1 or 2.
    feature_ndim: number of trailing axes flattened per example; ``None``
      (default) uses all axes after the first, ``[B, ...] -> [B]``.
    where: optional boolean mask broadcastable to the shape of
      ``student_factors``; only entries where it is True enter the
      normalisation and the mean (``n`` counts the kept entries), which
      equals slicing them out. A fully masked example gives 0.

  Returns:
    Per-example loss with the leading (non-flattened) axes, in at least
    float32.

  Raises:
    ValueError: for mismatched shapes, non-floating inputs, ``p`` not in
      ``{1, 2}``, a bad ``feature_ndim`` or a bad mask.

  References:
    Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS 2018, arXiv:1802.04977.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import factor_transfer
    >>> s, t = jnp.array([[3.0, 4.0]]), jnp.array([[8.0, 6.0]])
    >>> round(float(factor_transfer(s, t)[0]), 4)  # mean(|0.6 - 0.8|, |0.8 - 0.6|)
    0.2
  """
  if p not in (1, 2) or isinstance(p, bool):
    raise ValueError(f'`p` must be 1 or 2, got {p!r}.')
  _checks.check_same_shape(student_factors, teacher_factors,
                           'student_factors', 'teacher_factors')
  axes = _feature_axes(student_factors, feature_ndim, 'student_factors')
  s, t = _floats((student_factors, 'student_factors'), (teacher_factors, 'teacher_factors'))
  where = _flatten_where(_checks.check_where(where, s.shape), len(axes))
  lead = s.shape[:s.ndim - len(axes)]
  s = _l2_normalize(_zero_masked(s.reshape(lead + (-1,)), where), axis=-1)
  t = _l2_normalize(_zero_masked(t.reshape(lead + (-1,)), where), axis=-1)
  diff = s - t
  return _checks.masked_mean(jnp.abs(diff) if p == 1 else jnp.square(diff), where, axis=-1)


def vid(
    teacher_features: jax.Array,
    mean: jax.Array,
    log_variance: jax.Array,
    *,
    include_constant: bool = False,
    feature_ndim: Optional[int] = None,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Variational information distillation (VID): Gaussian negative log-likelihood.

  VID maximises a variational lower bound on the mutual information between
  teacher and student features by fitting ``q(t | s) = N(t; μ(s), σ²)``. The
  caller's regressor predicts the mean ``μ(s)`` from the student features,
  and ``log σ²`` is typically a learned per-channel parameter (the paper uses
  ``σ² = softplus(α) + ε``; pass ``jnp.log(jax.nn.softplus(alpha) + eps)``).
  This function is the likelihood part only:

  ``loss = mean_f ½ (log σ²_f + (t_f − μ_f)² / σ²_f)``  [``+ ½ log 2π``]

  averaged over the trailing ``feature_ndim`` axes (positions and channels).
  The student features enter only through ``mean``, so they are not an
  argument.

  Args:
    teacher_features: ``[B, ...]`` teacher features ``t``.
    mean: predicted mean ``μ(s)``, same shape as ``teacher_features``.
    log_variance: predicted ``log σ²``, broadcastable to
      ``teacher_features.shape`` (e.g. ``[C]`` per channel, or full shape).
    include_constant: add ``½ log 2π`` so the value is the exact Gaussian NLL.
    feature_ndim: number of trailing axes averaged per example; ``None``
      (default) averages all axes after the first, ``[B, ...] -> [B]``.
    where: optional boolean mask broadcastable to the shape of
      ``teacher_features``; only entries where it is True enter the mean,
      which equals slicing them out (of all three arrays). A fully masked
      example gives 0.

  Returns:
    Per-example loss with the leading (non-averaged) axes, in at least
    float32.

  Raises:
    ValueError: for a ``mean`` of another shape, a ``log_variance`` that does
      not broadcast to the teacher's shape, non-floating inputs, a bad
      ``feature_ndim`` or a bad mask.

  References:
    Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation
    for Knowledge Transfer", CVPR 2019, arXiv:1904.05835.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import vid
    >>> t = jnp.zeros((1, 2, 2, 3))
    >>> vid(t, t + 1.0, jnp.zeros((3,)))  # ½ (0 + 1² / 1)
    Array([0.5], dtype=float32)
  """
  _checks.check_same_shape(mean, teacher_features, 'mean', 'teacher_features')
  axes = _feature_axes(teacher_features, feature_ndim, 'teacher_features')
  t, mu, log_var = _floats((teacher_features, 'teacher_features'), (mean, 'mean'),
                           (log_variance, 'log_variance'))
  try:
    ok = jnp.broadcast_shapes(log_var.shape, t.shape) == t.shape
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(
        f'`log_variance` with shape {log_var.shape} must broadcast to the shape '
        f'of `teacher_features` {t.shape}.')
  where = _checks.check_where(where, t.shape)
  nll = 0.5 * (log_var + jnp.square(_zero_masked(t - mu, where)) * jnp.exp(-log_var))
  if include_constant:
    nll = nll + 0.5 * math.log(2.0 * math.pi)
  return _checks.masked_mean(nll, where, axis=axes)


def _fsp(x, y, name_x: str, name_y: str) -> jax.Array:
  _check_spatial_pair(x, y, name_x, name_y)
  x, y = _floats((x, name_x), (y, name_y))
  hw = x.shape[-3] * x.shape[-2]
  return jnp.einsum('...hwi,...hwj->...ij', x, y) / hw


def fsp_matrix(features_in: jax.Array, features_out: jax.Array) -> jax.Array:
  r"""Flow of solution procedure (FSP) matrix between two feature maps.

  ``G_ij = (1 / (H·W)) Σ_{h,w} F_in[h, w, i] · F_out[h, w, j]``.

  Args:
    features_in: ``[..., H, W, C_in]`` features at the start of a block.
    features_out: ``[..., H, W, C_out]`` features at its end (same
      ``[..., H, W]``; pool the larger map first if they differ).

  Returns:
    ``[..., C_in, C_out]`` FSP matrices, in at least float32.

  Raises:
    ValueError: for inputs of rank < 3, mismatched ``[..., H, W]`` or
      non-floating inputs.

  References:
    Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", CVPR 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import fsp_matrix
    >>> fsp_matrix(jnp.ones((1, 2, 2, 1)), jnp.full((1, 2, 2, 2), 3.0))
    Array([[[3., 3.]]], dtype=float32)
  """
  return _fsp(features_in, features_out, 'features_in', 'features_out')


def fsp_loss(
    student_in: jax.Array,
    student_out: jax.Array,
    teacher_in: jax.Array,
    teacher_out: jax.Array,
) -> jax.Array:
  r"""FSP loss: mean squared difference between student and teacher FSP matrices.

  ``loss = mean_{i,j} (G_S,ij − G_T,ij)²`` with ``G`` from :func:`fsp_matrix`.
  The paper sums over entries (``‖G_T − G_S‖²_F``); the mean, as in common
  implementations, divides it by ``C_in·C_out``. Student and teacher may
  differ in spatial size (each matrix is normalised by its own ``H·W``) but
  must have the same channel counts. Sum over block pairs with weights in the
  caller.

  Args:
    student_in: ``[..., H_s, W_s, C_in]`` student features entering a block.
    student_out: ``[..., H_s, W_s, C_out]`` student features leaving it.
    teacher_in: ``[..., H_t, W_t, C_in]`` teacher features entering a block.
    teacher_out: ``[..., H_t, W_t, C_out]`` teacher features leaving it.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for mismatched spatial shapes within a network, mismatched
      leading axes or channel counts between the networks, or non-floating
      inputs.

  References:
    Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", CVPR 2017.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import fsp_loss
    >>> x = jnp.ones((1, 2, 2, 1))
    >>> fsp_loss(x, x, x, 2.0 * x)  # G_S = [[1]], G_T = [[2]]
    Array([1.], dtype=float32)
  """
  g_s = _fsp(student_in, student_out, 'student_in', 'student_out')
  g_t = _fsp(teacher_in, teacher_out, 'teacher_in', 'teacher_out')
  if jnp.shape(student_in)[:-3] != jnp.shape(teacher_in)[:-3]:
    raise ValueError(
        f'`student_in` and `teacher_in` must have the same leading axes, got '
        f'shapes {jnp.shape(student_in)} and {jnp.shape(teacher_in)}.')
  if jnp.shape(student_in)[-1] != jnp.shape(teacher_in)[-1]:
    raise ValueError(
        f'`student_in` and `teacher_in` must have the same number of channels, '
        f'got shapes {jnp.shape(student_in)} and {jnp.shape(teacher_in)}.')
  if jnp.shape(student_out)[-1] != jnp.shape(teacher_out)[-1]:
    raise ValueError(
        f'`student_out` and `teacher_out` must have the same number of channels, '
        f'got shapes {jnp.shape(student_out)} and {jnp.shape(teacher_out)}.')
  dtype = jnp.result_type(g_s, g_t)
  return jnp.mean(jnp.square(g_s.astype(dtype) - g_t.astype(dtype)), axis=(-2, -1))
