"""Smoke test of the transformer KD experiment's 'quick' mode (tmp results)."""

import pytest

from experiments import transformer
from experiments.configs import transformer as transformer_config


@pytest.mark.long
@pytest.mark.slow
def test_transformer_quick(quick_config, check_results, results):
  config = quick_config(transformer_config)
  rows = transformer.run(config)
  records = check_results(results / 'transformer_quick', transformer.COLUMNS, rows,
                          ['transformer_accuracy.png', 'transformer_attention.png',
                           'transformer_attention_layer1.png'])
  assert {r['model'] for r in records} >= {'teacher', 'scratch'}
  assert all(0.0 <= r['accuracy'] <= 1.0 for r in records)
