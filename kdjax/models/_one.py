"""ONE: shared low layers, m vmapped branches and a gate (Lan, Zhu & Gong 2018).

:class:`ONE` runs a shared *trunk*, then ``num_branches`` copies of a *branch*
module (the high layers and the classifier) in one ``nn.vmap`` over stacked
branch parameters, and a gate that weights the branch logits into the ensemble
teacher. :func:`one_cnn1d` and :func:`one_resnet` build it from the zoo's 1-D
CNN and CIFAR ResNets; :meth:`ONE.export_branch` cuts one branch out as a
standalone network.

The trunk and branch modules (:class:`CNN1DTrunk`, :class:`CNN1DBranch`,
:class:`ResNetTrunk`, :class:`ResNetBranch`) use the zoo's layer plans, so a
trunk plus one branch has the layout of the corresponding zoo model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils
from kdjax.models._resnet import BasicBlock


_PAD1 = ((1, 1), (1, 1))

# Collections whose leaves get a leading branch axis under ``nn.vmap``.
_BRANCH_AXES = {'params': 0, 'batch_stats': 0, 'intermediates': 0}


# ------------------------------------------------------------ building blocks

def _as_tuple(value, n: int, name: str) -> tuple:
  if isinstance(value, int):
    return (value,) * n
  value = tuple(value)
  if len(value) != n:
    raise ValueError(f'`{name}` must be an int or have {n} entries, got {value}.')
  return value


class CNN1DTrunk(nn.Module):
  """The first convolutions of :class:`~kdjax.models.CNN1D` (shared low layers).

  ``Conv1D → ReLU`` per entry of ``kernel_sizes``; layer ``i`` is named
  ``conv{first_layer + i}`` and sown as ``'stage{first_layer + i}'``.

  Attributes:
    channels: filters of each layer.
    kernel_sizes: kernel size of each layer.
    strides: stride of every layer.
    padding: zero padding on each side of every layer.
    first_layer: 1-based index of the first layer (naming only).
    dtype: computation dtype.
  """

  channels: Sequence[int] = (25, 25)
  kernel_sizes: Sequence[int] = (5, 3)
  strides: int = 2
  padding: int = 1
  first_layer: int = 1
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``[B, L]`` or ``[B, L, C]`` signals to ``[B, L', channels[-1]]``."""
    del train
    _utils.check_input_rank(x, (2, 3), type(self).__name__)
    if x.ndim == 2:
      x = x[..., None]
    for i, (width, k) in enumerate(zip(self.channels, self.kernel_sizes), start=self.first_layer):
      x = nn.Conv(width, (k,), strides=(self.strides,), padding=((self.padding, self.padding),),
                  dtype=self.dtype, name=f'conv{i}')(x)
      x = nn.relu(x)
      _utils.sow_feature(self, f'stage{i}', x)
    return x


class CNN1DBranch(nn.Module):
  """The last convolutions and the classifier of :class:`~kdjax.models.CNN1D`.

  ``(Conv1D → ReLU)*`` over ``kernel_sizes`` (possibly none), flatten, Dense.

  Attributes:
    num_classes: number of output logits.
    channels: filters of each conv layer.
    kernel_sizes: kernel size of each conv layer (may be empty).
    strides: stride of every conv layer.
    padding: zero padding on each side of every conv layer.
    first_layer: 1-based index of the first conv layer (naming only).
    dtype: computation dtype.
  """

  num_classes: int = 10
  channels: Sequence[int] = (25,)
  kernel_sizes: Sequence[int] = (3,)
  strides: int = 2
  padding: int = 1
  first_layer: int = 3
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, h: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Returns ``(logits [B, num_classes], embedding [B, D])`` for ``h`` of shape ``[B, L, C]``."""
    del train
    for i, (width, k) in enumerate(zip(self.channels, self.kernel_sizes), start=self.first_layer):
      h = nn.Conv(width, (k,), strides=(self.strides,), padding=((self.padding, self.padding),),
                  dtype=self.dtype, name=f'conv{i}')(h)
      h = nn.relu(h)
    embedding = jnp.reshape(h, (h.shape[0], -1))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(embedding), embedding


def _resnet_stages(module: nn.Module, x: jax.Array, widths: Sequence[int], first_stage: int,
                   num_blocks: int, train: bool, *, sow: bool = False) -> jax.Array:
  """CIFAR ResNet stages inside ``module``'s compact scope, named like the zoo's.

  Stage ``s`` (stride 1 for stage 1, 2 after) has blocks
  ``stage{s}_block{b}``, as in :class:`~kdjax.models.CifarResNet`.
  """
  for s, width in enumerate(widths, start=first_stage):
    for b in range(num_blocks):
      strides = 2 if (s > 1 and b == 0) else 1
      x = BasicBlock(width, strides, module.bn_momentum, module.dtype,
                     name=f'stage{s}_block{b + 1}')(x, train=train)
    if sow:
      _utils.sow_feature(module, f'stage{s}', x)
  return x


class ResNetTrunk(nn.Module):
  """Stem and the first stages of a :class:`~kdjax.models.CifarResNet`.

  Sown features: ``'stage{s}'`` after each stage.

  Attributes:
    stem_width: stem channels.
    widths: channels of each stage in the trunk (may be empty).
    num_blocks: blocks per stage (``(depth − 2) / 6``).
    bn_momentum: BatchNorm momentum.
    dtype: computation dtype.
  """

  stem_width: int = 16
  widths: Sequence[int] = (16, 32)
  num_blocks: int = 3
  bn_momentum: float = 0.9
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``[B, H, W, C]`` to the last trunk stage's ``[B, H', W', widths[-1]]``."""
    _utils.check_input_rank(x, (4,), type(self).__name__)
    x = nn.Conv(self.stem_width, (3, 3), padding=_PAD1, use_bias=False,
                kernel_init=_utils.conv_init, dtype=self.dtype, name='stem_conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                     dtype=self.dtype, name='stem_bn')(x)
    x = nn.relu(x)
    return _resnet_stages(self, x, self.widths, 1, self.num_blocks, train, sow=True)


class ResNetBranch(nn.Module):
  """The last stages, global average pooling and classifier of a CIFAR ResNet.

  Attributes:
    num_classes: number of output logits.
    widths: channels of each stage in the branch.
    num_blocks: blocks per stage.
    first_stage: 1-based index of the branch's first stage (its stride is 2
      unless it is stage 1).
    bn_momentum: BatchNorm momentum.
    dtype: computation dtype.
  """

  num_classes: int = 10
  widths: Sequence[int] = (64,)
  num_blocks: int = 3
  first_stage: int = 3
  bn_momentum: float = 0.9
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, h: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """``(logits [B, num_classes], embedding [B, widths[-1]])`` for ``h`` ``[B, H, W, C]``."""
    h = _resnet_stages(self, h, self.widths, self.first_stage, self.num_blocks, train)
    embedding = jnp.mean(h, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(embedding), embedding


# ------------------------------------------------------------------- ONE model

def _template_fields(module: nn.Module, name: str) -> dict[str, Any]:
  """The constructor fields of an unbound template module (plain values only)."""
  fields = {}
  for f in dataclasses.fields(module):
    if not f.init or f.name in ('parent', 'name'):
      continue
    value = getattr(module, f.name)
    if isinstance(value, nn.Module) or (
        isinstance(value, (list, tuple)) and any(isinstance(v, nn.Module) for v in value)):
      raise ValueError(
          f'`{name}` is re-instantiated under nn.vmap, so its fields must be plain values; '
          f'field {f.name!r} holds a module.')
    fields[f.name] = value
  return fields


def _spatial_mean(h: jax.Array) -> jax.Array:
  """Global average pooling over every axis but the first and the last."""
  return jnp.mean(h, axis=tuple(range(1, h.ndim - 1))) if h.ndim > 2 else h


class ONE(nn.Module):
  """On-the-fly Native Ensemble: a shared trunk, m vmapped branches and a gate.

  The trunk computes shared features ``h``. The ``num_branches`` branches are
  copies of ``branch`` with their own parameters, stacked along a leading axis
  and computed in one ``nn.vmap`` (``variable_axes={'params': 0,
  'batch_stats': 0}``, ``split_rngs={'params': True}``, ``in_axes=None``): the
  trunk's output is broadcast, each branch returns ``(logits, embedding)``. The
  gate is ``softmax(Dense_m(GAP(h)))`` (with ``gate_norm``, the paper's
  ``softmax(ReLU(BN(Dense_m(GAP(h)))))``) and the ensemble teacher is
  ``z_e = Σ_i g_i z_i``.

  Returns the ensemble logits ``[B, C]``, so the ONE model is the deployable
  ensemble in eval mode. Sown into ``'intermediates'`` (read them with
  :func:`kdjax.models.linen_forward`): ``'branch_logits'`` ``[m, B, C]``,
  ``'branch_embedding'`` ``[m, B, D]``, ``'gate'`` ``[B, m]`` and ``'shared'``
  (the trunk output), plus whatever the trunk sows under ``'trunk/...'``.

  Variables: ``params = {'trunk': ..., 'branches': <leaves [m, ...]>, 'gate_fc':
  ...}`` and the same layout for ``batch_stats``.

  Attributes:
    trunk: a Linen module ``trunk(x, train=...) -> h``.
    branch: an unbound Linen module ``branch(h, train) -> (logits, embedding)``
      used as a template: it is re-instantiated under ``nn.vmap`` from its
      fields, which must be plain values (not modules).
    num_branches: number of branches ``m``.
    gate_norm: insert BatchNorm and ReLU between the gate's Dense and softmax,
      as in the paper; off by default (``GAP → Dense → softmax``).
    bn_momentum: momentum of the gate's BatchNorm.

  References:
    Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native Ensemble",
    NeurIPS 2018, arXiv:1806.04606 (§3, Fig. 1).

  Examples:
    >>> import functools, jax, jax.numpy as jnp
    >>> from kdjax.models import init_variables, linen_forward, one_cnn1d
    >>> model = one_cnn1d(num_classes=3, num_branches=2, channels=4)
    >>> x = jax.ShapeDtypeStruct((4, 40), jnp.float32)  # shapes only: nothing is computed
    >>> variables = jax.eval_shape(functools.partial(init_variables, model), jax.random.key(0), x)
    >>> variables['params']['branches']['classifier']['kernel'].shape  # stacked: [m, D, C]
    (2, 20, 3)
    >>> out = jax.eval_shape(functools.partial(linen_forward(model), train=False), variables, x)
    >>> out.logits.shape, out.features['branch_logits'].shape, out.features['gate'].shape
    ((4, 3), (2, 4, 3), (4, 2))
  """

  trunk: nn.Module
  branch: nn.Module
  num_branches: int = 3
  gate_norm: bool = False
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns the ensemble logits ``[B, C]`` (branch logits and gate are sown)."""
    if self.num_branches < 1:
      raise ValueError(f'ONE: `num_branches` must be >= 1, got {self.num_branches}.')
    h = self.trunk(x, train=train)
    _utils.sow_feature(self, 'shared', h)
    stacked_branch = nn.vmap(
        type(self.branch), variable_axes=_BRANCH_AXES,
        split_rngs={'params': True, 'dropout': True}, in_axes=(None, None),
        axis_size=self.num_branches)
    branch_logits, branch_embedding = stacked_branch(
        **_template_fields(self.branch, 'branch'), name='branches')(h, train)
    gate = nn.Dense(self.num_branches, name='gate_fc')(_spatial_mean(h))
    if self.gate_norm:
      gate = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                          epsilon=1e-5, name='gate_bn')(gate)
      gate = nn.relu(gate)
    gate = jax.nn.softmax(gate.astype(jnp.float32), axis=-1).astype(branch_logits.dtype)
    ensemble = jnp.einsum('bm,mbc->bc', gate, branch_logits)
    _utils.sow_feature(self, 'branch_logits', branch_logits)
    _utils.sow_feature(self, 'branch_embedding', branch_embedding)
    _utils.sow_feature(self, 'gate', gate)
    return ensemble

  def export_branch(self, variables: Mapping[str, Any], index: int
                    ) -> tuple['ONEBranch', dict[str, Any]]:
    """Cuts branch ``index`` out as a standalone network (trunk + that branch).

    Args:
      variables: the ONE model's variables (``params`` and, if any,
        ``batch_stats``).
      index: which branch, ``0 <= index < num_branches``.

    Returns:
      ``(module, variables)``: an unbound :class:`ONEBranch` and its variables
      (the trunk's and the ``index``-th slice of the stacked branch
      variables; the gate is dropped). ``module.apply(variables, x)`` gives
      branch ``index``'s logits: bit for bit those of the trunk and the branch
      module run with that slice, and equal to the ONE model's
      ``'branch_logits'[index]`` up to float32 rounding (under ``nn.vmap``
      XLA computes the branches' convolutions as one grouped convolution,
      which rounds differently at the 1e-7 level).

    Raises:
      ValueError: for an index out of range or variables without the
        ``'trunk'``/``'branches'`` entries of a ONE model.

    Examples:
      >>> import functools, jax, jax.numpy as jnp
      >>> from kdjax.models import init_variables, one_cnn1d
      >>> model = one_cnn1d(num_classes=3, num_branches=2, channels=4)
      >>> x = jax.ShapeDtypeStruct((4, 40), jnp.float32)
      >>> variables = jax.eval_shape(functools.partial(init_variables, model), jax.random.key(0), x)
      >>> variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)  # "trained"
      >>> net, net_vars = model.export_branch(variables, 1)
      >>> net_vars['params']['branch']['classifier']['kernel'].shape  # one slice: [D, C]
      (20, 3)
      >>> net.apply(net_vars, jnp.ones((4, 40))).shape
      (4, 3)
    """
    return export_branch(self, variables, index)


class ONEBranch(nn.Module):
  """A standalone network made of a ONE trunk and one branch.

  Sown features: the trunk's (under ``'trunk/...'``) and ``'embedding'``.

  Attributes:
    trunk: the trunk module.
    branch: the branch module, ``branch(h, train) -> (logits, embedding)``.
  """

  trunk: nn.Module
  branch: nn.Module

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns the branch's logits ``[B, C]``."""
    h = self.trunk(x, train=train)
    logits, embedding = self.branch(h, train)
    _utils.sow_feature(self, 'embedding', embedding)
    return logits


def export_branch(model: ONE, variables: Mapping[str, Any], index: int
                  ) -> tuple[ONEBranch, dict[str, Any]]:
  """``model.export_branch(variables, index)`` as a function; see :meth:`ONE.export_branch`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.models import CNN1DBranch, CNN1DTrunk, ONE, export_branch
    >>> model = ONE(trunk=CNN1DTrunk((2,), (5,)), branch=CNN1DBranch(3, (), ()), num_branches=2)
    >>> params = {'trunk': {'conv1': {'kernel': jnp.ones((5, 1, 2)), 'bias': jnp.zeros(2)}},
    ...           'branches': {'classifier': {'kernel': jnp.stack([jnp.zeros((38, 3)),
    ...                                                             jnp.ones((38, 3))]),
    ...                                       'bias': jnp.zeros((2, 3))}},
    ...           'gate_fc': {'kernel': jnp.zeros((2, 2)), 'bias': jnp.zeros(2)}}
    >>> net, net_vars = export_branch(model, {'params': params}, 1)
    >>> kernel = net_vars['params']['branch']['classifier']['kernel']
    >>> sorted(net_vars['params']), float(kernel[0, 0])
    (['branch', 'trunk'], 1.0)
  """
  if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < model.num_branches:
    raise ValueError(
        f'`index` must be an int in [0, {model.num_branches}), got {index!r}.')
  params = variables.get('params', {})
  if 'branches' not in params:
    raise ValueError(
        f'`variables` are not those of a ONE model: params have keys {sorted(params)}, '
        "expected 'trunk', 'branches' and 'gate_fc'.")
  out = {}
  for collection, tree in variables.items():
    if collection == 'intermediates':
      continue
    part = {}
    if 'trunk' in tree:
      part['trunk'] = tree['trunk']
    if 'branches' in tree:
      part['branch'] = jax.tree.map(lambda a: a[index], tree['branches'])
    if part:
      out[collection] = part
  return ONEBranch(trunk=model.trunk, branch=model.branch, parent=None), out


# ------------------------------------------------------------------ factories

def one_cnn1d(num_classes: int = 10, *, num_branches: int = 3,
              channels: int | Sequence[int] = 25, kernel_sizes: Sequence[int] = (5, 3, 3),
              shared_layers: int = 2, strides: int = 2, padding: int = 1,
              gate_norm: bool = False, dtype: Optional[Any] = None) -> ONE:
  """ONE over the MNIST-1D :class:`~kdjax.models.CNN1D`.

  The first ``shared_layers`` convolutions are shared; each branch holds the
  remaining convolutions and the classifier, so trunk + one branch is exactly
  a ``CNN1D`` with the same options (the single-branch baseline).

  Args:
    num_classes: number of output logits.
    num_branches: number of branches ``m``.
    channels: filters per conv layer (an int or one per layer).
    kernel_sizes: kernel size of each conv layer.
    shared_layers: number of shared conv layers, ``0 <= shared_layers < len(kernel_sizes)``.
    strides: stride of every conv layer.
    padding: zero padding of every conv layer.
    gate_norm: the paper's ``Dense → BN → ReLU → softmax`` gate.
    dtype: computation dtype.

  Returns:
    An unbound :class:`ONE` module.

  Raises:
    ValueError: for an invalid ``shared_layers`` or ``channels``.

  Examples:
    >>> one_cnn1d(num_classes=10).branch.kernel_sizes
    (3,)
  """
  kernel_sizes = tuple(kernel_sizes)
  n = len(kernel_sizes)
  channels = _as_tuple(channels, n, 'channels')
  if not 0 <= shared_layers < n:
    raise ValueError(f'`shared_layers` must be in [0, {n}), got {shared_layers}.')
  trunk = CNN1DTrunk(channels[:shared_layers], kernel_sizes[:shared_layers], strides, padding,
                     1, dtype)
  branch = CNN1DBranch(num_classes, channels[shared_layers:], kernel_sizes[shared_layers:],
                       strides, padding, shared_layers + 1, dtype)
  return ONE(trunk=trunk, branch=branch, num_branches=num_branches, gate_norm=gate_norm)


def one_resnet(num_classes: int = 10, *, depth: int = 20,
               widths: Sequence[int] = (16, 16, 32, 64), num_branches: int = 3,
               shared_stages: Optional[int] = None, gate_norm: bool = False,
               bn_momentum: float = 0.9, dtype: Optional[Any] = None) -> ONE:
  """ONE over a CIFAR ResNet-(6n+2) (the paper's CIFAR setting).

  The stem and the first ``shared_stages`` stages are shared (default: all
  but the last stage, as in the paper); each branch holds the remaining
  stages, global average pooling and the classifier, so trunk + one branch
  has the layout of ``CifarResNet(depth, widths)``.

  Args:
    num_classes: number of output logits.
    depth: ``6n + 2``.
    widths: stem width followed by one width per stage.
    num_branches: number of branches ``m``.
    shared_stages: stages in the trunk, ``0 <= shared_stages < len(widths) − 1``.
    gate_norm: the paper's ``Dense → BN → ReLU → softmax`` gate.
    bn_momentum: BatchNorm momentum.
    dtype: computation dtype.

  Returns:
    An unbound :class:`ONE` module.

  Raises:
    ValueError: for a bad ``depth``, ``widths`` or ``shared_stages``.

  Examples:
    >>> model = one_resnet(num_classes=100, depth=32)
    >>> model.trunk.widths, model.branch.widths, model.branch.num_blocks
    ((16, 32), (64,), 5)
  """
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f'`depth` must be 6n + 2 with n >= 1, got {depth}.')
  widths = tuple(widths)
  stages = len(widths) - 1
  if stages < 1:
    raise ValueError(f'`widths` needs a stem and >= 1 stage, got {widths}.')
  shared_stages = stages - 1 if shared_stages is None else shared_stages
  if not 0 <= shared_stages < stages:
    raise ValueError(f'`shared_stages` must be in [0, {stages}), got {shared_stages}.')
  n = (depth - 2) // 6
  trunk = ResNetTrunk(widths[0], widths[1:1 + shared_stages], n, bn_momentum, dtype)
  branch = ResNetBranch(num_classes, widths[1 + shared_stages:], n, shared_stages + 1,
                        bn_momentum, dtype)
  return ONE(trunk=trunk, branch=branch, num_branches=num_branches, gate_norm=gate_norm,
             bn_momentum=bn_momentum)
