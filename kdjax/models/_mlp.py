"""Fully connected classifier."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils


class MLP(nn.Module):
  """Multi-layer perceptron: flatten, ``Dense -> ReLU`` per hidden layer, Dense.

  Sown features: ``'hidden1'``, ``'hidden2'``, ... (each hidden activation,
  after ReLU) and ``'embedding'`` (the classifier's input: the last hidden
  activation, or the flattened input when ``hidden`` is empty).

  Attributes:
    hidden: widths of the hidden layers.
    num_classes: number of output logits.
    dtype: computation dtype (``None``: inferred from inputs and params).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.models import MLP
    >>> model = MLP(hidden=(100, 100), num_classes=10)
    >>> x = jnp.zeros((2, 40))
    >>> logits, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
    >>> logits.shape, variables['params']['dense1']['kernel'].shape
    ((2, 10), (40, 100))
  """

  hidden: Sequence[int] = (100, 100)
  num_classes: int = 10
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns ``[B, num_classes]`` logits for ``x`` of shape ``[B, ...]``."""
    del train  # No train-dependent layers.
    _utils.check_input_rank(x, range(2, 9), 'MLP')
    x = jnp.reshape(x, (x.shape[0], -1))
    for i, width in enumerate(self.hidden, start=1):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'dense{i}')(x))
      _utils.sow_feature(self, f'hidden{i}', x)
    _utils.sow_feature(self, 'embedding', x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(x)
