"""Teacher-output cache: run the frozen teacher once, look its outputs up in the step.

With a deterministic input pipeline the teacher's outputs are a function of
the example, so they can be computed once and the teacher's forward pass
disappears from every distillation step. The cache must be keyed by what
fixes the teacher's *input*: the example id alone when the inputs are not
augmented, and ``(epoch, id)`` when they are (``kdjax.data`` makes every
augmented view a pure function of ``(seed, epoch, id)``). A cache keyed by id
under augmentation would hand the student the logits of another view of the
example: stale targets, the reason torchdistill removed its cache. Here a
lookup that is not in the cache never returns an entry of another view:

* in the jitted step the missing rows get NaN teacher outputs, the update is
  skipped (the state is kept) and ``metrics['cache_misses']`` counts them;
* :func:`kdjax.train.fit` raises :class:`CacheMissError` at the end of the
  chunk that met a miss (from that metric, no per-step host sync);
* on the host, :func:`check_batch` (and the :func:`checked` step wrapper)
  raise :class:`CacheMissError` before the step runs, and
  :func:`check_pipeline` rejects a cache built for another pipeline (an
  id-keyed cache under augmentation, or another seed or transform).

Two kinds of cache, both pytrees of arrays indexed by id (rows ``[N, ...]``,
or ``[N, E, ...]`` for ``E`` cached epochs), passed to the step where a live
teacher's variables would go::

  cache = build_cache(teacher, teacher_variables, train_source)
  step = jax.jit(make_cached_distill_step((task_ce(0.1), soft_kd(0.9, temperature=4.0))))
  state, metrics = step(state, cache, batch, rng)

* :class:`TeacherCache`: the full logits ``[N(, E), C]`` and optionally named
  teacher features (for hint terms).
* :class:`TopKCache`: the ``k`` largest logits and their classes
  ``[N(, E), k]`` plus the log-mass of the other classes at one temperature
  ``[N(, E)]``, which is exactly what the KD-topk target of Tang et al. (2020)
  depends on. A lookup returns dense "target logits" ``z̃`` with
  ``softmax(z̃/τ) = ρ``, the KD-topk target (or, with ``target='renormalized'``,
  the teacher's top-k probabilities renormalised to sum to 1 and 0 elsewhere),
  so the ordinary ``soft_kd(temperature=τ)`` term distils that target exactly.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data as kdata
from kdjax import steps
from kdjax.models._wrap import as_forward
from kdjax.models._wrap import ModelOutput


TARGETS = ('topk', 'renormalized')


class CacheMissError(KeyError):
  """A batch asks for ``(epoch, id)`` entries that the cache does not hold."""

  def __str__(self) -> str:  # KeyError would print the message quoted.
    return str(self.args[0]) if self.args else ''


class TeacherCache(struct.PyTreeNode):
  """Full teacher logits (and optional features) by example id.

  Attributes:
    logits: ``[N, C]`` (keyed by id) or ``[N, E, C]`` (keyed by id and epoch)
      teacher logits; row ``i`` belongs to the example with ``id == i``.
    features: named teacher features, each ``[N(, E), ...]``.
    filled: ``[N]`` or ``[N, E]`` bool, which entries were computed.
    epochs: ``None`` (entries valid for every epoch: inputs not augmented),
      or the cached epochs; column ``j`` of the epoch axis is ``epochs[j]``.
    pipeline: description of the pipeline the inputs came from (augmentation
      seed and transform), checked by :func:`check_pipeline`; ``None`` when
      unknown (built from batches).
  """
  logits: jax.Array
  features: Mapping[str, jax.Array]
  filled: jax.Array
  epochs: Optional[tuple[int, ...]] = struct.field(pytree_node=False, default=None)
  pipeline: Optional[str] = struct.field(pytree_node=False, default=None)

  @property
  def num_classes(self) -> int:
    return self.logits.shape[-1]

  @property
  def nbytes(self) -> int:
    """Bytes held by the cache's arrays."""
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(self))


class TopKCache(struct.PyTreeNode):
  """Top-k teacher logits by example id: a sparse cache for KD-topk.

  For teacher logits ``t`` and temperature τ, ``values`` are the ``k``
  largest logits in decreasing order (ties: lowest class first, as
  ``jax.lax.top_k``), ``indices`` their classes, and ``tail_logsumexp`` is
  ``log Σ_{c ∉ top-k} exp(t_c/τ)`` (``-inf`` when ``k = C``). With
  ``logsumexp(t/τ) = logaddexp(logsumexp(values/τ), tail_logsumexp)`` these
  give the teacher's top-k probabilities at τ and the total mass of the other
  classes exactly, i.e. the KD-topk target.

  Attributes:
    values: ``[N(, E), k]`` top-k teacher logits (not divided by τ).
    indices: ``[N(, E), k]`` int32 classes of ``values``.
    tail_logsumexp: ``[N(, E)]`` log-mass of the other classes at ``temperature``.
    filled: ``[N]`` or ``[N, E]`` bool, which entries were computed.
    num_classes: ``C``.
    temperature: the τ of ``tail_logsumexp`` (the target is exact at this τ only).
    target: ``'topk'`` (Tang et al.'s KD-topk: top-k probabilities kept, the
      remaining mass spread uniformly over the other classes) or
      ``'renormalized'`` (top-k probabilities renormalised over the top-k
      classes, 0 elsewhere: the sparse KL of top-k logit caches). Switch with
      ``cache.replace(target=...)``.
    epochs: as in :class:`TeacherCache`.
    pipeline: as in :class:`TeacherCache`.
  """
  values: jax.Array
  indices: jax.Array
  tail_logsumexp: jax.Array
  filled: jax.Array
  num_classes: int = struct.field(pytree_node=False, default=0)
  temperature: float = struct.field(pytree_node=False, default=1.0)
  target: str = struct.field(pytree_node=False, default='topk')
  epochs: Optional[tuple[int, ...]] = struct.field(pytree_node=False, default=None)
  pipeline: Optional[str] = struct.field(pytree_node=False, default=None)

  @property
  def k(self) -> int:
    return self.values.shape[-1]

  @property
  def nbytes(self) -> int:
    """Bytes held by the cache's arrays."""
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(self))


Cache = Union[TeacherCache, TopKCache]


# ------------------------------------------------------------------ helpers

def epochs_needed(num_examples: int, *, batch_size: int, num_steps: int,
                  drop_remainder: bool = True) -> int:
  """How many epochs a run of ``num_steps`` batches visits (its epochs are ``0..n-1``).

  Args:
    num_examples: examples in the training source.
    batch_size: the training pipeline's batch size.
    num_steps: number of training steps.
    drop_remainder: the training pipeline's setting (``kdjax.runs`` drops).

  Returns:
    ``ceil(num_steps / batches_per_epoch)``; pass ``epochs=range(n)`` to
    :func:`build_cache` for an augmented pipeline.

  Examples:
    >>> epochs_needed(4000, batch_size=100, num_steps=3000)
    75
  """
  per_epoch = kdata.batches_per_epoch(num_examples, batch_size, drop_remainder)
  return max(1, math.ceil(num_steps / per_epoch))


def _pipeline_key(seed: int, transform: Any) -> str:
  """What fixes a pipeline's inputs: nothing without augmentation, else (seed, transform)."""
  if transform is None:
    return 'transform=None'
  return f'seed={int(seed)}, transform={transform!r}'


def _is_batches(data: Any) -> bool:
  """True for an iterable of batches, False for a random-access source of examples."""
  if not (hasattr(data, '__len__') and hasattr(data, '__getitem__')):
    return True
  if isinstance(data, Mapping):
    raise ValueError('`data` must be a source of examples or an iterable of batches, got a '
                     'single dict.')
  if len(data) == 0:
    raise ValueError('`data` is empty.')
  first = data[0]
  return isinstance(first, Mapping) and np.ndim(first.get('id', 0)) == 1


def _source_batches(source, *, epochs, batch_size, seed, transform):
  """The batches of ``epochs`` of an unshuffled, padded pipeline over ``source``."""
  ds = kdata.make_pipeline(source, batch_size=batch_size, seed=seed, shuffle=False,
                           drop_remainder=False, transform=transform)
  per_epoch = kdata.batches_per_epoch(len(source), batch_size, drop_remainder=False)
  for epoch in epochs:
    it = iter(ds)
    it.set_state({'next_index': int(epoch) * per_epoch})  # jump to the epoch's first batch
    for _ in range(per_epoch):
      batch = next(it)
      assert int(batch['epoch'][0]) == epoch, (batch['epoch'][0], epoch)
      yield batch


def _check_epochs(epochs) -> Optional[tuple[int, ...]]:
  if epochs is None:
    return None
  if isinstance(epochs, (int, np.integer)):
    raise ValueError(f'`epochs` must be a sequence of epoch numbers (e.g. range({epochs})), '
                     f'got the int {epochs}.')
  epochs = tuple(int(e) for e in epochs)
  if not epochs or min(epochs) < 0 or len(set(epochs)) != len(epochs):
    raise ValueError(f'`epochs` must be distinct epoch numbers >= 0, got {epochs}.')
  return epochs


def _collect(teacher, teacher_variables, data, encode: Callable[[ModelOutput], dict], *,
             epochs, batch_size, seed, transform, num_ids):
  """Runs ``encode(teacher(x))`` over ``data``; returns ``(tables, filled, epochs, pipeline)``."""
  epochs = _check_epochs(epochs)
  forward = as_forward(teacher)
  if _is_batches(data):
    if transform is not None:
      raise ValueError('`transform` applies to a source; batches are used as they are.')
    batches, pipeline = data, None
  else:
    if transform is not None and epochs is None:
      raise ValueError(
          'With a `transform` every epoch sees another view of each example, so the cache '
          'must be keyed by (epoch, id): pass `epochs` (e.g. range(epochs_needed(...))).')
    if batch_size <= 0:
      raise ValueError(f'`batch_size` must be positive, got {batch_size}.')
    batches = _source_batches(data, epochs=epochs if epochs is not None else (0,),
                              batch_size=batch_size, seed=seed, transform=transform)
    pipeline = _pipeline_key(seed, transform)

  @jax.jit
  def run(variables, x):
    return encode(forward(variables, x, train=False))

  ids_all, slots_all, rows_all = [], [], []
  slot_of = {e: j for j, e in enumerate(epochs)} if epochs is not None else None
  first_epoch = None
  for batch in batches:
    if pipeline is None and 'epoch' in batch:
      # Batches in pipeline order: stop after the first epoch (id-keyed) or the last cached
      # one, so that an endless training pipeline can be passed as it is.
      epoch = int(np.max(batch['epoch']))
      first_epoch = epoch if first_epoch is None else first_epoch
      if (epoch != first_epoch) if epochs is None else (epoch > max(epochs)):
        break
    ids = np.asarray(batch['id']).reshape(-1).astype(np.int64)
    keep = ids >= 0
    if 'mask' in batch:
      keep &= np.asarray(batch['mask']).reshape(-1).astype(bool)
    if slot_of is not None:
      if 'epoch' not in batch:
        raise ValueError('An epoch-keyed cache needs batches with an "epoch" key.')
      ep = np.broadcast_to(np.asarray(batch['epoch']).reshape(-1), ids.shape)
      keep &= np.isin(ep, epochs)
      slots = np.asarray([slot_of.get(int(e), -1) for e in ep], np.int64)
    else:
      slots = np.zeros_like(ids)
    if not keep.any():
      continue
    out = jax.device_get(run(teacher_variables, batch['x']))
    ids_all.append(ids[keep])
    slots_all.append(slots[keep])
    rows_all.append({k: np.asarray(v)[keep] for k, v in out.items()})
  if not ids_all:
    raise ValueError('`data` produced no valid rows (all ids < 0, masked, or in other epochs).')
  ids = np.concatenate(ids_all)
  slots = np.concatenate(slots_all)
  n = int(ids.max()) + 1 if num_ids is None else int(num_ids)
  if ids.max() >= n:
    raise ValueError(f'`num_ids` is {n} but the data has id {int(ids.max())}.')
  num_slots = 1 if epochs is None else len(epochs)
  flat = ids * num_slots + slots
  unique, counts = np.unique(flat, return_counts=True)
  if (counts > 1).any():
    dup = int(unique[np.argmax(counts > 1)])
    where = f'id {dup // num_slots}' + (
        f' in epoch {epochs[dup % num_slots]}' if epochs is not None else '')
    raise ValueError(
        f'{where} appears more than once in `data`. Pass one pass over the data (a pipeline '
        'with num_epochs=1) for an id-keyed cache, or `epochs=` if the inputs are augmented '
        '(each epoch is then another view).')
  filled = np.zeros((n, num_slots), bool)
  filled[ids, slots] = True
  tables = {}
  for key in rows_all[0]:
    rows = np.concatenate([r[key] for r in rows_all])
    table = np.zeros((n, num_slots) + rows.shape[1:], rows.dtype)
    table[ids, slots] = rows
    tables[key] = table if epochs is not None else table[:, 0]
  filled = filled if epochs is not None else filled[:, 0]
  return tables, filled, epochs, pipeline


def _topk_encode(logits: jax.Array, k: int, temperature: float) -> dict:
  """``{'values', 'indices', 'tail_logsumexp'}`` of ``[..., C]`` logits (see TopKCache)."""
  values, indices = jax.lax.top_k(logits, k)
  z = logits / temperature
  top = jnp.put_along_axis(jnp.zeros(z.shape, jnp.bool_), indices, True, axis=-1,
                           inplace=False)
  tail = jax.nn.logsumexp(jnp.where(top, -jnp.inf, z), axis=-1)
  return {'values': values, 'indices': indices.astype(jnp.int32), 'tail_logsumexp': tail}


def _check_topk_options(k, num_classes, temperature, target) -> None:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
    raise ValueError(f'`k` must be an int in 1..{num_classes} (the number of classes), got {k!r}.')
  if not temperature > 0:
    raise ValueError(f'`temperature` must be > 0, got {temperature}.')
  if target not in TARGETS:
    raise ValueError(f'`target` must be one of {TARGETS}, got {target!r}.')


# ----------------------------------------------------------------- building

def build_cache(
    teacher: Any,
    teacher_variables: Mapping[str, Any],
    data: Any,
    *,
    epochs: Optional[Sequence[int]] = None,
    batch_size: int = 256,
    seed: int = 0,
    transform: Optional[Callable] = None,
    features: Sequence[str] = (),
    num_ids: Optional[int] = None,
) -> TeacherCache:
  """Runs the teacher (eval mode) once over the data and stores its logits by id.

  Args:
    teacher: the teacher's forward function or Linen module.
    teacher_variables: its variables.
    data: a random-access source of examples (``kdjax.data.load``,
      ``transfer_set``, a list of example dicts), read in order by an
      unshuffled pipeline of ``batch_size``; or a finite iterable of batches
      (``'x'``, ``'id'``, optional ``'mask'`` and ``'epoch'``), e.g. a
      ``make_pipeline(..., num_epochs=1)`` dataset, used as they are.
    epochs: ``None``: key by id only, which is valid for every epoch when the
      inputs are not augmented (the caller asserts this when passing batches).
      A sequence of epochs: key by ``(epoch, id)``; with a source, each
      epoch's views are recomputed with ``transform`` and ``seed`` exactly as
      the training pipeline makes them (views do not depend on the order or
      the batch size); with batches, rows of other epochs are ignored.
      Batches with an ``'epoch'`` key are read in pipeline order up to the end
      of the first epoch (id-keyed) or of the last cached epoch, so the
      (endless) training pipeline itself can be passed; with
      ``drop_remainder`` its epochs leave out a few examples, whose lookups
      then miss (a source has no such gap).
    batch_size: teacher batch size when reading a source.
    seed: the training pipeline's seed (it fixes the augmented views).
    transform: the training pipeline's augmentation (requires ``epochs``).
    features: names of teacher features to cache too (for feature terms).
    num_ids: rows of the cache (default: the largest id + 1).

  Returns:
    A :class:`TeacherCache` on the default device.

  Raises:
    ValueError: for a ``transform`` without ``epochs``, an (epoch, id) seen
      twice, an unknown feature, or data without valid rows.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from kdjax.models import function_forward
    >>> teacher = function_forward(lambda p, x: x @ p['w'])
    >>> src = [{'x': np.float32([i, 1]), 'id': np.int32(i)} for i in range(3)]
    >>> cache = build_cache(teacher, {'params': {'w': jnp.eye(2)}}, src, batch_size=2)
    >>> cache.logits.tolist(), cache.filled.tolist()
    ([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]], [True, True, True])
  """
  features = tuple(features)

  def encode(out: ModelOutput) -> dict:
    missing = [f for f in features if f not in out.features]
    if missing:
      raise ValueError(f'The teacher has no feature(s) {missing}; available: '
                       f'{sorted(out.features)}.')
    return {'logits': out.logits, **{f'feature/{f}': out.features[f] for f in features}}

  tables, filled, epochs, pipeline = _collect(
      teacher, teacher_variables, data, encode, epochs=epochs, batch_size=batch_size,
      seed=seed, transform=transform, num_ids=num_ids)
  return TeacherCache(
      logits=jnp.asarray(tables['logits']),
      features={f: jnp.asarray(tables[f'feature/{f}']) for f in features},
      filled=jnp.asarray(filled), epochs=epochs, pipeline=pipeline)


def build_topk_cache(
    teacher: Any,
    teacher_variables: Mapping[str, Any],
    data: Any,
    *,
    k: int,
    temperature: float = 1.0,
    target: str = 'topk',
    epochs: Optional[Sequence[int]] = None,
    batch_size: int = 256,
    seed: int = 0,
    transform: Optional[Callable] = None,
    num_ids: Optional[int] = None,
) -> TopKCache:
  """Like :func:`build_cache`, keeping only each row's top-k logits (never the full ``[N, C]``).

  Args:
    teacher: the teacher's forward function or Linen module.
    teacher_variables: its variables.
    data: a source or batches, as in :func:`build_cache`.
    k: logits kept per example, ``1..C``.
    temperature: the τ of the distillation term that will use the cache.
    target: ``'topk'`` or ``'renormalized'`` (see :class:`TopKCache`).
    epochs: as in :func:`build_cache`.
    batch_size: as in :func:`build_cache`.
    seed: as in :func:`build_cache`.
    transform: as in :func:`build_cache`.
    num_ids: as in :func:`build_cache`.

  Returns:
    A :class:`TopKCache`.

  Raises:
    ValueError: for a bad ``k``, ``temperature`` or ``target``, and as
      :func:`build_cache`.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from kdjax.models import function_forward
    >>> teacher = function_forward(lambda p, x: x @ p['w'])
    >>> src = [{'x': np.float32([i, 1, 0]), 'id': np.int32(i)} for i in range(3)]
    >>> cache = build_topk_cache(teacher, {'params': {'w': jnp.eye(3)}}, src, k=1)
    >>> cache.values[:, 0].tolist(), cache.indices[:, 0].tolist()
    ([1.0, 1.0, 2.0], [1, 0, 0])
  """
  if not temperature > 0:
    raise ValueError(f'`temperature` must be > 0, got {temperature}.')
  num_classes = []

  def encode(out: ModelOutput) -> dict:
    c = out.logits.shape[-1]
    _check_topk_options(k, c, temperature, target)
    num_classes.append(c)
    return _topk_encode(out.logits, int(k), temperature)

  tables, filled, epochs, pipeline = _collect(
      teacher, teacher_variables, data, encode, epochs=epochs, batch_size=batch_size,
      seed=seed, transform=transform, num_ids=num_ids)
  return TopKCache(
      values=jnp.asarray(tables['values']), indices=jnp.asarray(tables['indices']),
      tail_logsumexp=jnp.asarray(tables['tail_logsumexp']), filled=jnp.asarray(filled),
      num_classes=num_classes[0], temperature=float(temperature), target=target,
      epochs=epochs, pipeline=pipeline)


def to_topk(cache: TeacherCache, k: int, *, temperature: float = 1.0,
            target: str = 'topk') -> TopKCache:
  """Sparsifies a full cache: the same entries with only their top-k logits.

  Args:
    cache: a :class:`TeacherCache`.
    k: logits kept per example, ``1..C``.
    temperature: the τ of the distillation term that will use the cache.
    target: ``'topk'`` or ``'renormalized'`` (see :class:`TopKCache`).

  Returns:
    A :class:`TopKCache` with the same keys (ids, epochs, filled entries).

  Raises:
    ValueError: for a bad ``k``, ``temperature`` or ``target``.

  Examples:
    >>> import jax.numpy as jnp
    >>> full = TeacherCache(logits=jnp.array([[0.0, 3.0, 1.0]]), features={},
    ...                     filled=jnp.array([True]))
    >>> sparse = to_topk(full, 2)
    >>> sparse.values.tolist(), sparse.indices.tolist(), sparse.tail_logsumexp.tolist()
    ([[3.0, 1.0]], [[1, 2]], [0.0])
    >>> sparse.nbytes, full.nbytes  # 2 logits + 2 indices + 1 tail vs 3 logits (+ flags)
    (21, 13)
  """
  _check_topk_options(k, cache.num_classes, temperature, target)
  enc = jax.jit(lambda z: _topk_encode(z, int(k), temperature))(cache.logits)
  return TopKCache(values=enc['values'], indices=enc['indices'],
                   tail_logsumexp=enc['tail_logsumexp'], filled=cache.filled,
                   num_classes=cache.num_classes, temperature=float(temperature),
                   target=target, epochs=cache.epochs, pipeline=cache.pipeline)


# ------------------------------------------------------------------ lookups

def dense_target_logits(values: jax.Array, indices: jax.Array, tail_logsumexp: jax.Array, *,
                        num_classes: int, temperature: float,
                        target: str = 'topk') -> jax.Array:
  r"""Dense logits ``z̃`` whose tempered softmax is the top-k target ``ρ``.

  With ``p = softmax(t/τ)`` rebuilt from the stored top-k logits ``v`` and the
  tail log-mass ``L`` (``log Z = logaddexp(logsumexp(v/τ), L)``):

  * ``'topk'`` (KD-topk, Tang et al. 2020): ``ρ_c = p_c`` on the top-k
    classes, ``ρ_c = exp(L − log Z)/(C − k)`` elsewhere;
  * ``'renormalized'``: ``ρ_c = p_c / Σ_{top-k} p`` on the top-k classes, 0
    elsewhere (represented by a very negative finite logit).

  ``z̃ = τ · log ρ``, so ``kl_distillation(s, z̃, temperature=τ)`` is
  ``τ² · KL(ρ ‖ softmax(s/τ))``: with ``'topk'`` it equals
  ``topk_distillation(s, t, k=k, temperature=τ)``, and with ``k = C`` it equals
  ``kl_distillation(s, t, temperature=τ)`` (``z̃`` is then ``t`` shifted by a
  constant). The target is exact at this τ only.

  Args:
    values: ``[..., k]`` top-k teacher logits.
    indices: ``[..., k]`` their classes.
    tail_logsumexp: ``[...]`` ``log Σ_{c ∉ top-k} exp(t_c/τ)``.
    num_classes: ``C``.
    temperature: τ > 0.
    target: ``'topk'`` or ``'renormalized'``.

  Returns:
    ``[..., C]`` target logits, in the dtype of ``values`` (at least float32).

  References:
    Tang, Shivanna, Zhao, Lin, Singh, Chi & Jain, "Understanding and Improving
    Knowledge Distillation", arXiv:2002.03532, 2020 (§5, KD-topk).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> t = jnp.log(jnp.array([[0.5, 0.3, 0.1, 0.1]]))
    >>> z = dense_target_logits(t[:, :2], jnp.array([[0, 1]]),
    ...                         jax.nn.logsumexp(t[:, 2:], axis=-1), num_classes=4,
    ...                         temperature=1.0)
    >>> jnp.round(jax.nn.softmax(z), 3)
    Array([[0.5, 0.3, 0.1, 0.1]], dtype=float32)
  """
  _check_topk_options(values.shape[-1], num_classes, temperature, target)
  values = jnp.asarray(values)
  dtype = jnp.promote_types(values.dtype, jnp.float32)
  z = values.astype(dtype) / temperature
  k = z.shape[-1]
  top_lse = jax.nn.logsumexp(z, axis=-1)
  # A very negative finite log-probability that stays finite after multiplying by τ.
  floor = float(jnp.finfo(dtype).min) / (4.0 * max(float(temperature), 1.0))
  if target == 'topk':
    log_z = jnp.logaddexp(top_lse, jnp.asarray(tail_logsumexp, dtype))
    log_top = z - log_z[..., None]
    if k < num_classes:
      log_rest = jnp.asarray(tail_logsumexp, dtype) - log_z - math.log(num_classes - k)
    else:
      log_rest = jnp.full(log_z.shape, floor, dtype)
  else:
    log_top = z - top_lse[..., None]
    log_rest = jnp.full(top_lse.shape, floor, dtype)
  dense = jnp.broadcast_to(log_rest[..., None], z.shape[:-1] + (num_classes,))
  dense = jnp.put_along_axis(dense, jnp.asarray(indices), log_top, axis=-1, inplace=False)
  return temperature * jnp.maximum(dense, floor)


def _locate(cache: Cache, batch: Mapping[str, Any], xp=jnp):
  """``(index, valid, hit)`` of a batch's rows in ``cache`` (``xp``: jnp in-graph, np on host)."""
  ids = xp.asarray(batch['id']).astype(xp.int32)
  valid = ids >= 0
  if 'mask' in batch:
    valid = valid & xp.asarray(batch['mask']).astype(bool)
  filled = cache.filled if xp is jnp else np.asarray(cache.filled)
  n = filled.shape[0]
  ok = valid & (ids < n)
  safe = xp.clip(ids, 0, n - 1)
  if cache.epochs is None:
    index = (safe,)
  else:
    if 'epoch' not in batch:
      raise ValueError('The cache is keyed by (epoch, id) but the batch has no "epoch" key.')
    epoch = xp.broadcast_to(xp.asarray(batch['epoch']).astype(xp.int32), ids.shape)
    match = epoch[..., None] == xp.asarray(cache.epochs, xp.int32)
    ok = ok & match.any(axis=-1)
    index = (safe, xp.argmax(match, axis=-1))
  hit = ok & filled[index]
  return index, valid, hit


def _fill_rows(rows: jax.Array, valid: jax.Array, hit: jax.Array) -> jax.Array:
  """Cached rows where hit, NaN on missing valid rows, 0 on padded rows."""
  shape = hit.shape + (1,) * (rows.ndim - hit.ndim)
  missing = jnp.where(valid.reshape(shape), jnp.nan, 0.0).astype(rows.dtype)
  return jnp.where(hit.reshape(shape), rows, missing)


def lookup(cache: Cache, batch: Mapping[str, Any]) -> ModelOutput:
  """The teacher's outputs for a batch, read from the cache (works under ``jit``).

  Rows are found by ``batch['id']`` (and ``batch['epoch']`` for an
  epoch-keyed cache). A padded row (``id < 0`` or ``mask`` False) gets zeros;
  a valid row that is not in the cache gets NaN, never another entry (use
  :func:`count_misses` or :func:`check_batch` to detect it).

  Args:
    cache: a :class:`TeacherCache` or :class:`TopKCache`.
    batch: a batch with ``'id'`` (``[B]`` int), optionally ``'mask'`` and
      ``'epoch'``.

  Returns:
    A ``ModelOutput``: the cached logits ``[B, C]`` and features, or for a
    :class:`TopKCache` the dense target logits of :func:`dense_target_logits`
    (no features).

  Raises:
    ValueError: if an epoch-keyed cache gets a batch without ``'epoch'``.

  Examples:
    >>> import jax.numpy as jnp
    >>> cache = TeacherCache(logits=jnp.array([[1.0, 2.0], [3.0, 4.0]]), features={},
    ...                      filled=jnp.array([True, False]))
    >>> lookup(cache, {'id': jnp.array([0, 1, -1])}).logits
    Array([[ 1.,  2.],
           [nan, nan],
           [ 0.,  0.]], dtype=float32)
  """
  index, valid, hit = _locate(cache, batch)
  if isinstance(cache, TopKCache):
    logits = dense_target_logits(cache.values[index], cache.indices[index],
                                 cache.tail_logsumexp[index], num_classes=cache.num_classes,
                                 temperature=cache.temperature, target=cache.target)
    return ModelOutput(_fill_rows(logits, valid, hit), {}, {})
  features = {k: _fill_rows(v[index], valid, hit) for k, v in cache.features.items()}
  return ModelOutput(_fill_rows(cache.logits[index], valid, hit), features, {})


def count_misses(cache: Cache, batch: Mapping[str, Any]) -> jax.Array:
  """Number of valid rows of ``batch`` that the cache does not hold (works under ``jit``).

  Examples:
    >>> import jax.numpy as jnp
    >>> cache = TeacherCache(logits=jnp.zeros((2, 3)), features={},
    ...                      filled=jnp.array([True, False]))
    >>> int(count_misses(cache, {'id': jnp.array([0, 1, 5, -1])}))
    2
  """
  _, valid, hit = _locate(cache, batch)
  return jnp.sum(valid & ~hit).astype(jnp.int32)


def _as_dict(caches) -> dict[str, Cache]:
  if isinstance(caches, (TeacherCache, TopKCache)):
    return {steps.DEFAULT_TEACHER: caches}
  if isinstance(caches, Mapping):
    return dict(caches)
  raise ValueError(f'Expected a TeacherCache, a TopKCache or a dict of them, got {type(caches)}.')


def check_batch(caches: Union[Cache, Mapping[str, Cache]], batch: Mapping[str, Any]) -> None:
  """Raises :class:`CacheMissError` on the host if a batch row is not cached.

  Args:
    caches: a cache or ``{teacher_name: cache}``.
    batch: a host batch (NumPy arrays) from the training pipeline.

  Raises:
    CacheMissError: naming the first missing ``(epoch, id)`` entries.

  Examples:
    >>> import numpy as np, jax.numpy as jnp
    >>> cache = TeacherCache(logits=jnp.zeros((2, 1, 3)), features={},
    ...                      filled=jnp.ones((2, 1), bool), epochs=(0,))
    >>> check_batch(cache, {'id': np.array([0, 1]), 'epoch': np.array([0, 0])})
    >>> check_batch(cache, {'id': np.array([0, 1]), 'epoch': np.array([1, 1])})
    Traceback (most recent call last):
    ...
    kdjax.cache.CacheMissError: 2 of 2 rows of the batch are not in cache 'teacher' ...
  """
  for name, cache in _as_dict(caches).items():
    _, valid, hit = _locate(cache, batch, xp=np)
    miss = valid & ~hit
    if miss.any():
      ids = np.asarray(batch['id']).reshape(-1)[miss.reshape(-1)][:5].tolist()
      if cache.epochs is None:
        which, cover = f'ids {ids}', 'It is keyed by id.'
      else:
        ep = np.broadcast_to(np.asarray(batch['epoch']), np.shape(batch['id']))
        which = f'(epoch, id) {list(zip(ep.reshape(-1)[miss.reshape(-1)][:5].tolist(), ids))}'
        cover = (f'It holds epochs {cache.epochs[0]}..{cache.epochs[-1]} '
                 f'({len(cache.epochs)} epochs); build it for every epoch the run visits '
                 '(kdjax.cache.epochs_needed).')
      raise CacheMissError(
          f'{int(miss.sum())} of {miss.size} rows of the batch are not in cache {name!r} '
          f'(first: {which}). {cover}')


def check_pipeline(caches: Union[Cache, Mapping[str, Cache]], *, seed: int,
                   transform: Optional[Callable] = None) -> None:
  """Checks that caches match the training pipeline's augmentation.

  Args:
    caches: a cache or ``{teacher_name: cache}``.
    seed: the training pipeline's seed.
    transform: its augmentation (``None``: none).

  Raises:
    ValueError: if the pipeline augments but a cache is keyed by id only (its
      entries would be stale views), or a cache built from a source used
      another seed or transform.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.data import SequenceAugment
    >>> cache = TeacherCache(logits=jnp.zeros((2, 3)), features={}, filled=jnp.ones(2, bool),
    ...                      pipeline='transform=None')
    >>> check_pipeline(cache, seed=0)
    >>> check_pipeline(cache, seed=0, transform=SequenceAugment())
    Traceback (most recent call last):
    ...
    ValueError: Cache 'teacher' is keyed by id only, but the pipeline augments ...
  """
  want = _pipeline_key(seed, transform)
  for name, cache in _as_dict(caches).items():
    if transform is not None and cache.epochs is None:
      raise ValueError(
          f'Cache {name!r} is keyed by id only, but the pipeline augments its inputs: every '
          'epoch shows another view, so its entries would be stale. Build it with '
          '`epochs=` and the same `seed` and `transform`.')
    if cache.pipeline is not None and cache.pipeline != want:
      raise ValueError(f'Cache {name!r} was built for the pipeline ({cache.pipeline}), but '
                       f'training uses ({want}).')


# -------------------------------------------------------------------- steps

def _cached_forward(variables, x, *, train, rngs=None) -> ModelOutput:
  """A "teacher" whose output was looked up before the step (``variables`` is it)."""
  del x, train, rngs
  return variables


def make_cached_distill_step(terms: Sequence[steps.Term],
                             teacher_names: Optional[Sequence[str]] = None, *,
                             axis_name: Optional[str] = None, skip_nonfinite: bool = True):
  """:func:`kdjax.steps.make_distill_step` with teachers read from caches.

  The teachers' outputs are looked up by the batch's ids (and epochs) and fed
  to the engine's own step as fixed teacher outputs, so the objective, the
  gradient, the non-finite guard and the metrics are those of the uncached
  step. A batch with a row missing from a cache leaves the state unchanged
  (``metrics['skipped'] = 1``) whatever ``skip_nonfinite`` says, and
  ``metrics['cache_misses']`` counts such rows, and :func:`kdjax.train.fit`
  stops with :class:`CacheMissError` at the end of the chunk (no host sync per
  step). In a hand-written loop, wrap the jitted step with :func:`checked` to
  raise before the step instead.

  With a :class:`TopKCache`, teacher terms see the dense target logits of
  :func:`dense_target_logits`: ``soft_kd(temperature=cache.temperature)`` then
  distils the KD-topk (or renormalised) target exactly.

  Args:
    terms: the objective, as for ``make_distill_step``.
    teacher_names: ``None`` for one teacher (the step takes one cache), or
      the names of several (the step takes ``{name: cache}``).
    axis_name: as for ``make_distill_step``.
    skip_nonfinite: as for ``make_distill_step``.

  Returns:
    ``step(state, caches, batch, rng) -> (state, metrics)``; ``batch`` needs
    ``'id'`` (and ``'epoch'`` for epoch-keyed caches).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> from kdjax.state import TrainState
    >>> from kdjax.steps import soft_kd
    >>> state = TrainState.create(apply_fn=function_forward(lambda p, x: x @ p['w']),
    ...                           variables={'params': {'w': jnp.zeros((2, 3))}},
    ...                           tx=optax.sgd(0.1))
    >>> cache = TeacherCache(logits=jnp.eye(3)[:2] * 5, features={}, filled=jnp.ones(2, bool))
    >>> step = jax.jit(make_cached_distill_step([soft_kd(temperature=2.0)]))
    >>> batch = {'x': jnp.eye(2), 'id': jnp.array([0, 1])}
    >>> state, metrics = step(state, cache, batch, jax.random.key(0))
    >>> int(state.step), int(metrics['cache_misses'])
    (1, 0)
  """
  single = teacher_names is None
  names = (steps.DEFAULT_TEACHER,) if single else tuple(teacher_names)
  if not names or len(set(names)) != len(names):
    raise ValueError(f'`teacher_names` must be distinct names, got {teacher_names!r}.')
  inner = steps.make_distill_step(
      terms, _cached_forward if single else {n: _cached_forward for n in names},
      axis_name=axis_name, skip_nonfinite=skip_nonfinite)

  def step(state, caches, batch, rng):
    if caches is None:
      raise ValueError('`caches` is None: pass the TeacherCache/TopKCache where the teacher '
                       'variables would go.')
    by_name = _as_dict(caches) if single else dict(caches)
    if set(by_name) != set(names):
      raise ValueError(f'Expected caches for {list(names)}, got {sorted(by_name)}.')
    outs = {n: lookup(by_name[n], batch) for n in names}
    misses = sum(count_misses(by_name[n], batch) for n in names)
    if axis_name is not None:
      misses = jax.lax.psum(misses, axis_name)
    # The miss predicate joins the non-finite guard: one select over the state.
    new_state, metrics = inner(state, outs[names[0]] if single else outs, batch, rng,
                               ok=misses == 0)
    metrics['cache_misses'] = misses
    return new_state, metrics

  return step


def checked(step: Callable) -> Callable:
  """Wraps a (jitted) cached step to raise :class:`CacheMissError` on the host.

  Each call first runs :func:`check_batch` on the host batch, then the step:
  one host read of the cache's ``filled`` table per call, which is why
  :func:`kdjax.train.fit` does not need it (it checks the step's
  ``cache_misses`` metric once per compiled chunk).

  Args:
    step: ``step(state, caches, batch, rng)``, e.g. a jitted
      :func:`make_cached_distill_step`.

  Returns:
    The same function, raising before any computation on a miss.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> cache = TeacherCache(logits=jnp.zeros((2, 3)), features={}, filled=jnp.ones(2, bool))
    >>> run = checked(lambda state, caches, batch, rng: 'ran')
    >>> run(None, cache, {'id': np.array([0, 1])}, None)
    'ran'
  """

  def run(state, caches, batch, rng):
    check_batch(caches, batch)
    return step(state, caches, batch, rng)

  return run
