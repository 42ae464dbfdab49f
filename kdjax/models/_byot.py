"""BYOT: backbone stages with an exit head after each (Zhang et al. 2019).

:class:`BYOT` runs a backbone stage by stage and attaches an exit head (a
light bottleneck and a classifier) to every stage output; the last head is the
backbone's own classifier. :func:`byot_cnn1d` and :func:`byot_resnet` build it
for the zoo's 1-D CNN and CIFAR ResNets. The self-distillation objective and
early-exit evaluation live in :mod:`kdjax.online`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils
from kdjax.models._one import _as_tuple
from kdjax.models._resnet import BasicBlock


_PAD1 = ((1, 1), (1, 1))


# ------------------------------------------------------------------- stages

class Conv1DStage(nn.Module):
  """One layer of :class:`~kdjax.models.CNN1D`: ``relu(conv1d(x))``.

  Attributes:
    features: output channels.
    kernel_size: kernel size.
    strides: stride.
    padding: zero padding on each side.
    dtype: computation dtype.
  """

  features: int = 25
  kernel_size: int = 3
  strides: int = 2
  padding: int = 1
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``[B, L]`` or ``[B, L, C]`` to ``[B, L', features]``."""
    del train
    _utils.check_input_rank(x, (2, 3), type(self).__name__)
    if x.ndim == 2:
      x = x[..., None]
    x = nn.Conv(self.features, (self.kernel_size,), strides=(self.strides,),
                padding=((self.padding, self.padding),), dtype=self.dtype, name='conv')(x)
    return nn.relu(x)


class ResNetStem(nn.Module):
  """The CIFAR ResNet stem: 3x3 conv (no bias), BatchNorm, ReLU.

  Attributes:
    features: output channels.
    bn_momentum: BatchNorm momentum.
    dtype: computation dtype.
  """

  features: int = 16
  bn_momentum: float = 0.9
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``[B, H, W, C]`` to ``[B, H, W, features]``."""
    _utils.check_input_rank(x, (4,), type(self).__name__)
    x = nn.Conv(self.features, (3, 3), padding=_PAD1, use_bias=False,
                kernel_init=_utils.conv_init, dtype=self.dtype, name='stem_conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                     dtype=self.dtype, name='stem_bn')(x)
    return nn.relu(x)


class ResNetStage(nn.Module):
  """``num_blocks`` :class:`~kdjax.models.BasicBlock` s; the first has stride ``strides``.

  Attributes:
    features: output channels.
    num_blocks: number of blocks.
    strides: stride of the first block.
    bn_momentum: BatchNorm momentum.
    dtype: computation dtype.
  """

  features: int = 16
  num_blocks: int = 3
  strides: int = 1
  bn_momentum: float = 0.9
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``[B, H, W, C]`` to ``[B, H/strides, W/strides, features]``."""
    for b in range(self.num_blocks):
      x = BasicBlock(self.features, self.strides if b == 0 else 1, self.bn_momentum,
                     self.dtype, name=f'block{b + 1}')(x, train=train)
    return x


# -------------------------------------------------------------------- heads

class ResNetExitHead(nn.Module):
  """An exit head for a CIFAR ResNet stage: bottleneck, pooling, classifier.

  The bottleneck is one ``3x3 stride-2 conv → BN → ReLU`` per entry of
  ``widths`` (the widths of the backbone stages after this one), so its output
  has the resolution and width of the last stage and the pooled embedding has
  the deepest embedding's size, as the feature term of BYOT needs. (The paper
  uses ResNet bottleneck blocks here; this is a lighter variant.) With empty
  ``widths`` the head is the backbone's own ``GAP → Dense``.

  Attributes:
    num_classes: number of output logits.
    widths: channels of the downsampling convs (may be empty).
    bn_momentum: BatchNorm momentum.
    dtype: computation dtype.
  """

  num_classes: int = 10
  widths: Sequence[int] = ()
  bn_momentum: float = 0.9
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, h: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Returns ``(logits [B, num_classes], embedding [B, D])`` for ``h`` ``[B, H, W, C]``."""
    for i, width in enumerate(self.widths, start=1):
      h = nn.Conv(width, (3, 3), strides=(2, 2), padding=_PAD1, use_bias=False,
                  kernel_init=_utils.conv_init, dtype=self.dtype, name=f'conv{i}')(h)
      h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                       dtype=self.dtype, name=f'bn{i}')(h)
      h = nn.relu(h)
    embedding = jnp.mean(h, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(embedding), embedding


class CNN1DExitHead(nn.Module):
  """A light exit head for a 1-D CNN stage: pooling, pointwise conv, flatten, Dense.

  One average pooling per entry of ``kernel_sizes`` (window ``k``, the
  backbone's stride and padding, so the length shrinks exactly as through the
  remaining conv layers), then a 1x1 conv to ``features`` channels with ReLU:
  the flattened embedding then has the deepest embedding's size at a small
  fraction of the remaining layers' cost (the paper's bottleneck role). With
  no pooling and ``features=None`` the head is the backbone's own
  ``flatten → Dense``.

  Attributes:
    num_classes: number of output logits.
    features: channels of the pointwise conv; ``None`` for no conv.
    kernel_sizes: pooling windows (may be empty).
    strides: pooling stride.
    padding: zero padding of each pooling (counted in the average).
    dtype: computation dtype.
  """

  num_classes: int = 10
  features: Optional[int] = None
  kernel_sizes: Sequence[int] = ()
  strides: int = 2
  padding: int = 1
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, h: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Returns ``(logits [B, num_classes], embedding [B, D])`` for ``h`` ``[B, L, C]``."""
    del train
    for k in self.kernel_sizes:
      h = nn.avg_pool(h, (k,), strides=(self.strides,), padding=((self.padding, self.padding),))
    if self.features is not None:
      h = nn.relu(nn.Conv(self.features, (1,), dtype=self.dtype, name='conv')(h))
    embedding = jnp.reshape(h, (h.shape[0], -1))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(embedding), embedding


# -------------------------------------------------------------------- model

class BYOT(nn.Module):
  """A staged backbone with an exit head after every stage ("Be Your Own Teacher").

  ``h_0 = stem(x)``, ``h_k = stage_k(h_{k−1})`` and exit ``k`` is
  ``(z_k, F_k) = head_k(h_k)``: logits and the embedding fed to its
  classifier. The last head is the deepest classifier (the teacher of the
  shallow ones during training). All heads' embeddings must have one shape,
  so the feature term ``‖F_k − F_K‖²`` is defined.

  Returns the logits of the last exit computed: the deepest one, or exit
  ``max_exit`` when set (later stages and heads are then not computed, which
  is how per-exit compute is measured). Sown into ``'intermediates'``:
  ``'exit_logits'`` ``[K, B, C]`` and ``'exit_features'`` ``[K, B, D]`` (exits
  ordered shallow to deep), ``'stage{k}'`` and ``'embedding'`` (the last exit's
  ``F``).

  Attributes:
    stages: the backbone stages, each ``stage(h, train=...) -> h``.
    heads: one exit head per stage, each ``head(h, train=...) -> (logits,
      embedding)``.
    stem: optional module applied before the first stage.
    max_exit: compute exits ``1..max_exit`` only (1-based); ``None`` for all.

  References:
    Zhang, Song, Gao, Chen, Bao & Ma, "Be Your Own Teacher: Improve the
    Performance of Convolutional Neural Networks via Self Distillation",
    ICCV 2019, arXiv:1905.08094 (§3, Fig. 2).

  Examples:
    >>> import functools, jax, jax.numpy as jnp
    >>> from kdjax.models import byot_cnn1d, init_variables, linen_forward
    >>> model = byot_cnn1d(num_classes=3, channels=4)
    >>> x = jax.ShapeDtypeStruct((4, 40), jnp.float32)  # shapes only: nothing is computed
    >>> variables = jax.eval_shape(functools.partial(init_variables, model), jax.random.key(0), x)
    >>> out = jax.eval_shape(functools.partial(linen_forward(model), train=False), variables, x)
    >>> out.logits.shape, out.features['exit_logits'].shape, out.features['exit_features'].shape
    ((4, 3), (3, 4, 3), (3, 4, 20))
  """

  stages: Sequence[nn.Module]
  heads: Sequence[nn.Module]
  stem: Optional[nn.Module] = None
  max_exit: Optional[int] = None

  @property
  def num_exits(self) -> int:
    """The number of exits ``K`` (one per stage)."""
    return len(self.heads)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns the logits ``[B, C]`` of the last exit computed."""
    if len(self.stages) != len(self.heads) or not self.stages:
      raise ValueError(
          f'BYOT: `stages` and `heads` must be non-empty and of equal length, got '
          f'{len(self.stages)} and {len(self.heads)}.')
    last = len(self.stages) if self.max_exit is None else self.max_exit
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= len(self.stages):
      raise ValueError(f'BYOT: `max_exit` must be None or an int in [1, {len(self.stages)}], '
                       f'got {self.max_exit!r}.')
    h = x if self.stem is None else self.stem(x, train=train)
    logits, features = [], []
    for k in range(last):
      h = self.stages[k](h, train=train)
      _utils.sow_feature(self, f'stage{k + 1}', h)
      z, f = self.heads[k](h, train=train)
      logits.append(z)
      features.append(f)
    shapes = {tuple(f.shape) for f in features}
    if len(shapes) > 1:
      raise ValueError(
          f'BYOT: every exit head must give embeddings of one shape, got '
          f'{[tuple(f.shape) for f in features]}.')
    _utils.sow_feature(self, 'exit_logits', jnp.stack(logits))
    _utils.sow_feature(self, 'exit_features', jnp.stack(features))
    _utils.sow_feature(self, 'embedding', features[-1])
    return logits[-1]


# ----------------------------------------------------------------- factories

def byot_cnn1d(num_classes: int = 10, *, channels: int | Sequence[int] = 25,
               kernel_sizes: Sequence[int] = (5, 3, 3), strides: int = 2, padding: int = 1,
               dtype: Optional[Any] = None) -> BYOT:
  """BYOT over the MNIST-1D :class:`~kdjax.models.CNN1D` (one exit per conv layer).

  The backbone is the ``CNN1D`` with the same options. The exit after layer
  ``k < K`` is a :class:`CNN1DExitHead`: average pooling with the remaining
  layers' windows and strides, a 1x1 conv to the last layer's width, flatten
  and Dense; the last exit is the ``CNN1D`` classifier.

  Args:
    num_classes: number of output logits.
    channels: filters per conv layer (an int or one per layer).
    kernel_sizes: kernel size of each conv layer (one exit per layer).
    strides: stride of every conv layer.
    padding: zero padding of every conv layer.
    dtype: computation dtype.

  Returns:
    An unbound :class:`BYOT` module.

  Examples:
    >>> model = byot_cnn1d(num_classes=10)
    >>> model.num_exits, model.heads[0].kernel_sizes, model.heads[2].kernel_sizes
    (3, (3, 3), ())
    >>> model.heads[0].features, model.heads[2].features
    (25, None)
  """
  kernel_sizes = tuple(kernel_sizes)
  n = len(kernel_sizes)
  channels = _as_tuple(channels, n, 'channels')
  stages = tuple(Conv1DStage(c, k, strides, padding, dtype) for c, k in zip(channels, kernel_sizes))
  heads = tuple(
      CNN1DExitHead(num_classes, channels[-1] if i < n - 1 else None, kernel_sizes[i + 1:],
                    strides, padding, dtype)
      for i in range(n))
  return BYOT(stages=stages, heads=heads)


def byot_resnet(num_classes: int = 10, *, depth: int = 20,
                widths: Sequence[int] = (16, 16, 32, 64), bn_momentum: float = 0.9,
                dtype: Optional[Any] = None) -> BYOT:
  """BYOT over a CIFAR ResNet-(6n+2) (one exit per stage).

  The backbone is ``CifarResNet(depth, widths)``; the exit after stage ``k``
  is a :class:`ResNetExitHead` whose strided convs follow the widths of the
  later stages; the last exit is the backbone's ``GAP → Dense``.

  Args:
    num_classes: number of output logits.
    depth: ``6n + 2``.
    widths: stem width followed by one width per stage.
    bn_momentum: BatchNorm momentum.
    dtype: computation dtype.

  Returns:
    An unbound :class:`BYOT` module.

  Raises:
    ValueError: for a bad ``depth`` or ``widths``.

  Examples:
    >>> model = byot_resnet(num_classes=100, depth=8)
    >>> model.num_exits, [h.widths for h in model.heads]
    (3, [(32, 64), (64,), ()])
  """
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f'`depth` must be 6n + 2 with n >= 1, got {depth}.')
  widths = tuple(widths)
  if len(widths) < 2:
    raise ValueError(f'`widths` needs a stem and >= 1 stage, got {widths}.')
  n = (depth - 2) // 6
  stem = ResNetStem(widths[0], bn_momentum, dtype)
  stages = tuple(ResNetStage(w, n, 1 if s == 1 else 2, bn_momentum, dtype)
                 for s, w in enumerate(widths[1:], start=1))
  heads = tuple(ResNetExitHead(num_classes, widths[s + 1:], bn_momentum, dtype)
                for s in range(1, len(widths)))
  return BYOT(stages=stages, heads=heads, stem=stem)
