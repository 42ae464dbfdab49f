"""Tests for experiments 1, 6 and 7 (temperature, topk, dkd_dist): tuning, teachers, reports."""

import json

import ml_collections
import numpy as np
import pytest

from experiments import dkd_dist
from experiments import temperature
from experiments import topk
from experiments.configs import dkd_dist as dkd_dist_config
from experiments.configs import temperature as temperature_config
from experiments.configs import topk as topk_config


CONFIGS = (temperature_config, topk_config, dkd_dist_config)


# ------------------------------------------------------------------ cheap helpers

@pytest.mark.parametrize('module', CONFIGS)
def test_default_configs_tune_on_validation_with_a_teacher_per_seed(module):
  c = module.get_config()
  assert len(c.seeds) >= 5 and c.teacher_per_seed
  assert c.tuning.seed not in c.seeds
  assert 0 < c.tuning.fraction < 1
  assert len(c.tuning.learning_rates) >= 3
  assert [temperature.teacher_seed(c, s) for s in c.seeds] == list(c.seeds)
  assert module.get_config('quick').results.endswith('_quick')


def test_teacher_dir_names_the_seed_and_the_tuning_split():
  c = temperature_config.get_config()
  full = temperature.teacher_dir(c, 'digits', 3)
  fit = temperature.teacher_dir(c, 'digits', 3, fit=True)
  assert full.endswith('seed3') and fit.endswith('seed3-fit0.1s0') and full != fit
  assert temperature.teacher_dir(c, 'digits', 4) != full


def test_setting_label_and_hyperparameters():
  s = {'learning_rate': 1e-2, 'k': 3.0, 'τ': 4.0, 'α': 0.5}
  assert temperature.setting_label(s) == 'k=3, τ=4, α=0.5, lr=0.01'
  assert temperature.hyperparameters(s) == {'k': 3.0, 'τ': 4.0, 'α': 0.5}


def test_curve_settings_take_the_best_of_each_temperature():
  config = ml_collections.ConfigDict({'tuning': {'learning_rates': (1e-3, 1e-2)}})
  grid = temperature.grid(config, {'τ': (1.0, 4.0), 'α': (0.1, 0.5)})
  assert len(grid) == 8 and list(grid[0]) == ['learning_rate', 'τ', 'α']
  acc = [0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.3, 0.2]
  best = int(np.argmax(acc))
  rec = {'grid': grid, 'validation_accuracy': acc, 'chosen_index': best}
  curve = temperature.curve_settings(rec)
  assert [(s['τ'], chosen) for s, chosen in curve] == [(1.0, True), (4.0, False)]
  assert curve[0][0] == grid[best] and curve[1][0] == grid[3]


def test_method_grids_follow_the_configs():
  c = temperature_config.get_config()
  grids = {m.name: m.grid for m in temperature.methods(c, 'digits')}
  lrs = len(c.tuning.learning_rates)
  assert len(grids['scratch']) == lrs
  assert len(grids['KD']) == lrs * len(c.temperatures) * len(c.alphas)
  c = topk_config.get_config()
  grids = {m.name: m.grid for m in topk.methods(c)}
  assert {f'KD-topk k={k}' for k in c.ks} <= set(grids)
  assert all(len(g) == lrs * len(c.alphas) for n, g in grids.items() if n != 'scratch')
  c = dkd_dist_config.get_config()
  grids = {m.name: m.grid for m in dkd_dist.methods(c)}
  assert len(grids['DKD']) == lrs * len(c.dkd.betas)
  assert len(grids['DIST']) == lrs * len(c.dist.temperatures)
  # The KD and scratch runs of experiments 6 and 7 are a subset of experiment 1's grid, so
  # the shared run cache trains them once.
  t = {m.name: m.grid for m in temperature.methods(temperature_config.get_config(), 'digits')}
  assert all(s in t['KD'] for s in grids['KD']) and grids['scratch'] == t['scratch']


# ------------------------------------------------------------------ quick runs

def _check_tuned(results, name, config, rows, pngs, check_results):
  records = check_results(results / name, rows[0].keys(), rows, pngs)
  setup = json.loads((results / name / 'setup.json').read_text())
  facts = setup['facts']
  for d in config.datasets_run:
    assert facts['fit_size'][d] + facts['validation_size'][d] == facts['train_size'][d]
    for method, t in facts['tuning'][d].items():
      assert len(t['grid']) >= 1 and len(t['grid']) == len(t['validation_accuracy'])
      assert t['chosen'] == t['grid'][int(np.argmax(t['validation_accuracy']))]
      chosen = [r for r in records if r['dataset'] == d and r['method'] == method
                and r['chosen']]
      assert {r['seed'] for r in chosen} == set(config.seeds)
      assert {r['setting'] for r in chosen} == {temperature.setting_label(t['chosen'])}
  # A teacher per seed: teacher i with seed i, different teachers.
  assert all(r['teacher seed'] == r['seed'] for r in records)
  teachers = {(r['dataset'], r['teacher seed']): r['teacher accuracy'] for r in records}
  assert len(teachers) == len(config.datasets_run) * len(config.seeds)
  md = (results / name / 'results.md').read_text()
  assert 'chosen on validation data, never on test' in md
  assert '95% CI' in md and 'Holm p' in md
  assert 'over 2 teachers' in md
  assert 'Validation accuracy of every setting tried' in md
  return records, setup, md


@pytest.mark.long
@pytest.mark.slow
def test_temperature_quick_tunes_tau_on_validation(quick_config, check_results, results):
  config = quick_config(temperature_config)
  rows = temperature.run(config)
  records, setup, md = _check_tuned(results, 'temperature_quick', config, rows,
                                    ['mnist1d.png'], check_results)
  kd = setup['facts']['tuning']['mnist1d']['KD']
  assert len(kd['grid']) == (len(config.tuning.learning_rates) * len(config.temperatures)
                             * len(config.alphas))
  # The τ curve: every τ tested, exactly one of them the validation choice.
  kd_rows = [r for r in rows if r['method'] == 'KD']
  assert sorted(float(r['τ']) for r in kd_rows) == sorted(config.temperatures)
  assert sum(r['validation choice'] == 'yes' for r in kd_rows) == 1
  assert any(r['method'] == 'KD (transfer set)' for r in records)
  assert '(validation choice) vs scratch' in md and 'Exploratory (τ curve)' in md
  assert '**mnist1d**, labeled set: **' in md


@pytest.mark.long
@pytest.mark.slow
def test_topk_quick_compares_with_kd(quick_config, check_results, results):
  config = quick_config(topk_config)
  rows = topk.run(config)
  _, _, md = _check_tuned(results, 'topk_quick', config, rows, ['mnist1d.png'], check_results)
  topk_row = next(r for r in rows if r['method'].startswith('KD-topk'))
  assert topk_row['verdict vs KD'] in ('better', 'worse', 'no significant difference')
  assert topk_row['95% CI vs KD'].startswith('[')
  assert 'KD-topk − KD, paired' in md


@pytest.mark.long
@pytest.mark.slow
def test_dkd_dist_quick_compares_with_kd(quick_config, check_results, results):
  config = quick_config(dkd_dist_config)
  rows = dkd_dist.run(config)
  _, _, md = _check_tuned(results, 'dkd_dist_quick', config, rows, ['mnist1d.png'],
                          check_results)
  assert {r['method'] for r in rows} == {'scratch', 'KD', 'DKD', 'DIST'}
  for r in rows:
    if r['method'] in ('DKD', 'DIST'):
      assert r['verdict vs KD'] in ('better', 'worse', 'no significant difference')
  assert 'significantly better than KD' in md
