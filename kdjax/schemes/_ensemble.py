"""Ensembles of trained models by averaged probabilities (BAN generations, independent runs).

A *member* is a pair ``(model, variables)``: a Flax Linen module or a forward
function (see :mod:`kdjax.models`) with its variables, e.g.
``(model, run_result.state.variables)`` or an entry of :func:`load_members`.
The ensemble's prediction is the mean of the members' softmax probabilities,

    p_ens(y | x) = (1 / K) · Σ_k softmax(z_k(x))_y,

as in Born-Again Network Ensembles (Furlanello et al., 2018, §3.2) and the
ensemble control of Cho & Hariharan (2019, §6): sequentially distilled
generations against the same number of independently trained models.

References:
  Furlanello, Lipton, Tschannen, Itti & Anandkumar, "Born-Again Neural
  Networks", ICML 2018, arXiv:1805.04770.
  Cho & Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019,
  arXiv:1910.01348.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _evaluation
from kdjax import checkpoint
from kdjax import data as kdata
from kdjax import models as kmodels


Member = tuple[Any, Mapping[str, Any]]


def _check_members(members: Sequence[Member]) -> list:
  members = list(members)
  if not members:
    raise ValueError('`members` is empty: an ensemble needs at least one (model, variables).')
  for i, m in enumerate(members):
    if not (isinstance(m, (tuple, list)) and len(m) == 2):
      raise ValueError(f'`members[{i}]` must be a (model, variables) pair, got {type(m)}.')
  return [(kmodels.as_forward(model), variables) for model, variables in members]


def _normalised_weights(weights: Optional[Sequence[float]], k: int) -> Optional[np.ndarray]:
  if weights is None:
    return None
  w = np.asarray(weights, np.float64)
  if w.shape != (k,):
    raise ValueError(f'`weights` must have one entry per member ({k}), got shape {w.shape}.')
  if np.any(w < 0) or not np.any(w > 0):
    raise ValueError(f'`weights` must be non-negative with a positive sum, got {w.tolist()}.')
  return (w / w.sum()).astype(np.float32)


def _member_probs(forwards, variables, x) -> jax.Array:
  """``[K, B, C]`` softmax probabilities (float32) of every member."""
  return jnp.stack([
      jax.nn.softmax(fn(v, x, train=False).logits.astype(jnp.float32), axis=-1)
      for fn, v in zip(forwards, variables)])


def _average(probs: jax.Array, weights: Optional[np.ndarray]) -> jax.Array:
  if weights is None:
    return jnp.mean(probs, axis=0)
  return jnp.tensordot(jnp.asarray(weights), probs, axes=1)


def ensemble_predict(members: Sequence[Member], x: jax.Array, *,
                     weights: Optional[Sequence[float]] = None) -> jax.Array:
  """The ensemble's class probabilities: the (weighted) mean of the members' softmax.

  ``p = Σ_k w_k · softmax(z_k(x))`` with ``w_k = 1/K`` by default (weights are
  normalised to sum to 1). Members run in eval mode; probabilities are
  computed in float32.

  Args:
    members: ``(model, variables)`` pairs; a model is a Linen module or a
      forward function.
    x: ``[B, ...]`` inputs.
    weights: optional non-negative per-member weights.

  Returns:
    ``[B, C]`` probabilities (rows sum to 1).

  Raises:
    ValueError: for no members, a malformed member, or bad ``weights``.

  References:
    Furlanello et al., "Born-Again Neural Networks", ICML 2018,
    arXiv:1805.04770 (§3.2, BAN ensembles).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import function_forward
    >>> fwd = function_forward(lambda p, x: x * p['s'])
    >>> members = [(fwd, {'params': {'s': 0.0}}), (fwd, {'params': {'s': 100.0}})]
    >>> ensemble_predict(members, jnp.array([[0.0, 1.0]]))
    Array([[0.25, 0.75]], dtype=float32)
  """
  pairs = _check_members(members)
  w = _normalised_weights(weights, len(pairs))
  forwards = [f for f, _ in pairs]
  return _average(_member_probs(forwards, [v for _, v in pairs], x), w)


def load_members(models: Sequence[Any], checkpoint_dirs: Sequence[str], *,
                 steps: Optional[Sequence[Optional[int]]] = None) -> list[Member]:
  """Loads ``(model, variables)`` members from run checkpoint directories.

  Args:
    models: one model (module or forward function) per member.
    checkpoint_dirs: the members' checkpoint directories, e.g.
      ``RunResult.checkpoint_dir`` or ``ChainResult.checkpoint_dirs``.
    steps: optional step per member (``None``: the latest).

  Returns:
    The list of members.

  Raises:
    ValueError: for mismatched lengths.
    FileNotFoundError: for a missing directory or step.

  Examples:
    >>> import tempfile, jax.numpy as jnp
    >>> from kdjax.checkpoint import Checkpointer
    >>> from kdjax.models import function_forward
    >>> d = tempfile.mkdtemp()
    >>> with Checkpointer(d) as ckpt:
    ...   ckpt.save(5, {'params': {'w': jnp.ones(2)}, 'model_state': {}})
    >>> fwd = function_forward(lambda p, x: x * p['w'])
    >>> [(m, v)] = load_members([fwd], [d])
    >>> v['params']['w']
    array([1., 1.], dtype=float32)
  """
  models, checkpoint_dirs = list(models), list(checkpoint_dirs)
  steps = [None] * len(models) if steps is None else list(steps)
  if not len(models) == len(checkpoint_dirs) == len(steps):
    raise ValueError(
        f'`models` ({len(models)}), `checkpoint_dirs` ({len(checkpoint_dirs)}) and `steps` '
        f'({len(steps)}) must have the same length.')
  return [(m, checkpoint.load_variables(d, step=s))
          for m, d, s in zip(models, checkpoint_dirs, steps)]


@functools.lru_cache(maxsize=32)
def _ensemble_sums(models: tuple, weights: Optional[tuple]):
  """A jitted ``sums(variables, batch)`` for these members (cached: compiled once per models)."""
  forwards = tuple(kmodels.as_forward(m) for m in models)
  w = None if weights is None else np.asarray(weights, np.float32)
  pair_index = list(itertools.combinations(range(len(models)), 2))

  @jax.jit
  def sums(variables, batch):
    probs = _member_probs(forwards, variables, batch['x'])
    p = _average(probs, w)
    labels = batch['label']
    mask = batch.get('mask', jnp.ones(labels.shape, bool))
    preds = jnp.argmax(probs, axis=-1)  # [K, B]
    p_true = jnp.take_along_axis(p, labels[:, None], axis=-1)[:, 0]
    nll = -jnp.log(jnp.maximum(p_true, jnp.finfo(jnp.float32).tiny))
    out = {
        'correct': jnp.sum(mask & (jnp.argmax(p, -1) == labels)),
        'nll': jnp.sum(jnp.where(mask, nll, 0.0)),
        'count': jnp.sum(mask),
        'member_correct': jnp.sum(mask & (preds == labels), axis=-1),
        'differ': (jnp.stack([jnp.sum(mask & (preds[i] != preds[j])) for i, j in pair_index])
                   if pair_index else jnp.zeros((0,), jnp.int32)),
    }
    return jax.tree.map(lambda a: a.astype(jnp.float32), out)

  return sums


def evaluate_ensemble(members: Sequence[Member], eval_data: Any, *, batch_size: int = 500,
                      weights: Optional[Sequence[float]] = None) -> dict:
  """Exact test metrics of an ensemble and of its members over a labeled source.

  Args:
    members: ``(model, variables)`` pairs.
    eval_data: a labeled random-access source (``kdjax.data.load(...)``); the
      last batch is padded and masked, so every example counts once.
    batch_size: evaluation batch size.
    weights: optional per-member weights (see :func:`ensemble_predict`).

  Returns:
    A dict with ``accuracy`` (top-1 of the averaged probabilities), ``nll``
    (mean ``-log p_ens(y|x)``), ``count``, ``member_accuracy`` (a list, one per
    member), ``mean_member_accuracy`` and ``disagreement`` (the mean over
    member pairs of the fraction of examples whose top-1 predictions differ;
    0 for one member) -- low disagreement is why an ensemble of sequentially
    distilled models gains little (Cho & Hariharan, 2019, §6).

  Raises:
    ValueError: for no members, bad weights or an empty ``eval_data``.

  References:
    Cho & Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019,
    arXiv:1910.01348.

  Examples:
    >>> import numpy as np, jax.numpy as jnp
    >>> from kdjax.models import function_forward
    >>> data = [{'x': np.eye(2, dtype=np.float32)[i], 'label': np.int32(i), 'id': np.int32(i)}
    ...         for i in (0, 1)]
    >>> ident = function_forward(lambda p, x: x)
    >>> flip = function_forward(lambda p, x: x[:, ::-1])
    >>> out = evaluate_ensemble([(ident, {'params': {}}), (flip, {'params': {}})], data)
    >>> out['member_accuracy'], out['disagreement']
    ([1.0, 0.0], 1.0)
  """
  members = list(members)
  pairs = _check_members(members)
  w = _normalised_weights(weights, len(pairs))
  variables = [v for _, v in pairs]
  models = tuple(m for m, _ in members)
  key = (models, None if w is None else tuple(float(x) for x in w))
  try:
    sums = _ensemble_sums(*key)
  except TypeError:  # unhashable models: build (and compile) for this call only
    sums = _ensemble_sums.__wrapped__(*key)
  num_pairs = len(pairs) * (len(pairs) - 1) // 2

  pipeline = kdata.make_pipeline(eval_data, batch_size=batch_size, seed=0, shuffle=False,
                                 drop_remainder=False, num_epochs=1)
  batches = ({k: b[k] for k in ('x', 'label', 'mask') if k in b} for b in pipeline)
  totals = _evaluation.accumulate(sums, batches, variables,
                                  empty='`eval_data` is empty: nothing to evaluate.')
  count = max(float(totals['count']), 1.0)
  member_acc = [float(c) / count for c in totals['member_correct']]
  return {
      'accuracy': float(totals['correct']) / count,
      'nll': float(totals['nll']) / count,
      'count': float(totals['count']),
      'member_accuracy': member_acc,
      'mean_member_accuracy': float(np.mean(member_acc)),
      'disagreement': (float(np.sum(totals['differ'], dtype=np.float64)) / num_pairs / count
                       if num_pairs else 0.0),
  }
