"""Width-sliced layers and models for NetAug (network augmentation).

Each layer allocates its parameters once at the widest size; a call at a
narrower width uses the leading slice (``kernel[..., :in, :out]``,
``bias[:out]``), so the base model (multiplier 1) is a sub-network of every
augmented model and shares its weights. The train step is
:func:`kdjax.schemes.make_netaug_step`.

* :class:`SlicedDense` / :class:`SlicedConv`: layers whose width is chosen per
  call.
* :class:`NetAugMLP` / :class:`NetAugCNN1D`: width-parametrised versions of
  :class:`kdjax.models.MLP` / :class:`kdjax.models.CNN1D` (same parameter
  names; attribute ``multiplier`` picks the width).
* :func:`export_base`: the base as a plain ``MLP`` / ``CNN1D`` and its variables.

References:
  Cai, Gan, Lin & Han, "Network Augmentation for Tiny Deep Learning", ICLR 2022,
  arXiv:2110.08890.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import _utils
from kdjax.models._cnn1d import CNN1D
from kdjax.models._mlp import MLP


def base_fan_in_init(base_fan_in: int) -> Callable:
  """LeCun-normal initialisation of a widest-size kernel, scaled for the base.

  Flax's default kernel initialiser (truncated normal, variance ``1/fan_in``)
  is applied to the wide shape and rescaled so that the variance is
  ``1/base_fan_in``: the base slice is then distributed exactly as the kernel
  of the plain base layer, so NetAug with ``α = 0`` is plain training of the
  base. The extra (augmented) entries have the same variance.

  Args:
    base_fan_in: the fan-in of the base layer (``in_features`` times the
      receptive field).

  Returns:
    An initialiser ``init(key, shape, dtype)``; ``shape`` is
    ``[..., max_in, max_out]`` and the wide fan-in is ``prod(shape[:-1])``.

  Examples:
    >>> import jax
    >>> w = base_fan_in_init(4)(jax.random.key(0), (400, 300))
    >>> round(float(w.var()) * 4, 1)  # variance 1/4, not 1/400
    1.0
  """
  lecun = nn.initializers.lecun_normal()

  def init(key, shape, dtype=jnp.float32):
    wide_fan_in = math.prod(shape[:-1])
    return lecun(key, shape, dtype) * jnp.asarray(math.sqrt(wide_fan_in / base_fan_in), dtype)

  return init


def _check_width(value: int, maximum: int, name: str) -> None:
  if not 1 <= value <= maximum:
    raise ValueError(f'{name}: width {value} is outside [1, {maximum}] (the allocated width).')


class SlicedDense(nn.Module):
  """A Dense layer allocated at ``[..., max_in, max_out]``, used at any narrower width.

  Called on ``x`` of shape ``[B, *lead, in]`` with ``features = out``, it uses
  ``kernel[..., :in, :out]`` (reshaped to ``[prod(lead)·in, out]``) and
  ``bias[:out]`` on the flattened ``x``: with ``lead = ()`` it is a Dense
  layer; with ``lead = (L,)`` it is the Dense head of a 1-D CNN applied to the
  flattened ``[B, L·in]`` feature map, storing its kernel as ``[L, max_in,
  out]`` so that a narrower feature map uses a leading slice. The computation
  is ``flax.linen.Dense`` on the sliced parameters, so a sliced layer and a
  plain ``nn.Dense`` holding the slice give bit-identical outputs.

  Attributes:
    max_in: allocated input width (the input's last axis may be narrower).
    max_out: allocated output width.
    base_fan_in: fan-in used to scale the initialisation
      (:func:`base_fan_in_init`); ``None``: the fan-in of the widest layer.
    dtype: computation dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = SlicedDense(max_in=6, max_out=8)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 6)), 8)
    >>> variables['params']['kernel'].shape
    (6, 8)
    >>> layer.apply(variables, jnp.ones((2, 3)), 4).shape  # kernel[:3, :4]
    (2, 4)
  """

  max_in: int
  max_out: int
  base_fan_in: Optional[int] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, features: int) -> jax.Array:
    """Returns ``[B, features]`` for ``x`` of shape ``[B, *lead, in]``."""
    if jnp.ndim(x) < 2:
      raise ValueError(f'SlicedDense: `x` must have rank >= 2, got shape {jnp.shape(x)}.')
    lead, width = tuple(x.shape[1:-1]), x.shape[-1]
    _check_width(width, self.max_in, f'{self.name}: input')
    _check_width(features, self.max_out, f'{self.name}: `features`')
    shape = lead + (self.max_in, self.max_out)
    fan = self.base_fan_in or math.prod(shape[:-1])
    kernel = self.param('kernel', base_fan_in_init(fan), shape)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.max_out,))
    kernel = kernel[..., :width, :features].reshape(-1, features)
    dense = nn.Dense(features, dtype=self.dtype, parent=None)
    return dense.apply({'params': {'kernel': kernel, 'bias': bias[:features]}},
                       jnp.reshape(x, (x.shape[0], -1)))


class SlicedConv(nn.Module):
  """A 1-D convolution allocated at ``[k, max_in, max_out]``, used at any narrower width.

  Called on ``x`` of shape ``[B, L, in]`` with ``features = out``, it runs
  ``flax.linen.Conv`` with ``kernel[:, :in, :out]`` and ``bias[:out]``.

  Attributes:
    max_in: allocated input channels.
    max_out: allocated output channels.
    kernel_size: the window length ``k``.
    strides: stride.
    padding: zero padding on each side.
    base_fan_in: fan-in used to scale the initialisation; ``None``: ``k·max_in``.
    dtype: computation dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> layer = SlicedConv(max_in=1, max_out=8, kernel_size=3, padding=1)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 10, 1)), 8)
    >>> variables['params']['kernel'].shape, layer.apply(variables, jnp.ones((2, 10, 1)), 2).shape
    ((3, 1, 8), (2, 10, 2))
  """

  max_in: int
  max_out: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  base_fan_in: Optional[int] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, features: int) -> jax.Array:
    """Returns ``[B, L_out, features]`` for ``x`` of shape ``[B, L, in]``."""
    _utils.check_input_rank(x, (3,), 'SlicedConv')
    width = x.shape[-1]
    _check_width(width, self.max_in, f'{self.name}: input')
    _check_width(features, self.max_out, f'{self.name}: `features`')
    shape = (self.kernel_size, self.max_in, self.max_out)
    kernel = self.param('kernel', base_fan_in_init(self.base_fan_in or math.prod(shape[:-1])),
                        shape)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.max_out,))
    conv = nn.Conv(features, (self.kernel_size,), strides=(self.strides,),
                   padding=((self.padding, self.padding),), dtype=self.dtype, parent=None)
    return conv.apply({'params': {'kernel': kernel[:, :width, :features],
                                  'bias': bias[:features]}}, x)


def _scaled(widths: Sequence[int], multiplier: float) -> tuple[int, ...]:
  """``round(w · multiplier)`` per layer (half up), at least 1."""
  return tuple(max(1, int(math.floor(w * multiplier + 0.5))) for w in widths)


def _init_fan(init_fan: str, base_fan_in: int, model: str) -> Optional[int]:
  """The ``base_fan_in`` of a sliced layer for the model's ``init_fan`` option."""
  if init_fan == 'base':
    return base_fan_in
  if init_fan == 'widest':
    return None
  raise ValueError(f"{model}: `init_fan` must be 'base' or 'widest', got {init_fan!r}.")


def _check_multipliers(multiplier: float, max_multiplier: float, model: str) -> None:
  if not max_multiplier >= 1.0:
    raise ValueError(f'{model}: `max_multiplier` must be >= 1, got {max_multiplier}.')
  if not 1.0 <= multiplier <= max_multiplier:
    raise ValueError(
        f'{model}: `multiplier` must be in [1, max_multiplier={max_multiplier}], got '
        f'{multiplier}.')


class NetAugMLP(nn.Module):
  """:class:`kdjax.models.MLP` whose hidden widths scale with ``multiplier``.

  Hidden layer ``i`` has ``round(hidden[i] · multiplier)`` units; its
  parameters are allocated at ``round(hidden[i] · max_multiplier)`` and shared
  by every width (the base, ``multiplier = 1``, uses the leading slice). The
  input and the classifier's output are not widened. Parameter names and sown
  features are those of ``MLP`` (``dense1``, ..., ``classifier``; ``hidden1``,
  ..., ``embedding``), so ``model.clone(multiplier=m)`` is the augmented
  model with the same variables and :meth:`export_base` gives a plain ``MLP``.

  Attributes:
    hidden: widths of the hidden layers of the base model.
    num_classes: number of output logits.
    max_multiplier: the widest multiplier (the allocated size).
    multiplier: the width used by ``__call__``, in ``[1, max_multiplier]``.
    init_fan: ``'base'``: kernels have the variance of the plain base layer's
      initialisation (``1/base_fan_in``, :func:`base_fan_in_init`), so the
      base starts as a plainly initialised base model; ``'widest'``: the
      widest model is initialised as a plain model of its own width
      (variance ``1/widest_fan_in``), so the augmented models are well
      scaled and the base starts with smaller weights.
    dtype: computation dtype.

  References:
    Cai et al., "Network Augmentation for Tiny Deep Learning", ICLR 2022,
    arXiv:2110.08890 (§3.1, weight sharing between base and augmented models).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = NetAugMLP(hidden=(16,), num_classes=10, max_multiplier=3.0)
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 40)))
    >>> variables['params']['dense1']['kernel'].shape   # allocated at x3
    (40, 48)
    >>> model.widths(), model.clone(multiplier=2.0).widths()
    ((16,), (32,))
  """

  hidden: Sequence[int] = (32,)
  num_classes: int = 10
  max_multiplier: float = 4.0
  multiplier: float = 1.0
  init_fan: str = 'base'
  dtype: Optional[Any] = None

  def _fan(self, base_fan_in: int) -> Optional[int]:
    return _init_fan(self.init_fan, base_fan_in, 'NetAugMLP')

  def widths(self, multiplier: Optional[float] = None) -> tuple[int, ...]:
    """Hidden widths at ``multiplier`` (default: ``self.multiplier``)."""
    m = self.multiplier if multiplier is None else multiplier
    _check_multipliers(m, self.max_multiplier, 'NetAugMLP')
    return _scaled(self.hidden, m)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns ``[B, num_classes]`` logits of the model at ``self.multiplier``."""
    del train  # No train-dependent layers.
    _utils.check_input_rank(x, range(2, 9), 'NetAugMLP')
    x = jnp.reshape(x, (x.shape[0], -1))
    widths, max_widths = self.widths(), self.widths(self.max_multiplier)
    max_in = fan_in = x.shape[-1]
    for i, (width, max_width, base) in enumerate(zip(widths, max_widths, self.hidden), start=1):
      layer = SlicedDense(max_in, max_width, base_fan_in=self._fan(fan_in), dtype=self.dtype,
                          name=f'dense{i}')
      x = nn.relu(layer(x, width))
      _utils.sow_feature(self, f'hidden{i}', x)
      max_in, fan_in = max_width, base
    _utils.sow_feature(self, 'embedding', x)
    return SlicedDense(max_in, self.num_classes, base_fan_in=self._fan(fan_in), dtype=self.dtype,
                       name='classifier')(x, self.num_classes)

  def base(self) -> MLP:
    """The plain :class:`kdjax.models.MLP` of the base width."""
    return MLP(hidden=tuple(self.hidden), num_classes=self.num_classes, dtype=self.dtype,
               parent=None)

  def layer_widths(self, multiplier: Optional[float] = None) -> dict[str, tuple[int, int]]:
    """``{layer: (in_width, out_width)}`` used at ``multiplier``; the input width is ``None``.

    Examples:
      >>> NetAugMLP(hidden=(4, 5), num_classes=3).layer_widths()
      {'dense1': (None, 4), 'dense2': (4, 5), 'classifier': (5, 3)}
    """
    widths = self.widths(multiplier)
    ins = (None,) + widths
    outs = widths + (self.num_classes,)
    names = [f'dense{i}' for i in range(1, len(widths) + 1)] + ['classifier']
    return {n: (i, o) for n, i, o in zip(names, ins, outs)}

  def export_base(self, variables: Mapping[str, Any]) -> tuple[MLP, dict[str, Any]]:
    """The base model alone: ``(plain MLP, its variables)``; see :func:`export_base`."""
    return export_base(self, variables)


class NetAugCNN1D(nn.Module):
  """:class:`kdjax.models.CNN1D` whose channels scale with ``multiplier``.

  Conv layer ``i`` has ``round(channels[i] · multiplier)`` filters, allocated
  at ``round(channels[i] · max_multiplier)``; the input channels and the
  number of classes are not widened. The classifier's kernel is stored as
  ``[L_3, max_channels, num_classes]`` (position, channel, class) so that the
  base's flattened ``[L_3 · channels]`` head is the leading channel slice;
  :meth:`export_base` reshapes it to ``CNN1D``'s ``[L_3 · channels, classes]``.
  Parameter names and sown features are those of ``CNN1D``.

  Attributes:
    num_classes: number of output logits.
    channels: base filters per conv layer (an int for all, or one per layer).
    kernel_sizes: kernel size of each conv layer.
    strides: stride of every conv layer.
    padding: zero padding on each side of every conv layer.
    max_multiplier: the widest multiplier (the allocated size).
    multiplier: the width used by ``__call__``, in ``[1, max_multiplier]``.
    init_fan: ``'base'`` or ``'widest'``, as for :class:`NetAugMLP`.
    dtype: computation dtype.

  References:
    Cai et al., "Network Augmentation for Tiny Deep Learning", ICLR 2022,
    arXiv:2110.08890.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = NetAugCNN1D(num_classes=10, channels=4, max_multiplier=2.0)
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 40)))
    >>> params = variables['params']
    >>> params['conv2']['kernel'].shape, params['classifier']['kernel'].shape
    ((3, 8, 8), (5, 8, 10))
  """

  num_classes: int = 10
  channels: int | Sequence[int] = 8
  kernel_sizes: Sequence[int] = (5, 3, 3)
  strides: int = 2
  padding: int = 1
  max_multiplier: float = 4.0
  multiplier: float = 1.0
  init_fan: str = 'base'
  dtype: Optional[Any] = None

  def _fan(self, base_fan_in: int) -> Optional[int]:
    return _init_fan(self.init_fan, base_fan_in, 'NetAugCNN1D')

  def _base_channels(self) -> tuple[int, ...]:
    channels = self.channels
    if isinstance(channels, int):
      channels = (channels,) * len(self.kernel_sizes)
    if len(channels) != len(self.kernel_sizes):
      raise ValueError(
          f'NetAugCNN1D: `channels` has {len(channels)} entries but `kernel_sizes` has '
          f'{len(self.kernel_sizes)}.')
    return tuple(channels)

  def widths(self, multiplier: Optional[float] = None) -> tuple[int, ...]:
    """Conv channels at ``multiplier`` (default: ``self.multiplier``)."""
    m = self.multiplier if multiplier is None else multiplier
    _check_multipliers(m, self.max_multiplier, 'NetAugCNN1D')
    return _scaled(self._base_channels(), m)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns ``[B, num_classes]`` logits of the model at ``self.multiplier``."""
    del train  # No train-dependent layers.
    _utils.check_input_rank(x, (2, 3), 'NetAugCNN1D')
    if x.ndim == 2:
      x = x[..., None]
    widths, max_widths = self.widths(), self.widths(self.max_multiplier)
    max_in = base_in = x.shape[-1]
    for i, (width, max_width, base, k) in enumerate(
        zip(widths, max_widths, self._base_channels(), self.kernel_sizes), start=1):
      layer = SlicedConv(max_in, max_width, k, strides=self.strides, padding=self.padding,
                         base_fan_in=self._fan(k * base_in), dtype=self.dtype,
                         name=f'conv{i}')
      x = nn.relu(layer(x, width))
      _utils.sow_feature(self, f'stage{i}', x)
      max_in, base_in = max_width, base
    _utils.sow_feature(self, 'embedding', jnp.reshape(x, (x.shape[0], -1)))
    head = SlicedDense(max_in, self.num_classes, base_fan_in=self._fan(x.shape[1] * base_in),
                       dtype=self.dtype, name='classifier')
    return head(x, self.num_classes)

  def base(self) -> CNN1D:
    """The plain :class:`kdjax.models.CNN1D` of the base width."""
    return CNN1D(num_classes=self.num_classes, channels=self._base_channels(),
                 kernel_sizes=tuple(self.kernel_sizes), strides=self.strides,
                 padding=self.padding, dtype=self.dtype, parent=None)

  def layer_widths(self, multiplier: Optional[float] = None) -> dict[str, tuple[int, int]]:
    """``{layer: (in_width, out_width)}`` used at ``multiplier``; the input width is ``None``.

    Examples:
      >>> NetAugCNN1D(num_classes=3, channels=(2, 4), kernel_sizes=(3, 3)).layer_widths(2.0)
      {'conv1': (None, 4), 'conv2': (4, 8), 'classifier': (8, 3)}
    """
    widths = self.widths(multiplier)
    ins = (None,) + widths
    outs = widths + (self.num_classes,)
    names = [f'conv{i}' for i in range(1, len(widths) + 1)] + ['classifier']
    return {n: (i, o) for n, i, o in zip(names, ins, outs)}

  def export_base(self, variables: Mapping[str, Any]) -> tuple[CNN1D, dict[str, Any]]:
    """The base model alone: ``(plain CNN1D, its variables)``; see :func:`export_base`."""
    return export_base(self, variables)


NetAugModel = Union[NetAugMLP, NetAugCNN1D]


def export_base(model: NetAugModel, variables: Mapping[str, Any]) -> tuple[nn.Module, dict]:
  """Cuts the base model out of NetAug variables.

  Every kernel becomes ``kernel[..., :in_base, :out_base]`` and every bias
  ``bias[:out_base]`` (the input width is never augmented and stays whole);
  the CNN head's ``[L, channels, classes]`` slice is reshaped to the plain
  ``CNN1D``'s ``[L·channels, classes]``. The returned module is a plain
  :class:`kdjax.models.MLP` / :class:`kdjax.models.CNN1D`, so the deployed
  model has no trace of the augmentation. Its logits equal those of ``model``
  at ``multiplier = 1`` bit for bit (the same ``flax.linen`` layers run on the
  same sliced values).

  Args:
    model: a :class:`NetAugMLP` or :class:`NetAugCNN1D` (any ``multiplier``).
    variables: its variables (``{'params': ...}``).

  Returns:
    ``(base_module, base_variables)``.

  Raises:
    ValueError: if ``variables`` lack a layer of ``model`` or have a layer
      narrower than the base.

  References:
    Cai et al., "Network Augmentation for Tiny Deep Learning", ICLR 2022,
    arXiv:2110.08890 (only the base model is used at test time).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = NetAugMLP(hidden=(4,), num_classes=3, max_multiplier=2.0)
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 5)))
    >>> base, base_vars = export_base(model, variables)
    >>> type(base).__name__, base_vars['params']['dense1']['kernel'].shape
    ('MLP', (5, 4))
    >>> wide_kernel = variables['params']['dense1']['kernel']
    >>> bool((base_vars['params']['dense1']['kernel'] == wide_kernel[:, :4]).all())
    True
  """
  if not isinstance(model, (NetAugMLP, NetAugCNN1D)):
    raise ValueError(f'`model` must be a NetAugMLP or NetAugCNN1D, got {type(model).__name__}.')
  params = variables.get('params', {})
  base = model.base()
  out = {}
  for name, (width_in, width_out) in model.layer_widths(1.0).items():
    if name not in params:
      raise ValueError(
          f'`variables` have no layer {name!r} of {type(model).__name__}; params have '
          f'{sorted(params)}.')
    kernel, bias = params[name]['kernel'], params[name]['bias']
    width_in = kernel.shape[-2] if width_in is None else width_in
    if kernel.shape[-2] < width_in or kernel.shape[-1] < width_out:
      raise ValueError(
          f'Layer {name!r}: kernel {kernel.shape} is narrower than the base '
          f'({width_in}, {width_out}).')
    kernel = kernel[..., :width_in, :width_out]
    out[name] = {'kernel': kernel.reshape(-1, width_out) if name == 'classifier' else kernel,
                 'bias': bias[:width_out]}
  rest = {c: v for c, v in variables.items() if c not in ('params', 'intermediates')}
  return base, {'params': out, **rest}
