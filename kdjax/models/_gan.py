"""Class-conditional DCGAN-style generator and projection critic for 8x8 digits.

The generator takes ``{'noise': [B, Z], 'label': [B]}`` and returns images
``[B, 8, 8, 1]`` in ``[0, 1]`` (a sigmoid), the range of the raw scikit-learn
digits (:class:`kdjax.data.Digits` before standardisation). The critic takes
``{'image': [B, 8, 8, 1], 'label': [B]}`` and returns one score per image.
Neither has a normalisation layer: each example's output depends on that
example only, as the WGAN-GP penalty needs for the critic.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils


def _inputs(inputs: Any, keys: Sequence[str], model: str) -> list:
  if not isinstance(inputs, Mapping) or any(k not in inputs for k in keys):
    got = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
    raise ValueError(f'{model}: `inputs` must be a dict with keys {list(keys)}, got {got}.')
  return [jnp.asarray(inputs[k]) for k in keys]


class GanGenerator(nn.Module):
  """DCGAN-style class-conditional generator: noise + label embedding -> ``[B, H, W, C]`` image.

  ``concat(noise, embed(label))`` -> Dense to a ``2x2x(4·width)`` map ->
  ReLU -> two stride-2 4x4 transposed convs (``2·width``, ``width``
  channels, ReLU) -> a 3x3 conv to ``channels`` -> sigmoid. For the default
  8x8x1 output the maps are 2x2, 4x4 and 8x8.

  Sown features: ``'stage1'`` ``[B, 2, 2, 4w]``, ``'stage2'`` ``[B, 4, 4, 2w]``,
  ``'stage3'`` ``[B, 8, 8, w]`` (after their ReLU).

  Attributes:
    width: the base width ``w`` (teacher 32, student 8: :func:`gan_generator_teacher`,
      :func:`gan_generator_student`).
    num_classes: label classes.
    embed_dim: label embedding size.
    channels: output channels.

  References:
    Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep
    Convolutional Generative Adversarial Networks" (DCGAN), ICLR 2016,
    arXiv:1511.06434. Mirza & Osindero, "Conditional Generative Adversarial
    Nets", 2014, arXiv:1411.1784.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> g = GanGenerator(width=4)
    >>> inputs = {'noise': jnp.zeros((2, 16)), 'label': jnp.array([3, 7])}
    >>> v = jax.eval_shape(g.init, jax.random.key(0), inputs)
    >>> jax.eval_shape(g.apply, v, inputs).shape
    (2, 8, 8, 1)
  """

  width: int = 32
  num_classes: int = 10
  embed_dim: int = 16
  channels: int = 1

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], train: bool = False) -> jax.Array:
    """Returns ``[B, 8, 8, channels]`` images in ``[0, 1]``."""
    del train  # no dropout or normalisation
    noise, label = _inputs(inputs, ('noise', 'label'), 'GanGenerator')
    if noise.ndim != 2 or label.shape != noise.shape[:1]:
      raise ValueError(f"GanGenerator: `inputs['noise']` must be [B, Z] and `inputs['label']` "
                       f'[B], got {noise.shape} and {label.shape}.')
    w = self.width
    emb = nn.Embed(self.num_classes, self.embed_dim, name='embed')(label.astype(jnp.int32))
    h = nn.Dense(2 * 2 * 4 * w, name='project')(jnp.concatenate([noise, emb], axis=-1))
    h = nn.relu(h.reshape(noise.shape[0], 2, 2, 4 * w))
    _utils.sow_feature(self, 'stage1', h)
    for i, c in enumerate((2 * w, w), start=2):
      h = nn.relu(nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding='SAME',
                                   name=f'deconv{i - 1}')(h))
      _utils.sow_feature(self, f'stage{i}', h)
    return nn.sigmoid(nn.Conv(self.channels, (3, 3), padding='SAME', name='out')(h))


class GanCritic(nn.Module):
  """Class-conditional Wasserstein critic with projection: ``ψ(φ(x)) + ⟨embed(y), φ(x)⟩``.

  ``φ``: stride-2 3x3 convs with leaky ReLU (slope 0.2), flattened; ``ψ`` a
  linear score; the label enters through the inner product of its embedding
  with ``φ(x)`` (the projection discriminator). No normalisation layer.

  Attributes:
    widths: channels of the strided convs (8x8 -> 4x4 -> 2x2 by default).
    num_classes: label classes.

  References:
    Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018,
    arXiv:1802.05637. Gulrajani et al., "Improved Training of Wasserstein
    GANs", NeurIPS 2017.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> d = GanCritic(widths=(4,))
    >>> inputs = {'image': jnp.zeros((3, 8, 8, 1)), 'label': jnp.array([0, 1, 2])}
    >>> v = jax.eval_shape(d.init, jax.random.key(0), inputs)
    >>> jax.eval_shape(d.apply, v, inputs).shape
    (3,)
  """

  widths: Sequence[int] = (32, 64)
  num_classes: int = 10

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], train: bool = False) -> jax.Array:
    """Returns ``[B]`` scores of ``{'image': [B, H, W, C], 'label': [B]}``."""
    del train
    x, label = _inputs(inputs, ('image', 'label'), 'GanCritic')
    _utils.check_input_rank(x, (4,), 'GanCritic')
    for i, width in enumerate(self.widths, start=1):
      x = nn.leaky_relu(nn.Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                                name=f'conv{i}')(x), 0.2)
    h = x.reshape(x.shape[0], -1)
    _utils.sow_feature(self, 'embedding', h)
    emb = nn.Embed(self.num_classes, h.shape[-1], name='embed')(label.astype(jnp.int32))
    return nn.Dense(1, name='score')(h)[:, 0] + jnp.sum(emb * h, axis=-1)


def gan_generator_teacher(num_classes: int = 10, **kw) -> GanGenerator:
  """The teacher generator: width 32 (4·32 = 128 channels at 2x2)."""
  return GanGenerator(**{'width': 32, 'num_classes': num_classes, **kw})


def gan_generator_student(num_classes: int = 10, **kw) -> GanGenerator:
  """The student generator: the teacher's width ÷ 4 (8)."""
  return GanGenerator(**{'width': 8, 'num_classes': num_classes, **kw})


def gan_critic(num_classes: int = 10, **kw) -> GanCritic:
  """The projection critic of :class:`GanCritic` with its default widths."""
  return GanCritic(**{'num_classes': num_classes, **kw})
