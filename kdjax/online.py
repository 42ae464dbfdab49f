"""Online distillation without a pre-trained teacher: ONE and BYOT.

* **ONE** (Lan et al. 2018): m branches on shared low layers and a gate; the
  gated ensemble of the branches is the teacher of every branch.
  :func:`kdjax.losses.one_loss` is the objective, :func:`make_one_step` the
  train step for a model such as :func:`kdjax.models.one_resnet`.
* **BYOT** (Zhang et al. 2019): exit heads after every stage; the deepest head
  teaches the shallow ones. :func:`kdjax.losses.byot_loss` is the objective,
  :func:`make_byot_step` the train step for a model such as
  :func:`kdjax.models.byot_resnet`.

The losses (in :mod:`kdjax.losses`) are pure per-example functions without
``stop_gradient``; the steps hold the teachers' outputs (the ensemble, the
deepest head) constant. The
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

from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp

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
  :class:`kdjax.models.ONE` sows them). The loss is :func:`kdjax.losses.one_loss` averaged
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
    return losses.one_loss_terms(branches, out.logits, labels, temperature=temperature,
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
  :func:`kdjax.losses.byot_loss` averaged over the valid examples, with the deepest exit's
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
    terms = losses.byot_loss_terms(
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
