"""Term-weight schedules ``step -> weight`` (α schedules, early-stopped KD terms).

A :class:`kdjax.steps.Term` weight may be a callable of the train step; the
step evaluates it at ``state.step`` (the number of updates already applied,
starting at 0) inside the jitted update, so a schedule must be a pure
``jax.numpy`` function of a scalar integer array. The schedules here are
frozen dataclasses: their ``repr`` is stable, so a chain's link record
(:func:`kdjax.schemes.distill_chain`) can tell whether a resumed link was
trained with the same objective.

Cho & Hariharan (2019, §5) stop the distillation term early in the student's
training: the student mimics the teacher at first and then fits the labels
alone, which helps when the student cannot mimic a large teacher to the end.
With :func:`kd_until` for the KD weight and :func:`complement` for the label
weight::

    kd = kd_until(1000, 0.9)
    terms = (task_ce(complement(kd)), soft_kd(kd, temperature=4.0))

References:
  Cho & Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019,
  arXiv:1910.01348.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp


Schedule = Callable[[jax.Array], jax.Array]
Weight = Union[float, Schedule]


def _value(weight: Weight, step: jax.Array) -> jax.Array:
  """Evaluates a float or a schedule at ``step`` as a float32 scalar."""
  value = weight(step) if callable(weight) else weight
  return jnp.asarray(value, jnp.float32)


def _check_nonnegative_int(value, name: str) -> int:
  if isinstance(value, bool) or int(value) != value or value < 0:
    raise ValueError(f'`{name}` must be a non-negative integer, got {value!r}.')
  return int(value)


@dataclasses.dataclass(frozen=True)
class _Constant:
  weight: float

  def __call__(self, step: jax.Array) -> jax.Array:
    return jnp.full(jnp.shape(step), self.weight, jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Until:
  num_steps: int
  weight: float
  after: float

  def __call__(self, step: jax.Array) -> jax.Array:
    step = jnp.asarray(step)
    return jnp.where(step < self.num_steps, jnp.float32(self.weight), jnp.float32(self.after))


@dataclasses.dataclass(frozen=True)
class _Decay:
  kind: str
  weight: float
  num_steps: int
  end: float
  start: int

  def __call__(self, step: jax.Array) -> jax.Array:
    t = jnp.asarray(step, jnp.float32) - self.start
    frac = jnp.clip(t / self.num_steps, 0.0, 1.0)
    if self.kind == 'cosine':
      frac = 0.5 * (1.0 - jnp.cos(jnp.float32(math.pi) * frac))
    return (self.weight + (self.end - self.weight) * frac).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Piecewise:
  boundaries: tuple[int, ...]
  values: tuple[float, ...]

  def __call__(self, step: jax.Array) -> jax.Array:
    step = jnp.asarray(step)
    index = jnp.sum(step[..., None] >= jnp.asarray(self.boundaries, step.dtype), axis=-1)
    return jnp.asarray(self.values, jnp.float32)[index]


@dataclasses.dataclass(frozen=True)
class _Complement:
  schedule: Weight
  total: float

  def __call__(self, step: jax.Array) -> jax.Array:
    return jnp.float32(self.total) - _value(self.schedule, step)


def constant(weight: float) -> Schedule:
  """The schedule ``step -> weight`` (for a uniform interface with the others).

  Examples:
    >>> constant(0.5)(7)
    Array(0.5, dtype=float32)
  """
  return _Constant(float(weight))


def kd_until(num_steps: int, weight: float = 1.0, *, after: float = 0.0) -> Schedule:
  """``weight`` for the first ``num_steps`` updates, then ``after``: an early-stopped KD term.

  The weight at step ``t`` (updates already applied) is ``weight`` if
  ``t < num_steps``, else ``after``; so exactly ``num_steps`` updates see the
  KD term (Cho & Hariharan, 2019, §5: "ESKD" stops distillation early in the
  student's training).

  Args:
    num_steps: the number of updates that use ``weight``.
    weight: the weight before the switch.
    after: the weight from step ``num_steps`` on.

  Returns:
    A schedule ``step -> float32 weight``.

  Raises:
    ValueError: if ``num_steps`` is not a non-negative integer.

  References:
    Cho & Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019,
    arXiv:1910.01348.

  Examples:
    >>> s = kd_until(100, 0.9)
    >>> round(float(s(99)), 6), float(s(100))
    (0.9, 0.0)
  """
  return _Until(_check_nonnegative_int(num_steps, 'num_steps'), float(weight), float(after))


def linear_decay(weight: float, num_steps: int, *, end: float = 0.0, start: int = 0) -> Schedule:
  """Linear ramp from ``weight`` (at ``start``) to ``end`` (at ``start + num_steps``).

  ``w(t) = weight + (end - weight) · clip((t - start) / num_steps, 0, 1)``:
  constant ``weight`` before ``start`` and ``end`` after the ramp.

  Args:
    weight: the weight up to step ``start``.
    num_steps: the length of the ramp (> 0).
    end: the weight after the ramp.
    start: the step where the ramp begins.

  Returns:
    A schedule ``step -> float32 weight``.

  Raises:
    ValueError: for ``num_steps <= 0`` or a negative ``start``.

  Examples:
    >>> s = linear_decay(1.0, 100, start=50)
    >>> [round(float(s(t)), 3) for t in (0, 50, 75, 150, 500)]
    [1.0, 1.0, 0.75, 0.0, 0.0]
  """
  if _check_nonnegative_int(num_steps, 'num_steps') == 0:
    raise ValueError('`num_steps` must be positive for a decay, got 0.')
  return _Decay('linear', float(weight), int(num_steps), float(end),
                _check_nonnegative_int(start, 'start'))


def cosine_decay(weight: float, num_steps: int, *, end: float = 0.0, start: int = 0) -> Schedule:
  """Half-cosine from ``weight`` (at ``start``) to ``end`` (at ``start + num_steps``).

  ``w(t) = weight + (end - weight) · (1 - cos(π·f)) / 2`` with
  ``f = clip((t - start) / num_steps, 0, 1)``.

  Args:
    weight: the weight up to step ``start``.
    num_steps: the length of the decay (> 0).
    end: the weight after the decay.
    start: the step where the decay begins.

  Returns:
    A schedule ``step -> float32 weight``.

  Raises:
    ValueError: for ``num_steps <= 0`` or a negative ``start``.

  Examples:
    >>> s = cosine_decay(1.0, 100)
    >>> [round(float(s(t)), 3) for t in (0, 50, 100)]
    [1.0, 0.5, 0.0]
  """
  if _check_nonnegative_int(num_steps, 'num_steps') == 0:
    raise ValueError('`num_steps` must be positive for a decay, got 0.')
  return _Decay('cosine', float(weight), int(num_steps), float(end),
                _check_nonnegative_int(start, 'start'))


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
  """``values[i]`` on ``boundaries[i-1] <= t < boundaries[i]`` (``values[0]`` before the first).

  Args:
    boundaries: strictly increasing non-negative steps.
    values: ``len(boundaries) + 1`` weights.

  Returns:
    A schedule ``step -> float32 weight``.

  Raises:
    ValueError: for mismatched lengths or boundaries that do not increase.

  Examples:
    >>> s = piecewise_constant([10, 20], [1.0, 0.5, 0.0])
    >>> [float(s(t)) for t in (0, 9, 10, 19, 20)]
    [1.0, 1.0, 0.5, 0.5, 0.0]
  """
  boundaries = tuple(_check_nonnegative_int(b, 'boundaries') for b in boundaries)
  values = tuple(float(v) for v in values)
  if len(values) != len(boundaries) + 1:
    raise ValueError(f'`values` must have len(boundaries) + 1 = {len(boundaries) + 1} entries, '
                     f'got {len(values)}.')
  if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
    raise ValueError(f'`boundaries` must be strictly increasing, got {boundaries}.')
  return _Piecewise(boundaries, values)


def complement(schedule: Weight, total: float = 1.0) -> Schedule:
  """``step -> total - schedule(step)``: the label weight ``α(t)`` that pairs with a KD weight.

  With ``kd = kd_until(n, 1 - α)``, ``(task_ce(complement(kd)), soft_kd(kd))``
  weights the two terms ``α : 1 - α`` for ``n`` steps and then trains on the
  labels alone (weight 1).

  Args:
    schedule: a schedule or a float.
    total: the sum of the two weights.

  Returns:
    A schedule ``step -> float32 weight``.

  Examples:
    >>> kd = kd_until(10, 0.9)
    >>> ce = complement(kd)
    >>> round(float(ce(0)), 6), float(ce(10))
    (0.1, 1.0)
  """
  return _Complement(schedule, float(total))


def weight_at(weight: Weight, step) -> jax.Array:
  """Evaluates a term weight (a float or a schedule) at ``step``, as the train step does.

  Examples:
    >>> float(weight_at(0.25, 3)), float(weight_at(kd_until(2), 3))
    (0.25, 0.0)
  """
  return _value(weight, jnp.asarray(step, jnp.int32))
