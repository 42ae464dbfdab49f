"""Plain (non-residual) CNNs of configurable depth, as in TAKD's ladder."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils


# depth -> (stages, hidden). Each stage is a tuple of conv widths (3x3 conv,
# padding 1, BN, ReLU each) followed by a 2x2 max-pool; then the feature map
# is flattened and goes through ``hidden`` Dense+ReLU layers and the
# classifier. ``depth`` counts conv layers. The widths double per stage as in
# the teacher/TA/student ladder of Mirzadeh et al. (2020).
PLANS: dict[int, tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]] = {
    2: (((16,), (16,)), ()),
    4: (((16, 16), (32, 32)), ()),
    6: (((16, 16), (32, 32), (64, 64)), ()),
    8: (((16, 16), (32, 32), (64, 64), (128, 128)), (64,)),
    10: (((32, 32), (64, 64), (128, 128), (256, 256, 256, 256)), (128,)),
}


class PlainCNN(nn.Module):
  """Plain CNN: stages of ``conv3x3-BN-ReLU`` layers each closed by a max-pool.

  Layer plans (``depth`` = number of conv layers; ``|`` marks a 2x2 max-pool,
  ``FC`` a hidden Dense+ReLU before the classifier):

  ==== ===========================================================
  2    16 | 16 |
  4    16 16 | 32 32 |
  6    16 16 | 32 32 | 64 64 |
  8    16 16 | 32 32 | 64 64 | 128 128 | FC64
  10   32 32 | 64 64 | 128 128 | 256 256 256 256 | FC128
  ==== ===========================================================

  Small inputs: a max-pool (window 2, stride 2, floor) is skipped when the
  feature map is already smaller than 2 in height or width, so nothing
  shrinks below 1x1. For 8x8 digits the 8- and 10-layer plans pool
  8 -> 4 -> 2 -> 1 and skip the last pool; for 32x32 CIFAR all pools apply.
  The flattened map feeds the head, so the first Dense's input size depends
  on the input resolution (fixed at ``init``).

  Sown features: ``'stage1'``, ``'stage2'``, ... (each stage's output after its
  pool, ``[B, H_i, W_i, C_i]``) and ``'embedding'`` (the classifier's input:
  the last hidden FC activation, or the flattened last stage).

  Attributes:
    depth: one of ``2, 4, 6, 8, 10`` (a key of ``PLANS``).
    num_classes: number of output logits.
    plan: optional ``(stages, hidden)`` overriding ``PLANS[depth]``.
    bn_momentum: BatchNorm momentum (0.9 = PyTorch's 0.1).
    dtype: computation dtype.

  References:
    Mirzadeh, Farajtabar, Li, Levine, Matsukawa & Ghasemzadeh, "Improved
    Knowledge Distillation via Teacher Assistant", AAAI 2020,
    arXiv:1902.03393.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.models import PlainCNN
    >>> model = PlainCNN(depth=8, num_classes=10)
    >>> x = jnp.zeros((2, 8, 8, 1))
    >>> logits, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
    >>> logits.shape, variables['params']['fc1']['kernel'].shape
    ((2, 10), (128, 64))
  """

  depth: int = 4
  num_classes: int = 10
  plan: Optional[tuple[Sequence[Sequence[int]], Sequence[int]]] = None
  bn_momentum: float = 0.9
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns ``[B, num_classes]`` logits for images ``x`` of shape ``[B, H, W, C]``."""
    _utils.check_input_rank(x, (4,), 'PlainCNN')
    if self.plan is not None:
      stages, hidden = self.plan
    elif self.depth in PLANS:
      stages, hidden = PLANS[self.depth]
    else:
      raise ValueError(
          f'PlainCNN: `depth` must be one of {sorted(PLANS)} (or pass `plan`), '
          f'got {self.depth}.')
    layer = 0
    for stage, widths in enumerate(stages, start=1):
      for width in widths:
        layer += 1
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    kernel_init=_utils.conv_init, dtype=self.dtype, name=f'conv{layer}')(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=1e-5, dtype=self.dtype, name=f'bn{layer}')(x)
        x = nn.relu(x)
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
      _utils.sow_feature(self, f'stage{stage}', x)
    x = jnp.reshape(x, (x.shape[0], -1))
    for i, width in enumerate(hidden, start=1):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'fc{i}')(x))
    _utils.sow_feature(self, 'embedding', x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(x)
