"""Online distillation without a pre-trained teacher: ONE and BYOT.

* **ONE** (Lan et al. 2018): m branches on shared low layers and a gate; the
  gated ensemble of the branches is the teacher of every branch.
  :func:`one_loss` is the objective, :func:`make_one_step` the train step for
  a model such as :func:`kdjax.models.one_resnet`.
* **BYOT** (Zhang et al. 2019): exit heads after every stage; the deepest head
  teaches the shallow ones. :func:`byot_loss` is the objective,
  :func:`make_byot_step` the train step for a model such as
  :func:`kdjax.models.byot_resnet`, and :func:`early_exit_table` /
  :func:`plot_early_exit` measure the accuracy/compute trade-off of exiting at
  the first confident head.

The losses are pure per-example functions without ``stop_gradient``; the steps
hold the teachers' outputs (the ensemble, the deepest head) constant. The
steps have the signature of :func:`kdjax.steps.make_distill_step`,
``step(state, teacher_variables, batch, rng) -> (state, metrics)`` with
``teacher_variables`` unused (pass ``None``), so :func:`kdjax.train.fit` drives
them. They read the per-head outputs from the model's sown features:
``'branch_logits'`` ``[m, B, C]`` (ONE; the model's logits are the ensemble) and
``'exit_logits'`` ``[K, B, C]`` / ``'exit_features'`` ``[K, B, D]`` (BYOT).

Example (ONE on MNIST-1D)::

  model = models.one_cnn1d(num_classes=10, num_branches=3)
  variables = models.init_variables(model, jax.random.key(0), x[:1])
  state = TrainState.create(apply_fn=model, variables=variables, tx=optax.adam(1e-3))
  step = jax.jit(online.make_one_step(temperature=3.0), donate_argnums=0)
  state, metrics = step(state, None, {'x': x, 'label': y}, jax.random.key(1))
  branch, branch_vars = model.export_branch(state.variables, 0)  # deploy one branch
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _evaluation
from kdjax import _update
from kdjax import losses
from kdjax._update import batch_mean
from kdjax.losses import _checks
from kdjax.models._wrap import as_forward
from kdjax.models._wrap import ModelOutput
from kdjax.state import TrainState


ONE_FEATURE = 'branch_logits'
EXIT_LOGITS = 'exit_logits'
EXIT_FEATURES = 'exit_features'


# --------------------------------------------------------------------- losses

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
  ce_branches = losses.cross_entropy(branch_logits, jnp.broadcast_to(labels, (m,) + labels.shape))
  target = _checks.as_float(target, 'target_logits')
  kl = losses.kl_distillation(branch_logits, jnp.broadcast_to(target, branch_logits.shape),
                              temperature=temperature)
  return {'ce_branches': jnp.sum(ce_branches, axis=0),
          'ce_ensemble': losses.cross_entropy(ensemble_logits, labels),
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
  ce = losses.cross_entropy(exit_logits, jnp.broadcast_to(labels, lead))
  kl = losses.kl_distillation(exit_logits, jnp.broadcast_to(t, exit_logits.shape),
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


# ---------------------------------------------------------------------- steps

def _feature(out: ModelOutput, key: str, who: str) -> jax.Array:
  if key not in out.features:
    raise ValueError(
        f'{who} needs the model feature {key!r}, but the model sows only '
        f'{sorted(out.features)}. Use a model from kdjax.models (one_*, byot_*) or sow it '
        "into 'intermediates'.")
  return out.features[key]


def _online_step(objective: Callable[[ModelOutput, jax.Array], Mapping[str, jax.Array]],
                 head_key: str, head_prefix: str, head_start: int, who: str, *,
                 axis_name: Optional[str], skip_nonfinite: bool):
  """A train step whose loss is ``Σ parts`` of ``objective(out, labels)`` (per example)."""

  def step(state: TrainState, teacher_variables, batch, rng):
    del teacher_variables  # Online distillation: the teacher is the model itself.
    if 'label' not in batch:
      raise ValueError(f'{who} needs labels, but the batch has no "label" key.')
    x = batch['x']

    def loss_fn(trainable, key):
      out = state.apply_fn({'params': trainable['params'], **state.model_state}, x,
                           train=True, rngs={'dropout': key})
      clean, label_metrics = _update.clean_labels(batch, out.logits.shape[-1],
                                                  axis_name=axis_name)
      mask = clean['mask']
      parts = {k: batch_mean(v, mask, axis_name)
               for k, v in objective(out, clean['label']).items()}
      heads = jax.lax.stop_gradient(_feature(out, head_key, who))
      return sum(parts.values()), (out.model_state, parts, (out.logits, heads, clean,
                                                            label_metrics))

    new_state, info, metrics = _update.update(
        state, loss_fn, rng, axis_name=axis_name, skip_nonfinite=skip_nonfinite)
    _, (logits, heads, clean, label_metrics) = info.aux
    metrics.update(label_metrics)
    metrics.update(_update.accuracy_metrics(logits, clean, axis_name=axis_name))
    correct = (jnp.argmax(heads, -1) == clean['label']).astype(jnp.float32)
    head_acc = _update.psum(
        jax.vmap(lambda c: batch_mean(c, clean['mask'], axis_name))(correct), axis_name)
    for k in range(heads.shape[0]):
      metrics[f'accuracy/{head_prefix}{k + head_start}'] = head_acc[k]
    return new_state, metrics

  return step


def make_one_step(*, temperature: float = 3.0, feature: str = ONE_FEATURE,
                  axis_name: Optional[str] = None, skip_nonfinite: bool = True):
  """Builds the ONE train step ``step(state, teacher_variables, batch, rng)``.

  The model's logits are the ensemble ``z_e`` and its feature
  ``'branch_logits'`` the ``[m, B, C]`` branch logits (as
  :class:`kdjax.models.ONE` sows them). The loss is :func:`one_loss` averaged
  over the valid examples, with the ensemble's KL target held constant
  (``stop_gradient``): the branches learn from the ensemble, the ensemble and
  gate from the labels only. ``teacher_variables`` is unused (pass ``None``);
  the signature is that of :func:`kdjax.steps.make_distill_step`, so
  :func:`kdjax.train.fit` drives it.

  Args:
    temperature: softmax temperature τ of the KL term (paper: 3).
    feature: name of the ``[m, B, C]`` branch-logits feature (e.g.
      ``'one/branch_logits'`` when the ONE model is a submodule named ``one``).
    axis_name: device axis under ``pmap``/``shard_map`` (exact global means).
    skip_nonfinite: keep the old state when the loss or a gradient is not finite.

  Returns:
    A pure ``step(state, teacher_variables, batch, rng) -> (state, metrics)``
    to jit. Metrics: ``'loss'``, ``'loss/ce_branches'``, ``'loss/ce_ensemble'``,
    ``'loss/kl'``, ``'accuracy'`` (the ensemble), ``'accuracy/branch{i}'``
    (``i = 0..m−1``, the index of :meth:`~kdjax.models.ONE.export_branch`),
    ``'grad_norm'`` and ``'skipped'``.

  Raises:
    ValueError: for ``temperature <= 0`` (at build time); a batch without
      labels or a model without ``'branch_logits'`` (at trace time).

  References:
    Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native Ensemble",
    NeurIPS 2018, arXiv:1806.04606.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> from kdjax.state import TrainState
    >>> def toy_one(p, x):  # two linear branches and a uniform gate
    ...   z = jnp.einsum('bd,mdc->mbc', x, p['w'])
    ...   return z.mean(0), {'branch_logits': z}
    >>> state = TrainState.create(apply_fn=function_forward(toy_one),
    ...                           variables={'params': {'w': jnp.zeros((2, 5, 3))}},
    ...                           tx=optax.sgd(0.1))
    >>> batch = {'x': jnp.ones((4, 5)), 'label': jnp.array([0, 1, 2, 0])}
    >>> state, metrics = jax.jit(make_one_step())(state, None, batch, jax.random.key(1))
    >>> float(metrics['loss'])  # uniform outputs: 3 cross-entropies of ln 3, KL 0
    3.2958...
    >>> sorted(k for k in metrics if k.startswith('accuracy'))
    ['accuracy', 'accuracy/branch0', 'accuracy/branch1']
  """
  _checks.check_positive(temperature, 'temperature')

  def objective(out, labels):
    branches = _feature(out, feature, 'make_one_step')
    return one_loss_terms(branches, out.logits, labels, temperature=temperature,
                          target_logits=jax.lax.stop_gradient(out.logits))

  return _online_step(objective, feature, 'branch', 0, 'make_one_step',
                      axis_name=axis_name, skip_nonfinite=skip_nonfinite)


def make_byot_step(*, alpha: float = 0.3, temperature: float = 3.0, feature_weight: float = 0.03,
                   feature_reduction: str = 'sum', logits_feature: str = EXIT_LOGITS,
                   embedding_feature: str = EXIT_FEATURES,
                   axis_name: Optional[str] = None, skip_nonfinite: bool = True):
  """Builds the BYOT train step ``step(state, teacher_variables, batch, rng)``.

  The model sows ``'exit_logits'`` ``[K, B, C]`` and ``'exit_features'``
  ``[K, B, D]`` (as :class:`kdjax.models.BYOT` does). The loss is
  :func:`byot_loss` averaged over the valid examples, with the deepest exit's
  logits and features held constant as the shallow exits' targets: the deepest
  exit learns from its cross-entropy only. ``teacher_variables`` is unused
  (pass ``None``).

  Args:
    alpha: KL weight ``α ∈ [0, 1]`` of the shallow exits.
    temperature: softmax temperature τ > 0.
    feature_weight: feature-term weight ``λ >= 0``.
    feature_reduction: ``'sum'`` (``‖·‖²``, the paper) or ``'mean'`` over the
      feature axes; with wide flattened features (e.g. the 1-D CNN's 125) the
      sum can dominate the loss at ``λ = 0.03``.
    logits_feature: name of the ``[K, B, C]`` exit-logits feature.
    embedding_feature: name of the ``[K, B, ...]`` exit-features feature.
    axis_name: device axis under ``pmap``/``shard_map``.
    skip_nonfinite: keep the old state when the loss or a gradient is not finite.

  Returns:
    A pure step to jit. Metrics: ``'loss'``, ``'loss/ce'``, ``'loss/kl'`` and
    ``'loss/feature'`` (each the weighted contribution, summed over exits;
    they add up to ``'loss'``), ``'accuracy'`` (the deepest exit),
    ``'accuracy/exit{k}'`` (``k = 1..K``), ``'grad_norm'``, ``'skipped'``.

  Raises:
    ValueError: for options out of range (at build time); a batch without
      labels or a model without the exit features (at trace time).

  References:
    Zhang et al., "Be Your Own Teacher", ICCV 2019, arXiv:1905.08094.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> from kdjax.state import TrainState
    >>> def toy_byot(p, x):  # three linear exits with tanh features
    ...   f = jnp.tanh(jnp.einsum('bd,kde->kbe', x, p['v']))
    ...   z = jnp.einsum('kbe,kec->kbc', f, p['w'])
    ...   return z[-1], {'exit_logits': z, 'exit_features': f}
    >>> params = {'v': jnp.zeros((3, 5, 4)), 'w': jnp.zeros((3, 4, 2))}
    >>> state = TrainState.create(apply_fn=function_forward(toy_byot),
    ...                           variables={'params': params}, tx=optax.sgd(0.1))
    >>> batch = {'x': jnp.ones((4, 5)), 'label': jnp.array([0, 1, 1, 0])}
    >>> step = jax.jit(make_byot_step(alpha=0.3))
    >>> state, metrics = step(state, None, batch, jax.random.key(1))
    >>> float(metrics['loss'])  # uniform exits: (1 + 2 × 0.7) × ln 2
    1.6635...
    >>> sorted(k for k in metrics if k.startswith('accuracy/'))
    ['accuracy/exit1', 'accuracy/exit2', 'accuracy/exit3']
  """
  _checks.check_in_range(alpha, 'alpha', 0.0, 1.0)
  _checks.check_positive(temperature, 'temperature')
  _checks.check_in_range(feature_weight, 'feature_weight', 0.0, float('inf'))
  if feature_reduction not in ('sum', 'mean'):
    raise ValueError(f"`feature_reduction` must be 'sum' or 'mean', got {feature_reduction!r}.")

  def objective(out, labels):
    z = _feature(out, logits_feature, 'make_byot_step')
    f = _feature(out, embedding_feature, 'make_byot_step')
    terms = byot_loss_terms(
        z, f, labels, alpha=alpha, temperature=temperature, feature_weight=feature_weight,
        feature_reduction=feature_reduction, target_logits=jax.lax.stop_gradient(z[-1]),
        target_features=jax.lax.stop_gradient(f[-1]))
    return {k: jnp.sum(v, axis=0) for k, v in terms.items()}

  return _online_step(objective, logits_feature, 'exit', 1, 'make_byot_step',
                      axis_name=axis_name, skip_nonfinite=skip_nonfinite)


# ----------------------------------------------------------------- evaluation

def make_heads_eval_step(apply_fn, *, feature: str, axis_name: Optional[str] = None):
  """Builds ``eval_step(variables, batch) -> sums`` for a model and each of its heads.

  Like :func:`kdjax.steps.make_eval_step`, it returns sums over the valid
  rows (``batch['mask']``): ``'correct'``, ``'loss_sum'`` and ``'count'`` for
  the model's logits, plus ``'head_correct'`` and ``'head_loss_sum'`` (shape
  ``[K]``) for the stacked per-head logits ``feature`` (``'branch_logits'``
  for ONE, ``'exit_logits'`` for BYOT). Accumulate with
  :func:`evaluate_heads`.

  Args:
    apply_fn: forward function or Linen module.
    feature: name of the ``[K, B, C]`` feature holding the heads' logits.
    axis_name: device axis to psum over.

  Returns:
    A pure function to jit.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.models import function_forward
    >>> fwd = function_forward(lambda p, x: (x, {'heads': jnp.stack([x, -x])}))
    >>> eval_step = jax.jit(make_heads_eval_step(fwd, feature='heads'))
    >>> sums = eval_step({'params': {}}, {'x': jnp.eye(2), 'label': jnp.array([0, 0])})
    >>> sums['correct'], sums['head_correct']
    (Array(1., dtype=float32), Array([1., 1.], dtype=float32))
  """
  forward = as_forward(apply_fn)

  def eval_step(variables, batch):
    out = forward(variables, batch['x'], train=False)
    heads = _feature(out, feature, 'make_heads_eval_step')
    labels = batch['label']
    mask = batch.get('mask', jnp.ones(labels.shape, bool))
    head = _evaluation.classification_sums(heads, labels, mask)
    result = dict(_evaluation.classification_sums(out.logits, labels, mask),
                  count=jnp.sum(mask).astype(jnp.float32),
                  head_correct=head['correct'], head_loss_sum=head['loss_sum'])
    return result if axis_name is None else jax.lax.psum(result, axis_name)

  return eval_step


def evaluate_heads(eval_step: Callable, variables: Any, batches: Iterable[Mapping[str, Any]], *,
                   prefix: str = 'head', start: int = 1) -> dict[str, float]:
  """Exact accuracy and cross-entropy of a model and of each head over ``batches``.

  Args:
    eval_step: from :func:`make_heads_eval_step` (jitted or not).
    variables: the model's variables.
    batches: an iterable of batches (padded rows dropped by ``'mask'``).
    prefix: head name in the keys, e.g. ``'branch'`` (ONE) or ``'exit'`` (BYOT).
    start: index of the first head in the keys (ONE's branches: 0, matching
      :meth:`~kdjax.models.ONE.export_branch`; BYOT's exits: 1).

  Returns:
    Floats ``{'accuracy', 'loss', 'count'}`` for the model's logits and
    ``'accuracy/<prefix><k>'``, ``'loss/<prefix><k>'`` for each head.

  Raises:
    ValueError: if ``batches`` is empty.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.models import function_forward
    >>> fwd = function_forward(lambda p, x: (x, {'heads': jnp.stack([x, -x])}))
    >>> step = jax.jit(make_heads_eval_step(fwd, feature='heads'))
    >>> batches = [{'x': jnp.eye(2), 'label': jnp.array([0, 1])}]
    >>> r = evaluate_heads(step, {'params': {}}, batches, prefix='exit')
    >>> r['accuracy'], r['accuracy/exit1'], r['accuracy/exit2']
    (1.0, 1.0, 0.0)
  """
  totals = _evaluation.accumulate(eval_step, batches, variables)
  count = max(float(totals['count']), 1.0)
  result = {'accuracy': float(totals['correct']) / count,
            'loss': float(totals['loss_sum']) / count, 'count': float(totals['count'])}
  for k, (c, l) in enumerate(zip(totals['head_correct'], totals['head_loss_sum']), start=start):
    result[f'accuracy/{prefix}{k}'] = float(c) / count
    result[f'loss/{prefix}{k}'] = float(l) / count
  return result


def collect_head_logits(apply_fn, variables: Any, batches: Iterable[Mapping[str, Any]], *,
                        feature: str = EXIT_LOGITS) -> tuple[np.ndarray, np.ndarray]:
  """Runs a model in eval mode over ``batches`` and gathers its heads' logits.

  Args:
    apply_fn: forward function or Linen module.
    variables: its variables.
    batches: batches with ``'x'``, ``'label'`` and optional ``'mask'`` (masked
      rows are dropped).
    feature: the ``[K, B, C]`` feature to gather.

  Returns:
    ``(head_logits [K, N, C], labels [N])`` as NumPy arrays.

  Raises:
    ValueError: if ``batches`` is empty or the model lacks ``feature``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import function_forward
    >>> fwd = function_forward(lambda p, x: (x, {'exit_logits': jnp.stack([x, 2 * x])}))
    >>> batch = {'x': jnp.eye(3), 'label': jnp.array([0, 1, 2]), 'mask': jnp.array([1, 1, 0], bool)}
    >>> z, y = collect_head_logits(fwd, {'params': {}}, [batch])
    >>> z.shape, y.tolist()
    ((2, 2, 3), [0, 1])
  """
  forward = as_forward(apply_fn)
  run = jax.jit(lambda v, x: _feature(forward(v, x, train=False), feature,
                                      'collect_head_logits'))
  logits, labels = [], []
  for batch in batches:
    z = np.asarray(run(variables, batch['x']))
    y = np.asarray(batch['label'])
    keep = np.ones(y.shape, bool) if batch.get('mask') is None else np.asarray(batch['mask'], bool)
    logits.append(z[:, keep])
    labels.append(y[keep])
  if not logits:
    raise ValueError('`batches` is empty: nothing to collect.')
  return np.concatenate(logits, axis=1), np.concatenate(labels)


def _softmax64(z: np.ndarray) -> np.ndarray:
  z = np.asarray(z, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def early_exit_table(exit_logits, labels, thresholds: Sequence[float], *,
                     exit_costs: Optional[Sequence[float]] = None) -> list[dict[str, float]]:
  """Accuracy and compute of confidence-based early exit, one row per threshold.

  Each example exits at the first head ``k`` whose confidence (largest
  softmax probability) is ``>= threshold``; the deepest head answers when no
  shallow head is confident. Exiting at head ``k`` runs stages and heads
  ``1..k``. Threshold 0 sends every example out at head 1; a threshold above
  1 runs every example to the deepest head.

  Args:
    exit_logits: ``[K, N, C]`` logits of the exits, shallow to deep (e.g.
      from :func:`collect_head_logits`).
    labels: ``[N]`` integer classes.
    thresholds: confidence thresholds.
    exit_costs: optional ``[K]`` cost of answering at each exit (cumulative:
      stages and heads ``1..k``), e.g. FLOPs from :func:`exit_flops`.

  Returns:
    A list of dicts (one per threshold) with ``'threshold'``, ``'accuracy'``,
    ``'mean_stages'`` (mean number of stages run, ``1..K``),
    ``'exit{k}_fraction'`` (share of examples leaving at exit ``k``) and, with
    ``exit_costs``, ``'cost'`` (mean per example) and ``'relative_cost'``
    (``cost / exit_costs[-1]``).

  Raises:
    ValueError: for inconsistent shapes.

  References:
    Zhang et al., "Be Your Own Teacher", ICCV 2019, arXiv:1905.08094 (§4.4).

  Examples:
    >>> import numpy as np
    >>> z = np.array([[[3.0, 0.0], [0.1, 0.0]],   # exit 1: confident on example 0 only
    ...               [[0.0, 5.0], [0.0, 5.0]]])  # exit 2
    >>> rows = early_exit_table(z, np.array([0, 1]), [0.0, 0.9, 1.1], exit_costs=[1.0, 3.0])
    >>> [(r['threshold'], r['accuracy'], r['mean_stages'], r['cost']) for r in rows]
    [(0.0, 0.5, 1.0, 1.0), (0.9, 1.0, 1.5, 2.0), (1.1, 0.5, 2.0, 3.0)]
  """
  z = np.asarray(exit_logits)
  y = np.asarray(labels)
  if z.ndim != 3 or y.shape != z.shape[1:2]:
    raise ValueError(
        f'`exit_logits` must be [K, N, C] and `labels` [N], got {z.shape} and {y.shape}.')
  num_exits = z.shape[0]
  if exit_costs is not None:
    exit_costs = np.asarray(exit_costs, np.float64)
    if exit_costs.shape != (num_exits,):
      raise ValueError(f'`exit_costs` must have {num_exits} entries, got {exit_costs.shape}.')
  probs = _softmax64(z)
  confidence = probs.max(axis=-1)           # [K, N]
  correct = probs.argmax(axis=-1) == y      # [K, N]
  rows = []
  for threshold in thresholds:
    passes = confidence >= threshold
    passes[-1] = True
    exit_index = np.argmax(passes, axis=0)  # first confident exit, 0-based
    row = {'threshold': float(threshold),
           'accuracy': float(np.mean(correct[exit_index, np.arange(y.shape[0])])),
           'mean_stages': float(np.mean(exit_index + 1))}
    for k in range(num_exits):
      row[f'exit{k + 1}_fraction'] = float(np.mean(exit_index == k))
    if exit_costs is not None:
      row['cost'] = float(np.mean(exit_costs[exit_index]))
      row['relative_cost'] = row['cost'] / float(exit_costs[-1])
    rows.append(row)
  return rows


def exit_flops(model, input_shape: Sequence[int], *, dtype: Any = jnp.float32) -> list[float]:
  """Per-example FLOPs of answering at each exit of a BYOT model.

  Exit ``k`` costs the stem, stages ``1..k`` and heads ``1..k`` (a sample
  leaving at head ``k`` was also checked at the earlier heads). Each value is
  XLA's cost analysis (as in :func:`kdjax.models.flops`; a multiply-add is 2
  FLOPs) of ``model.clone(max_exit=k)`` in eval mode returning all its exits'
  logits, divided by the batch size. Nothing is executed.

  Args:
    model: a :class:`kdjax.models.BYOT` module.
    input_shape: an input shape including the batch axis, e.g. ``(1, 40)``.
    dtype: input dtype.

  Returns:
    ``[K]`` cumulative FLOPs per example, increasing with ``k``; pass it as
    ``early_exit_table(..., exit_costs=...)``.

  Examples:
    >>> from kdjax.models import byot_cnn1d
    >>> costs = exit_flops(byot_cnn1d(num_classes=3, channels=4), (1, 40))
    >>> len(costs), costs[0] < costs[1] < costs[2]
    (3, True)
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  costs = []
  for k in range(1, model.num_exits + 1):
    model_k = model.clone(max_exit=k)
    variables = jax.eval_shape(
        lambda v, m=model_k: m.init(jax.random.key(0), v, train=False), x)

    def forward(v, inp, m=model_k):
      _, state = m.apply(v, inp, train=False, mutable=['intermediates'])
      return state['intermediates'][EXIT_LOGITS]

    cost = jax.jit(forward).lower(variables, x).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
      cost = {'flops': sum(c.get('flops', 0.0) for c in cost)}
    costs.append(float((cost or {}).get('flops', float('nan'))) / int(input_shape[0]))
  return costs


def plot_early_exit(table: Sequence[Mapping[str, float]], path: str | os.PathLike, *,
                    x: Optional[str] = None, title: str = 'Early exit',
                    head_points: Optional[Sequence[tuple[float, float]]] = None) -> str:
  """Plots accuracy against compute for the rows of :func:`early_exit_table`.

  Uses Matplotlib's Agg canvas directly (no global backend change, no display).

  Args:
    table: rows from :func:`early_exit_table`.
    path: output PNG path.
    x: the row key on the x-axis; default ``'relative_cost'`` when present,
      else ``'mean_stages'``.
    title: figure title.
    head_points: optional ``(x, accuracy)`` of each exit used alone (e.g.
      ``(k, accuracy of exit k)`` against ``'mean_stages'``), drawn as
      reference markers.

  Returns:
    ``path`` as a string.

  Examples:
    >>> import os, tempfile
    >>> rows = [{'threshold': 0.5, 'accuracy': 0.8, 'mean_stages': 1.5},
    ...         {'threshold': 0.9, 'accuracy': 0.9, 'mean_stages': 2.2}]
    >>> out = plot_early_exit(rows, os.path.join(tempfile.mkdtemp(), 'exit.png'))
    >>> os.path.getsize(out) > 0
    True
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # Lazy: plotting is optional.
  from matplotlib.figure import Figure

  if not table:
    raise ValueError('`table` is empty: nothing to plot.')
  if x is None:
    x = 'relative_cost' if 'relative_cost' in table[0] else 'mean_stages'
  xs = [row[x] for row in table]
  ys = [row['accuracy'] for row in table]
  fig = Figure(figsize=(5, 3.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(xs, ys, marker='o', label='early exit')
  for row, xv, yv in zip(table, xs, ys):
    ax.annotate(f"{row['threshold']:g}", (xv, yv), textcoords='offset points', xytext=(3, 3),
                fontsize=7)
  if head_points is not None:
    hx, hy = zip(*head_points)
    ax.scatter(hx, hy, marker='s', color='gray', label='single exit')
    for k, (xv, yv) in enumerate(head_points, start=1):
      ax.annotate(f'exit {k}', (xv, yv), textcoords='offset points', xytext=(3, -9), fontsize=7,
                  color='gray')
  ax.set_xlabel(x.replace('_', ' '))
  ax.set_ylabel('accuracy')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.fspath(path))
  return os.fspath(path)
