"""The model protocol of the engine, and adapters for Linen, NNX and plain functions.

The train steps never import a model library. They call a *forward function*::

    forward(variables, x, *, train, rngs=None) -> ModelOutput(logits, features, model_state)

where ``variables`` is a dict with a ``'params'`` entry plus any other
collections (e.g. ``'batch_stats'``), ``features`` maps names to intermediate
arrays (``'embedding'``, ``'stage1'``, ...) for feature losses, and
``model_state`` holds the updated non-parameter collections after a training
pass (empty in evaluation). The adapters below build such a function from a
Flax Linen module, a Flax NNX module, or a plain ``fn(params, x)``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models._utils import get_features


Variables = Mapping[str, Any]


class ModelOutput(NamedTuple):
  """What a forward function returns.

  Attributes:
    logits: ``[batch, num_classes]`` (or any ``[..., C]``) scores.
    features: named intermediate arrays, e.g. ``{'embedding': [B, D]}``.
    model_state: updated non-parameter collections (train mode), else ``{}``.
  """
  logits: jax.Array
  features: Mapping[str, jax.Array]
  model_state: Mapping[str, Any]


ForwardFn = Callable[..., ModelOutput]


def _split_output(out) -> tuple[jax.Array, Mapping[str, jax.Array]]:
  """Accepts ``logits`` or ``(logits, features)`` from a user's model."""
  if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping):
    return out[0], dict(out[1])
  return out, {}


def linen_forward(module: nn.Module, *, mutable: Sequence[str] = ('batch_stats',)) -> ForwardFn:
  """Wraps a Flax Linen module whose ``__call__`` takes ``(x, train=...)``.

  Features are whatever the module sows into ``'intermediates'``.

  Args:
    module: a Linen module; its ``__call__`` must accept a ``train`` keyword.
    mutable: collections updated in training when present in ``variables``.

  Returns:
    A forward function following the protocol of this module.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x, train=False):
    ...     h = nn.relu(nn.Dense(4)(x))
    ...     self.sow('intermediates', 'embedding', h)
    ...     return nn.Dense(3)(h)
    >>> variables = init_variables(Net(), jax.random.key(0), jnp.ones((1, 2)))
    >>> out = linen_forward(Net())(variables, jnp.ones((5, 2)), train=True)
    >>> out.logits.shape, out.features['embedding'].shape, dict(out.model_state)
    ((5, 3), (5, 4), {})
  """
  mutable = tuple(mutable)

  def forward(variables, x, *, train: bool, rngs=None) -> ModelOutput:
    cols = ['intermediates'] + ([c for c in mutable if c in variables] if train else [])
    out, updated = module.apply(variables, x, train=train, rngs=rngs, mutable=cols)
    updated = dict(updated)
    features = get_features(updated.pop('intermediates', {}))
    logits, extra = _split_output(out)
    return ModelOutput(logits, {**features, **extra}, updated)

  forward.module = module
  return forward


def function_forward(fn: Callable[..., Any]) -> ForwardFn:
  """Wraps a plain ``fn(params, x)`` returning logits or ``(logits, features)``.

  ``variables`` is then ``{'params': params}``; the function has no mutable state.

  Examples:
    >>> import jax.numpy as jnp
    >>> fwd = function_forward(lambda p, x: x @ p['w'])
    >>> fwd({'params': {'w': jnp.eye(2)}}, jnp.ones((1, 2)), train=False).logits
    Array([[1., 1.]], dtype=float32)
  """

  def forward(variables, x, *, train: bool, rngs=None) -> ModelOutput:
    del train, rngs
    logits, features = _split_output(fn(variables['params'], x))
    return ModelOutput(logits, features, {})

  return forward


def nnx_forward(graphdef) -> ForwardFn:
  """Wraps a Flax NNX model given by ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``.

  ``variables`` is ``{'params': params}`` plus ``{'state': rest}`` when the model
  has non-parameter state (e.g. BatchNorm statistics). The model's
  ``__call__(x)`` returns logits or ``(logits, features)``. Train/eval mode is
  switched with ``model.train()`` / ``model.eval()`` on the merged copy; an
  ``nnx.Rngs`` held by the model supplies dropout randomness.

  Examples:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> graphdef, params = nnx.split(model, nnx.Param)
    >>> nnx_forward(graphdef)({'params': params}, jnp.ones((1, 2)), train=False).logits.shape
    (1, 3)
  """
  from flax import nnx  # Imported lazily: most users run Linen.

  def forward(variables, x, *, train: bool, rngs=None) -> ModelOutput:
    del rngs
    states = [variables['params']] + ([variables['state']] if 'state' in variables else [])
    model = nnx.merge(graphdef, *states, copy=True)
    model.train() if train else model.eval()
    logits, features = _split_output(model(x))
    model_state = {}
    if train and 'state' in variables:
      _, _, rest = nnx.split(model, nnx.Param, ...)
      model_state = {'state': rest}
    return ModelOutput(logits, features, model_state)

  return forward


def as_forward(model: Any) -> ForwardFn:
  """Returns ``model`` as a forward function: Linen modules are wrapped, others pass through."""
  if isinstance(model, nn.Module):
    return linen_forward(model)
  if not callable(model):
    raise ValueError(f'`model` must be a Flax Linen module or a forward function, got {model!r}.')
  return model


def _cast_floating(tree: Any, dtype: Any) -> Any:
  return jax.tree.map(
      lambda v: v.astype(dtype) if jnp.issubdtype(jnp.result_type(v), jnp.floating) else v, tree)


def mixed_precision(model: Any, compute_dtype: Any = jnp.bfloat16, *,
                    output_dtype: Any = jnp.float32) -> ForwardFn:
  """Runs a forward pass in ``compute_dtype``, keeping the stored state in its own dtype.

  Floating variables (parameters and other collections) and floating inputs
  are cast to ``compute_dtype`` for the pass; logits and features come back in
  ``output_dtype``, so losses and metrics are computed in float32, and the
  updated collections (e.g. BatchNorm statistics) are cast back to the dtype
  they are stored in. The cast is differentiable: gradients with respect to
  float32 parameters are float32, so parameters and optimizer state stay
  float32 (Micikevicius et al., 2018, "Mixed Precision Training"; bfloat16
  needs no loss scaling). Use it for the student's ``apply_fn`` and for
  teachers; every kdjax step works with it unchanged.

  Args:
    model: a Flax Linen module or a forward function (:func:`as_forward`).
    compute_dtype: dtype of the computation, e.g. ``jnp.bfloat16``.
    output_dtype: dtype of the returned logits and features.

  Returns:
    A forward function.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> seen = []
    >>> def fn(p, x):
    ...   seen.append(x.dtype)
    ...   return x @ p['w']
    >>> fwd = mixed_precision(function_forward(fn))
    >>> out = fwd({'params': {'w': jnp.ones((3, 2))}}, jnp.ones((4, 3)), train=False)
    >>> seen[0], out.logits.dtype
    (dtype(bfloat16), dtype('float32'))
    >>> total = lambda w: fwd({'params': {'w': w}}, jnp.ones((4, 3)), train=False).logits.sum()
    >>> jax.grad(total)(jnp.ones((3, 2))).dtype
    dtype('float32')
  """
  forward = as_forward(model)

  def mixed(variables, x, *, train: bool = False, rngs=None) -> ModelOutput:
    out = forward(_cast_floating(variables, compute_dtype), _cast_floating(x, compute_dtype),
                  train=train, rngs=rngs)
    model_state = {
        k: jax.tree.map(lambda new, old: new.astype(jnp.result_type(old)), v, variables[k])
        if k in variables else v for k, v in out.model_state.items()}
    return ModelOutput(_cast_floating(out.logits, output_dtype),
                       _cast_floating(dict(out.features), output_dtype), model_state)

  return mixed


def init_variables(module: nn.Module, rng: jax.Array, sample_x, **kwargs) -> dict:
  """Initialises a Linen module in eval mode and drops the ``'intermediates'`` collection."""
  variables = dict(module.init(rng, sample_x, train=False, **kwargs))
  variables.pop('intermediates', None)
  return variables
