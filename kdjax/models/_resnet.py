"""CIFAR ResNets (He et al. 2016, §4.2) in the widths RepDistiller uses."""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils


_PAD1 = ((1, 1), (1, 1))  # PyTorch-style symmetric padding for 3x3 convs.


class BasicBlock(nn.Module):
  """Post-activation residual block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

  The shortcut is the identity, or a 1x1 strided conv + BN when the stride or
  the channel count changes (option B of He et al.).

  Attributes:
    features: output channels.
    strides: stride of the first 3x3 conv and of the projection.
    bn_momentum: BatchNorm running-average momentum (0.9 = PyTorch's 0.1).
    dtype: computation dtype.
  """

  features: int
  strides: int = 1
  bn_momentum: float = 0.9
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_utils.conv_init,
                             dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype)
    s = (self.strides, self.strides)
    y = conv(self.features, (3, 3), strides=s, padding=_PAD1, name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv(self.features, (3, 3), padding=_PAD1, name='conv2')(y)
    y = norm(name='bn2')(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, (1, 1), strides=s, padding='VALID', name='proj_conv')(x)
      shortcut = norm(name='proj_bn')(shortcut)
    return nn.relu(y + shortcut)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 inputs with BasicBlocks.

  Layout: 3x3 stem conv (``widths[0]`` channels) + BN + ReLU, then one stage
  per remaining entry of ``widths`` with ``n = (depth - 2) / 6`` blocks each
  (stride 1 for the first stage, 2 after), global average pooling, Dense. With
  ``widths=(16, 16, 32, 64)`` this is ResNet-20/32/56/110 of He et al.; the
  ``x4`` variants of RepDistiller use ``(32, 64, 128, 256)``. Pooling averages
  over whatever spatial size is left, so 8x8 inputs work too.

  Sown features: ``'stage1'``, ``'stage2'``, ``'stage3'`` (each stage's output
  after its last ReLU, ``[B, H_i, W_i, widths[i]]``) and ``'embedding'``
  (pooled, ``[B, widths[-1]]``).

  Attributes:
    depth: total depth ``6n + 2``.
    widths: stem width followed by one width per stage.
    num_classes: number of output logits.
    bn_momentum: BatchNorm momentum (0.9 = PyTorch's 0.1).
    dtype: computation dtype.

  References:
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition",
    CVPR 2016, arXiv:1512.03385.
    Tian, Krishnan & Isola, "Contrastive Representation Distillation" (the
    RepDistiller benchmark), ICLR 2020, arXiv:1910.10699.
  """

  depth: int = 20
  widths: Sequence[int] = (16, 16, 32, 64)
  num_classes: int = 10
  bn_momentum: float = 0.9
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns ``[B, num_classes]`` logits for images ``x`` of shape ``[B, H, W, C]``."""
    _utils.check_input_rank(x, (4,), 'CifarResNet')
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(f'CifarResNet: `depth` must be 6n + 2 with n >= 1, got {self.depth}.')
    if len(self.widths) < 2:
      raise ValueError(f'CifarResNet: `widths` needs a stem and >= 1 stage, got {self.widths}.')
    n = (self.depth - 2) // 6
    x = nn.Conv(self.widths[0], (3, 3), padding=_PAD1, use_bias=False,
                kernel_init=_utils.conv_init, dtype=self.dtype, name='stem_conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                     dtype=self.dtype, name='stem_bn')(x)
    x = nn.relu(x)
    for stage, width in enumerate(self.widths[1:], start=1):
      for b in range(n):
        strides = 2 if (stage > 1 and b == 0) else 1
        x = BasicBlock(width, strides, self.bn_momentum, self.dtype,
                       name=f'stage{stage}_block{b + 1}')(x, train=train)
      _utils.sow_feature(self, f'stage{stage}', x)
    x = jnp.mean(x, axis=(1, 2))
    _utils.sow_feature(self, 'embedding', x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(x)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _factory(depth: int, widths: Sequence[int], name: str):
  def make(num_classes: int = 10, **kwargs) -> CifarResNet:
    return CifarResNet(depth=depth, widths=widths, num_classes=num_classes, **kwargs)
  make.__name__ = make.__qualname__ = name
  make.__doc__ = (
      f'CIFAR ResNet-{depth} with widths {tuple(widths)} (RepDistiller ``{name}``).\n\n'
      '  Keyword arguments go to :class:`CifarResNet`.\n  ')
  return make


resnet8 = _factory(8, _NARROW, 'resnet8')
resnet14 = _factory(14, _NARROW, 'resnet14')
resnet20 = _factory(20, _NARROW, 'resnet20')
resnet32 = _factory(32, _NARROW, 'resnet32')
resnet44 = _factory(44, _NARROW, 'resnet44')
resnet56 = _factory(56, _NARROW, 'resnet56')
resnet110 = _factory(110, _NARROW, 'resnet110')
resnet8x4 = _factory(8, _WIDE, 'resnet8x4')
resnet32x4 = _factory(32, _WIDE, 'resnet32x4')
