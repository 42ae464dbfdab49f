"""Tests of experiments/stats.py against scipy.stats and a hand-worked Holm example."""

import doctest
import math

import numpy as np
import pytest
from scipy import stats as sstats

from experiments import stats


def test_doctests():
  assert doctest.testmod(stats, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


@pytest.mark.parametrize('n', [2, 3, 5, 10])
def test_paired_t_matches_scipy(n):
  rng = np.random.default_rng(n)
  a, b = rng.normal(0.8, 0.02, n), rng.normal(0.79, 0.02, n)
  c = stats.paired_t(a - b)
  ref = sstats.ttest_rel(a, b)
  assert c.p == pytest.approx(ref.pvalue, rel=1e-10)
  half = sstats.t.ppf(0.975, n - 1) * np.std(a - b, ddof=1) / np.sqrt(n)
  assert c.mean == pytest.approx(np.mean(a - b))
  assert (c.low, c.high) == pytest.approx((c.mean - half, c.mean + half), rel=1e-10)
  # The interval of scipy's own result (scipy >= 1.10) agrees too.
  if hasattr(ref, 'confidence_interval'):
    ci = ref.confidence_interval(0.95)
    assert (c.low, c.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
  assert c.n == n and c.p_holm == c.p


def test_paired_t_confidence_and_edge_cases():
  d = [0.01, 0.03, 0.02, 0.05]
  wide, narrow = stats.paired_t(d, confidence=0.99), stats.paired_t(d, confidence=0.8)
  assert wide.low < narrow.low < narrow.high < wide.high
  one = stats.paired_t([0.02])
  assert math.isnan(one.low) and math.isnan(one.p) and one.verdict == stats.TOO_FEW
  zero = stats.paired_t([0.0, 0.0, 0.0])  # no spread, no difference
  assert (zero.low, zero.high, zero.p, zero.verdict) == (0.0, 0.0, 1.0, stats.NO_DIFFERENCE)
  same = stats.paired_t([0.01, 0.01])  # no spread, every seed better
  assert same.p == 0.0 and same.verdict == stats.BETTER
  with pytest.raises(ValueError, match='confidence'):
    stats.paired_t(d, confidence=95)
  with pytest.raises(ValueError, match='diffs'):
    stats.paired_t([])


def test_paired_differences_pair_by_seed():
  d = stats.paired_differences({2: 0.9, 0: 0.7, 1: 0.8}, {0: 0.6, 1: 0.8, 2: 0.95})
  np.testing.assert_allclose(d, [0.1, 0.0, -0.05])
  with pytest.raises(ValueError, match='same seeds'):
    stats.paired_differences({0: 0.9, 1: 0.8}, {0: 0.6})


def test_holm_hand_worked_example():
  # m = 4. Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running
  # max 0.02, 0.03, 0.06, 0.06; at α = 0.05 Holm rejects the first two only.
  adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
  np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
  assert list(adjusted < 0.05) == [True, False, False, True]
  np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
  np.testing.assert_allclose(stats.holm([0.02]), [0.02])  # a family of one
  out = stats.holm([0.01, float('nan'), 0.04])  # NaN: not in the family
  np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04])
  assert math.isnan(out[1])
  assert stats.holm([]).shape == (0,)


def test_holm_matches_the_definition_on_random_pvalues():
  rng = np.random.default_rng(0)
  p = rng.uniform(0, 0.2, 7)
  order = np.argsort(p)
  m = len(p)
  expected = np.empty(m)
  running = 0.0
  for i, k in enumerate(order):
    running = max(running, min(1.0, (m - i) * p[k]))
    expected[k] = running
  np.testing.assert_allclose(stats.holm(p), expected)


def test_compare_applies_holm_and_verdicts():
  family = stats.compare([('a', [0.02, 0.03, 0.025, 0.035]), ('b', [-0.02, -0.03, -0.025, -0.02]),
                          ('c', [0.01, -0.01, 0.0, 0.005]), ('d', [0.01])])
  raw = [stats.paired_t(d).p for d in ([0.02, 0.03, 0.025, 0.035], [-0.02, -0.03, -0.025, -0.02],
                                       [0.01, -0.01, 0.0, 0.005])]
  np.testing.assert_allclose([c.p_holm for c in family[:3]], stats.holm(raw))
  assert [c.verdict for c in family] == [stats.BETTER, stats.WORSE, stats.NO_DIFFERENCE,
                                         stats.TOO_FEW]
  assert family[0].wins == 4 and family[1].wins == 0
  with pytest.raises(ValueError, match='unique'):
    stats.compare([('a', [0.1, 0.2]), ('a', [0.1, 0.2])])
  with pytest.raises(ValueError, match='method'):
    stats.compare({'a': [0.1, 0.2]}, method='wilcoxon')


def test_holm_can_turn_a_nominal_win_into_no_difference():
  # p ≈ 0.04 alone is 'better'; in a family of 3 with nothing else it is not.
  d = [0.012, 0.02, 0.004, 0.016, 0.0]
  alone = stats.compare({'x': d})[0]
  assert alone.p < 0.05 and alone.verdict == stats.BETTER
  family = stats.compare({'x': d, 'y': [0.0, 0.01, -0.01, 0.0, 0.001],
                          'z': [0.01, -0.02, 0.0, 0.01, 0.0]})
  assert family[0].p_holm > 0.05 and family[0].verdict == stats.NO_DIFFERENCE


def test_paired_bootstrap_is_seeded_and_close_to_t_for_many_seeds():
  rng = np.random.default_rng(1)
  d = rng.normal(0.01, 0.01, 30)
  a = stats.paired_bootstrap(d, seed=3)
  assert a == stats.paired_bootstrap(d, seed=3)  # fixed seed: reproducible
  assert a != stats.paired_bootstrap(d, seed=4)
  t = stats.paired_t(d)
  assert a.method == 'bootstrap' and a.mean == t.mean
  assert a.low == pytest.approx(t.low, abs=0.002) and a.high == pytest.approx(t.high, abs=0.002)
  assert a.low < a.mean < a.high and a.p < 0.05
  family = stats.compare({'x': d, 'y': -d}, method='bootstrap', seed=3)
  assert [c.verdict for c in family] == [stats.BETTER, stats.WORSE]
  assert stats.paired_bootstrap([0.0, 0.0]).p == 1.0
  with pytest.raises(ValueError, match='num_resamples'):
    stats.paired_bootstrap(d, num_resamples=0)


def test_formatting():
  c = stats.compare({'x': [0.012, 0.018, 0.015]})[0]
  cols = stats.columns(c, delta='Δ vs KD')
  assert cols['Δ vs KD'] == '+1.5' and cols['verdict'] == stats.BETTER
  assert cols['95% CI'] == stats.format_ci(c) and cols['Holm p'] == stats.format_p(c.p_holm)
  assert stats.columns(None) == {'Δ (paired)': '—', '95% CI': '—', 'Holm p': '—', 'verdict': '—'}
  assert stats.summary(c).startswith('+1.5 points, 95% CI [')
  assert stats.summary(c).endswith('→ better')
