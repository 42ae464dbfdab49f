"""Name -> constructor registry for the model zoo."""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn

from kdjax.models import _byot
from kdjax.models import _cnn1d
from kdjax.models import _dense
from kdjax.models import _gan
from kdjax.models import _mlp
from kdjax.models import _one
from kdjax.models import _plain_cnn
from kdjax.models import _resnet
from kdjax.models import _transformer
from kdjax.models import _wrn


# A factory takes ``num_classes`` and keyword options and returns a module.
Factory = Callable[..., nn.Module]

_REGISTRY: dict[str, Factory] = {
    'mlp': lambda num_classes=10, **kw: _mlp.MLP(num_classes=num_classes, **kw),
    'cnn1d': lambda num_classes=10, **kw: _cnn1d.CNN1D(num_classes=num_classes, **kw),
}
for _name in ('resnet8', 'resnet14', 'resnet20', 'resnet32', 'resnet44', 'resnet56',
              'resnet110', 'resnet8x4', 'resnet32x4'):
  _REGISTRY[_name] = getattr(_resnet, _name)
for _name in ('wrn_16_1', 'wrn_16_2', 'wrn_16_4', 'wrn_28_4', 'wrn_28_10', 'wrn_40_1',
              'wrn_40_2', 'wrn_40_4'):
  _REGISTRY[_name] = getattr(_wrn, _name)


def _plain(depth: int, num_classes: int = 10, **kw) -> nn.Module:
  return _plain_cnn.PlainCNN(depth=depth, num_classes=num_classes, **kw)


for _depth in sorted(_plain_cnn.PLANS):
  _REGISTRY[f'plain_cnn_{_depth}'] = functools.partial(_plain, _depth)


# Online distillation models (ONE branches, BYOT exits); options as keywords.
_REGISTRY.update({
    'one_cnn1d': _one.one_cnn1d, 'one_resnet': _one.one_resnet,
    'byot_cnn1d': _byot.byot_cnn1d, 'byot_resnet': _byot.byot_resnet,
})


# Dense prediction (detection, segmentation): teacher and student sizes.
_REGISTRY.update({
    'dense_detector_teacher': _dense.dense_detector_teacher,
    'dense_detector_student': _dense.dense_detector_student,
    'unet_teacher': _dense.unet_teacher,
    'unet_student': _dense.unet_student,
})


# Transformer encoders (MobileBERT-style teacher and thin student of the same depth).
_REGISTRY.update({
    'transformer': lambda num_classes=10, **kw: _transformer.Transformer(
        num_classes=num_classes, **kw),
    'transformer_teacher': _transformer.transformer_teacher,
    'transformer_student': _transformer.transformer_student,
})
# GAN feature KD on 8x8 digits: teacher and student (width ÷ 4) generators, the critic.
_REGISTRY.update({
    'gan_generator_teacher': _gan.gan_generator_teacher,
    'gan_generator_student': _gan.gan_generator_student,
    'gan_critic': _gan.gan_critic,
})


def register(name: str, factory: Factory, *, overwrite: bool = False) -> None:
  """Adds ``factory(num_classes=..., **kwargs) -> nn.Module`` under ``name``.

  Raises:
    ValueError: if ``name`` is taken and ``overwrite`` is False.
  """
  if name in _REGISTRY and not overwrite:
    raise ValueError(f'`name` {name!r} is already registered; pass overwrite=True to replace it.')
  _REGISTRY[name] = factory


def list_models() -> list[str]:
  """Sorted names known to :func:`create`."""
  return sorted(_REGISTRY)


def create(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
  """Builds a model by name.

  Args:
    name: a registered name such as ``'mlp'``, ``'cnn1d'``, ``'resnet20'``,
      ``'resnet8x4'``, ``'wrn_16_2'``, ``'plain_cnn_4'``, the online
      distillation models ``'one_cnn1d'``, ``'one_resnet'``, ``'byot_cnn1d'``
      and ``'byot_resnet'``, or the dense models ``'dense_detector_teacher'``,
      ``'dense_detector_student'``, ``'unet_teacher'`` and ``'unet_student'``, the
      transformers ``'transformer'``, ``'transformer_teacher'`` and
      ``'transformer_student'``, or the GAN models ``'gan_generator_teacher'``,
      ``'gan_generator_student'`` and ``'gan_critic'``;
      see :func:`list_models`.
    num_classes: number of output logits (for a detector, object classes: its
      class head adds a background logit; for a U-Net, per-pixel classes with
      the background).
    **kwargs: further attributes of the model class (e.g. ``hidden=(64,)`` for
      ``'mlp'``, ``dropout_rate=0.3`` for a WRN, ``dtype=jnp.bfloat16``).

  Returns:
    An unbound Flax Linen module.

  Raises:
    ValueError: for an unknown ``name``; the message lists the known names.

  Examples:
    >>> from kdjax import models
    >>> model = models.create('wrn_16_2', num_classes=100)
    >>> type(model).__name__, model.depth, model.widen_factor, model.num_classes
    ('WRN', 16, 2, 100)
  """
  try:
    factory = _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(
        f'Unknown model `name` {name!r}. Known names: {", ".join(list_models())}.') from None
  return factory(num_classes=num_classes, **kwargs)
