"""Flax Linen model zoo for distillation experiments.

Every model is called as ``model.apply(variables, x, train=False)``, takes
channels-last inputs and returns ``[B, num_classes]`` logits. Models with
BatchNorm keep running statistics in the ``'batch_stats'`` collection, updated
only when ``train=True`` (``mutable=['batch_stats']``); WRN dropout uses the
``'dropout'`` rng.

Named features (each stage's output ``'stage1'``, ``'stage2'``, ... or the
MLP's ``'hidden1'``, ...; and ``'embedding'``, the input of the final Dense)
are sown into the ``'intermediates'`` collection during ``apply`` (not during
``init``). Ask for that collection and flatten it with :func:`get_features`:

>>> import jax, jax.numpy as jnp
>>> from kdjax import models
>>> model = models.create('cnn1d', num_classes=10)
>>> x = jnp.zeros((2, 40))
>>> variables = model.init(jax.random.key(0), x)
>>> logits, state = model.apply(variables, x, mutable=['intermediates'])
>>> feats = models.get_features(state['intermediates'])
>>> feats['stage2'].shape, feats['embedding'].shape
((2, 10, 25), (2, 125))

Dense models (:class:`DenseDetector`, :class:`UNet`) return per-location
outputs instead: a detector ``[B, H', W', num_classes + 1]`` class logits plus
``{'box_logits': [B, H', W', 4, n_bins]}``, a U-Net ``[B, H, W, num_classes]``
per-pixel logits; see their docstrings and :mod:`kdjax.dense`. The GAN models
(:class:`GanGenerator`, :class:`GanCritic`) take dicts: ``{'noise', 'label'}``
to ``[B, 8, 8, 1]`` images, and ``{'image', 'label'}`` to ``[B]`` scores; see
:mod:`kdjax.gan`.

A CIFAR ResNet works the same way; its ``'stage2'`` is ``[B, 16, 16, 32]``
for ``resnet20`` on ``[B, 32, 32, 3]`` inputs. Feature shapes can be read
without computing anything via ``jax.eval_shape(functools.partial(
model.apply, mutable=['intermediates']), variables, x)``.

In training, also make ``'batch_stats'`` mutable:
``model.apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'])``.
"""

from kdjax.models._byot import BYOT
from kdjax.models._byot import byot_cnn1d
from kdjax.models._byot import byot_resnet
from kdjax.models._byot import CNN1DExitHead
from kdjax.models._byot import Conv1DStage
from kdjax.models._byot import ResNetExitHead
from kdjax.models._byot import ResNetStage
from kdjax.models._byot import ResNetStem
# Models.
from kdjax.models._cnn1d import CNN1D
from kdjax.models._dense import ConvBNReLU
from kdjax.models._dense import dense_detector_student
from kdjax.models._dense import dense_detector_teacher
from kdjax.models._dense import DenseDetector
from kdjax.models._dense import UNet
from kdjax.models._dense import unet_student
from kdjax.models._dense import unet_teacher
from kdjax.models._gan import gan_critic
from kdjax.models._gan import gan_generator_student
from kdjax.models._gan import gan_generator_teacher
from kdjax.models._gan import GanCritic
from kdjax.models._gan import GanGenerator
from kdjax.models._mlp import MLP
from kdjax.models._netaug import base_fan_in_init
from kdjax.models._netaug import export_base
from kdjax.models._netaug import NetAugCNN1D
from kdjax.models._netaug import NetAugMLP
from kdjax.models._netaug import SlicedConv
from kdjax.models._netaug import SlicedDense
from kdjax.models._one import CNN1DBranch
from kdjax.models._one import CNN1DTrunk
from kdjax.models._one import export_branch
from kdjax.models._one import ONE
from kdjax.models._one import one_cnn1d
from kdjax.models._one import one_resnet
from kdjax.models._one import ONEBranch
from kdjax.models._one import ResNetBranch
from kdjax.models._one import ResNetTrunk
from kdjax.models._plain_cnn import PlainCNN
# Registry and utilities.
from kdjax.models._registry import create
from kdjax.models._registry import list_models
from kdjax.models._registry import register
from kdjax.models._resnet import BasicBlock
from kdjax.models._resnet import CifarResNet
from kdjax.models._resnet import resnet8
from kdjax.models._resnet import resnet8x4
from kdjax.models._resnet import resnet14
from kdjax.models._resnet import resnet20
from kdjax.models._resnet import resnet32
from kdjax.models._resnet import resnet32x4
from kdjax.models._resnet import resnet44
from kdjax.models._resnet import resnet56
from kdjax.models._resnet import resnet110
from kdjax.models._transformer import EncoderBlock
from kdjax.models._transformer import SelfAttention
from kdjax.models._transformer import tokens_of
from kdjax.models._transformer import Transformer
from kdjax.models._transformer import transformer_student
from kdjax.models._transformer import transformer_teacher
from kdjax.models._utils import count_params
from kdjax.models._utils import flops
from kdjax.models._utils import get_features
from kdjax.models._utils import sow_feature
# The model protocol of the train steps, and adapters.
from kdjax.models._wrap import as_forward
from kdjax.models._wrap import ForwardFn
from kdjax.models._wrap import function_forward
from kdjax.models._wrap import init_variables
from kdjax.models._wrap import linen_forward
from kdjax.models._wrap import mixed_precision
from kdjax.models._wrap import ModelOutput
from kdjax.models._wrap import nnx_forward
from kdjax.models._wrn import WideBasicBlock
from kdjax.models._wrn import WRN
from kdjax.models._wrn import wrn_16_1
from kdjax.models._wrn import wrn_16_2
from kdjax.models._wrn import wrn_16_4
from kdjax.models._wrn import wrn_28_4
from kdjax.models._wrn import wrn_28_10
from kdjax.models._wrn import wrn_40_1
from kdjax.models._wrn import wrn_40_2
from kdjax.models._wrn import wrn_40_4
