"""Dense-prediction models: a GFL/FCOS-style single-stage detector and a U-Net segmenter."""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils


_PAD1 = ((1, 1), (1, 1))


class ConvBNReLU(nn.Module):
  """3x3 conv (no bias) + BatchNorm + ReLU.

  Attributes:
    features: output channels.
    strides: conv stride.
    dtype: computation dtype.
  """

  features: int
  strides: int = 1
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), strides=(self.strides, self.strides), padding=_PAD1,
                use_bias=False, kernel_init=_utils.conv_init, dtype=self.dtype, name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name='bn')(x)
    return nn.relu(x)


def _check_image(x, model: str) -> None:
  _utils.check_input_rank(x, (4,), model)


class DenseDetector(nn.Module):
  """A small single-stage dense detector in the GFL/FCOS style, one feature level.

  Backbone: one stage per entry of ``widths``, each two :class:`ConvBNReLU`
  (the first strided by 2 from the second stage on), so the head sees a
  stride ``s = 2 ** (len(widths) - 1)`` map (4 by default). Head: separate
  classification and regression towers of ``head_depth`` 3x3 conv + ReLU
  layers of ``head_width`` channels (FCOS), then

  * class logits ``[B, H', W', num_classes + 1]``, background first (a
    softmax head, as in Chen et al. 2017, so detection soft-label KD applies);
    the biases start at background probability 0.99 (the prior
    initialisation of Lin et al. 2017);
  * box-edge logits ``[B, H', W', 4, num_bins]``: for each of the left, top,
    right and bottom distances (in strides) a distribution over the bins
    ``0 .. num_bins - 1`` (GFL's general distribution), so localization
    distillation (Zheng et al. 2022) applies location by location.

  ``(H', W') = kdjax.dense.grid_shape((H, W), stride)``; train it with
  :func:`kdjax.dense.assign_targets` and decode with
  :func:`kdjax.dense.detect`. Teacher and student sizes of the zoo share the
  stride, so their grids match.

  Returns ``(class_logits, {'box_logits': edge_logits})``; the engine's
  :func:`kdjax.models.linen_forward` turns that into
  ``ModelOutput(logits=class_logits, features={'box_logits': ..., ...})``.
  Sown features: ``'stage1'`` ... (backbone stages), ``'backbone'`` (the last
  stage, ``[B, H', W', widths[-1]]``: the hint feature), ``'cls_tower'`` and
  ``'reg_tower'`` (``[B, H', W', head_width]``).

  Attributes:
    num_classes: object classes (the class head has one more logit).
    widths: backbone stage widths.
    head_width: channels of the head towers.
    head_depth: conv layers per tower.
    num_bins: bins of each edge distribution.
    dtype: computation dtype.

  References:
    Tian, Shen, Chen & He, "FCOS: Fully Convolutional One-Stage Object
    Detection", ICCV 2019, arXiv:1904.01355.
    Li et al., "Generalized Focal Loss", NeurIPS 2020, arXiv:2006.04388.
    Zheng et al., "Localization Distillation for Dense Object Detection",
    CVPR 2022, arXiv:2102.12252.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax import models
    >>> det = models.create('dense_detector_student', num_classes=10)
    >>> x = jnp.zeros((2, 48, 48, 1))
    >>> init = lambda: models.init_variables(det, jax.random.key(0), x)
    >>> run = lambda v: models.linen_forward(det)(v, x, train=False)
    >>> out = jax.eval_shape(run, jax.eval_shape(init))  # shapes only, nothing compiled
    >>> det.stride, out.logits.shape, out.features['box_logits'].shape
    (4, (2, 12, 12, 11), (2, 12, 12, 4, 8))
    >>> out.features['backbone'].shape
    (2, 12, 12, 32)
  """

  num_classes: int = 10
  widths: Sequence[int] = (16, 32, 64)
  head_width: int = 64
  head_depth: int = 2
  num_bins: int = 8
  dtype: Optional[Any] = None

  @property
  def stride(self) -> int:
    """The head's stride in pixels, ``2 ** (len(widths) - 1)``."""
    return 2 ** (len(self.widths) - 1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    _check_image(x, 'DenseDetector')
    if self.num_bins < 2 or self.num_classes < 1 or not self.widths:
      raise ValueError(f'DenseDetector: need `num_bins` >= 2, `num_classes` >= 1 and '
                       f'`widths`, got {self.num_bins}, {self.num_classes}, {self.widths}.')
    for i, width in enumerate(self.widths, start=1):
      x = ConvBNReLU(width, 1 if i == 1 else 2, self.dtype, name=f'stage{i}_conv1')(x, train)
      x = ConvBNReLU(width, 1, self.dtype, name=f'stage{i}_conv2')(x, train)
      _utils.sow_feature(self, f'stage{i}', x)
    _utils.sow_feature(self, 'backbone', x)
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=_PAD1, dtype=self.dtype,
                             kernel_init=nn.initializers.normal(0.01))
    towers = {}
    for tower in ('cls', 'reg'):
      h = x
      for k in range(self.head_depth):
        h = nn.relu(conv(self.head_width, name=f'{tower}_tower{k + 1}')(h))
      towers[tower] = h
      _utils.sow_feature(self, f'{tower}_tower', h)
    # Background probability 0.99 at initialisation: b_bg - b_fg = log(0.99 C / 0.01).
    bias = jnp.zeros((self.num_classes + 1,)).at[0].set(math.log(99.0 * self.num_classes))
    class_logits = conv(self.num_classes + 1, bias_init=lambda *_: bias,
                        name='class_head')(towers['cls'])
    edges = conv(4 * self.num_bins, name='box_head')(towers['reg'])
    edges = edges.reshape(edges.shape[:-1] + (4, self.num_bins))
    return class_logits, {'box_logits': edges}


class UNet(nn.Module):
  """A small U-Net segmenter: per-pixel class logits at the input resolution.

  Encoder level ``i`` (``widths[i]`` channels) is two :class:`ConvBNReLU`,
  after a 2x2 max-pool from the second level on. The decoder walks back up:
  nearest-neighbour upsampling to the skip connection's size,
  concatenation with it, two :class:`ConvBNReLU`. A 1x1 conv gives the
  logits. Odd sizes work (pooling rounds up, upsampling matches the skip).

  Sown features: ``'enc1'`` ... (encoder levels), ``'bottleneck'`` (the
  deepest level, ``[B, ceil(H / 2^(L-1)), ..., widths[-1]]``), ``'dec1'`` ...
  (decoder levels, deepest first) and ``'features'`` (the last decoder map,
  ``[B, H, W, widths[0]]``, the classifier's input). Pair-wise KD (Liu et
  al. 2019) compares the node similarities of a feature map whose ``B, H,
  W`` agree between teacher and student, whatever the channels: the zoo's
  teacher and student have the same depth, so ``'bottleneck'`` (12x12 on
  48x48 inputs) and ``'features'`` (48x48; pool it, e.g. ``pool_size=4``)
  both pair up.

  Attributes:
    num_classes: classes per pixel, background included (11 for
      ``digits_segmentation``).
    widths: channels per level, shallowest first.
    dtype: computation dtype.

  References:
    Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical
    Image Segmentation", MICCAI 2015, arXiv:1505.04597.
    Liu, Chen, Liu, Qin, Luo & Wang, "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019, arXiv:1903.04197.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax import models
    >>> net = models.create('unet_student', num_classes=11)
    >>> x = jnp.zeros((2, 48, 48, 1))
    >>> init = lambda: models.init_variables(net, jax.random.key(0), x)
    >>> run = lambda v: models.linen_forward(net)(v, x, train=False)
    >>> out = jax.eval_shape(run, jax.eval_shape(init))
    >>> out.logits.shape, out.features['bottleneck'].shape, out.features['features'].shape
    ((2, 48, 48, 11), (2, 12, 12, 32), (2, 48, 48, 8))
  """

  num_classes: int = 11
  widths: Sequence[int] = (16, 32, 64)
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _check_image(x, 'UNet')
    if not self.widths or self.num_classes < 1:
      raise ValueError(f'UNet: need `widths` and `num_classes` >= 1, got {self.widths} and '
                       f'{self.num_classes}.')
    skips = []
    for i, width in enumerate(self.widths, start=1):
      if i > 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
      x = ConvBNReLU(width, 1, self.dtype, name=f'enc{i}_conv1')(x, train)
      x = ConvBNReLU(width, 1, self.dtype, name=f'enc{i}_conv2')(x, train)
      _utils.sow_feature(self, f'enc{i}', x)
      skips.append(x)
    _utils.sow_feature(self, 'bottleneck', x)
    levels = list(enumerate(self.widths[:-1], start=1))[::-1]
    for k, (i, width) in enumerate(levels, start=1):
      skip = skips[i - 1]
      x = jax.image.resize(x, skip.shape[:3] + x.shape[3:], method='nearest')
      x = jnp.concatenate([x, skip], axis=-1)
      x = ConvBNReLU(width, 1, self.dtype, name=f'dec{k}_conv1')(x, train)
      x = ConvBNReLU(width, 1, self.dtype, name=f'dec{k}_conv2')(x, train)
      _utils.sow_feature(self, f'dec{k}', x)
    _utils.sow_feature(self, 'features', x)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='classifier')(x)


_TEACHER_WIDTHS = (16, 32, 64)
_STUDENT_WIDTHS = (8, 16, 32)


def dense_detector_teacher(num_classes: int = 10, **kwargs) -> DenseDetector:
  """The teacher-size :class:`DenseDetector`: widths (16, 32, 64), head 64 x 2, stride 4."""
  kwargs = {'widths': _TEACHER_WIDTHS, 'head_width': 64, 'head_depth': 2, **kwargs}
  return DenseDetector(num_classes=num_classes, **kwargs)


def dense_detector_student(num_classes: int = 10, **kwargs) -> DenseDetector:
  """The student-size :class:`DenseDetector`: widths (8, 16, 32), head 32 x 1, stride 4."""
  kwargs = {'widths': _STUDENT_WIDTHS, 'head_width': 32, 'head_depth': 1, **kwargs}
  return DenseDetector(num_classes=num_classes, **kwargs)


def unet_teacher(num_classes: int = 11, **kwargs) -> UNet:
  """The teacher-size :class:`UNet`: widths (16, 32, 64)."""
  return UNet(num_classes=num_classes, **{'widths': _TEACHER_WIDTHS, **kwargs})


def unet_student(num_classes: int = 11, **kwargs) -> UNet:
  """The student-size :class:`UNet`: widths (8, 16, 32)."""
  return UNet(num_classes=num_classes, **{'widths': _STUDENT_WIDTHS, **kwargs})
