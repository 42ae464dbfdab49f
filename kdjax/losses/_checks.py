"""Trace-time argument checks and small numerical helpers shared by the losses.

Every check runs on static information (shapes, dtypes, Python scalars), so it
costs nothing inside ``jax.jit`` and fails at trace time with a ``ValueError``
that names the offending argument.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def as_float(x, name: str) -> jax.Array:
  """Returns ``x`` as a floating array, upcast to at least float32.

  float16/bfloat16 inputs are computed in float32; float64 stays float64 when
  x64 is enabled.

  Raises:
    ValueError: if ``x`` is not a floating-point array.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'`{name}` must be a floating-point array, got dtype {x.dtype}.')
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_same_shape(a, b, name_a: str, name_b: str) -> None:
  """Raises a ``ValueError`` naming both arguments if their shapes differ."""
  if jnp.shape(a) != jnp.shape(b):
    raise ValueError(
        f'`{name_a}` and `{name_b}` must have the same shape, got '
        f'{jnp.shape(a)} and {jnp.shape(b)}.')


def check_min_rank(x, rank: int, name: str) -> None:
  """Raises a ``ValueError`` if ``x`` has fewer than ``rank`` dimensions."""
  if jnp.ndim(x) < rank:
    raise ValueError(
        f'`{name}` must have at least {rank} dimension(s), got shape {jnp.shape(x)}.')


def check_rank(x, rank: int, name: str) -> None:
  """Raises a ``ValueError`` if ``x`` does not have exactly ``rank`` dimensions."""
  if jnp.ndim(x) != rank:
    raise ValueError(f'`{name}` must have {rank} dimension(s), got shape {jnp.shape(x)}.')


def is_traced(value) -> bool:
  """Whether ``value`` is an abstract JAX value (a tracer) rather than a concrete one.

  Options such as a temperature or a loss weight may be traced, e.g. a schedule
  computed inside ``jax.jit`` or a weight that is differentiated or vmapped. Their
  value is unknown at trace time, so range checks skip them. This is the one place
  the losses test for tracers; ``jax.core.Tracer`` is the public base class of all
  of them (``jit``, ``vmap``, ``grad``, ``shard_map``).
  """
  return isinstance(value, jax.core.Tracer)


def check_positive(value, name: str) -> None:
  """Raises a ``ValueError`` if a concrete scalar option is not > 0.

  Traced values (e.g. a temperature schedule under ``jit``) cannot be checked at
  trace time and are accepted.
  """
  if is_traced(value):
    return
  if not np.all(np.asarray(value) > 0):
    raise ValueError(f'`{name}` must be > 0, got {value}.')


def check_in_range(value, name: str, low: float, high: float, *,
                   include_high: bool = True) -> None:
  """Raises a ``ValueError`` if a concrete option lies outside ``[low, high]``.

  With ``include_high=False`` the interval is ``[low, high)``. NaN is rejected.
  Traced values (e.g. a loss-weight schedule under ``jit``) cannot be checked at
  trace time and are accepted.
  """
  if is_traced(value):
    return
  v = np.asarray(value)
  inside = (v >= low) & ((v <= high) if include_high else (v < high))
  if not np.all(inside):
    bounds = f'[{low:g}, {high:g}{"]" if include_high else ")"}'
    raise ValueError(f'`{name}` must be in {bounds}, got {value}.')


def check_labels(labels, logits, name: str = 'labels', logits_name: str = 'logits') -> jax.Array:
  """Checks integer class labels of shape ``logits.shape[:-1]``.

  Args:
    labels: integer array ``[...]``.
    logits: array ``[..., C]``.
    name: argument name used in error messages.
    logits_name: name of the logits argument used in error messages.

  Returns:
    ``labels`` as a JAX array.

  Raises:
    ValueError: for a non-integer dtype, a shape other than
      ``logits.shape[:-1]``, or concrete labels outside ``[0, C)``. Traced
      labels (under ``jit`` or ``vmap``) cannot be checked here; the kdjax
      steps exclude and count them (``invalid_labels``) instead.

  Examples:
    >>> import jax.numpy as jnp
    >>> check_labels(jnp.array([0, 12]), jnp.zeros((2, 10)))
    Traceback (most recent call last):
    ...
    ValueError: `labels` must be class indices in [0, 10) ... got 12 at index (1,).
  """
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'`{name}` must be integer class indices, got dtype {labels.dtype}.')
  if labels.shape != jnp.shape(logits)[:-1]:
    raise ValueError(
        f'`{name}` must have shape {jnp.shape(logits)[:-1]} (the shape of '
        f'`{logits_name}` without its class axis), got {labels.shape}.')
  try:
    values = np.asarray(labels)
  except jax.errors.TracerArrayConversionError:
    return labels
  num_classes = jnp.shape(logits)[-1]
  bad = np.argwhere((values < 0) | (values >= num_classes))
  if len(bad):
    shown = ', '.join(f'{values[tuple(i)]} at index {tuple(int(j) for j in i)}' for i in bad[:5])
    more = f' and {len(bad) - 5} more' if len(bad) > 5 else ''
    raise ValueError(f'`{name}` must be class indices in [0, {num_classes}) (`{logits_name}` '
                     f'has {num_classes} classes), got {shown}{more}.')
  return labels


def check_where(where, shape, name: str = 'where') -> Optional[jax.Array]:
  """Checks a boolean mask that broadcasts to ``shape``; returns it or ``None``."""
  if where is None:
    return None
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise ValueError(f'`{name}` must be a boolean mask, got dtype {where.dtype}.')
  shape = tuple(shape)
  try:
    ok = jnp.broadcast_shapes(where.shape, shape) == shape
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(f'`{name}` with shape {where.shape} does not broadcast to {shape}.')
  return jnp.broadcast_to(where, shape)


def masked_mean(values: jax.Array, where: Optional[jax.Array], axis) -> jax.Array:
  """Mean of ``values`` over ``axis``, counting only entries where ``where`` is True.

  A fully masked slice gives 0 rather than NaN.
  """
  if where is None:
    return jnp.mean(values, axis=axis)
  where = jnp.broadcast_to(where, values.shape)
  total = jnp.sum(jnp.where(where, values, 0.0), axis=axis)
  count = jnp.sum(where, axis=axis)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def xlogy_ratio(p: jax.Array, log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """Elementwise ``p * (log p - log q)`` with the convention ``0 * log 0 = 0``."""
  return jnp.where(p > 0, p * (log_p - log_q), 0.0)
