"""Cohorts of peers trained together: deep mutual learning in one jitted step.

A cohort of ``K`` peers lives in one pytree, :class:`CohortState`:

* **Same architecture** (the fast path): the peers' variables and optimizer
  states are stacked on a leading axis of size ``K`` (one
  :class:`~kdjax.state.TrainState` whose leaves are ``[K, ...]``, built with
  ``jax.vmap``; see :func:`init_cohort` and :func:`stack`). The step runs all
  ``K`` forward and backward passes with ``jax.vmap``: no Python loop over
  peers, one XLA program whose size does not grow with ``K``.
* **Different architectures** (e.g. a CNN and an MLP, as in the DML paper's
  experiments): ``peers`` is a tuple of ``TrainState`` s. The step loops over
  the tuple in Python *at trace time*; the loop is unrolled inside the one
  jitted program, so it still runs as a single compiled step.

On CPU, ``jax.vmap`` over convnet peers is slow: XLA:CPU runs the resulting
grouped convolutions (and their weight gradients) far slower than plain ones.
``make_cohort_step(unroll_peers=True)`` keeps the stacked state but unrolls the
peers inside the jitted step; dense models (MLPs) vmap well.

:func:`make_cohort_step` implements deep mutual learning (DML): peer ``k``
minimises ``CE(y, z_k) + 1/(K−1) Σ_{l≠k} τ²·KL(p_l ‖ q_k)``, where the other
peers' predictions ``p_l`` are held constant (``stop_gradient`` on the
``target_logits`` of :func:`kdjax.losses.mutual_kl`). All peers are updated from
the same batch at once; each receives exactly the gradient of its own loss
with the others' outputs fixed (no leak of gradients between peers).

References:
  Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018,
  arXiv:1706.00384.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import _evaluation
from kdjax import _update
from kdjax import losses
from kdjax._update import batch_mean
from kdjax.losses import _checks
from kdjax.models._wrap import as_forward
from kdjax.models._wrap import init_variables
from kdjax.state import TrainState


Peers = Union[TrainState, tuple]


# --------------------------------------------------------------- pytrees

def stack(trees: Sequence[Any]) -> Any:
  """Stacks ``K`` pytrees of the same structure on a new leading axis.

  Args:
    trees: a non-empty sequence of pytrees with identical structure, leaf
      shapes and static fields (e.g. ``TrainState`` s with the same
      ``apply_fn`` and ``tx``).

  Returns:
    One pytree whose leaves are ``[K, *leaf.shape]``.

  Raises:
    ValueError: if ``trees`` is empty, or the structures or leaf shapes differ.

  Examples:
    >>> import jax.numpy as jnp
    >>> out = stack([{'w': jnp.zeros(2)}, {'w': jnp.ones(2)}])
    >>> out['w']
    Array([[0., 0.],
           [1., 1.]], dtype=float32)
  """
  trees = list(trees)
  if not trees:
    raise ValueError('`trees` must contain at least one pytree.')
  first = jax.tree.structure(trees[0])
  for i, tree in enumerate(trees[1:], start=1):
    if jax.tree.structure(tree) != first:
      raise ValueError(
          f'`trees` must share one structure; tree {i} differs from tree 0. TrainStates '
          'stack only if they hold the same `apply_fn` and `tx` objects (create the optimizer '
          'once); for peers of different architectures use a tuple of states instead.')
    shapes = [jnp.shape(x) for x in jax.tree.leaves(tree)]
    if shapes != [jnp.shape(x) for x in jax.tree.leaves(trees[0])]:
      raise ValueError(f'`trees` must have equal leaf shapes; tree {i} differs from tree 0.')
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, num: Optional[int] = None) -> list:
  """Splits a stacked pytree into its ``K`` slices (the inverse of :func:`stack`).

  Args:
    tree: a pytree whose leaves share a leading axis of size ``K``.
    num: the expected ``K``; inferred from the leaves when ``None``.

  Returns:
    A list of ``K`` pytrees with leaves ``leaf[k]``.

  Raises:
    ValueError: if the leaves disagree on the leading size, a leaf is a
      scalar, or ``num`` does not match.

  Examples:
    >>> import jax.numpy as jnp
    >>> [t['w'].tolist() for t in unstack({'w': jnp.arange(4.0).reshape(2, 2)})]
    [[0.0, 1.0], [2.0, 3.0]]
  """
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(tree)}
  if None in sizes or len(sizes) > 1:
    raise ValueError(
        f'`tree` must have leaves with one shared leading (peer) axis, got leading sizes '
        f'{sorted(sizes, key=str)}.')
  size = sizes.pop() if sizes else 0
  if num is not None and num != size:
    raise ValueError(f'`num` is {num} but the leaves have a leading axis of {size}.')
  return [jax.tree.map(lambda x, k=k: x[k], tree) for k in range(size)]


def _check_peers(peers: Any) -> Peers:
  if isinstance(peers, TrainState):
    steps = jnp.shape(peers.step)
    if len(steps) != 1:
      raise ValueError(
          '`peers` as one TrainState must be stacked on a leading peer axis (its `step` has '
          f'shape [K]), got step shape {steps}; build it with `init_cohort` or `stack`.')
    unstack(peers)  # validates the shared leading axis
    return peers
  if isinstance(peers, Sequence) and not isinstance(peers, str):
    peers = tuple(peers)
    if not peers or not all(isinstance(p, TrainState) for p in peers):
      raise ValueError('`peers` as a sequence must hold one or more TrainStates.')
    for k, p in enumerate(peers):
      if jnp.ndim(p.step) != 0:
        raise ValueError(f'`peers[{k}]` must be an unstacked TrainState (scalar step).')
    return peers
  raise ValueError(
      f'`peers` must be a stacked TrainState or a sequence of TrainStates, got {type(peers)}.')


class CohortState(struct.PyTreeNode):
  """A cohort of peers as one pytree (checkpoint it like any train state).

  Attributes:
    step: scalar int32, the number of cohort updates (an update in which every
      peer was skipped for non-finite values does not count). This is what
      :func:`kdjax.train.fit` reads and resumes from.
    peers: either one ``TrainState`` stacked on a leading axis of size ``K``
      (same architecture) or a tuple of ``K`` ``TrainState`` s (different
      architectures). Each peer's own ``step`` counts its applied updates.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> fwd = function_forward(lambda p, x: x @ p['w'])
    >>> tx = optax.sgd(0.1)
    >>> peers = [TrainState.create(apply_fn=fwd, variables={'params': {'w': jnp.ones((2, 3))}},
    ...                            tx=tx) for _ in range(3)]
    >>> cohort = CohortState.create(stack(peers))
    >>> cohort.num_peers, cohort.stacked, cohort.peer(1).params['w'].shape
    (3, True, (2, 3))
  """
  step: jax.Array
  peers: Any

  @classmethod
  def create(cls, peers: Union[TrainState, Sequence[TrainState]]) -> 'CohortState':
    """Wraps a stacked ``TrainState`` or a sequence of ``TrainState`` s at step 0.

    Raises:
      ValueError: if ``peers`` is neither (or is empty, or a stacked state has
        no single leading peer axis).
    """
    return cls(step=jnp.zeros((), jnp.int32), peers=_check_peers(peers))

  @property
  def stacked(self) -> bool:
    """Whether the peers are stacked (same architecture)."""
    return isinstance(self.peers, TrainState)

  @property
  def num_peers(self) -> int:
    """``K``, the number of peers held in this (possibly sharded) state."""
    return self.peers.step.shape[0] if self.stacked else len(self.peers)

  def peer(self, k: int) -> TrainState:
    """Peer ``k`` as an ordinary, unstacked ``TrainState``."""
    if self.stacked:
      return jax.tree.map(lambda x: x[k], self.peers)
    return self.peers[k]


def init_cohort(model: Any, tx: optax.GradientTransformation, keys: jax.Array,
                sample_x: Any = None, *,
                init_fn: Optional[Callable[[jax.Array], Mapping[str, Any]]] = None
                ) -> CohortState:
  """Initialises ``K`` same-architecture peers, stacked, with ``jax.vmap``.

  Args:
    model: a Flax Linen module or a forward function (see ``kdjax.models``).
    tx: the optimizer shared by all peers (its state is stacked too).
    keys: ``[K]`` PRNG keys, one per peer (``jax.random.split(key, K)``).
    sample_x: a sample input batch, used to initialise a Linen ``model``.
    init_fn: ``key -> variables`` for one peer; required for a forward
      function, optional for a Linen module (default: ``init_variables(model,
      key, sample_x)``).

  Returns:
    A :class:`CohortState` whose peers' leaves are ``[K, ...]``.

  Raises:
    ValueError: if neither ``init_fn`` nor (a Linen module and ``sample_x``)
      is given, or ``keys`` is not a 1-D array of keys.

  Examples:
    A Linen module is initialised on ``sample_x``
    (``init_cohort(models.create('mlp'), tx, keys, x[:1])``); a forward function
    needs ``init_fn``:

    >>> import jax, optax
    >>> from kdjax.models import function_forward
    >>> init_fn = lambda key: {'params': {'w': jax.random.normal(key, (40, 10))}}
    >>> cohort = init_cohort(function_forward(lambda p, x: x @ p['w']), optax.adam(1e-3),
    ...                      jax.random.split(jax.random.key(0), 4), init_fn=init_fn)
    >>> cohort.num_peers, cohort.peers.params['w'].shape
    (4, (4, 40, 10))
    >>> cohort.peers.opt_state[0].mu['params']['w'].shape  # Adam's moments, stacked
    (4, 40, 10)
  """
  if init_fn is None:
    if not isinstance(model, nn.Module) or sample_x is None:
      raise ValueError(
          'Pass `init_fn` (key -> variables), or a Linen module `model` with `sample_x`.')
    init_fn = lambda key: init_variables(model, key, sample_x)  # noqa: E731
  if jnp.ndim(keys) != 1:
    raise ValueError(f'`keys` must be a 1-D array of K keys, got shape {jnp.shape(keys)}.')
  forward = as_forward(model)
  peers = jax.vmap(
      lambda key: TrainState.create(apply_fn=forward, variables=init_fn(key), tx=tx))(keys)
  return CohortState.create(peers)


# --------------------------------------------------------------- peer maps

def _map(fn: Callable, stacked: bool, *trees):
  """``fn`` on every peer: vmapped over stacked peers, unrolled over a tuple.

  A stack of one peer (``K = 1``, or one peer per device when peer-parallel)
  is run unbatched: a vmapped convolution becomes a grouped convolution,
  which XLA:CPU runs several times slower than a plain one.
  """
  if stacked:
    if jnp.shape(jax.tree.leaves(trees[0])[0])[0] == 1:
      out = fn(*jax.tree.map(lambda a: a[0], trees))
      return jax.tree.map(lambda a: a[None], out)
    return jax.vmap(fn)(*trees)
  return tuple(fn(*args) for args in zip(*trees))


def _vector(values, stacked: bool) -> jax.Array:
  """Per-peer scalars as a ``[K]`` array."""
  return values if stacked else jnp.stack(values)


class _PeerAxis:
  """Where this device's peers sit among all ``K`` (peer-parallel or not)."""

  def __init__(self, local: int, name: Optional[str]):
    self.name = name
    self.local = local
    self.shards = 1 if name is None else jax.lax.axis_size(name)
    self.total = local * self.shards
    self.offset = 0 if name is None else jax.lax.axis_index(name) * local

  def ids(self) -> jax.Array:
    return self.offset + jnp.arange(self.local)

  def gather(self, x: jax.Array) -> jax.Array:
    """``[local, ...]`` -> ``[K, ...]`` over the peer axis (varying; for the KL targets)."""
    if self.name is None:
      return x
    return jax.lax.all_gather(x, self.name, axis=0, tiled=True)

  def gather_exact(self, x: jax.Array) -> jax.Array:
    """``[local]`` -> ``[K]``, replicated over the peer axis (psum of disjoint slots)."""
    if self.name is None:
      return x
    full = jnp.zeros((self.total,) + x.shape[1:], x.dtype)
    return jax.lax.psum(jax.lax.dynamic_update_slice_in_dim(full, x, self.offset, 0), self.name)

  def from_first(self, x):
    """A value that every peer shard computed identically, marked replicated."""
    if self.name is None:
      return x
    first = jax.lax.axis_index(self.name) == 0
    return jax.tree.map(lambda v: jax.lax.psum(jnp.where(first, v, jnp.zeros_like(v)),
                                               self.name), x)


def _ensemble(all_logits: jax.Array, labels: jax.Array):
  """Per-example ``(correct, CE)`` of the mean of the peers' probabilities."""
  log_p = jax.nn.log_softmax(all_logits.astype(jnp.float32), axis=-1)  # [K, B, C]
  k = all_logits.shape[0]
  log_mean = jax.nn.logsumexp(log_p, axis=0) - jnp.log(float(k))  # [B, C]
  correct = (jnp.argmax(log_mean, axis=-1) == labels).astype(jnp.float32)
  nll = -jnp.take_along_axis(log_mean, labels[:, None], axis=-1)[:, 0]
  return correct, nll


def _check_batch(batch: Mapping[str, Any]):
  if 'x' not in batch:
    raise ValueError(f'`batch` must have an "x" entry, got keys {sorted(batch)}.')
  if 'label' not in batch:
    raise ValueError(
        '`batch` must have a "label" entry: deep mutual learning trains every peer on the '
        f'task cross-entropy; got keys {sorted(batch)}.')


# --------------------------------------------------------------- train step

def make_cohort_step(*, temperature: float = 1.0, ce_weight: float = 1.0,
                     kl_weight: float = 1.0, label_smoothing: float = 0.0,
                     axis_name: Optional[str] = None, peer_axis_name: Optional[str] = None,
                     skip_nonfinite: bool = True, per_peer_metrics: bool = True,
                     unroll_peers: bool = False):
  """Builds the deep-mutual-learning step that updates all ``K`` peers at once.

  Peer ``k`` with logits ``z_k`` minimises, averaged over the batch,

  ``L_k = ce_weight · CE(y, z_k) + kl_weight · 1/(K−1) Σ_{l≠k} τ²·KL(p_l ‖ q_k)``

  with ``q_k = softmax(z_k/τ)`` and ``p_l = softmax(stop_gradient(z_l)/τ)``
  (:func:`kdjax.losses.mutual_kl` over the ``[K, B, C]`` logits). The step
  differentiates ``Σ_k L_k``; since the targets are constants and the peers'
  parameters are disjoint, peer ``k`` receives exactly ``∇L_k`` (the gradient
  of its own loss computed alone with the other peers' outputs fixed), as in
  Algorithm 1 of the paper, except that all peers are updated from the same
  predictions at once rather than one after another. With ``K = 1`` the KL
  term is zero (plain supervised training).

  Stacked peers run under ``jax.vmap`` (no Python loop over peers); a tuple of
  peers of different architectures is unrolled at trace time inside the same
  jitted program.

  Args:
    temperature: softmax temperature τ of the mutual KL (DML uses 1).
    ce_weight: weight of each peer's task cross-entropy.
    kl_weight: weight of each peer's mean KL to the other peers.
    label_smoothing: label smoothing of the cross-entropy.
    axis_name: the data-parallel device axis (``jax.pmap`` / ``jax.shard_map``
      over batch shards). Means are exact over the global batch (sums and
      counts are psum'd separately), gradients are psum'd, and floating
      non-parameter state (BatchNorm statistics) is averaged over the axis so
      that replicas stay identical. Leave ``None`` under ``jax.jit`` with
      sharded inputs.
    peer_axis_name: the peer-parallel device axis of ``jax.shard_map``: the
      stacked peer axis is split over it, each device holds ``K / n`` peers,
      and logits are exchanged with ``jax.lax.all_gather(..., tiled=True)``
      for the mutual KL. Stacked peers only.
    skip_nonfinite: per-peer guard: a peer whose loss or gradients are
      non-finite keeps its old state (parameters, optimizer state, step);
      the other peers are still updated. Note that a peer whose *outputs* are
      non-finite makes the others' KL targets non-finite too, so then every
      peer is skipped. The cohort's ``step`` advances unless all peers were
      skipped.
    per_peer_metrics: also report the ``<name>/k`` metrics of every peer.
      Each is one more output buffer of the compiled step; for tiny models
      and large ``K``, ``False`` (cohort summaries only) saves some time.
    unroll_peers: run stacked peers with a trace-time loop (as a tuple
      cohort, inside the same jitted step) instead of ``jax.vmap``; the state
      stays stacked and the results are the same. ``jax.vmap`` turns each
      convolution into a grouped convolution, which XLA:CPU runs far slower
      than plain ones (measured on this 2-core CPU, ResNet-20 at K = 4: about
      28× slower than unrolled; see ``experiments/results/bench_cohort``).
      Use it for convnets on CPU; keep the default elsewhere (it compiles a
      program that grows with ``K``).

  Returns:
    ``step(cohort, batch, rng) -> (cohort, metrics)`` for a
    :class:`CohortState`; ``batch`` has ``'x'``, integer ``'label'`` ``[B]``
    and optionally a boolean ``'mask'`` ``[B]`` (padding rows are ignored).
    ``metrics`` is a flat dict of scalars: for each peer ``k`` (with
    ``per_peer_metrics``): ``loss/k`` (its objective ``L_k``), ``ce/k`` (its
    cross-entropy term, label-smoothed if set), ``kl/k``, ``accuracy/k``,
    ``grad_norm/k``, ``skipped/k``; over the cohort: ``loss``, ``ce``,
    ``kl`` and ``accuracy`` (means over peers), ``ensemble_accuracy`` (argmax
    of the mean of the peers' probabilities), and ``skipped`` (number of
    peers whose update was skipped). Use :func:`as_fit_step` to drive it with
    :func:`kdjax.train.fit`.

  Raises:
    ValueError: (at trace time) for a batch without ``'x'`` or ``'label'``,
      or ``peer_axis_name`` with a tuple of peers; (at build time) for
      ``temperature <= 0``.

  References:
    Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018,
    arXiv:1706.00384.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> fwd = function_forward(lambda p, x: x @ p['w'])
    >>> cohort = init_cohort(fwd, optax.sgd(0.5), jax.random.split(jax.random.key(0), 3),
    ...                      init_fn=lambda k: {'params': {'w': jax.random.normal(k, (4, 3))}})
    >>> step = jax.jit(make_cohort_step(temperature=2.0))
    >>> batch = {'x': jnp.eye(4), 'label': jnp.array([0, 1, 2, 0])}
    >>> cohort, metrics = step(cohort, batch, jax.random.key(1))
    >>> int(cohort.step), cohort.peers.step.tolist(), int(metrics['skipped'])
    (1, [1, 1, 1], 0)
    >>> sorted(k for k in metrics if k.startswith('accuracy'))
    ['accuracy', 'accuracy/0', 'accuracy/1', 'accuracy/2']
  """
  _checks.check_positive(temperature, 'temperature')
  ce_kwargs = {'label_smoothing': label_smoothing} if label_smoothing else {}

  def psum(x):
    return x if axis_name is None else jax.lax.psum(x, axis_name)

  def step(cohort: CohortState, batch: Mapping[str, Any], rng: jax.Array):
    _check_batch(batch)
    if peer_axis_name is not None and not cohort.stacked:
      raise ValueError('`peer_axis_name` needs stacked peers (one architecture).')
    unroll = unroll_peers and cohort.stacked
    peers = tuple(unstack(cohort.peers)) if unroll else cohort.peers
    stacked = isinstance(peers, TrainState)
    x = batch['x']
    axis = _PeerAxis(cohort.num_peers, peer_axis_name)
    rng = jax.random.fold_in(rng, cohort.step)
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(axis.ids())  # by global peer index
    if not stacked:
      keys = tuple(keys[k] for k in range(axis.local))

    def loss_fn(trainables):
      def forward(peer, trainable, key):
        out = peer.apply_fn({'params': trainable['params'], **peer.model_state}, x,
                            train=True, rngs={'dropout': key})
        return out.logits, out.model_state

      outs = _map(forward, stacked, peers, trainables, keys)
      if stacked:
        logits, model_states = outs
      else:
        logits, model_states = jnp.stack([o[0] for o in outs]), tuple(o[1] for o in outs)
      logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # [local, B, C]
      clean, label_metrics = _update.clean_labels(batch, logits.shape[-1], axis_name=axis_name)
      labels, mask = clean['label'], clean['mask']
      targets = axis.gather(jax.lax.stop_gradient(logits))  # [K, B, C], constants
      ce = losses.cross_entropy(logits, jnp.broadcast_to(labels, logits.shape[:-1]), **ce_kwargs)
      if axis.total > 1:
        # Every peer's live logits sit in its own row; the other rows are the
        # constant targets, so only the local peers' rows carry gradient.
        live = jax.lax.dynamic_update_slice_in_dim(targets, logits, axis.offset, 0)
        kl = losses.mutual_kl(live, temperature=temperature, target_logits=targets)
        kl = jax.lax.dynamic_slice_in_dim(kl, axis.offset, axis.local, 0)
      else:
        kl = jnp.zeros_like(ce)

      def mean(values):  # [local, B] -> [local]: this shard's share of the exact means
        return jax.vmap(lambda v: batch_mean(v, mask, axis_name))(values)

      ce, kl = mean(ce), mean(kl)
      per_peer = ce_weight * ce + kl_weight * kl
      return per_peer, (ce, kl, logits, targets, model_states, clean, label_metrics)

    trainables = peers.trainable if stacked else tuple(p.trainable for p in peers)
    per_peer, aux, grads = _update.value_and_grads(loss_fn, trainables, axis_name=axis_name)
    ce, kl, logits, targets, model_states, clean, label_metrics = aux
    labels, mask = clean['label'], clean['mask']
    ce, kl = psum(ce), psum(kl)

    def apply(peer, g, loss, model_state):
      return _update.apply_guarded(peer, g, loss, model_state, axis_name=axis_name,
                                   skip_nonfinite=skip_nonfinite)

    if stacked:
      new_peers, applied = _map(apply, True, peers, grads, per_peer, model_states)
    else:
      pairs = _map(apply, False, peers, grads, tuple(per_peer), model_states)
      new_peers, applied = tuple(p for p, _ in pairs), jnp.stack([f for _, f in pairs])
    if skip_nonfinite:
      num_updated = jnp.sum(applied.astype(jnp.int32))
      if peer_axis_name is not None:
        num_updated = jax.lax.psum(num_updated, peer_axis_name)
      advance = (num_updated > 0).astype(jnp.int32)
    else:
      advance = jnp.ones((), jnp.int32)
    new_cohort = cohort.replace(step=cohort.step + advance,
                                peers=stack(new_peers) if unroll else new_peers)

    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)  # [local, B]
    accuracy = psum(jax.vmap(lambda v: batch_mean(v, mask, axis_name))(correct))
    grad_norm = _vector(_map(optax.tree.norm, stacked, grads), stacked)
    skipped = 1 - applied.astype(jnp.int32)
    vectors = {'loss': per_peer, 'ce': ce, 'kl': kl, 'accuracy': accuracy,
               'grad_norm': grad_norm, 'skipped': skipped}
    vectors = {name: axis.gather_exact(v) for name, v in vectors.items()}  # [K] each
    ens_correct, _ = _ensemble(targets, labels)
    metrics = {
        'loss': jnp.mean(vectors['loss']), 'ce': jnp.mean(vectors['ce']),
        'kl': jnp.mean(vectors['kl']), 'accuracy': jnp.mean(vectors['accuracy']),
        'ensemble_accuracy': axis.from_first(psum(batch_mean(ens_correct, mask, axis_name))),
        'skipped': jnp.sum(vectors['skipped']),
        **axis.from_first(label_metrics),
    }
    if per_peer_metrics:
      for name, v in vectors.items():
        for k in range(axis.total):
          metrics[f'{name}/{k}'] = v[k]
    return new_cohort, metrics

  return step


def as_fit_step(step: Callable) -> Callable:
  """Adapts ``step(cohort, batch, rng)`` to :func:`kdjax.train.fit`'s calling form.

  ``fit`` calls ``step_fn(state, teacher_variables, batch, rng)``; a cohort has
  no teacher, so the second argument is ignored. Jit the result.

  Examples:
    >>> fit_step = as_fit_step(lambda cohort, batch, rng: (cohort, {'n': batch}))
    >>> fit_step('cohort', None, 3, 'rng')
    ('cohort', {'n': 3})
  """

  def fit_step(state, teacher_variables, batch, rng):
    del teacher_variables
    return step(state, batch, rng)

  return fit_step


# --------------------------------------------------------------- evaluation

def make_cohort_eval_step(*, axis_name: Optional[str] = None,
                          peer_axis_name: Optional[str] = None, unroll_peers: bool = False):
  """Builds ``eval_step(cohort, batch) -> sums`` for exact per-peer and ensemble evaluation.

  The per-peer sums are those of :func:`kdjax.steps.make_eval_step` for each
  peer (evaluated with ``jax.vmap`` over stacked peers), and the ensemble
  predicts with the mean of the ``K`` peers' probabilities. Sums, not means:
  accumulate over batches and divide once (:func:`evaluate_cohort` does).

  Args:
    axis_name: data-parallel device axis; sums are psum'd over it.
    peer_axis_name: peer-parallel device axis (stacked peers sharded over it).
    unroll_peers: evaluate stacked peers with a trace-time loop instead of
      ``jax.vmap`` (see :func:`make_cohort_step`).

  Returns:
    ``eval_step(cohort, batch)`` returning float32 scalars: ``correct/k`` and
    ``loss_sum/k`` for each peer ``k``, ``ensemble_correct``,
    ``ensemble_loss_sum`` (cross-entropy of the mean probability) and
    ``count`` (valid rows; ``batch['mask']`` drops padding).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> fwd = function_forward(lambda p, x: x * p['s'])
    >>> tx = optax.sgd(0.1)
    >>> peers = [TrainState.create(apply_fn=fwd, variables={'params': {'s': jnp.array(s)}},
    ...                            tx=tx) for s in (1.0, -0.5)]
    >>> cohort = CohortState.create(stack(peers))
    >>> batch = {'x': jnp.array([[2.0, 0.0], [0.0, 1.0]]), 'label': jnp.array([0, 0])}
    >>> sums = make_cohort_eval_step()(cohort, batch)
    >>> [float(sums[k]) for k in ('correct/0', 'correct/1', 'ensemble_correct', 'count')]
    [1.0, 1.0, 1.0, 2.0]
  """

  def psum(x):
    return x if axis_name is None else jax.lax.psum(x, axis_name)

  def eval_step(cohort: CohortState, batch: Mapping[str, Any]):
    _check_batch(batch)
    if peer_axis_name is not None and not cohort.stacked:
      raise ValueError('`peer_axis_name` needs stacked peers (one architecture).')
    peers = tuple(unstack(cohort.peers)) if unroll_peers and cohort.stacked else cohort.peers
    stacked = isinstance(peers, TrainState)
    axis = _PeerAxis(cohort.num_peers, peer_axis_name)
    x, labels = batch['x'], jnp.asarray(batch['label'])
    mask = batch.get('mask', jnp.ones(labels.shape, bool))
    logits = _map(lambda p: p.apply_fn(p.variables, x, train=False).logits, stacked, peers)
    logits = _vector(logits, stacked).astype(jnp.float32)  # [local, B, C]

    def total(v):  # [..., B] -> [...] masked sums
      return psum(jnp.sum(jnp.where(mask, v, 0.0), axis=-1))

    peer_sums = psum(_evaluation.classification_sums(logits, labels, mask))
    correct = axis.gather_exact(peer_sums['correct'])
    loss = axis.gather_exact(peer_sums['loss_sum'])
    ens_correct, ens_nll = _ensemble(axis.gather(logits), labels)
    sums = {'count': psum(jnp.sum(mask).astype(jnp.float32)),
            'ensemble_correct': axis.from_first(total(ens_correct)),
            'ensemble_loss_sum': axis.from_first(total(ens_nll))}
    for k in range(axis.total):
      sums[f'correct/{k}'] = correct[k]
      sums[f'loss_sum/{k}'] = loss[k]
    return sums

  return eval_step


def evaluate_cohort(eval_step: Callable, cohort: CohortState,
                    batches: Iterable[Mapping[str, Any]]) -> dict:
  """Exact per-peer and ensemble accuracy over ``batches``.

  Args:
    eval_step: from :func:`make_cohort_eval_step` (jitted or not).
    cohort: the cohort to evaluate.
    batches: an iterable of labelled batches.

  Returns:
    ``{'accuracy/k', 'loss/k'}`` per peer, ``accuracy`` (the mean over peers),
    ``ensemble_accuracy``, ``ensemble_loss`` and ``count``, as Python floats.

  Raises:
    ValueError: if ``batches`` is empty.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> fwd = function_forward(lambda p, x: x * p['s'])
    >>> peers = [TrainState.create(apply_fn=fwd, variables={'params': {'s': jnp.array(s)}},
    ...                            tx=optax.sgd(0.1)) for s in (1.0, 2.0)]
    >>> batches = [{'x': jnp.eye(2), 'label': jnp.array([0, 0])}]
    >>> out = evaluate_cohort(make_cohort_eval_step(), CohortState.create(peers), batches)
    >>> out['accuracy/0'], out['ensemble_accuracy'], out['count']
    (0.5, 0.5, 2.0)
  """
  totals = {k: float(v) for k, v in _evaluation.accumulate(eval_step, batches, cohort).items()}
  count = max(totals['count'], 1.0)
  out = {}
  num_peers = sum(1 for k in totals if k.startswith('correct/'))
  for k in range(num_peers):
    out[f'accuracy/{k}'] = totals[f'correct/{k}'] / count
    out[f'loss/{k}'] = totals[f'loss_sum/{k}'] / count
  out['accuracy'] = float(np.mean([out[f'accuracy/{k}'] for k in range(num_peers)]))
  out['ensemble_accuracy'] = totals['ensemble_correct'] / count
  out['ensemble_loss'] = totals['ensemble_loss_sum'] / count
  out['count'] = totals['count']
  return out
