"""The one update core that every train step of kdjax is built on.

A step supplies a loss function of the trainable pytree; this module owns
everything around it, in one place:

* the per-step randomness ``fold_in(rng, state.step)``;
* ``jax.value_and_grad`` over the trainable parameters (the model's and the
  auxiliary ones, e.g. feature adapters);
* the cross-device sum over ``axis_name`` of gradients, loss and loss parts
  (each shard contributes its share of the exact global mean, see
  :func:`batch_mean`);
* the averaging of floating non-parameter state (BatchNorm statistics) over
  the device axis;
* the finite-value guard: a non-finite loss or gradient keeps the old state
  with one ``select``;
* label validation under ``jit`` (:func:`clean_labels`): rows whose label is
  out of range are excluded from the mask and counted in the metrics;
* the common metrics (``loss``, ``grad_norm``, ``skipped``).

The distillation, supervised, ONE, BYOT, NetAug and cached-teacher steps call
:func:`update`; the cohort step calls its two halves, :func:`value_and_grads`
and :func:`apply_guarded` (vmapped over the peers, so that each peer has its
own guard).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.state import select


def psum(tree: Any, axis_name: Optional[str]) -> Any:
  """``jax.lax.psum`` over ``axis_name``, or the identity when it is ``None``."""
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def batch_mean(values: jax.Array, mask: Optional[jax.Array] = None,
               axis_name: Optional[str] = None) -> jax.Array:
  """This shard's share of the exact global mean of a per-example loss.

  Returns ``sum(values * mask) / global_count``, where ``global_count`` is the
  number of valid examples summed over ``axis_name``; summing the result over
  the devices (``psum``) gives the exact mean over the global batch, however
  the padding is spread over the shards. A rank-0 (batch-level) value is
  divided by the number of shards instead.

  Args:
    values: ``[B, ...]`` per-example values (trailing axes are averaged) or a
      scalar.
    mask: optional ``[B]`` boolean mask of valid (non-padding) examples.
    axis_name: the device axis under ``jax.pmap`` / ``jax.shard_map``, or
      ``None`` on one device.

  Returns:
    A scalar.

  Examples:
    >>> import jax.numpy as jnp
    >>> batch_mean(jnp.array([1.0, 2.0, 6.0]), jnp.array([True, True, False]))
    Array(1.5, dtype=float32)
  """
  if values.ndim == 0:  # batch-level loss: the mean over shards
    count = 1.0 if axis_name is None else jax.lax.psum(1.0, axis_name)
    return values / count
  per_example = values.reshape(values.shape[0], -1).mean(axis=1)
  if mask is None:
    mask = jnp.ones(per_example.shape, bool)
  count = jnp.sum(mask).astype(per_example.dtype)
  if axis_name is not None:
    count = jax.lax.psum(count, axis_name)
  return jnp.sum(jnp.where(mask, per_example, 0.0)) / jnp.maximum(count, 1.0)


def all_finite(tree: Any) -> jax.Array:
  """Whether every element of every leaf of ``tree`` is finite, as a boolean scalar.

  Examples:
    >>> import jax.numpy as jnp
    >>> bool(all_finite({'a': jnp.ones(2), 'b': (jnp.array(jnp.nan),)}))
    False
    >>> bool(all_finite({}))
    True
  """
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def pmean_model_state(model_state: Any, axis_name: Optional[str]) -> Any:
  """Averages the floating leaves (e.g. BatchNorm statistics) over a device axis.

  Data-parallel replicas see different batch shards, so their running
  statistics differ; averaging keeps the replicas identical. Integer leaves
  (counters) are left as they are. With ``axis_name=None`` this is the identity.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> stats = {'mean': jnp.array([[0.0], [2.0]]), 'count': jnp.array([1, 1])}
    >>> jax.vmap(lambda s: pmean_model_state(s, 'd'), axis_name='d')(stats)['mean']
    Array([[1.],
           [1.]], dtype=float32)
  """
  if axis_name is None:
    return model_state
  return jax.tree.map(
      lambda v: jax.lax.pmean(v, axis_name) if jnp.issubdtype(v.dtype, jnp.inexact) else v,
      model_state)


# ------------------------------------------------------------------ term weights

Weight = Union[float, Callable[[jax.Array], jax.Array]]


def term_weight(weight: Weight, step: jax.Array) -> jax.Array:
  """A term's weight at ``step``: a constant, or a schedule ``step -> weight``.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(term_weight(0.5, jnp.int32(3))), float(term_weight(lambda s: s / 2, jnp.int32(3)))
    (0.5, 1.5)
  """
  return weight(step) if callable(weight) else jnp.asarray(weight, jnp.float32)


def term_enabled(weight: Weight, name: str) -> bool:
  """Whether a term takes part; a constant 0 leaves it out of the computation.

  Raises:
    ValueError: for a negative (or NaN) constant, naming the argument ``name``.

  Examples:
    >>> term_enabled(0.0, 'hint_weight'), term_enabled(lambda s: s, 'hint_weight')
    (False, True)
    >>> term_enabled(-1.0, 'hint_weight')
    Traceback (most recent call last):
    ...
    ValueError: `hint_weight` must be >= 0 (or a schedule), got -1.0.
  """
  if callable(weight):
    return True
  if not float(weight) >= 0.0:
    raise ValueError(f'`{name}` must be >= 0 (or a schedule), got {weight}.')
  return float(weight) != 0.0


# ------------------------------------------------------------------ labels

def clean_labels(batch: Mapping[str, Any], num_classes: int, *,
                 axis_name: Optional[str] = None) -> tuple[dict, dict]:
  """Excludes rows whose label lies outside ``[0, num_classes)`` (traced-safe).

  Concrete labels (a step called without ``jit``) raise; inside a jitted
  step they are tracers, so the step cannot raise. Instead the offending rows
  are masked out (their label is replaced by 0 so that no loss reads an invalid
  index), and the count and one offending value are reported, for
  :func:`kdjax.train.fit` to stop with an error naming the step.

  Args:
    batch: a batch dict; without ``'label'`` it is returned unchanged.
    num_classes: the number of classes ``C`` (the logits' last axis).
    axis_name: device axis to sum the count over.

  Returns:
    ``(batch, metrics)``: the batch with a cleaned ``'label'`` and ``'mask'``,
    and ``{'invalid_labels': count, 'invalid_label': one offending value}``
    (``{}`` for an unlabeled batch). ``invalid_label`` is the first offending
    label of this shard, 0 when there is none.

  Raises:
    ValueError: for concrete labels out of range in unmasked rows.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> clean_labels({'label': jnp.array([0, 12, 2])}, 10)
    Traceback (most recent call last):
    ...
    ValueError: `batch['label']` must be class indices in [0, 10) ... got 12 at index (1,).
    >>> batch, m = jax.jit(clean_labels, static_argnums=1)({'label': jnp.array([0, 12, 2])}, 10)
    >>> batch['label'].tolist(), batch['mask'].tolist(), int(m['invalid_labels'])
    ([0, 0, 2], [True, False, True], 1)
    >>> int(m['invalid_label'])
    12
  """
  if 'label' not in batch:
    return dict(batch), {}
  labels = jnp.asarray(batch['label'])
  mask = batch.get('mask')
  mask = jnp.ones(labels.shape[:1], bool) if mask is None else jnp.asarray(mask, bool)
  invalid = (labels < 0) | (labels >= num_classes)
  row_invalid = invalid.reshape(labels.shape[0], -1).any(axis=1) & mask
  try:
    bad = np.argwhere(np.asarray(invalid & mask.reshape(mask.shape + (1,) * (invalid.ndim - 1))))
  except jax.errors.TracerArrayConversionError:
    bad = ()
  if len(bad):  # concrete labels (an eager step) can raise
    values = np.asarray(labels)
    shown = ', '.join(f'{values[tuple(i)]} at index {tuple(int(j) for j in i)}' for i in bad[:5])
    raise ValueError(f"`batch['label']` must be class indices in [0, {num_classes}) (the "
                     f"logits have {num_classes} classes), got {shown}.")
  first = jnp.argmax(invalid.reshape(-1) & jnp.repeat(mask, invalid[0].size))
  metrics = {
      'invalid_labels': psum(jnp.sum(row_invalid).astype(jnp.int32), axis_name),
      'invalid_label': jnp.where(jnp.any(row_invalid), labels.reshape(-1)[first], 0
                                 ).astype(jnp.int32),
  }
  cleaned = dict(batch)
  cleaned['label'] = jnp.where(invalid, 0, labels).astype(labels.dtype)
  cleaned['mask'] = mask & ~row_invalid
  return cleaned, metrics


# ------------------------------------------------------------------ update

class UpdateInfo(NamedTuple):
  """What :func:`update` returns beside the new state.

  Attributes:
    loss: the (device-summed) scalar loss.
    aux: the loss function's auxiliary output (device-summed where it is
      ``parts``; see :func:`update`).
    grads: the device-summed gradients, shaped like ``state.trainable``.
    applied: boolean scalar; False when the update was skipped (non-finite
      with ``skip_nonfinite``, or ``ok`` False).
  """
  loss: jax.Array
  aux: Any
  grads: Any
  applied: jax.Array


def value_and_grads(loss_fn: Callable, trainable: Any, *, axis_name: Optional[str] = None):
  """``value_and_grad`` of ``loss_fn`` with loss and gradients summed over devices.

  Args:
    loss_fn: ``loss_fn(trainable) -> (loss, aux)`` where ``loss`` is this
      shard's share of the global mean (a scalar, or a vector whose sum is
      differentiated, e.g. one loss per peer).
    trainable: the differentiated pytree.
    axis_name: device axis to sum over, or ``None``.

  Returns:
    ``(loss, aux, grads)``; ``loss`` and ``grads`` are psum'd, ``aux`` is not.
  """
  def total(t):
    loss, aux = loss_fn(t)
    return jnp.sum(loss), (loss, aux)

  (_, (loss, aux)), grads = jax.value_and_grad(total, has_aux=True)(trainable)
  return psum(loss, axis_name), aux, psum(grads, axis_name)


def apply_guarded(state: Any, grads: Any, loss: jax.Array, model_state: Any, *,
                  axis_name: Optional[str] = None, skip_nonfinite: bool = True,
                  ok: Optional[jax.Array] = None):
  """Applies ``grads`` to ``state``, keeping the old state if anything is non-finite.

  Args:
    state: a :class:`~kdjax.state.TrainState` (or any pytree with
      ``apply_gradients(grads, model_state=...)``).
    grads: device-summed gradients shaped like ``state.trainable``.
    loss: device-summed loss (checked for finiteness with the gradients).
    model_state: the new non-parameter collections; floating leaves are
      averaged over ``axis_name``.
    axis_name: data-parallel device axis, or ``None``.
    skip_nonfinite: keep the old state (parameters, optimizer state, step)
      when ``loss`` or a gradient is not finite (or the gradient norm
      overflows).
    ok: optional boolean scalar, the same on every device (e.g. "every
      teacher-cache row was found"); False keeps the old state whatever
      ``skip_nonfinite`` says. It joins the finite check in the one
      ``select``.

  Returns:
    ``(new_state, applied)``: ``applied`` is False when the old state was kept.
  """
  new_state = state.apply_gradients(grads, model_state=pmean_model_state(model_state, axis_name))
  # One fused reduction: the norm is non-finite iff a gradient is (or its
  # square overflows float32, which is no usable update either); XLA shares it
  # with the ``grad_norm`` metric.
  applied = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
  if not skip_nonfinite:
    applied = jnp.ones_like(applied)
  if ok is not None:
    applied = applied & jnp.asarray(ok, bool)
  if skip_nonfinite or ok is not None:
    new_state = select(applied, new_state, state)
  return new_state, applied


def update(state: Any, loss_fn: Callable, rng: jax.Array, *, axis_name: Optional[str] = None,
           skip_nonfinite: bool = True, ok: Optional[jax.Array] = None):
  """One guarded optimizer update of ``state`` on ``loss_fn``.

  Args:
    state: a :class:`~kdjax.state.TrainState`.
    loss_fn: ``loss_fn(trainable, rng) -> (loss, (model_state, parts, aux))``:
      ``trainable`` is ``{'params', 'aux'}`` (``state.trainable``), ``rng`` the
      step's key ``fold_in(rng, state.step)``; ``loss`` a scalar (this shard's
      share of the global mean); ``model_state`` the model's new
      non-parameter collections; ``parts`` a dict of scalar loss parts
      (psum'd over ``axis_name`` like the loss); ``aux`` anything else (left
      as it is, e.g. the logits for metrics).
    rng: the run's base key.
    axis_name: data-parallel device axis under ``pmap`` / ``shard_map``.
    skip_nonfinite: see :func:`apply_guarded`.
    ok: see :func:`apply_guarded`.

  Returns:
    ``(new_state, info, metrics)``: the :class:`UpdateInfo` (``aux`` is
    ``(parts, aux)``), and ``{'loss', 'loss/<part>', 'grad_norm', 'skipped'}``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> from kdjax.state import TrainState
    >>> state = TrainState.create(apply_fn=function_forward(lambda p, x: x * p['w']),
    ...                           variables={'params': {'w': jnp.ones(())}}, tx=optax.sgd(0.5))
    >>> def loss_fn(trainable, rng):
    ...   loss = trainable['params']['w'] ** 2
    ...   return loss, ({}, {'square': loss}, None)
    >>> state, info, metrics = update(state, loss_fn, jax.random.key(0))
    >>> float(state.params['w']), float(metrics['loss/square']), int(metrics['skipped'])
    (0.0, 1.0, 0)
  """
  key = jax.random.fold_in(rng, state.step)

  def inner(trainable):
    loss, (model_state, parts, aux) = loss_fn(trainable, key)
    return loss, (model_state, parts, aux)

  loss, (model_state, parts, aux), grads = value_and_grads(
      inner, state.trainable, axis_name=axis_name)
  parts = psum(parts, axis_name)
  new_state, applied = apply_guarded(state, grads, loss, model_state, axis_name=axis_name,
                                     skip_nonfinite=skip_nonfinite, ok=ok)
  metrics = {'loss': loss, **{f'loss/{k}': v for k, v in parts.items()},
             **update_metrics(grads, applied)}
  return new_state, UpdateInfo(loss, (parts, aux), grads, applied), metrics


def update_metrics(grads: Any, applied: jax.Array) -> dict:
  """``{'grad_norm', 'skipped'}`` of one update."""
  return {'grad_norm': optax.tree.norm(grads), 'skipped': 1 - applied.astype(jnp.int32)}


def accuracy_metrics(logits: jax.Array, batch: Mapping[str, Any], *,
                     axis_name: Optional[str] = None, cross_entropy: Optional[Callable] = None
                     ) -> dict:
  """Exact ``accuracy`` (and ``ce`` if ``cross_entropy`` is given) over the valid rows."""
  if 'label' not in batch:
    return {}
  logits = jax.lax.stop_gradient(logits)
  mask, labels = batch.get('mask'), batch['label']
  metrics = {'accuracy': psum(batch_mean(
      (jnp.argmax(logits, -1) == labels).astype(jnp.float32), mask, axis_name), axis_name)}
  if cross_entropy is not None:
    metrics['ce'] = psum(batch_mean(cross_entropy(logits, labels), mask, axis_name), axis_name)
  return metrics
