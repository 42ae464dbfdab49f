"""Smoke test of the GAN feature KD experiment's 'quick' mode (tmp results)."""

import pytest

from experiments import gan
from experiments.configs import gan as gan_config


@pytest.mark.long
@pytest.mark.slow
def test_gan_quick(quick_config, check_results, results):
  config = quick_config(gan_config)
  rows = gan.run(config)
  records = check_results(results / 'gan_quick', gan.COLUMNS, rows,
                          ['gan_samples.png', 'gan_frechet.png'])
  assert {r['model'] for r in records} == {'teacher', 'student alone', 'student distilled'}
  assert all(0.0 <= r['cond_accuracy'] <= 1.0 for r in records)
  assert all(r['frechet'] >= -1e-6 for r in records)
  # Same noise and labels: the teacher is at distance 0 from itself.
  assert all(r['teacher_l1'] == 0.0 for r in records if r['model'] == 'teacher')
