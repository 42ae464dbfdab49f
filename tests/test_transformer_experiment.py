"""Smoke tests of the transformer KD experiment's quick modes, MNIST-1D and digits (tmp results)."""

import json

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


@pytest.mark.long
@pytest.mark.slow
def test_transformer_digits_quick(quick_config, check_results, results):
  """The digits variant: 8×8 images as 8 row tokens of 8 pixels, its own results folder."""
  config = quick_config(transformer_config, 'digits_quick')
  rows = transformer.run(config)
  out = results / 'transformer_digits_quick'
  records = check_results(out, transformer.COLUMNS, rows,
                          ['transformer_accuracy.png', 'transformer_attention.png',
                           'transformer_attention_layer1.png'])
  assert {r['model'] for r in records} == set(transformer.MODELS)
  assert all(0.0 <= r['accuracy'] <= 1.0 for r in records)
  # One attention map per layer and head over the 8 row tokens.
  example = next(r['attention_example'] for r in records if r['model'] == 'teacher')
  assert len(example) == config.teacher['depth']
  assert len(example[0]) == config.teacher['heads']
  assert len(example[0][0]) == 8 and len(example[0][0][0]) == 8
  setup = json.loads((out / 'setup.json').read_text())
  assert setup['facts']['tokens'] == 8 and setup['facts']['token_size'] == 8
  assert setup['command'].endswith('transformer.py:digits_quick')
  md = (out / 'results.md').read_text()
  assert 'digits' in md and '8 row tokens of 8 pixels' in md
