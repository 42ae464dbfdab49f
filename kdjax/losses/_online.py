"""Online-distillation objectives: ONE's branch ensemble and BYOT's self-distillation.

Both take a leading head axis ``[K, ...]`` (branches or exits) and return
per-example values; no ``stop_gradient`` (the steps in :mod:`kdjax.online`
hold the ensemble and the deepest exit constant).

References:
  Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native Ensemble",
  NeurIPS 2018, arXiv:1806.04606.
  Zhang et al., "Be Your Own Teacher: Improve the Performance of Convolutional
  Neural Networks via Self Distillation", ICCV 2019, arXiv:1905.08094.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from kdjax.losses import _checks
from kdjax.losses._logits import cross_entropy
from kdjax.losses._logits import kl_distillation


def _check_heads(head_logits, labels, name: str):
  """Checks ``[K, ..., C]`` logits and ``[...]`` labels; returns float logits and labels."""
  head_logits = _checks.as_float(head_logits, name)
  _checks.check_min_rank(head_logits, 2, name)
  labels = jnp.asarray(labels)
  if labels.shape != head_logits.shape[1:-1]:
    raise ValueError(
        f'`labels` must have shape {head_logits.shape[1:-1]} (the shape of `{name}` without '
        f'its leading head axis and class axis), got {labels.shape}.')
  return head_logits, labels


def one_loss_terms(branch_logits: jax.Array, ensemble_logits: jax.Array, labels: jax.Array, *,
                   temperature: float = 3.0,
                   target_logits: Optional[jax.Array] = None) -> dict[str, jax.Array]:
  r"""The three terms of the ONE objective, per example.

  * ``'ce_branches'``: ``Σ_i CE(y, z_i)``;
  * ``'ce_ensemble'``: ``CE(y, z_e)``;
  * ``'kl'``: ``τ² · Σ_i KL(p_t^τ ‖ p_i^τ)`` with ``t = target_logits``
    (default: the ensemble logits ``z_e``).

  Their sum is :func:`one_loss`. ``target_logits`` is where a train step
  passes ``stop_gradient(z_e)``, so that the ensemble teaches the branches
  through the KL term but learns only from its own cross-entropy.

  Args:
    branch_logits: ``[m, ..., C]`` logits ``z_i`` of the ``m`` branches.
    ensemble_logits: ``[..., C]`` gated ensemble logits ``z_e = Σ_i g_i z_i``.
    labels: ``[...]`` integer classes ``y``.
    temperature: softmax temperature τ > 0 of the KL term (paper: 3).
    target_logits: ``[..., C]`` teacher logits of the KL term; ``None`` uses
      ``ensemble_logits``.

  Returns:
    ``{'ce_branches', 'ce_ensemble', 'kl'}``, each ``[...]``.

  Raises:
    ValueError: for inconsistent shapes, non-floating logits, non-integer
      labels or ``temperature <= 0``.

  References:
    Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native Ensemble",
    NeurIPS 2018, arXiv:1806.04606 (Eq. 5).

  Examples:
    >>> import jax.numpy as jnp
    >>> z = jnp.zeros((2, 1, 3))  # two uniform branches
    >>> terms = one_loss_terms(z, z[0], jnp.array([0]))
    >>> {k: round(float(v[0]), 4) for k, v in terms.items()}
    {'ce_branches': 2.1972, 'ce_ensemble': 1.0986, 'kl': 0.0}
  """
  branch_logits, labels = _check_heads(branch_logits, labels, 'branch_logits')
  _checks.check_same_shape(ensemble_logits, branch_logits[0], 'ensemble_logits',
                           'branch_logits[0]')
  target = ensemble_logits if target_logits is None else target_logits
  _checks.check_same_shape(target, ensemble_logits, 'target_logits', 'ensemble_logits')
  _checks.check_positive(temperature, 'temperature')
  m = branch_logits.shape[0]
  ce_branches = cross_entropy(branch_logits, jnp.broadcast_to(labels, (m,) + labels.shape))
  target = _checks.as_float(target, 'target_logits')
  kl = kl_distillation(branch_logits, jnp.broadcast_to(target, branch_logits.shape),
                       temperature=temperature)
  return {'ce_branches': jnp.sum(ce_branches, axis=0),
          'ce_ensemble': cross_entropy(ensemble_logits, labels),
          'kl': jnp.sum(kl, axis=0)}


def one_loss(branch_logits: jax.Array, ensemble_logits: jax.Array, labels: jax.Array, *,
             temperature: float = 3.0, target_logits: Optional[jax.Array] = None) -> jax.Array:
  r"""The ONE objective ``Σ_i CE(y, z_i) + CE(y, z_e) + τ²·Σ_i KL(p_e^τ ‖ p_i^τ)``.

  ``p^τ = softmax(z/τ)``; ``z_i`` are the branch logits and ``z_e`` the gated
  ensemble. Pure and per example: the step decides what is held constant (it
  passes ``target_logits=stop_gradient(z_e)``; see :func:`one_loss_terms`).

  Args:
    branch_logits: ``[m, ..., C]`` branch logits.
    ensemble_logits: ``[..., C]`` ensemble logits.
    labels: ``[...]`` integer classes.
    temperature: softmax temperature τ > 0 (paper: 3).
    target_logits: ``[..., C]`` teacher logits of the KL term (default:
      ``ensemble_logits``).

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: as :func:`one_loss_terms`.

  References:
    Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native Ensemble",
    NeurIPS 2018, arXiv:1806.04606.

  Examples:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[[2.0, 0.0]], [[0.0, 2.0]]])  # [m=2, B=1, C=2]
    >>> one_loss(z, z.mean(0), jnp.array([0]), temperature=1.0)
    Array([3.8145...], dtype=float32)
  """
  terms = one_loss_terms(branch_logits, ensemble_logits, labels, temperature=temperature,
                         target_logits=target_logits)
  return terms['ce_branches'] + terms['ce_ensemble'] + terms['kl']


def byot_loss_terms(exit_logits: jax.Array, exit_features: jax.Array, labels: jax.Array, *,
                    alpha: float = 0.3, temperature: float = 3.0, feature_weight: float = 0.03,
                    feature_reduction: str = 'sum', target_logits: Optional[jax.Array] = None,
                    target_features: Optional[jax.Array] = None) -> dict[str, jax.Array]:
  r"""The weighted terms of the BYOT objective, per exit and per example.

  With exits ``k = 1..K`` (the last is the deepest), teacher logits ``t`` and
  features ``F_t`` (default: the deepest exit's ``z_K``, ``F_K``):

  * ``'ce'``: ``(1−α)·CE(y, z_k)`` for ``k < K`` and ``CE(y, z_K)``;
  * ``'kl'``: ``α·τ²·KL(p_t^τ ‖ p_k^τ)`` for ``k < K``, 0 for the deepest;
  * ``'feature'``: ``λ·‖F_k − F_t‖²`` (squared L2 norm over the feature
    axes, the paper's choice; ``feature_reduction='mean'`` divides it by the
    feature size) for ``k < K``, 0 for the deepest.

  Their sum over terms and exits is :func:`byot_loss`. A train step passes
  ``target_logits=stop_gradient(z_K)`` and
  ``target_features=stop_gradient(F_K)`` so the deepest exit learns from the
  labels only.

  Args:
    exit_logits: ``[K, ..., C]`` logits of the exits, shallow to deep.
    exit_features: ``[K, ..., *F]`` the features ``F_k`` fed to each exit's
      classifier (leading axes as ``exit_logits`` without ``C``).
    labels: ``[...]`` integer classes.
    alpha: weight ``α ∈ [0, 1]`` of the KL term against the cross-entropy.
    temperature: softmax temperature τ > 0.
    feature_weight: weight ``λ >= 0`` of the feature term.
    feature_reduction: ``'sum'`` (``‖·‖²``, the paper) or ``'mean'`` (mean
      squared difference per feature entry) over the feature axes.
    target_logits: ``[..., C]`` teacher logits (default: ``exit_logits[-1]``).
    target_features: ``[..., *F]`` teacher features (default:
      ``exit_features[-1]``).

  Returns:
    ``{'ce', 'kl', 'feature'}``, each ``[K, ...]``.

  Raises:
    ValueError: for inconsistent shapes, non-floating inputs, non-integer
      labels, or options out of range.

  References:
    Zhang, Song, Gao, Chen, Bao & Ma, "Be Your Own Teacher: Improve the
    Performance of Convolutional Neural Networks via Self Distillation",
    ICCV 2019, arXiv:1905.08094 (§3.2, Eq. 1–4).

  Examples:
    >>> import jax.numpy as jnp
    >>> z = jnp.zeros((2, 1, 2))
    >>> f = jnp.array([[[1.0, 1.0]], [[0.0, 0.0]]])
    >>> terms = byot_loss_terms(z, f, jnp.array([1]), alpha=0.5, feature_weight=0.1)
    >>> terms['ce'].round(4), terms['feature']
    (Array([[0.3466], [0.6931]], dtype=float32), Array([[0.2], [0. ]], dtype=float32))
  """
  exit_logits, labels = _check_heads(exit_logits, labels, 'exit_logits')
  exit_features = _checks.as_float(exit_features, 'exit_features')
  lead = exit_logits.shape[:-1]
  if exit_features.shape[:len(lead)] != lead:
    raise ValueError(
        f'`exit_features` must start with the leading axes {lead} of `exit_logits`, got shape '
        f'{exit_features.shape}.')
  _checks.check_in_range(alpha, 'alpha', 0.0, 1.0)
  _checks.check_positive(temperature, 'temperature')
  _checks.check_in_range(feature_weight, 'feature_weight', 0.0, float('inf'))
  if feature_reduction not in ('sum', 'mean'):
    raise ValueError(f"`feature_reduction` must be 'sum' or 'mean', got {feature_reduction!r}.")
  if target_logits is None:
    t = exit_logits[-1]
  else:
    t = _checks.as_float(target_logits, 'target_logits')
  if target_features is None:
    f_t = exit_features[-1]
  else:
    f_t = _checks.as_float(target_features, 'target_features')
  _checks.check_same_shape(t, exit_logits[-1], 'target_logits', 'exit_logits[-1]')
  _checks.check_same_shape(f_t, exit_features[-1], 'target_features', 'exit_features[-1]')
  num_exits = exit_logits.shape[0]
  deepest = (jnp.arange(num_exits) == num_exits - 1).reshape((num_exits,) + (1,) * labels.ndim)
  ce = cross_entropy(exit_logits, jnp.broadcast_to(labels, lead))
  kl = kl_distillation(exit_logits, jnp.broadcast_to(t, exit_logits.shape),
                       temperature=temperature)
  diff = exit_features - f_t
  reduce = jnp.sum if feature_reduction == 'sum' else jnp.mean
  sq = reduce(jnp.square(diff), axis=tuple(range(len(lead), diff.ndim)))
  return {'ce': jnp.where(deepest, ce, (1.0 - alpha) * ce),
          'kl': jnp.where(deepest, 0.0, alpha * kl),
          'feature': jnp.where(deepest, 0.0, feature_weight * sq)}


def byot_loss(exit_logits: jax.Array, exit_features: jax.Array, labels: jax.Array, *,
              alpha: float = 0.3, temperature: float = 3.0, feature_weight: float = 0.03,
              feature_reduction: str = 'sum', target_logits: Optional[jax.Array] = None,
              target_features: Optional[jax.Array] = None) -> jax.Array:
  r"""The BYOT self-distillation objective, summed over the exits.

  ``CE(y, z_K) + Σ_{k<K} [(1−α)·CE(y, z_k) + α·τ²·KL(p_K^τ ‖ p_k^τ) +
  λ·‖F_k − F_K‖²]``: the deepest exit ``K`` learns from the labels, every
  shallow exit also from the deepest exit's softened prediction and features.
  Pure and per example: the step passes the deepest outputs through
  ``stop_gradient`` as ``target_logits``/``target_features`` (see
  :func:`byot_loss_terms`).

  Defaults ``α = 0.3``, ``τ = 3``, ``λ = 0.03`` are common BYOT settings on
  CIFAR (the paper tunes them per dataset).

  Args:
    exit_logits: ``[K, ..., C]`` exit logits, shallow to deep.
    exit_features: ``[K, ..., *F]`` exit features.
    labels: ``[...]`` integer classes.
    alpha: KL weight ``α ∈ [0, 1]``.
    temperature: softmax temperature τ > 0.
    feature_weight: feature-term weight ``λ >= 0``.
    feature_reduction: ``'sum'`` (``‖·‖²``, the paper) or ``'mean'`` over
      the feature axes.
    target_logits: teacher logits (default ``exit_logits[-1]``).
    target_features: teacher features (default ``exit_features[-1]``).

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: as :func:`byot_loss_terms`.

  References:
    Zhang et al., "Be Your Own Teacher", ICCV 2019, arXiv:1905.08094.

  Examples:
    >>> import jax.numpy as jnp
    >>> z = jnp.zeros((3, 1, 2))  # identical exits: CE only, ln 2 each
    >>> byot_loss(z, jnp.zeros((3, 1, 4)), jnp.array([0]), alpha=0.5)
    Array([1.3862...], dtype=float32)
  """
  terms = byot_loss_terms(exit_logits, exit_features, labels, alpha=alpha,
                          temperature=temperature, feature_weight=feature_weight,
                          feature_reduction=feature_reduction, target_logits=target_logits,
                          target_features=target_features)
  return jnp.sum(terms['ce'] + terms['kl'] + terms['feature'], axis=0)
