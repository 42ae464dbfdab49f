"""The one evaluation loop: masked per-batch sums, accumulated on the device.

Every evaluator in kdjax (a model, a cohort's peers and ensemble, a model's
heads, an ensemble of members) runs a jitted ``sums(*args, batch)`` per batch,
adds the sums on the device (no host sync per batch) and divides once at the
end, so a padded last batch never biases a mean.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses


def classification_sums(logits: jax.Array, labels: jax.Array,
                        mask: Optional[jax.Array] = None) -> dict[str, jax.Array]:
  """Masked sums of top-1 hits and cross-entropy over the batch axis.

  Args:
    logits: ``[..., B, C]`` (leading axes, e.g. peers or heads, are kept).
    labels: ``[B]`` integer labels.
    mask: optional boolean ``[B]``; False rows (padding) are not counted.

  Returns:
    float32 ``{'correct': [...], 'loss_sum': [...]}``.

  Examples:
    >>> import jax.numpy as jnp
    >>> sums = classification_sums(jnp.eye(3), jnp.array([0, 2, 2]), jnp.array([1, 1, 0], bool))
    >>> float(sums['correct']), round(float(sums['loss_sum']), 4)
    (1.0, 2.1029)
  """
  labels = jnp.asarray(labels)
  mask = jnp.ones(labels.shape, bool) if mask is None else jnp.asarray(mask, bool)
  hits = jnp.argmax(logits, -1) == labels
  ce = losses.cross_entropy(logits, jnp.broadcast_to(labels, logits.shape[:-1]))
  return {'correct': jnp.sum(jnp.where(mask, hits, False), axis=-1).astype(jnp.float32),
          'loss_sum': jnp.sum(jnp.where(mask, ce, 0.0), axis=-1).astype(jnp.float32)}


def accumulate(sums_fn: Callable[..., Mapping[str, Any]], batches: Iterable[Mapping[str, Any]],
               *args: Any, empty: str = '`batches` is empty: nothing to evaluate.'
               ) -> dict[str, np.ndarray]:
  """Adds ``sums_fn(*args, batch)`` over ``batches`` on the device.

  Args:
    sums_fn: returns a dict of (float) sums for one batch.
    batches: an iterable of batches.
    *args: leading arguments of ``sums_fn`` (variables, a cohort, ...).
    empty: the error message for no batches.

  Returns:
    The totals as float64 NumPy arrays (one transfer at the end).

  Raises:
    ValueError: if ``batches`` is empty.

  Examples:
    >>> import jax.numpy as jnp
    >>> accumulate(lambda b: {'n': jnp.sum(b['x'])}, [{'x': jnp.ones(2)}, {'x': jnp.ones(3)}])
    {'n': array(5.)}
  """
  totals = None
  for batch in batches:
    s = sums_fn(*args, batch)
    totals = s if totals is None else jax.tree.map(jnp.add, totals, s)
  if totals is None:
    raise ValueError(empty)
  return {k: np.asarray(v, np.float64) for k, v in jax.device_get(totals).items()}
