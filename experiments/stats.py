"""Paired comparisons over seeds: mean difference, 95% interval, Holm correction, verdict.

Every experiment compares methods with a baseline trained with the same seeds
(the same initialisation and data order), so each comparison is a set of
per-seed differences ``method − baseline``. This module turns those
differences into the numbers every results table shows:

* the mean difference and a confidence interval, from the paired t
  distribution (:func:`paired_t`) or a paired bootstrap with a fixed seed
  (:func:`paired_bootstrap`);
* a two-sided p-value for "no difference";
* the Holm (Holm–Bonferroni) step-down correction across one experiment's
  family of comparisons (:func:`holm`);
* a verdict computed from the corrected p-value (:func:`verdict`): ``'better'``,
  ``'worse'``, ``'no significant difference'``, or ``'n < 2: no interval'``.

:func:`compare` does all of it for a family. Accuracies are fractions; the
formatting helpers print differences in percentage points.

Examples:
  >>> family = compare({'KD': [0.02, 0.03, 0.025, 0.035],
  ...                   'KD-topk': [0.01, -0.01, 0.0, 0.005]})
  >>> [(c.name, c.verdict) for c in family]
  [('KD', 'better'), ('KD-topk', 'no significant difference')]
  >>> format_ci(family[0])
  '[+1.7, +3.8]'
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sstats


ALPHA = 0.05
BETTER, WORSE, NO_DIFFERENCE, TOO_FEW = ('better', 'worse', 'no significant difference',
                                         'n < 2: no interval')
CRITERION = ('paired by seed; 95% CI of the mean difference from the paired t distribution '
             '(not adjusted for multiplicity); '
             'p-values Holm-corrected across the experiment\'s comparisons; "better"/"worse" '
             'when the Holm-adjusted p < 0.05, else "no significant difference"')


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One paired comparison: ``method − baseline`` over seeds.

  Attributes:
    name: what is compared, e.g. ``'KD vs scratch'``.
    diffs: the per-seed differences ``[n]``, in the order given.
    mean: their mean.
    low: the lower end of the confidence interval (NaN when ``n < 2``).
    high: the upper end (NaN when ``n < 2``).
    p: the two-sided p-value of "mean difference 0" (NaN when ``n < 2``).
    p_holm: ``p`` after the Holm correction across the family (``p`` alone).
    method: ``'t'`` or ``'bootstrap'``.
    confidence: the interval's confidence level.
  """
  name: str
  diffs: tuple[float, ...]
  mean: float
  low: float
  high: float
  p: float
  p_holm: float
  method: str = 't'
  confidence: float = 0.95

  @property
  def n(self) -> int:
    return len(self.diffs)

  @property
  def verdict(self) -> str:
    return verdict(self.mean, self.p_holm, n=self.n)

  @property
  def wins(self) -> int:
    """Seeds where the method beat the baseline (difference > 0)."""
    return int(sum(d > 0 for d in self.diffs))


def paired_differences(values: Mapping[object, float],
                       baseline: Mapping[object, float]) -> np.ndarray:
  """``values[s] − baseline[s]`` for every seed ``s``, in sorted seed order.

  Args:
    values: the method's metric by seed (or by any pairing key).
    baseline: the baseline's metric by the same keys.

  Returns:
    ``[n]`` float64 differences.

  Raises:
    ValueError: if the two do not have the same seeds.

  Examples:
    >>> paired_differences({0: 0.9, 1: 0.8}, {1: 0.7, 0: 0.85})
    array([0.05, 0.1 ])
  """
  if set(values) != set(baseline):
    raise ValueError(f'`values` and `baseline` must have the same seeds; got {sorted(values)} '
                     f'and {sorted(baseline)}.')
  keys = sorted(values)
  return np.asarray([values[k] - baseline[k] for k in keys], np.float64)


def _degenerate(d: np.ndarray):
  """``(low, high, p)`` when every difference is the same value (zero spread)."""
  m = float(d.mean())
  return m, m, 1.0 if m == 0 else 0.0


def paired_t(diffs: Sequence[float], *, confidence: float = 0.95,
             name: str = '') -> Comparison:
  """The mean of ``diffs`` with its paired-t confidence interval and two-sided p-value.

  The interval is ``mean ± t_{n−1}(1 − (1−confidence)/2) · s/√n`` and the
  p-value that of ``scipy.stats.ttest_rel`` (a one-sample t test on the
  differences). With zero spread the interval is the point itself, and p is
  1 (all differences 0) or 0. With ``n < 2`` the interval and p are NaN.

  Args:
    diffs: per-seed differences ``[n]``.
    confidence: the interval's level, in (0, 1).
    name: a label for the comparison.

  Returns:
    A :class:`Comparison` whose ``p_holm`` equals ``p`` (a family of one).

  Examples:
    >>> c = paired_t([0.01, 0.03, 0.02])
    >>> round(c.mean, 4), round(c.low, 4), round(c.high, 4), round(c.p, 4)
    (0.02, -0.0048, 0.0448, 0.0742)
  """
  if not 0 < confidence < 1:
    raise ValueError(f'`confidence` must be in (0, 1); got {confidence}.')
  d = np.asarray(diffs, np.float64).ravel()
  if d.size == 0:
    raise ValueError('`diffs` must not be empty.')
  mean = float(d.mean())
  if d.size < 2:
    low = high = p = math.nan
  elif np.all(d == d[0]):
    low, high, p = _degenerate(d)
  else:
    se = float(d.std(ddof=1)) / math.sqrt(d.size)
    q = float(sstats.t.ppf(0.5 + confidence / 2, d.size - 1))
    low, high = mean - q * se, mean + q * se
    p = float(2 * sstats.t.sf(abs(mean) / se, d.size - 1))
  return Comparison(name, tuple(float(x) for x in d), mean, low, high, p, p, 't', confidence)


def paired_bootstrap(diffs: Sequence[float], *, confidence: float = 0.95,
                     num_resamples: int = 10_000, seed: int = 0,
                     name: str = '') -> Comparison:
  """The mean of ``diffs`` with a percentile bootstrap interval and p-value.

  Seeds are resampled with replacement ``num_resamples`` times (a fixed
  ``seed``, so the result is reproducible). The interval is the percentile
  interval of the resampled means; the two-sided p-value is
  ``min(1, 2·min(P*(mean ≤ 0), P*(mean ≥ 0)))`` over the resamples. With few
  seeds the bootstrap is optimistic (it cannot see beyond the observed
  spread); the paired t interval is the default for that reason.

  Args:
    diffs: per-seed differences ``[n]``.
    confidence: the interval's level, in (0, 1).
    num_resamples: bootstrap resamples.
    seed: the resampling seed.
    name: a label for the comparison.

  Returns:
    A :class:`Comparison` (``method='bootstrap'``).

  Examples:
    >>> c = paired_bootstrap([0.01, 0.03, 0.02, 0.04], seed=0)
    >>> c.low > 0, c.p < 0.05
    (True, True)
  """
  if not 0 < confidence < 1:
    raise ValueError(f'`confidence` must be in (0, 1); got {confidence}.')
  if num_resamples < 1:
    raise ValueError(f'`num_resamples` must be positive; got {num_resamples}.')
  d = np.asarray(diffs, np.float64).ravel()
  if d.size == 0:
    raise ValueError('`diffs` must not be empty.')
  mean = float(d.mean())
  if d.size < 2:
    low = high = p = math.nan
  elif np.all(d == d[0]):
    low, high, p = _degenerate(d)
  else:
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(num_resamples, d.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = (float(x) for x in np.quantile(means, [tail, 1 - tail]))
    p = float(min(1.0, 2 * min(np.mean(means <= 0), np.mean(means >= 0))))
  return Comparison(name, tuple(float(x) for x in d), mean, low, high, p, p, 'bootstrap',
                    confidence)


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm–Bonferroni adjusted p-values (step-down, monotone, at most 1).

  The ``m`` finite p-values are sorted, ``p_(i)`` (``i = 1..m``) is scaled by
  ``m − i + 1``, a running maximum keeps the order, and values are capped at
  1. Rejecting where the adjusted p < α controls the family-wise error rate at
  α. NaN entries (comparisons without a p-value) stay NaN and do not count in
  ``m``.

  Args:
    pvalues: raw p-values ``[m]``.

  Returns:
    ``[m]`` adjusted p-values, in the input order.

  Examples:
    >>> holm([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.03, 0.06, 0.06, 0.02]
  """
  p = np.asarray(pvalues, np.float64).ravel()
  out = np.full(p.shape, np.nan)
  finite = np.flatnonzero(~np.isnan(p))
  m = finite.size
  if m == 0:
    return out
  order = finite[np.argsort(p[finite], kind='stable')]
  scaled = p[order] * (m - np.arange(m))
  out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
  return out


def verdict(mean: float, p_adjusted: float, *, n: int, alpha: float = ALPHA) -> str:
  """``'better'`` / ``'worse'`` / ``'no significant difference'`` / ``'n < 2: no interval'``.

  Args:
    mean: the mean difference (method − baseline).
    p_adjusted: its (Holm-)adjusted two-sided p-value.
    n: the number of seeds.
    alpha: the family-wise error rate.

  Examples:
    >>> verdict(0.02, 0.01, n=5), verdict(-0.02, 0.01, n=5), verdict(0.02, 0.2, n=5)
    ('better', 'worse', 'no significant difference')
    >>> verdict(0.02, float('nan'), n=1)
    'n < 2: no interval'
  """
  if n < 2 or math.isnan(p_adjusted):
    return TOO_FEW
  if p_adjusted < alpha and mean > 0:
    return BETTER
  if p_adjusted < alpha and mean < 0:
    return WORSE
  return NO_DIFFERENCE


def compare(family: Mapping[str, Sequence[float]] | Sequence[tuple[str, Sequence[float]]], *,
            method: str = 't', confidence: float = 0.95, num_resamples: int = 10_000,
            seed: int = 0) -> list[Comparison]:
  """Every comparison of one experiment, with Holm-adjusted p-values.

  Args:
    family: ``{name: per-seed differences}`` (or ``(name, diffs)`` pairs), all
      the comparisons whose verdicts an experiment reports.
    method: ``'t'`` (:func:`paired_t`) or ``'bootstrap'`` (:func:`paired_bootstrap`).
    confidence: the intervals' level.
    num_resamples: bootstrap resamples (``method='bootstrap'``).
    seed: the bootstrap seed.

  Returns:
    One :class:`Comparison` per entry, in order, ``p_holm`` corrected over the family.
  """
  items = list(family.items()) if isinstance(family, Mapping) else list(family)
  names = [n for n, _ in items]
  if len(set(names)) != len(names):
    raise ValueError(f'Comparison names must be unique; got {names}.')
  if method == 't':
    out = [paired_t(d, confidence=confidence, name=n) for n, d in items]
  elif method == 'bootstrap':
    out = [paired_bootstrap(d, confidence=confidence, num_resamples=num_resamples, seed=seed,
                            name=n) for n, d in items]
  else:
    raise ValueError(f'Unknown `method` {method!r}; use \'t\' or \'bootstrap\'.')
  adjusted = holm([c.p for c in out])
  return [dataclasses.replace(c, p_holm=float(a)) for c, a in zip(out, adjusted)]


# ------------------------------------------------------------------ formatting

def format_delta(c: Comparison, *, scale: float = 100.0, digits: int = 1) -> str:
  """The mean difference with its sign, in points (``scale=100``).

  Examples:
    >>> format_delta(paired_t([0.012, 0.018]))
    '+1.5'
  """
  return f'{scale * c.mean:+.{digits}f}'


def format_ci(c: Comparison, *, scale: float = 100.0, digits: int = 1) -> str:
  """``'[low, high]'`` in points, or ``'—'`` without an interval.

  Examples:
    >>> format_ci(paired_t([0.01]))
    '—'
  """
  if math.isnan(c.low):
    return '—'
  return f'[{scale * c.low:+.{digits}f}, {scale * c.high:+.{digits}f}]'


def format_p(p: float) -> str:
  """A p-value for a table: 3 decimals, ``'<0.001'`` below that, ``'—'`` for NaN.

  Examples:
    >>> format_p(0.04567), format_p(1e-5), format_p(float('nan'))
    ('0.046', '<0.001', '—')
  """
  if math.isnan(p):
    return '—'
  return '<0.001' if p < 0.001 else f'{p:.3f}'


def summary(c: Comparison, *, unit: str = 'points') -> str:
  """``'+1.5 points, 95% CI [+0.2, +2.8], Holm p 0.030 → better'``.

  Examples:
    >>> summary(paired_t([0.01]))
    '+1.0 points (n = 1) → n < 2: no interval'
  """
  if c.n < 2:
    return f'{format_delta(c)} {unit} (n = {c.n}) → {c.verdict}'
  level = f'{100 * c.confidence:g}%'
  return (f'{format_delta(c)} {unit}, {level} CI {format_ci(c)}, Holm p {format_p(c.p_holm)} '
          f'→ {c.verdict}')


def columns(c: Comparison | None, *, delta: str = 'Δ (paired)') -> dict[str, str]:
  """The shared table columns of a comparison (``'—'`` everywhere for a baseline row).

  Returns:
    ``{delta: '+1.5', '95% CI': '[+0.2, +2.8]', 'Holm p': '0.030', 'verdict': 'better'}``.
  """
  if c is None:
    return {delta: '—', '95% CI': '—', 'Holm p': '—', 'verdict': '—'}
  return {delta: format_delta(c), '95% CI': format_ci(c), 'Holm p': format_p(c.p_holm),
          'verdict': c.verdict}


COLUMNS = ('95% CI', 'Holm p', 'verdict')
