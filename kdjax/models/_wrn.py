"""Wide Residual Networks (Zagoruyko & Komodakis 2016)."""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils


_PAD1 = ((1, 1), (1, 1))


class WideBasicBlock(nn.Module):
  """Pre-activation block: ``conv(drop(relu(bn(conv(relu(bn(x))))))) + shortcut``.

  When the stride or channel count changes, the shortcut is a 1x1 strided conv
  applied to the pre-activated input ``relu(bn(x))``; otherwise it is ``x``.

  Attributes:
    features: output channels.
    strides: stride of the first 3x3 conv and of the projection.
    dropout_rate: dropout between the two convs (train only; uses the
      ``'dropout'`` rng when > 0).
    bn_momentum: BatchNorm momentum (0.9 = PyTorch's 0.1).
    dtype: computation dtype.
  """

  features: int
  strides: int = 1
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_utils.conv_init,
                             dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype)
    s = (self.strides, self.strides)
    o = nn.relu(norm(name='bn1')(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, (1, 1), strides=s, padding='VALID', name='proj_conv')(o)
    y = conv(self.features, (3, 3), strides=s, padding=_PAD1, name='conv1')(o)
    y = nn.relu(norm(name='bn2')(y))
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = conv(self.features, (3, 3), padding=_PAD1, name='conv2')(y)
    return y + shortcut


class WRN(nn.Module):
  """Wide ResNet-``depth``-``widen_factor`` for 32x32 inputs.

  Layout: 3x3 stem conv with 16 channels; three stages of
  ``n = (depth - 4) / 6`` pre-activation blocks with ``16k, 32k, 64k``
  channels (strides 1, 2, 2); final BN + ReLU, global average pooling, Dense.

  Sown features: ``'stage1'``, ``'stage2'``, ``'stage3'`` (each stage's output,
  which in a pre-activation net is before BN/ReLU, ``[B, H_i, W_i, 16k·2^(i-1)]``)
  and ``'embedding'`` (pooled after the final BN + ReLU, ``[B, 64k]``).

  Attributes:
    depth: total depth ``6n + 4``.
    widen_factor: width multiplier ``k``.
    num_classes: number of output logits.
    dropout_rate: dropout inside each block (train only, ``'dropout'`` rng).
    bn_momentum: BatchNorm momentum (0.9 = PyTorch's 0.1).
    dtype: computation dtype.

  References:
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016,
    arXiv:1605.07146.
  """

  depth: int = 16
  widen_factor: int = 2
  num_classes: int = 10
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns ``[B, num_classes]`` logits for images ``x`` of shape ``[B, H, W, C]``."""
    _utils.check_input_rank(x, (4,), 'WRN')
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f'WRN: `depth` must be 6n + 4 with n >= 1, got {self.depth}.')
    if self.widen_factor < 1:
      raise ValueError(f'WRN: `widen_factor` must be >= 1, got {self.widen_factor}.')
    n = (self.depth - 4) // 6
    x = nn.Conv(16, (3, 3), padding=_PAD1, use_bias=False, kernel_init=_utils.conv_init,
                dtype=self.dtype, name='stem_conv')(x)
    for stage, base in enumerate((16, 32, 64), start=1):
      for b in range(n):
        strides = 2 if (stage > 1 and b == 0) else 1
        x = WideBasicBlock(base * self.widen_factor, strides, self.dropout_rate,
                           self.bn_momentum, self.dtype,
                           name=f'stage{stage}_block{b + 1}')(x, train=train)
      _utils.sow_feature(self, f'stage{stage}', x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                     dtype=self.dtype, name='final_bn')(x)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    _utils.sow_feature(self, 'embedding', x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(x)


def _factory(depth: int, widen_factor: int, name: str):
  def make(num_classes: int = 10, **kwargs) -> WRN:
    return WRN(depth=depth, widen_factor=widen_factor, num_classes=num_classes, **kwargs)
  make.__name__ = make.__qualname__ = name
  make.__doc__ = (
      f'Wide ResNet-{depth}-{widen_factor}.\n\n  Keyword arguments go to :class:`WRN`.\n  ')
  return make


wrn_16_1 = _factory(16, 1, 'wrn_16_1')
wrn_16_2 = _factory(16, 2, 'wrn_16_2')
wrn_16_4 = _factory(16, 4, 'wrn_16_4')
wrn_28_4 = _factory(28, 4, 'wrn_28_4')
wrn_28_10 = _factory(28, 10, 'wrn_28_10')
wrn_40_1 = _factory(40, 1, 'wrn_40_1')
wrn_40_2 = _factory(40, 2, 'wrn_40_2')
wrn_40_4 = _factory(40, 4, 'wrn_40_4')
