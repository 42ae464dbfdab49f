"""The student train state: a pytree with static apply function and optimizer.

A teacher never lives here: teachers are frozen inputs to the step (their own
variables pytree) and are never differentiated or optimised.
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import struct
import jax
import jax.numpy as jnp
import optax

from kdjax.models._wrap import as_forward
from kdjax.models._wrap import ForwardFn


class TrainState(struct.PyTreeNode):
  """Everything a student's training needs, as one pytree.

  Attributes:
    step: scalar int32 count of applied updates.
    params: the student's ``'params'`` collection.
    model_state: the student's other collections (e.g. ``{'batch_stats': ...}``).
    aux_params: trainable parameters that are not the student's, such as the
      adapters of feature terms (``{term_name: params}``). Optimised together
      with ``params`` and dropped when the student is exported.
    term_state: non-trainable state of loss terms, updated inside the step
      (e.g. CRD's memory banks, ``{term_name: {...}}``); checkpointed with the
      state, never differentiated nor seen by the optimizer.
    opt_state: optimizer state over ``{'params': params, 'aux': aux_params}``.
    apply_fn: the student's forward function (static; see ``kdjax.models``).
    tx: the optax transformation (static).
  """
  step: jax.Array
  params: Any
  model_state: Mapping[str, Any]
  aux_params: Mapping[str, Any]
  term_state: Mapping[str, Any]
  opt_state: optax.OptState
  apply_fn: ForwardFn = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, apply_fn, variables: Mapping[str, Any], tx: optax.GradientTransformation,
             aux_params: Mapping[str, Any] | None = None,
             term_state: Mapping[str, Any] | None = None) -> 'TrainState':
    """Builds a state from a model's variables.

    Args:
      apply_fn: a forward function, or a Flax Linen module (wrapped with
        ``kdjax.models.linen_forward``).
      variables: ``{'params': ..., **other_collections}``.
      tx: the optimizer.
      aux_params: extra trainable parameters (feature adapters, term modules).
      term_state: the terms' initial state (``kdjax.steps.init_terms``
        returns both: ``TrainState.create(..., **init_terms(...))``).

    Returns:
      A fresh ``TrainState`` at step 0.

    Raises:
      ValueError: if ``variables`` has no ``'params'`` entry.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from kdjax.models import function_forward
      >>> state = TrainState.create(apply_fn=function_forward(lambda p, x: x @ p['w']),
      ...                           variables={'params': {'w': jnp.zeros((2, 3))}},
      ...                           tx=optax.sgd(0.1))
      >>> int(state.step), state.variables['params']['w'].shape
      (0, (2, 3))
    """
    if 'params' not in variables:
      raise ValueError(f'`variables` must have a "params" entry, got keys {list(variables)}.')
    params = variables['params']
    model_state = {k: v for k, v in variables.items() if k != 'params'}
    aux_params = dict(aux_params or {})
    return cls(
        step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
        aux_params=aux_params, term_state=dict(term_state or {}),
        opt_state=tx.init({'params': params, 'aux': aux_params}),
        apply_fn=as_forward(apply_fn), tx=tx)

  @property
  def variables(self) -> dict[str, Any]:
    """The student's full variables, as its ``apply_fn`` expects them."""
    return {'params': self.params, **self.model_state}

  @property
  def trainable(self) -> dict[str, Any]:
    """The pytree the optimizer sees: ``{'params': ..., 'aux': ...}``."""
    return {'params': self.params, 'aux': self.aux_params}

  def apply_gradients(self, grads: Mapping[str, Any], *,
                      model_state: Mapping[str, Any] | None = None) -> 'TrainState':
    """One optimizer update.

    Args:
      grads: gradients with the structure of ``self.trainable``.
      model_state: new non-parameter collections (e.g. updated BatchNorm
        statistics); kept as they are when ``None``.

    Returns:
      The updated state with ``step + 1``.
    """
    updates, opt_state = self.tx.update(grads, self.opt_state, self.trainable)
    trainable = optax.apply_updates(self.trainable, updates)
    merged_state = dict(self.model_state)
    merged_state.update(model_state or {})
    return self.replace(
        step=self.step + 1, params=trainable['params'], aux_params=trainable['aux'],
        opt_state=opt_state, model_state=merged_state)


def select(pred: jax.Array, on_true, on_false):
  """``jnp.where`` over two pytrees of the same structure, with a scalar predicate.

  The train steps use it to keep the old state when an update is not finite.

  Examples:
    >>> import jax.numpy as jnp
    >>> select(jnp.array(False), {'w': jnp.ones(2)}, {'w': jnp.zeros(2)})
    {'w': Array([0., 0.], dtype=float32)}
  """
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)
