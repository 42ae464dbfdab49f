"""Helpers shared by the model zoo: features, parameter and FLOP counts."""

from __future__ import annotations

from collections.abc import Mapping
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


# Conv kernels: He-normal on fan-out (``kaiming_normal_(mode='fan_out')``), the
# initialisation the CIFAR ResNet/WRN reference code uses.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# The collection every model sows its named features into.
FEATURES = 'intermediates'


def sow_feature(module: nn.Module, name: str, value: jax.Array) -> None:
  """Sows ``value`` under ``name`` into the ``'intermediates'`` collection.

  Nothing is stored while the module is initialising, so ``model.init`` returns
  only ``params`` (and ``batch_stats``), never a stale copy of the features.

  Examples:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> from kdjax import models
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x, train=False):
    ...     h = nn.relu(nn.Dense(8)(x))
    ...     sow_feature(self, 'embedding', h)
    ...     return nn.Dense(3)(h)
    >>> variables = Net().init(jax.random.key(0), jnp.ones((2, 4)))
    >>> sorted(variables)  # no features stored at init
    ['params']
    >>> _, state = Net().apply(variables, jnp.ones((2, 4)), mutable=['intermediates'])
    >>> models.get_features(state['intermediates'])['embedding'].shape
    (2, 8)
  """
  if not module.is_initializing():
    module.sow(FEATURES, name, value)


def check_input_rank(x, ranks: Sequence[int], model: str) -> None:
  """Raises a ``ValueError`` naming ``x`` if its rank is not one of ``ranks``."""
  if jnp.ndim(x) not in ranks:
    want = ' or '.join(str(r) for r in ranks)
    raise ValueError(
        f'{model}: input `x` must have rank {want}, got shape {jnp.shape(x)}.')


def get_features(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Flattens a sown ``'intermediates'`` collection into ``{name: array}``.

  ``Module.sow`` stores a tuple per name (one entry per call); the last entry
  is kept. A feature sown by a submodule is keyed by its module path joined
  with ``'/'`` (``'head/logits'``); the zoo's models sow in their top-level
  ``__call__``, so their keys are plain names (``'stage1'``, ``'embedding'``).

  Args:
    intermediates: ``state['intermediates']`` from
      ``model.apply(variables, x, mutable=['intermediates'])``. The whole
      ``state`` mapping is also accepted when ``'intermediates'`` is its only
      collection.

  Returns:
    A flat ``dict`` from feature name to array. Key order is not meaningful:
    JAX transformations (``jit``, ``eval_shape``) return dicts sorted by key.

  Raises:
    TypeError: if ``intermediates`` is not a mapping.
  """
  if not isinstance(intermediates, Mapping):
    raise TypeError(
        f'`intermediates` must be a mapping (the sown collection), got '
        f'{type(intermediates).__name__}.')
  if set(intermediates.keys()) == {FEATURES} and isinstance(intermediates[FEATURES], Mapping):
    intermediates = intermediates[FEATURES]
  out: dict[str, jax.Array] = {}

  def visit(node: Mapping[str, Any], prefix: str) -> None:
    for key, value in node.items():
      path = f'{prefix}/{key}' if prefix else str(key)
      if isinstance(value, Mapping):
        visit(value, path)
      elif isinstance(value, (tuple, list)):
        if value:
          out[path] = value[-1]
      else:
        out[path] = value

  visit(intermediates, '')
  return out


def count_params(params: Any) -> int:
  """Total number of scalars in a pytree of arrays.

  Pass ``variables['params']`` to count trainable parameters only
  (``batch_stats`` holds running statistics, which are not parameters). Works
  on concrete arrays and on the ``jax.ShapeDtypeStruct`` trees that
  ``jax.eval_shape(model.init, ...)`` returns, so counting needs no compute.
  """
  return int(sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree.leaves(params)))


def flops(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    dtype: Any = jnp.float32,
    variables: Any = None,
) -> float:
  """Forward-pass FLOPs of ``model`` in eval mode, as XLA counts them.

  The eval forward ``model.apply(variables, x, train=False)`` is lowered and
  compiled for ``x`` of ``input_shape`` and XLA's cost analysis is read. A
  multiply-add counts as 2 FLOPs; element-wise ops (bias, BN, ReLU) count
  too; for a padded convolution only the taps that fall inside the input are
  counted (a 3x3 'same' conv over 32x32 counts 94² of the 96² taps·positions
  per channel pair), so this is a few percent below the textbook ``2 · MACs``.
  Nothing is executed, and without ``variables`` their shapes come from
  ``jax.eval_shape``, so no weights are materialised.

  Args:
    model: a Flax Linen module with ``__call__(x, train=False)``.
    input_shape: full input shape including the batch axis.
    dtype: input dtype.
    variables: optional variables; only their shapes and dtypes are used.

  Returns:
    FLOPs of one forward pass over the whole batch, or ``nan`` if the backend
    reports none.
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  if variables is None:
    variables = jax.eval_shape(lambda v: model.init(jax.random.key(0), v, train=False), x)
  variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), a.dtype), variables)
  forward = lambda v, inp: model.apply(v, inp, train=False)  # noqa: E731
  cost = jax.jit(forward).lower(variables, x).compile().cost_analysis()
  # Older jax returned one dict per computation in a list.
  if isinstance(cost, (list, tuple)):
    return float(sum(c.get('flops', 0.0) for c in cost)) if cost else float('nan')
  if not cost:
    return float('nan')
  return float(cost.get('flops', float('nan')))
