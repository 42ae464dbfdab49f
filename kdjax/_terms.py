"""Loss terms: a loss from ``kdjax.losses``, the inputs it names, its trainable parts.

A :class:`Term` names the student value (logits or features), the teacher
value and whether labels are passed. Most feature and relational losses need
more than the raw features: a projection head, a regressor, a paraphraser, a
memory bank of embeddings, mined negatives. All of these are one mechanism, a
*term module*: a Flax Linen module, the :class:`Term`'s ``module``, called as

    module(student, teacher, context) -> the loss's positional inputs (a tuple)

where ``student`` and ``teacher`` are the named values (an array, or a tuple
of arrays when the term names several features, as FSP does; ``teacher`` is
``None`` for teacher-free terms) and ``context`` a :class:`TermContext` (labels,
mask, example ids, the device axis). The step then evaluates
``term.loss(*inputs, **term.kwargs)``. A term module may use three Flax
collections and one RNG stream:

* ``'params'``: trained with the student. They live in
  ``TrainState.aux_params[term.name]`` (like an adapter's).
* ``'term_state'``: non-trainable state updated inside the jitted step (e.g.
  CRD's memory bank). It lives in ``TrainState.term_state[term.name]``, is
  checkpointed with the state, and keeps its old value when a non-finite
  update is skipped.
* ``'losses'``: extra losses the module ``sow`` s (e.g. FT's reconstruction of
  the teacher factor), added to the term with its weight and reported as
  ``loss/<term>/<name>``.
* the ``'sample'`` RNG stream (e.g. negative sampling), derived from the step's key.

:func:`kdjax.steps.init_terms` initialises the params and the state of every
term on sample outputs. The factories below build the terms of the common
feature and relational methods.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.losses import _checks


Weight = Union[float, Callable[[jax.Array], jax.Array]]
Names = Union[str, Sequence[str]]
TERM_STATE = 'term_state'
TERM_LOSSES = 'losses'
SAMPLE_RNG = 'sample'


@dataclasses.dataclass(frozen=True)
class Term:
  """One weighted term of an objective.

  Without a ``module`` the loss is called as
  ``loss(*student_values[, *teacher_values][, labels], **kwargs)``; with one, as
  ``loss(*module(student, teacher, context), **kwargs)`` (see the module
  docstring of ``kdjax._terms`` for the protocol).

  Attributes:
    name: metric name, ``loss/<name>``; also the key of the term's params in
      ``TrainState.aux_params`` and of its state in ``TrainState.term_state``.
    loss: a function from ``kdjax.losses`` (or any with that calling form).
      Per-example outputs ``[B, ...]`` are averaged over valid examples; a
      scalar output is taken as a batch-level loss.
    weight: a float, or a schedule ``step -> weight`` (e.g. to stop the KD term
      after N steps).
    student: ``'logits'``, the name of a student feature, or a tuple of names
      (their values are passed in order).
    teacher: ``'logits'``, a teacher feature name, a tuple of names, or
      ``None`` for terms that take no teacher input (task cross-entropy).
    teacher_name: which teacher; ``None`` means the only one.
    labels: pass ``batch['label']`` after the tensors (terms without a module;
      a module reads ``context.labels``).
    adapter: optional Flax module applied to the (single) student value (e.g. a
      ``nn.Dense`` or 1×1 ``nn.Conv`` matching the teacher's width).
    module: optional term module mapping ``(student, teacher, context)`` to the
      loss's inputs; give an ``adapter`` or a ``module``, not both (a module
      holds its own heads).
    kwargs: keyword options for the loss.

  Raises:
    ValueError: for both an ``adapter`` and a ``module``, an ``adapter`` on
      several student features, or an empty tuple of names.
    TypeError: for a ``module`` that is not a Flax Linen module, or names that
      are not strings.

  Examples:
    A Dark-Knowledge term between the student's and the teacher's logits, and a
    FitNets hint between named features through a trainable adapter:

    >>> import flax.linen as nn
    >>> from kdjax import losses
    >>> kd = Term('kd', losses.kl_distillation, 0.9, kwargs={'temperature': 4.0})
    >>> kd.student, kd.teacher
    ('logits', 'logits')
    >>> fitnet = Term('hint', losses.hint_l2, 0.5, student='stage2', teacher='stage2',
    ...               adapter=nn.Conv(64, (1, 1)))
    >>> fitnet.adapter.features
    64
  """
  name: str
  loss: Callable[..., jax.Array]
  weight: Weight = 1.0
  student: Names = 'logits'
  teacher: Optional[Names] = 'logits'
  teacher_name: Optional[str] = None
  labels: bool = False
  adapter: Optional[nn.Module] = None
  module: Optional[nn.Module] = None
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for field in ('student', 'teacher'):
      value = getattr(self, field)
      if value is None and field == 'teacher':
        continue
      if isinstance(value, (list, tuple)):
        value = tuple(value)
        object.__setattr__(self, field, value)
        if not value:
          raise ValueError(f'Term {self.name!r}: `{field}` names no feature.')
      if not all(isinstance(v, str) for v in (value if isinstance(value, tuple) else (value,))):
        raise TypeError(f'Term {self.name!r}: `{field}` must be a name or a tuple of names, '
                        f'got {value!r}.')
    if self.adapter is not None and self.module is not None:
      raise ValueError(f'Term {self.name!r}: give an `adapter` or a `module`, not both (a '
                       'module can hold its own adapter).')
    if self.adapter is not None and isinstance(self.student, tuple):
      raise ValueError(f'Term {self.name!r}: an `adapter` takes one student feature, got '
                       f'`student`={self.student!r}.')
    if self.module is not None and not isinstance(self.module, nn.Module):
      raise TypeError(f'Term {self.name!r}: `module` must be a Flax Linen module, got '
                      f'{type(self.module).__name__}.')


class TermContext(NamedTuple):
  """What a term module sees of the batch besides the named values.

  Attributes:
    labels: ``[B]`` int labels, or ``None`` for an unlabeled batch.
    mask: ``[B]`` bool, the valid rows (False for padding and invalid labels).
    ids: ``[B]`` int example ids (``batch['id']``, which ``kdjax.data``
      batches carry; padding rows have ``-1``), or ``None``.
    axis_name: the step's data-parallel device axis, or ``None``.

  Examples:
    >>> import jax.numpy as jnp
    >>> ctx = TermContext(labels=None, mask=jnp.ones(2, bool), ids=jnp.arange(2), axis_name=None)
    >>> ctx.ids.tolist()
    [0, 1]
  """
  labels: Optional[jax.Array]
  mask: jax.Array
  ids: Optional[jax.Array]
  axis_name: Optional[str]


# ------------------------------------------------------------------ helpers

def _as_tuple(x) -> tuple:
  return x if isinstance(x, tuple) else (x,)


def _flatten(x: jax.Array, name: str) -> jax.Array:
  """``[B, ...] -> [B, -1]``."""
  if jnp.ndim(x) < 2:
    raise ValueError(f'`{name}` must have shape [batch, ...], got shape {jnp.shape(x)}.')
  return jnp.reshape(x, (jnp.shape(x)[0], -1))


def _spatial(x: jax.Array, name: str) -> jax.Array:
  """``[B, H, W, C]`` as it is, ``[B, L, C]`` as ``[B, L, 1, C]``."""
  ndim = jnp.ndim(x)
  if ndim == 3:
    return x[:, :, None, :]
  if ndim >= 4:
    return x
  raise ValueError(f'`{name}` must be a feature map [B, H, W, C] (or [B, L, C]), got shape '
                   f'{jnp.shape(x)}.')


def _unit(z: jax.Array) -> jax.Array:
  """Rows of ``z`` scaled to unit norm; a (near-)zero row becomes ``e_1``, with no gradient.

  ``kdjax.losses`` normalise with a floor (``x / max(‖x‖, 1e-12)``), whose
  gradient at an exactly zero row is ``1e12`` times the upstream one: a zero
  embedding (a student row of dead ReLUs through a head with zero bias, as at
  init) would overflow the gradient norm and every update would be skipped.
  The direction of a zero vector is undefined; this picks a fixed one.
  """
  sq = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
  ok = sq > 1e-12
  unit = z * jax.lax.rsqrt(jnp.where(ok, sq, 1.0))
  return jnp.where(ok, unit, jax.nn.one_hot(0, z.shape[-1], dtype=z.dtype))


def _layer(features: int, rank: int, name: str) -> nn.Module:
  """A 3×3 (3-wide, 3×3×3) convolution over the spatial axes, or Dense for ``[B, C]``."""
  if rank == 2:
    return nn.Dense(features, name=name)
  return nn.Conv(features, (3,) * (rank - 2), padding='SAME', name=name)


def _check_int(value, name: str, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'`{name}` must be an int >= {minimum}, got {value!r}.')


def _feature_name(names: Names, arg: str) -> str:
  if isinstance(names, str):
    return names
  if isinstance(names, (tuple, list)) and names and all(isinstance(n, str) for n in names):
    return '-'.join(names)
  raise TypeError(f'`{arg}` must be a feature name, got {names!r}.')


# ------------------------------------------------------------------ term modules

class SpatialMaps(nn.Module):
  """Passes feature maps to a spatial loss as ``[B, H, W, C]``.

  A ``[B, L, C]`` map (e.g. a 1-D convolution's) becomes ``[B, L, 1, C]``; a
  map without spatial axes (``[B, D]``) is an error naming it. No parameters.
  Returns ``(*students, *teachers)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> out = SpatialMaps().apply({}, jnp.ones((2, 5, 3)), jnp.ones((2, 5, 4)), None)
    >>> [x.shape for x in out]
    [(2, 5, 1, 3), (2, 5, 1, 4)]
  """

  def __call__(self, student, teacher, context: TermContext) -> tuple:
    del context
    s = _as_tuple(student)
    t = () if teacher is None else _as_tuple(teacher)
    return (tuple(_spatial(x, f'student[{i}]' if len(s) > 1 else 'student')
                  for i, x in enumerate(s))
            + tuple(_spatial(x, f'teacher[{i}]' if len(t) > 1 else 'teacher')
                    for i, x in enumerate(t)))


class Embed(nn.Module):
  """Flattens ``[B, ...]`` features to embeddings, with optional linear heads.

  Attributes:
    student_dim: width of a trainable Dense head on the student embedding
      (``None``: no head).
    teacher_dim: width of a trainable Dense head on the teacher embedding
      (``None``: no head). CC (Peng et al. 2019) projects both to one size.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> module = Embed(student_dim=3)
    >>> s, t = jnp.ones((2, 4, 4, 2)), jnp.ones((2, 5))
    >>> variables = module.init(jax.random.key(0), s, t, None)
    >>> [x.shape for x in module.apply(variables, s, t, None)]
    [(2, 3), (2, 5)]
  """
  student_dim: Optional[int] = None
  teacher_dim: Optional[int] = None

  @nn.compact
  def __call__(self, student, teacher, context: TermContext) -> tuple:
    del context
    s = _flatten(student, 'student')
    if self.student_dim:
      s = nn.Dense(self.student_dim, name='student_head')(s)
    if teacher is None:
      return (s,)
    t = _flatten(teacher, 'teacher')
    if self.teacher_dim:
      t = nn.Dense(self.teacher_dim, name='teacher_head')(t)
    return s, t


class ContrastiveMemory(nn.Module):
  """CRD's embedding heads, memory banks and negative sampling (Tian et al. 2020).

  Student and teacher features are flattened and mapped by trainable linear
  heads ``g_S``, ``g_T`` to ``embed_dim`` and L2-normalised (an all-zero
  embedding, e.g. of a row of dead ReLUs, is given a fixed direction and no
  gradient). Two memory banks
  (``'term_state'``) hold one ``[num_examples, embed_dim]`` embedding per
  training example, for the student and for the teacher, initialised uniformly
  in ``±1/sqrt(embed_dim/3)`` as in the authors' code. For each example,
  ``num_negatives`` other example ids are drawn uniformly (never its own id)
  and their bank entries are the negatives. The output feeds
  :func:`kdjax.losses.crd_nce` in both directions, stacked on axis 1: the
  student anchor against the teacher's positive and the teacher bank, and the
  teacher anchor against the student's positive and the student bank
  (``[B, 2, D]``, ``[B, 2, D]``, ``[B, 2, K, D]``); the step averages the two.

  After the loss inputs are read, the banks are updated with momentum at the
  batch's ids, ``bank[i] ← normalise(m·bank[i] + (1 − m)·z_i)``. Rows masked
  out (padding, invalid labels) or with an id outside ``[0, num_examples)``
  are not written. With a device axis the rows of every shard are gathered
  first, so all replicas hold the same banks.

  The positives are the current embeddings of the other network (the
  authors' code reads them from the bank too); the loss is the softmax
  (InfoNCE) form of the CRD objective.

  Attributes:
    num_examples: the number of training examples ``N`` (ids lie in
      ``[0, N)``).
    embed_dim: the embedding width (paper: 128).
    num_negatives: ``K`` negatives per example (paper: 16384).
    momentum: the bank's momentum ``m`` (paper: 0.5).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> module = ContrastiveMemory(num_examples=10, embed_dim=4, num_negatives=3)
    >>> ctx = TermContext(None, jnp.ones(2, bool), jnp.array([0, 1]), None)
    >>> s, t = jnp.ones((2, 6)), jnp.ones((2, 5))
    >>> variables = jax.jit(module.init)({'params': jax.random.key(0),
    ...                                   'sample': jax.random.key(1)}, s, t, ctx)
    >>> variables['term_state']['teacher_bank'].shape
    (10, 4)
    >>> apply = jax.jit(lambda v: module.apply(v, s, t, ctx, rngs={'sample': jax.random.key(2)},
    ...                                        mutable=['term_state']))
    >>> (a, p, n), new = apply(variables)
    >>> a.shape, n.shape
    ((2, 2, 4), (2, 2, 3, 4))
  """
  num_examples: int
  embed_dim: int = 128
  num_negatives: int = 4096
  momentum: float = 0.5

  @nn.compact
  def __call__(self, student, teacher, context: TermContext) -> tuple:
    if context.ids is None:
      raise ValueError("CRD needs the example ids of the batch (`batch['id']`, as kdjax.data "
                       'batches carry) to index its memory bank.')
    s = _unit(nn.Dense(self.embed_dim, name='student_head')(
        _flatten(student, 'student')).astype(jnp.float32))
    t = _unit(nn.Dense(self.embed_dim, name='teacher_head')(
        _flatten(teacher, 'teacher')).astype(jnp.float32))
    stdv = 1.0 / math.sqrt(self.embed_dim / 3.0)
    shape = (self.num_examples, self.embed_dim)
    init = lambda: jax.random.uniform(self.make_rng('params'), shape, jnp.float32, -stdv, stdv)
    student_bank = self.variable(TERM_STATE, 'student_bank', init)
    teacher_bank = self.variable(TERM_STATE, 'teacher_bank', init)

    ids = jnp.asarray(context.ids).astype(jnp.int32)
    if ids.shape != s.shape[:1]:
      raise ValueError(f'The batch ids must have shape [B] = {s.shape[:1]}, got {ids.shape}.')
    own = jnp.clip(ids, 0, self.num_examples - 1)
    neg = jax.random.randint(self.make_rng(SAMPLE_RNG), (ids.shape[0], self.num_negatives),
                             0, self.num_examples - 1)
    neg = neg + (neg >= own[:, None])  # uniform over the other ids
    anchors = jnp.stack([s, t], axis=1)
    positives = jnp.stack([t, s], axis=1)
    negatives = jnp.stack([teacher_bank.value[neg], student_bank.value[neg]], axis=1)

    if not self.is_initializing():
      rows = (ids, context.mask, jax.lax.stop_gradient(s), jax.lax.stop_gradient(t))
      if context.axis_name is not None:
        rows = jax.lax.all_gather(rows, context.axis_name, tiled=True)
      ids_all, mask_all, s_all, t_all = rows
      valid = mask_all & (ids_all >= 0) & (ids_all < self.num_examples)
      target = jnp.where(valid, ids_all, self.num_examples)  # out of range: not written
      safe = jnp.clip(ids_all, 0, self.num_examples - 1)
      for bank, z in ((student_bank, s_all), (teacher_bank, t_all)):
        mixed = _unit(self.momentum * bank.value[safe] + (1.0 - self.momentum) * z)
        bank.value = bank.value.at[target].set(mixed, mode='drop')
    return anchors, positives, negatives


class VariationalRegressor(nn.Module):
  """VID's regressor ``μ(s)`` and per-channel variance ``σ²`` (Ahn et al. 2019).

  ``μ`` is three 1×1 layers (Dense over the channel axis) with ReLU between,
  from the student's channels to the teacher's; ``σ²_c = softplus(α_c) + ε``
  with ``α`` initialised so that ``σ² = init_variance``. Student and teacher
  features must agree on all but the channel axis. Returns
  ``(teacher, μ, log σ²)``, the inputs of :func:`kdjax.losses.vid`.

  Attributes:
    hidden: width of the two hidden layers (``None``: the teacher's channels).
    init_variance: initial ``σ²`` (authors' code: 5.0).
    eps: ``ε`` (authors' code: 1e-5).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> module = VariationalRegressor()
    >>> s, t = jnp.ones((2, 4, 4, 3)), jnp.ones((2, 4, 4, 8))
    >>> variables = module.init(jax.random.key(0), s, t, None)
    >>> t_out, mean, log_var = module.apply(variables, s, t, None)
    >>> mean.shape, round(float(jnp.exp(log_var[0])), 3)
    ((2, 4, 4, 8), 5.0)
  """
  hidden: Optional[int] = None
  init_variance: float = 5.0
  eps: float = 1e-5

  @nn.compact
  def __call__(self, student, teacher, context: TermContext) -> tuple:
    del context
    if jnp.ndim(student) < 2 or jnp.shape(student)[:-1] != jnp.shape(teacher)[:-1]:
      raise ValueError(
          '`student` and `teacher` features must agree on all but the channel axis, got '
          f'shapes {jnp.shape(student)} and {jnp.shape(teacher)}.')
    channels = jnp.shape(teacher)[-1]
    hidden = self.hidden or channels
    x = nn.relu(nn.Dense(hidden, name='regressor1')(student))
    x = nn.relu(nn.Dense(hidden, name='regressor2')(x))
    mean = nn.Dense(channels, name='regressor3')(x)
    start = math.log(math.expm1(self.init_variance - self.eps))
    alpha = self.param('alpha', lambda key, shape: jnp.full(shape, start, jnp.float32),
                       (channels,))
    return teacher, mean, jnp.log(jax.nn.softplus(alpha) + self.eps)


class FactorTransfer(nn.Module):
  """FT's paraphraser (teacher side) and translator (student side) (Kim et al. 2018).

  The paraphraser is an auto-encoder on the teacher feature: three layers
  down to ``k = round(rate · C_T)`` channels (the teacher factor), three back
  up; the translator maps the student feature to ``k`` channels the same
  way. Layers are 3×3 convolutions with "same" padding on feature maps
  (``[B, H, W, C]``; 1-D or 3-D maps likewise) and Dense layers on ``[B, C]``
  vectors, each followed by a leaky ReLU (slope 0.1) except the last decoder
  layer. The paraphraser is trained by reconstruction,
  ``mean (P(F_T) − F_T)²``, sown as the term's ``'reconstruction'`` loss;
  the transfer loss does not reach it (the teacher factor is held constant),
  as the paper trains the paraphraser first and then fixes it. Here both
  train from the first step, so its factor keeps moving: a
  ``weight`` schedule can hold the transfer term off while it converges.
  Returns ``(student_factor, teacher_factor)`` for
  :func:`kdjax.losses.factor_transfer`.

  Attributes:
    rate: the paraphrase rate ``k / C_T`` (paper: 0.5).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> module = FactorTransfer(rate=0.5)
    >>> s, t = jnp.ones((2, 4, 4, 3)), jnp.ones((2, 4, 4, 8))
    >>> variables = jax.eval_shape(module.init, jax.random.key(0), s, t, None)  # shapes only
    >>> variables['params']['paraphraser_enc3']['kernel'].shape  # 3×3 conv to k = 4 channels
    (3, 3, 4, 4)
    >>> (fs, ft), extra = jax.eval_shape(
    ...     lambda v: module.apply(v, s, t, None, mutable=['losses']), variables)
    >>> fs.shape, ft.shape, extra['losses']['reconstruction'][0].shape
    ((2, 4, 4, 4), (2, 4, 4, 4), (2,))
  """
  rate: float = 0.5

  @nn.compact
  def __call__(self, student, teacher, context: TermContext) -> tuple:
    del context
    rank = jnp.ndim(teacher)
    if rank < 2 or jnp.ndim(student) != rank:
      raise ValueError(f'`student` and `teacher` must be [B, ..., C] features of the same rank, '
                       f'got shapes {jnp.shape(student)} and {jnp.shape(teacher)}.')
    act = lambda x: nn.leaky_relu(x, 0.1)
    c_t = jnp.shape(teacher)[-1]
    k = max(1, round(self.rate * c_t))
    t = jax.lax.stop_gradient(teacher)
    h = act(_layer(c_t, rank, 'paraphraser_enc1')(t))
    h = act(_layer(k, rank, 'paraphraser_enc2')(h))
    factor_t = act(_layer(k, rank, 'paraphraser_enc3')(h))
    r = act(_layer(k, rank, 'paraphraser_dec1')(factor_t))
    r = act(_layer(c_t, rank, 'paraphraser_dec2')(r))
    r = _layer(c_t, rank, 'paraphraser_dec3')(r)
    self.sow(TERM_LOSSES, 'reconstruction',
             jnp.mean(jnp.square(r - t).reshape(t.shape[0], -1), axis=-1))
    g = act(_layer(jnp.shape(student)[-1], rank, 'translator1')(student))
    g = act(_layer(k, rank, 'translator2')(g))
    factor_s = act(_layer(k, rank, 'translator3')(g))
    return factor_s, jax.lax.stop_gradient(factor_t)


_MINING = ('hard', 'random')


def _pairwise_distance(a: jax.Array, b: jax.Array, kind: str) -> jax.Array:
  """``[B, D] × [B, D] -> [B, B]`` distances from a Gram matrix (no ``[B, B, D]`` tensor)."""
  if kind == 'cosine':
    return 1.0 - _unit(a) @ _unit(b).T
  sq = (jnp.sum(jnp.square(a), -1)[:, None] + jnp.sum(jnp.square(b), -1)[None, :]
        - 2.0 * a @ b.T)
  sq = jnp.maximum(sq, 0.0)
  return sq if kind == 'squared_euclidean' else jnp.sqrt(sq)


class TripletMining(nn.Module):
  """Mines each anchor's negative in the batch for triplet distillation (Oki et al. 2020).

  The anchor is the student embedding, the positive the teacher embedding of
  the same input, the negative the teacher embedding of a valid in-batch
  example of another class: the one closest to the anchor (``'hard'``) or a
  uniformly drawn one (``'random'``, from the ``'sample'`` stream). An anchor
  whose batch has no other-class example gets its positive as the negative: a
  constant loss (the margin) with no gradient. Returns ``(anchor, positive,
  negative)`` for :func:`kdjax.losses.triplet_distillation`.

  Attributes:
    mining: ``'hard'`` or ``'random'``.
    distance: the distance of the loss (``'euclidean'``,
      ``'squared_euclidean'`` or ``'cosine'``), used to mine hard negatives.
    student_head: a trainable Dense head mapping the student embedding to the
      teacher's width (needed when the widths differ).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> t = jnp.array([[0.0], [1.0], [5.0]])
    >>> ctx = TermContext(jnp.array([0, 1, 1]), jnp.ones(3, bool), None, None)
    >>> a, p, n = TripletMining().apply({}, t, t, ctx)
    >>> n[:, 0].tolist()   # the closest example of another class
    [1.0, 0.0, 0.0]
  """
  mining: str = 'hard'
  distance: str = 'euclidean'
  student_head: bool = False

  @nn.compact
  def __call__(self, student, teacher, context: TermContext) -> tuple:
    if context.labels is None:
      raise ValueError('Triplet distillation mines negatives of another class: the batch needs '
                       'a "label" key.')
    a, p = _flatten(student, 'student'), _flatten(teacher, 'teacher')
    if self.student_head:
      a = nn.Dense(p.shape[-1], name='student_head')(a)
    elif a.shape[-1] != p.shape[-1]:
      raise ValueError(f'The `student` embedding has width {a.shape[-1]} and the `teacher` '
                       f'embedding {p.shape[-1]}: set `student_head=True` to map one to the '
                       'other.')
    labels = jnp.asarray(context.labels).reshape(-1)
    candidate = (labels[:, None] != labels[None, :]) & jnp.asarray(context.mask, bool)[None, :]
    if self.mining == 'hard':
      score = -_pairwise_distance(jax.lax.stop_gradient(a).astype(jnp.float32),
                                  p.astype(jnp.float32), self.distance)
    else:
      score = jax.random.gumbel(self.make_rng(SAMPLE_RNG), candidate.shape)
    j = jnp.argmax(jnp.where(candidate, score, -jnp.inf), axis=1)
    negative = jnp.where(jnp.any(candidate, axis=1)[:, None], p[j], p)
    return a, p, negative


# ------------------------------------------------------------------ factories

def _term(prefix: str, student, teacher, name, **fields) -> Term:
  label = _feature_name(student, 'student_feature')
  _feature_name(teacher, 'teacher_feature')
  return Term(name or f'{prefix}/{label}', student=student, teacher=teacher, **fields)


def attention_transfer(student_feature: str, teacher_feature: str, weight: Weight = 1.0, *,
                       p: float = 2, teacher_name: Optional[str] = None,
                       name: Optional[str] = None) -> Term:
  """Attention transfer (AT) between two feature maps.

  The loss is :func:`kdjax.losses.attention_transfer`, the squared difference
  of the normalised spatial attention maps ``mean_c |F_c|^p``; the channel
  counts may differ, the spatial sizes must match. ``[B, L, C]`` maps are
  taken as ``[B, L, 1, C]``. The paper sums the term over several layer
  pairs: add one term per pair.

  Args:
    student_feature: a student feature map ``[B, H, W, C_s]``.
    teacher_feature: the teacher feature map ``[B, H, W, C_t]``.
    weight: term weight or schedule.
    p: the exponent (paper: 2).
    teacher_name: which teacher.
    name: metric name; default ``'at/<student_feature>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: for ``p < 1`` (here), or, when the step is traced, for a
      feature without spatial axes or mismatched spatial sizes.

  References:
    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017,
    arXiv:1612.03928.

  Examples:
    >>> attention_transfer('stage2', 'stage3').name
    'at/stage2'
  """
  if not p >= 1:
    raise ValueError(f'`p` must be >= 1, got {p}.')
  return _term('at', student_feature, teacher_feature, name, loss=losses.attention_transfer,
               weight=weight, teacher_name=teacher_name, module=SpatialMaps(),
               kwargs={'p': p})


def nst(student_feature: str, teacher_feature: str, weight: Weight = 1.0, *,
        kernel: str = 'polynomial', teacher_name: Optional[str] = None,
        name: Optional[str] = None) -> Term:
  """Neuron selectivity transfer (NST): MMD between the channels' spatial distributions.

  The loss is :func:`kdjax.losses.nst_mmd` (polynomial kernel by default, the
  paper's main choice); channel counts may differ, spatial sizes must match.
  ``[B, L, C]`` maps are taken as ``[B, L, 1, C]``.

  Args:
    student_feature: a student feature map ``[B, H, W, C_s]``.
    teacher_feature: the teacher feature map ``[B, H, W, C_t]``.
    weight: term weight or schedule.
    kernel: ``'polynomial'`` or ``'linear'``.
    teacher_name: which teacher.
    name: metric name; default ``'nst/<student_feature>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: for an unknown ``kernel``.

  References:
    Huang & Wang, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer", arXiv:1707.01219, 2017.

  Examples:
    >>> nst('stage3', 'stage3').kwargs
    {'kernel': 'polynomial'}
  """
  if kernel not in ('polynomial', 'linear'):
    raise ValueError(f"`kernel` must be 'polynomial' or 'linear', got {kernel!r}.")
  return _term('nst', student_feature, teacher_feature, name, loss=losses.nst_mmd,
               weight=weight, teacher_name=teacher_name, module=SpatialMaps(),
               kwargs={'kernel': kernel})


def fsp(student_features: Sequence[str], teacher_features: Sequence[str],
        weight: Weight = 1.0, *, teacher_name: Optional[str] = None,
        name: Optional[str] = None) -> Term:
  """Flow of solution procedure (FSP) between pairs of feature maps.

  ``student_features = (in, out)`` names the maps entering and leaving a
  block of the student, ``teacher_features`` those of the teacher's matching
  block; the loss is :func:`kdjax.losses.fsp_loss` of their FSP matrices.
  Within a network the two maps must share their spatial size; between the
  networks the channel counts must match. Add one term per block pair.

  Args:
    student_features: ``(in, out)`` student feature names.
    teacher_features: ``(in, out)`` teacher feature names.
    weight: term weight or schedule.
    teacher_name: which teacher.
    name: metric name; default ``'fsp/<in>-<out>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: if either argument is not a pair of names.

  References:
    Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", CVPR 2017.

  Examples:
    >>> term = fsp(('stage1', 'stage2'), ('stage1', 'stage2'))
    >>> term.name, term.student
    ('fsp/stage1-stage2', ('stage1', 'stage2'))
  """
  for value, arg in ((student_features, 'student_features'),
                     (teacher_features, 'teacher_features')):
    if isinstance(value, str) or len(tuple(value)) != 2:
      raise ValueError(f'`{arg}` must be a pair of feature names (in, out), got {value!r}.')
  return _term('fsp', tuple(student_features), tuple(teacher_features), name,
               loss=losses.fsp_loss, weight=weight, teacher_name=teacher_name,
               module=SpatialMaps())


def similarity_preserving(student_feature: str, teacher_feature: str, weight: Weight = 1.0, *,
                          teacher_name: Optional[str] = None,
                          name: Optional[str] = None) -> Term:
  """Similarity-preserving (SP) distillation: match the batch's normalised Gram matrices.

  The loss is :func:`kdjax.losses.similarity_preserving`, batch-level; any
  ``[B, ...]`` features (the trailing shapes may differ).

  Args:
    student_feature: a student feature ``[B, ...]``.
    teacher_feature: a teacher feature ``[B, ...]``.
    weight: term weight or schedule.
    teacher_name: which teacher.
    name: metric name; default ``'sp/<student_feature>'``.

  Returns:
    A :class:`Term`.

  References:
    Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019,
    arXiv:1907.09682.

  Examples:
    >>> similarity_preserving('stage3', 'stage3').name
    'sp/stage3'
  """
  return _term('sp', student_feature, teacher_feature, name,
               loss=losses.similarity_preserving, weight=weight, teacher_name=teacher_name)


def rkd_distance(weight: Weight = 1.0, *, student_feature: str = 'embedding',
                 teacher_feature: str = 'embedding', teacher_name: Optional[str] = None,
                 name: Optional[str] = None) -> Term:
  """Relational KD, distance-wise (RKD-D): match the batch's normalised pairwise distances.

  Features ``[B, ...]`` are flattened to embeddings; widths may differ. The
  loss is :func:`kdjax.losses.rkd_distance` (the paper weights it 25 in metric
  learning, beside the angle term at 50).

  Args:
    weight: term weight or schedule.
    student_feature: a student feature (default ``'embedding'``).
    teacher_feature: a teacher feature (default ``'embedding'``).
    teacher_name: which teacher.
    name: metric name; default ``'rkd_distance/<student_feature>'``.

  Returns:
    A :class:`Term`.

  References:
    Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019,
    arXiv:1904.05068.

  Examples:
    >>> rkd_distance(weight=25.0).name
    'rkd_distance/embedding'
  """
  return _term('rkd_distance', student_feature, teacher_feature, name,
               loss=losses.rkd_distance, weight=weight, teacher_name=teacher_name,
               module=Embed())


def rkd_angle(weight: Weight = 1.0, *, student_feature: str = 'embedding',
              teacher_feature: str = 'embedding', teacher_name: Optional[str] = None,
              name: Optional[str] = None) -> Term:
  """Relational KD, angle-wise (RKD-A): match the angles of the batch's triplets.

  Features ``[B, ...]`` are flattened to embeddings; widths may differ. The
  loss is :func:`kdjax.losses.rkd_angle`, ``O(B³)`` in memory.

  Args:
    weight: term weight or schedule.
    student_feature: a student feature (default ``'embedding'``).
    teacher_feature: a teacher feature (default ``'embedding'``).
    teacher_name: which teacher.
    name: metric name; default ``'rkd_angle/<student_feature>'``.

  Returns:
    A :class:`Term`.

  References:
    Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019,
    arXiv:1904.05068.

  Examples:
    >>> rkd_angle(weight=50.0).weight
    50.0
  """
  return _term('rkd_angle', student_feature, teacher_feature, name, loss=losses.rkd_angle,
               weight=weight, teacher_name=teacher_name, module=Embed())


def pkt(weight: Weight = 1.0, *, student_feature: str = 'embedding',
        teacher_feature: str = 'embedding', eps: float = 1e-7, teacher_name: Optional[str] = None,
        name: Optional[str] = None) -> Term:
  """Probabilistic knowledge transfer (PKT): match the batch's cosine-kernel conditionals.

  Features ``[B, ...]`` are flattened to embeddings; widths may differ. The
  loss is :func:`kdjax.losses.pkt`.

  Args:
    weight: term weight or schedule.
    student_feature: a student feature (default ``'embedding'``).
    teacher_feature: a teacher feature (default ``'embedding'``).
    eps: ``ε`` inside the logarithm.
    teacher_name: which teacher.
    name: metric name; default ``'pkt/<student_feature>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: for ``eps <= 0``.

  References:
    Passalis & Tefas, "Learning Deep Representations with Probabilistic
    Knowledge Transfer", ECCV 2018, arXiv:1803.10837.

  Examples:
    >>> pkt().name
    'pkt/embedding'
  """
  _checks.check_positive(eps, 'eps')
  return _term('pkt', student_feature, teacher_feature, name, loss=losses.pkt, weight=weight,
               teacher_name=teacher_name, module=Embed(), kwargs={'eps': eps})


def correlation_congruence(weight: Weight = 1.0, *, student_feature: str = 'embedding',
                           teacher_feature: str = 'embedding',
                           gamma: float = 0.4, order: int = 2,
                           embed_dim: Optional[int] = None,
                           teacher_name: Optional[str] = None,
                           name: Optional[str] = None) -> Term:
  """Correlation congruence (CC): match the batch's kernel correlation matrices.

  Features ``[B, ...]`` are flattened; with ``embed_dim`` both go through
  trainable linear heads to that width first, as in the paper. The loss is
  :func:`kdjax.losses.cc_loss` (Taylor-expanded Gaussian RBF).

  Args:
    weight: term weight or schedule.
    student_feature: a student feature (default ``'embedding'``).
    teacher_feature: a teacher feature (default ``'embedding'``).
    gamma: RBF parameter γ (paper: 0.4).
    order: Taylor order (paper: 2).
    embed_dim: width of the student and teacher heads (``None``: no heads).
    teacher_name: which teacher.
    name: metric name; default ``'cc/<student_feature>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: for ``gamma <= 0``, a bad ``order`` or ``embed_dim``.

  References:
    Peng et al., "Correlation Congruence for Knowledge Distillation",
    ICCV 2019, arXiv:1904.01802.

  Examples:
    >>> correlation_congruence(embed_dim=64).module.teacher_dim
    64
  """
  _checks.check_positive(gamma, 'gamma')
  _check_int(order, 'order', 0)
  if embed_dim is not None:
    _check_int(embed_dim, 'embed_dim', 1)
  return _term('cc', student_feature, teacher_feature, name, loss=losses.cc_loss,
               weight=weight, teacher_name=teacher_name,
               module=Embed(student_dim=embed_dim, teacher_dim=embed_dim),
               kwargs={'gamma': gamma, 'order': order})


def crd(weight: Weight = 1.0, *, student_feature: str = 'embedding',
        teacher_feature: str = 'embedding', num_examples: int, embed_dim: int = 128,
        num_negatives: int = 4096, temperature: float = 0.07, momentum: float = 0.5,
        teacher_name: Optional[str] = None, name: Optional[str] = None) -> Term:
  """Contrastive representation distillation (CRD) with memory banks and sampled negatives.

  See :class:`ContrastiveMemory`: trainable heads embed both networks'
  features, memory banks (``TrainState.term_state[name]``, updated with
  momentum inside the step) provide ``num_negatives`` negatives per example,
  and :func:`kdjax.losses.crd_nce` is evaluated in both directions (student
  anchor vs. teacher bank and teacher anchor vs. student bank) and averaged.
  Batches must carry ``'id'`` (``kdjax.data`` batches do), in
  ``[0, num_examples)``.

  Args:
    weight: term weight or schedule.
    student_feature: a student feature (default ``'embedding'``).
    teacher_feature: a teacher feature (default ``'embedding'``).
    num_examples: the training set's size (the banks' rows).
    embed_dim: embedding width (paper: 128).
    num_negatives: negatives per example ``K`` (paper: 16384; the default is
      lower because the step gathers ``[B, 2, K, embed_dim]`` of them, 268 MB
      in float32 at ``B = 64, K = 4096, embed_dim = 128``).
    temperature: τ (paper: 0.07).
    momentum: bank momentum (paper: 0.5).
    teacher_name: which teacher.
    name: metric name; default ``'crd/<student_feature>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: for ``num_examples < 2``, a bad ``embed_dim`` or
      ``num_negatives``, ``temperature <= 0`` or ``momentum`` outside [0, 1).

  References:
    Tian, Krishnan & Isola, "Contrastive Representation Distillation",
    ICLR 2020, arXiv:1910.10699.

  Examples:
    >>> term = crd(num_examples=4000, num_negatives=1024)
    >>> term.name, term.module.embed_dim
    ('crd/embedding', 128)
  """
  _check_int(num_examples, 'num_examples', 2)
  _check_int(embed_dim, 'embed_dim', 1)
  _check_int(num_negatives, 'num_negatives', 1)
  _checks.check_positive(temperature, 'temperature')
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f'`momentum` must be in [0, 1), got {momentum}.')
  return _term('crd', student_feature, teacher_feature, name, loss=losses.crd_nce,
               weight=weight, teacher_name=teacher_name,
               module=ContrastiveMemory(num_examples=num_examples, embed_dim=embed_dim,
                                        num_negatives=num_negatives, momentum=momentum),
               kwargs={'temperature': temperature})


def vid(student_feature: str, teacher_feature: str, weight: Weight = 1.0, *,
        hidden: Optional[int] = None, init_variance: float = 5.0, eps: float = 1e-5,
        teacher_name: Optional[str] = None, name: Optional[str] = None) -> Term:
  """Variational information distillation (VID) with a trained regressor and variances.

  See :class:`VariationalRegressor`; the loss is the Gaussian negative
  log-likelihood :func:`kdjax.losses.vid` of the teacher feature under
  ``N(μ(s), σ²)``. Student and teacher features must agree on all but the
  channel axis (``[B, C]`` vectors or ``[B, H, W, C]`` maps).

  Args:
    student_feature: a student feature.
    teacher_feature: the teacher feature.
    weight: term weight or schedule.
    hidden: the regressor's hidden width (``None``: the teacher's channels).
    init_variance: the initial ``σ²``.
    eps: the variance floor ``ε``.
    teacher_name: which teacher.
    name: metric name; default ``'vid/<student_feature>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: for ``init_variance <= eps``, ``eps <= 0`` or a bad
      ``hidden``.

  References:
    Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation
    for Knowledge Transfer", CVPR 2019, arXiv:1904.05835.

  Examples:
    >>> vid('embedding', 'embedding').module.init_variance
    5.0
  """
  _checks.check_positive(eps, 'eps')
  if not init_variance > eps:
    raise ValueError(f'`init_variance` must be > `eps` = {eps}, got {init_variance}.')
  if hidden is not None:
    _check_int(hidden, 'hidden', 1)
  return _term('vid', student_feature, teacher_feature, name, loss=losses.vid, weight=weight,
               teacher_name=teacher_name,
               module=VariationalRegressor(hidden=hidden, init_variance=init_variance,
                                           eps=eps))


def factor_transfer(student_feature: str, teacher_feature: str, weight: Weight = 1.0, *,
                    rate: float = 0.5, p: int = 1, teacher_name: Optional[str] = None,
                    name: Optional[str] = None) -> Term:
  """Factor transfer (FT) through a paraphraser and a translator.

  See :class:`FactorTransfer`: the paraphraser learns teacher factors by
  reconstruction (reported as ``loss/<name>/reconstruction`` and added to
  the term), the translator maps the student feature to factors, and the loss
  is :func:`kdjax.losses.factor_transfer` between the normalised factors.
  Student and teacher features must have the same rank and spatial size.

  Args:
    student_feature: a student feature.
    teacher_feature: the teacher feature.
    weight: term weight or schedule (applies to the reconstruction too).
    rate: the paraphrase rate ``k / C_T`` (paper: 0.5).
    p: 1 (paper) or 2.
    teacher_name: which teacher.
    name: metric name; default ``'ft/<student_feature>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: for ``rate <= 0`` or ``p`` not in ``{1, 2}``.

  References:
    Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS 2018, arXiv:1802.04977.

  Examples:
    >>> factor_transfer('stage3', 'stage3').name
    'ft/stage3'
  """
  _checks.check_positive(rate, 'rate')
  if p not in (1, 2) or isinstance(p, bool):
    raise ValueError(f'`p` must be 1 or 2, got {p!r}.')
  return _term('ft', student_feature, teacher_feature, name, loss=losses.factor_transfer,
               weight=weight, teacher_name=teacher_name, module=FactorTransfer(rate=rate),
               kwargs={'p': p})


def triplet(weight: Weight = 1.0, *, student_feature: str = 'embedding',
            teacher_feature: str = 'embedding', margin: float = 1.0, distance: str = 'euclidean',
            mining: str = 'hard', student_head: bool = False,
            teacher_name: Optional[str] = None, name: Optional[str] = None) -> Term:
  """Triplet distillation with in-batch negative mining.

  See :class:`TripletMining`: student anchor, teacher positive, and a
  teacher negative of another class mined in the batch (the closest one, or a
  random one); the loss is :func:`kdjax.losses.triplet_distillation`. Needs
  labels.

  Args:
    weight: term weight or schedule.
    student_feature: a student feature (default ``'embedding'``).
    teacher_feature: a teacher feature (default ``'embedding'``).
    margin: the margin ``m >= 0``.
    distance: ``'euclidean'``, ``'squared_euclidean'`` or ``'cosine'``.
    mining: ``'hard'`` or ``'random'``.
    student_head: map the student embedding to the teacher's width with a
      trainable Dense head.
    teacher_name: which teacher.
    name: metric name; default ``'triplet/<student_feature>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: for a negative ``margin``, an unknown ``distance`` or
      ``mining``.

  References:
    Oki, Abe, Miyao & Kurita, "Triplet Loss for Knowledge Distillation",
    IJCNN 2020, arXiv:2004.08116.

  Examples:
    >>> triplet(margin=0.5, mining='random').kwargs
    {'margin': 0.5, 'distance': 'euclidean'}
  """
  if not margin >= 0:
    raise ValueError(f'`margin` must be >= 0, got {margin}.')
  if distance not in ('euclidean', 'squared_euclidean', 'cosine'):
    raise ValueError("`distance` must be 'euclidean', 'squared_euclidean' or 'cosine', got "
                     f'{distance!r}.')
  if mining not in _MINING:
    raise ValueError(f'`mining` must be one of {_MINING}, got {mining!r}.')
  return _term('triplet', student_feature, teacher_feature, name,
               loss=losses.triplet_distillation, weight=weight, teacher_name=teacher_name,
               module=TripletMining(mining=mining, distance=distance, student_head=student_head),
               kwargs={'margin': margin, 'distance': distance})


# ------------------------------------------------------------------ transformers

class AttentionMaps(nn.Module):
  """Checks a student/teacher pair of attention probabilities ``[B, heads, L, L]``.

  No parameters. Returns ``(student, teacher)``, the inputs of
  :func:`kdjax.losses.attention_kl`.

  Raises:
    ValueError: at trace time, for maps that are not ``[B, heads, L, L]``, for
      different head counts (naming ``student_feature``) or different lengths.

  Examples:
    >>> import jax.numpy as jnp
    >>> s, t = jnp.full((2, 4, 3, 3), 1 / 3), jnp.full((2, 4, 3, 3), 1 / 3)
    >>> [x.shape for x in AttentionMaps().apply({}, s, t, None)]
    [(2, 4, 3, 3), (2, 4, 3, 3)]
  """

  def __call__(self, student, teacher, context: TermContext) -> tuple:
    del context
    for value, arg in ((student, 'student_feature'), (teacher, 'teacher_feature')):
      shape = jnp.shape(value)
      if len(shape) != 4 or shape[-1] != shape[-2]:
        raise ValueError(f'`{arg}` must be attention probabilities [batch, heads, L, L], got '
                         f'shape {shape}.')
    s_shape, t_shape = jnp.shape(student), jnp.shape(teacher)
    if s_shape[1] != t_shape[1]:
      raise ValueError(
          f'`student_feature` has {s_shape[1]} attention heads but `teacher_feature` has '
          f'{t_shape[1]}: per-head attention transfer needs the same number of heads.')
    if s_shape[2:] != t_shape[2:]:
      raise ValueError(f'`student_feature` attends over {s_shape[2]} tokens but '
                       f'`teacher_feature` over {t_shape[2]}: the sequence lengths must match.')
    return student, teacher


class HiddenProjection(nn.Module):
  """A trainable linear map of student hidden states ``[B, L, D_s]`` to the teacher's width.

  TinyBERT's ``H^S W_h`` (Jiao et al. 2020); MobileBERT (Sun et al. 2020)
  matches widths with linear maps as well. The projection is a Dense layer
  ``D_s -> D_t`` (with ``bias``) in ``TrainState.aux_params``. Returns
  ``(projected student, teacher)``, the inputs of
  :func:`kdjax.losses.hidden_state_mse`.

  Attributes:
    bias: give the projection a bias.

  Raises:
    ValueError: at trace time, for features that are not ``[B, L, D]`` or of
      different lengths (naming ``student_feature``).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> s, t = jnp.ones((2, 5, 8)), jnp.ones((2, 5, 32))
    >>> variables = HiddenProjection().init(jax.random.key(0), s, t, None)
    >>> variables['params']['projection']['kernel'].shape
    (8, 32)
  """
  bias: bool = True

  @nn.compact
  def __call__(self, student, teacher, context: TermContext) -> tuple:
    del context
    for value, arg in ((student, 'student_feature'), (teacher, 'teacher_feature')):
      if jnp.ndim(value) != 3:
        raise ValueError(f'`{arg}` must be hidden states [batch, tokens, width], got shape '
                         f'{jnp.shape(value)}.')
    if jnp.shape(student)[:2] != jnp.shape(teacher)[:2]:
      raise ValueError(
          f'`student_feature` {jnp.shape(student)} and `teacher_feature` {jnp.shape(teacher)} '
          'must agree on [batch, tokens].')
    projected = nn.Dense(jnp.shape(teacher)[-1], use_bias=self.bias, name='projection')(student)
    return projected, teacher


def attention_distribution(student_feature: str, teacher_feature: str, weight: Weight = 1.0, *,
                           teacher_name: Optional[str] = None,
                           name: Optional[str] = None) -> Term:
  """Attention-distribution transfer: per-head KL between the attention rows of one layer pair.

  The loss is :func:`kdjax.losses.attention_kl`,
  ``1/(A·T) Σ_a Σ_t KL(a^T_{a,t} ‖ a^S_{a,t})`` over the ``A`` heads and
  ``T`` queries (MobileBERT Eq. 2; TinyBERT's attention loss uses the
  pre-softmax scores instead). Student and teacher maps must both be
  ``[B, heads, L, L]`` with the same heads and length. Add one term per layer
  pair (teacher layer ``i`` with student layer ``i``, see
  :func:`transformer_layer_terms`).

  Args:
    student_feature: the student's attention probabilities, e.g. ``'attention1'``.
    teacher_feature: the teacher's, e.g. ``'attention1'``.
    weight: term weight or schedule.
    teacher_name: which teacher.
    name: metric name; default ``'attention_kl/<student_feature>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: when the step is traced, for maps that are not
      ``[B, heads, L, L]``, different head counts or lengths (see
      :class:`AttentionMaps`).

  References:
    Sun, Yu, Song, Liu, Yang & Zhou, "MobileBERT: a Compact Task-Agnostic BERT
    for Resource-Limited Devices", ACL 2020, arXiv:2004.02984.
    Jiao et al., "TinyBERT: Distilling BERT for Natural Language
    Understanding", Findings of EMNLP 2020, arXiv:1909.10351.

  Examples:
    >>> attention_distribution('attention2', 'attention2').name
    'attention_kl/attention2'
  """
  return _term('attention_kl', student_feature, teacher_feature, name,
               loss=losses.attention_kl, weight=weight, teacher_name=teacher_name,
               module=AttentionMaps())


def hidden_transfer(student_feature: str, teacher_feature: str, weight: Weight = 1.0, *,
                    bias: bool = True, teacher_name: Optional[str] = None,
                    name: Optional[str] = None) -> Term:
  """Hidden-state transfer: MSE between linearly mapped student and teacher hidden states.

  The loss is :func:`kdjax.losses.hidden_state_mse` of
  ``(H^S W + b, H^T)`` averaged over tokens and the teacher's width
  (MobileBERT's feature-map transfer, Eq. 1; TinyBERT's ``MSE(H^S W_h, H^T)``).
  ``W`` (``D_s × D_t``) is trained with the student and lives in
  ``TrainState.aux_params[name]`` (see :class:`HiddenProjection`).

  Args:
    student_feature: the student's hidden states ``[B, L, D_s]``, e.g. ``'hidden1'``.
    teacher_feature: the teacher's ``[B, L, D_t]``, e.g. ``'hidden1'``.
    weight: term weight or schedule.
    bias: give the projection a bias.
    teacher_name: which teacher.
    name: metric name; default ``'hidden_mse/<student_feature>'``.

  Returns:
    A :class:`Term`.

  Raises:
    ValueError: when the step is traced, for features that are not
      ``[B, L, D]`` or of different lengths.

  References:
    Sun, Yu, Song, Liu, Yang & Zhou, "MobileBERT: a Compact Task-Agnostic BERT
    for Resource-Limited Devices", ACL 2020, arXiv:2004.02984.
    Jiao et al., "TinyBERT: Distilling BERT for Natural Language
    Understanding", Findings of EMNLP 2020, arXiv:1909.10351.

  Examples:
    >>> hidden_transfer('hidden1', 'hidden1').name
    'hidden_mse/hidden1'
  """
  return _term('hidden_mse', student_feature, teacher_feature, name,
               loss=losses.hidden_state_mse, weight=weight, teacher_name=teacher_name,
               module=HiddenProjection(bias=bias))


def transformer_layer_terms(layers: Sequence[int], *, attention_weight: Weight = 1.0,
                            hidden_weight: Weight = 1.0, attention: str = 'attention{}',
                            hidden: str = 'hidden{}',
                            teacher_name: Optional[str] = None) -> tuple[Term, ...]:
  """The attention and hidden transfer terms of each layer ``l`` (teacher ``l`` ↔ student ``l``).

  With all layers this is the "all layers at once" objective; progressive
  transfer (:func:`kdjax.schemes.progressive_transfer`) uses one layer per stage.

  Args:
    layers: layer indices, e.g. ``range(1, 5)``.
    attention_weight: weight of each :func:`attention_distribution` term
      (``0``: leave them out).
    hidden_weight: weight of each :func:`hidden_transfer` term (``0``: leave them out).
    attention: feature-name pattern of the attention maps (both models).
    hidden: feature-name pattern of the hidden states (both models).
    teacher_name: which teacher.

  Returns:
    A tuple of terms, per layer attention then hidden.

  Raises:
    ValueError: for no layer, or a layer that is not an int >= 0.

  Examples:
    >>> [t.name for t in transformer_layer_terms([1, 2], hidden_weight=0)]
    ['attention_kl/attention1', 'attention_kl/attention2']
  """
  layers = tuple(layers)
  if not layers:
    raise ValueError('`layers` names no layer.')
  for layer in layers:
    _check_int(layer, 'layers', 0)
  terms = []
  for layer in layers:
    if not (isinstance(attention_weight, (int, float)) and attention_weight == 0):
      terms.append(attention_distribution(attention.format(layer), attention.format(layer),
                                          attention_weight, teacher_name=teacher_name))
    if not (isinstance(hidden_weight, (int, float)) and hidden_weight == 0):
      terms.append(hidden_transfer(hidden.format(layer), hidden.format(layer), hidden_weight,
                                   teacher_name=teacher_name))
  return tuple(terms)
