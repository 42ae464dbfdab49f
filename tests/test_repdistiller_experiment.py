"""The RepDistiller experiment: its FSP pooling against hand-computed windows, its quick mode."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import repdistiller
from experiments import stats
from experiments.configs import repdistiller as repdistiller_config
from kdjax import losses


def test_adaptive_pool_matrix_matches_hand_computed_windows():
  # PyTorch's adaptive_avg_pool1d windows of 5 -> 3: [0, 2), [1, 4), [3, 5).
  np.testing.assert_allclose(repdistiller.adaptive_pool_matrix(5, 3) @ np.arange(5.0),
                             [0.5, 2.0, 3.5])
  # When the output length divides the input's, the windows tile: a reshaped mean.
  x = np.random.default_rng(0).normal(size=10)
  np.testing.assert_allclose(repdistiller.adaptive_pool_matrix(10, 5) @ x,
                             x.reshape(5, 2).mean(1), rtol=1e-6)
  # 19 -> 10 (the CNN1D's stage1 -> stage2 lengths): overlapping windows covering every input.
  m = repdistiller.adaptive_pool_matrix(19, 10)
  np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)
  assert (m > 0).any(0).all() and (m[:, 0] > 0).sum() == 1 and m[-1, -1] > 0
  with pytest.raises(ValueError, match='Cannot pool'):
    repdistiller.adaptive_pool_matrix(3, 5)


def test_pooled_pair_feeds_fsp_the_pooled_maps():
  rng = np.random.default_rng(1)
  s_in, s_out = rng.normal(size=(2, 10, 3)), rng.normal(size=(2, 5, 4))
  t_in, t_out = rng.normal(size=(2, 10, 3)), rng.normal(size=(2, 5, 4))
  inputs = repdistiller.PooledPair().apply({}, (jnp.asarray(s_in), jnp.asarray(s_out)),
                                           (jnp.asarray(t_in), jnp.asarray(t_out)), None)
  got = losses.fsp_loss(*inputs)

  def fsp(a, b):  # the FSP matrix of the pair-wise pooled map and the other, by hand
    a = a.reshape(2, 5, 2, 3).mean(2)
    return np.einsum('bli,blj->bij', a, b) / 5
  want = np.mean((fsp(s_in, s_out) - fsp(t_in, t_out)) ** 2, axis=(1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.long
@pytest.mark.slow
def test_repdistiller_quick(quick_config, check_results, results):
  config = quick_config(repdistiller_config)
  rows = repdistiller.run(config)
  records = check_results(results / 'repdistiller_quick', repdistiller.COLUMNS, rows,
                          ['mnist1d.png'])
  assert {r['method'] for r in records} == set(config.methods)
  assert all(0.0 <= r['accuracy'] <= 1.0 for r in records)
  # KD and every method are compared with scratch and (but KD) with KD, paired by seed.
  assert all(r['delta'] == pytest.approx(r['accuracy'] - next(
      s['accuracy'] for s in records if s['method'] == 'scratch' and s['seed'] == r['seed']))
             for r in records)
  md = (results / 'repdistiller_quick' / 'results.md').read_text()
  for method in set(config.methods) - {'scratch'}:
    assert f'- mnist1d, {method}, ' in md


def test_zero_spread_note_flags_only_significant_equal_differences():
  family = stats.compare({'A vs B': [0.011, 0.011, 0.011], 'C vs B': [0.01, 0.02, 0.03],
                          'D vs B': [0.0, 0.0, 0.0]})
  note = repdistiller.zero_spread_note(family)
  # A's equal differences give p = 0 (a "better" verdict), which the note qualifies; C has a
  # spread, and D's zero differences are "no significant difference": neither is flagged.
  assert family[0].verdict == stats.BETTER and family[0].p == 0.0
  assert note.startswith(' A vs B: its 3 per-seed differences are all +1.1 points')
  assert 'C vs B' not in note and 'D vs B' not in note
