"""Transformer distillation losses: attention distributions and hidden states.

Both are per-example: the head, query, token and feature axes are averaged,
leading axes ``[...]`` are kept.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from kdjax.losses import _checks


def attention_kl(
    student_attention_probs: jax.Array,
    teacher_attention_probs: jax.Array,
    *,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Attention transfer: KL between teacher and student attention rows.

  ``L_AT = 1/(A·T) \sum_{a=1}^{A} \sum_{t=1}^{T} KL(a^T_{a,t} ‖ a^S_{a,t})``
  over the ``A`` heads and ``T`` (valid) queries, where each row
  ``a_{a,t}`` is a distribution over the keys (MobileBERT, Sun et al. 2020,
  Eq. 2).

  Inputs are probabilities (softmax outputs, rows summing to 1; this is not
  checked). Exact zeros are handled: a teacher zero contributes
  ``0 · log 0 = 0`` with a zero gradient (e.g. padded keys), and student
  probabilities are clamped below at the smallest normal number of the compute
  dtype (about 1.2e-38 in float32) before the log, so a student zero where the
  teacher has mass gives a large finite value (at most ``p·87`` per entry)
  instead of ``inf``. Values are exact for every student probability above that
  bound.

  Args:
    student_attention_probs: ``[..., heads, queries, keys]`` student attention.
    teacher_attention_probs: ``[..., heads, queries, keys]`` teacher attention.
      Different head counts or lengths must be mapped by the caller.
    where: optional boolean mask broadcastable to ``[..., queries]`` (the same
      for every head). Masked queries (e.g. padding) are left out of the mean,
      which equals slicing the query axis; an example with no valid query
      gives 0.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for inputs of rank < 3 or of different shapes, non-floating
      inputs, or a bad mask.

  References:
    Sun, Yu, Song, Liu, Yang & Zhou, "MobileBERT: a Compact Task-Agnostic BERT
    for Resource-Limited Devices", ACL 2020, arXiv:2004.02984.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import attention_kl
    >>> uniform = jnp.full((1, 2, 3, 2), 0.5)         # [batch, heads, queries, keys]
    >>> one_hot = jnp.zeros((1, 2, 3, 2)).at[..., 0].set(1.0)
    >>> attention_kl(uniform, one_hot)                # log 2 per row
    Array([0.6931472], dtype=float32)
  """
  _checks.check_same_shape(
      student_attention_probs, teacher_attention_probs,
      'student_attention_probs', 'teacher_attention_probs')
  _checks.check_min_rank(student_attention_probs, 3, 'student_attention_probs')
  q = _checks.as_float(student_attention_probs, 'student_attention_probs')
  p = _checks.as_float(teacher_attention_probs, 'teacher_attention_probs')
  dtype = jnp.promote_types(q.dtype, p.dtype)
  q, p = q.astype(dtype), p.astype(dtype)
  query_shape = q.shape[:-3] + q.shape[-2:-1]
  where = _checks.check_where(where, query_shape)
  row_where = None if where is None else where[..., None, :]
  if where is not None:  # masked rows: p = 0, so they add nothing and get no gradient
    p = jnp.where(row_where[..., None], p, 0.0)
  positive = p > 0
  tiny = jnp.finfo(dtype).tiny
  log_p = jnp.log(jnp.where(positive, p, 1.0))
  log_q = jnp.log(jnp.maximum(jnp.where(positive, q, 1.0), tiny))
  rows = jnp.sum(jnp.where(positive, p * (log_p - log_q), 0.0), axis=-1)  # [..., heads, queries]
  return _checks.masked_mean(rows, row_where, axis=(-2, -1))


def hidden_state_mse(
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    *,
    where: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Hidden-state (feature map) transfer: mean squared error over tokens and features.

  ``L_FMT = 1/(T·D) \sum_{t=1}^{T} \sum_{d=1}^{D} (H^T_{t,d} − H^S_{t,d})²``
  (MobileBERT, Sun et al. 2020, Eq. 1; TinyBERT's hidden-state loss without the
  projection). When the widths differ, project the student (TinyBERT's learned
  ``W_h``) or the teacher before calling; the projection is the caller's.

  Args:
    student_hidden: ``[..., T, D]`` student hidden states.
    teacher_hidden: ``[..., T, D]`` teacher hidden states.
    where: optional boolean mask broadcastable to ``[..., T]``; masked tokens
      (e.g. padding) are left out of the mean, which equals slicing the token
      axis. An example with no valid token gives 0.

  Returns:
    ``[...]`` per-example loss, in at least float32.

  Raises:
    ValueError: for inputs of rank < 2 or of different shapes, non-floating
      inputs, or a bad mask.

  References:
    Sun, Yu, Song, Liu, Yang & Zhou, "MobileBERT: a Compact Task-Agnostic BERT
    for Resource-Limited Devices", ACL 2020, arXiv:2004.02984.
    Jiao et al., "TinyBERT: Distilling BERT for Natural Language
    Understanding", Findings of EMNLP 2020, arXiv:1909.10351.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.losses import hidden_state_mse
    >>> h_s = jnp.zeros((2, 3, 4))
    >>> h_t = jnp.ones((2, 3, 4)).at[:, 2].set(5.0)   # last token is padding
    >>> hidden_state_mse(h_s, h_t, where=jnp.array([True, True, False]))
    Array([1., 1.], dtype=float32)
  """
  _checks.check_same_shape(student_hidden, teacher_hidden, 'student_hidden', 'teacher_hidden')
  _checks.check_min_rank(student_hidden, 2, 'student_hidden')
  s = _checks.as_float(student_hidden, 'student_hidden')
  t = _checks.as_float(teacher_hidden, 'teacher_hidden')
  dtype = jnp.promote_types(s.dtype, t.dtype)
  s, t = s.astype(dtype), t.astype(dtype)
  where = _checks.check_where(where, s.shape[:-1])
  token_where = None if where is None else where[..., None]
  diff = s - t if where is None else jnp.where(token_where, s - t, 0.0)
  return _checks.masked_mean(jnp.square(diff), token_where, axis=(-2, -1))
