"""Tests of the validation-split tuning helper (experiments/tuning.py)."""

import math

import numpy as np
import pytest

from experiments import tuning
from kdjax import data as kd


def test_select_takes_the_best_and_the_first_of_ties():
  assert tuning.select([0.5, 0.9, 0.7]) == 1
  assert tuning.select([0.9, 0.9, 0.8]) == 0
  assert tuning.select([math.nan, 0.2, 0.1]) == 1
  with pytest.raises(ValueError):
    tuning.select([])
  with pytest.raises(ValueError):
    tuning.select([math.nan, math.nan])


def test_tune_records_the_whole_grid_and_the_choice():
  grid = tuning.grid_of(learning_rate=(1e-3, 1e-2, 1e-1), weight_decay=(0.0, 0.1))
  assert len(grid) == 6 and grid[1] == {'learning_rate': 1e-3, 'weight_decay': 0.1}
  calls = []

  def score(s):
    calls.append(s)
    return -abs(math.log10(s['learning_rate']) + 2) - s['weight_decay']  # best: lr 1e-2, wd 0

  out = tuning.tune(grid, score)
  assert calls == grid  # every setting scored once, in grid order
  assert out['grid'] == grid and len(out['validation_accuracy']) == 6
  assert out['chosen'] == {'learning_rate': 1e-2, 'weight_decay': 0.0}
  assert out['chosen_index'] == 2
  assert out['validation_accuracy'][2] == max(out['validation_accuracy'])


def test_tuning_lines_show_every_setting_and_the_choice():
  out = tuning.tune([{'learning_rate': 3e-3}, {'learning_rate': 1e-2}],
                    lambda s: {3e-3: 0.8, 1e-2: 0.85}[s['learning_rate']])
  text = tuning.tuning_lines({'DML': out})
  assert text == '- DML: lr 0.003 → 80.0%; lr 0.01 → 85.0% ⇒ **lr 0.01**'


def test_validation_sources_partition_train(tmp_path):
  train = kd.load('digits', 'train', data_dir=tmp_path)
  fit, val = tuning.validation_sources(train, fraction=0.1, seed=0)
  assert (fit.split, val.split) == ('train_fit', 'validation')
  ids_fit = fit.read_batch(np.arange(len(fit)))['id']
  ids_val = val.read_batch(np.arange(len(val)))['id']
  assert len(fit) + len(val) == len(train)
  assert not set(ids_fit.tolist()) & set(ids_val.tolist())


def test_edge_axes_flags_ends_of_grids_with_three_or_more_values():
  grid = [{'learning_rate': lr, 'α': a} for lr in (1e-3, 3e-3, 1e-2) for a in (0.1, 0.5)]
  rec = {'grid': grid, 'chosen': {'learning_rate': 1e-3, 'α': 0.5}}
  assert tuning.edge_axes(rec) == ['learning_rate']
  rec['chosen'] = {'learning_rate': 3e-3, 'α': 0.1}
  assert tuning.edge_axes(rec) == []
  note = tuning.edge_note({'d: KD': rec})
  assert 'No choice' in note and 'two values only' in note and 'α' in note
  rec['chosen'] = {'learning_rate': 1e-2, 'α': 0.1}
  assert 'd: KD (learning rate)' in tuning.edge_note({'d: KD': rec})


def test_edge_choices_flags_only_searched_ends():
  grid = tuning.grid_of(phase1_learning_rate=(1e-4, 1e-3, 1e-2), learning_rate=(1e-3, 1e-2))
  scores = {(1e-3, 1e-2): 0.9}  # the middle phase-1 rate, the top learning rate
  t = tuning.tune(grid, lambda s: scores.get((s['phase1_learning_rate'], s['learning_rate']), 0.1))
  middle = tuning.tune(tuning.grid_of(learning_rate=(1e-3, 3e-3, 1e-2)),
                       lambda s: -abs(s['learning_rate'] - 3e-3))
  single = tuning.tune([{'learning_rate': 1e-2}], lambda s: 0.5)
  assert tuning.edge_choices({'WD': t, 'KD': middle, 'teacher': single}) == [
      'WD (learning_rate 0.01)']
