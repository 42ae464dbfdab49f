"""1-D convolutional classifier for MNIST-1D."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils


class CNN1D(nn.Module):
  """Three strided 1-D convolutions with ReLU, then a Dense head (MNIST-1D).

  The layer plan follows the convolutional baseline of the MNIST-1D paper:
  ``channels`` filters per layer, kernel sizes ``(5, 3, 3)``, stride 2 and
  padding 1 each, ReLU after every convolution, then the flattened feature map
  goes to one Dense classifier. A length-40 signal becomes lengths 19, 10 and
  5, so the embedding has ``5 * channels`` = 125 entries at the defaults.

  Sown features: ``'stage1'``, ``'stage2'``, ``'stage3'`` (each conv layer's
  activation, ``[B, L_i, channels]``) and ``'embedding'`` (the flattened last
  activation, ``[B, L_3 * channels]``).

  Attributes:
    num_classes: number of output logits.
    channels: filters per conv layer (an int for all layers, or one per layer).
    kernel_sizes: kernel size of each conv layer; its length sets the depth.
    strides: stride of every conv layer.
    padding: zero padding on each side of every conv layer.
    dtype: computation dtype (``None``: inferred).

  References:
    Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024,
    arXiv:2011.14439.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.models import CNN1D
    >>> model = CNN1D(num_classes=10)
    >>> x = jnp.zeros((2, 40))
    >>> logits, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
    >>> logits.shape, variables['params']['classifier']['kernel'].shape
    ((2, 10), (125, 10))
  """

  num_classes: int = 10
  channels: int | Sequence[int] = 25
  kernel_sizes: Sequence[int] = (5, 3, 3)
  strides: int = 2
  padding: int = 1
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns ``[B, num_classes]`` logits for ``x`` of shape ``[B, L]`` or ``[B, L, C]``."""
    del train  # No train-dependent layers.
    _utils.check_input_rank(x, (2, 3), 'CNN1D')
    if x.ndim == 2:
      x = x[..., None]
    channels = self.channels
    if isinstance(channels, int):
      channels = (channels,) * len(self.kernel_sizes)
    if len(channels) != len(self.kernel_sizes):
      raise ValueError(
          f'CNN1D: `channels` has {len(channels)} entries but `kernel_sizes` has '
          f'{len(self.kernel_sizes)}.')
    for i, (width, k) in enumerate(zip(channels, self.kernel_sizes), start=1):
      x = nn.Conv(width, (k,), strides=(self.strides,), padding=((self.padding, self.padding),),
                  dtype=self.dtype, name=f'conv{i}')(x)
      x = nn.relu(x)
      _utils.sow_feature(self, f'stage{i}', x)
    x = jnp.reshape(x, (x.shape[0], -1))
    _utils.sow_feature(self, 'embedding', x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(x)
