"""ESKD and BAN under the validation protocol: the grids, the chosen settings, the reports.

The quick-mode runs (MNIST-1D and digits) are ``long``; the config and grid
helpers are cheap and run in the default suite.
"""

import json

import numpy as np
import pytest

from experiments import ban
from experiments import eskd
from experiments import tuning
from experiments.configs import ban as ban_config
from experiments.configs import eskd as eskd_config


# ------------------------------------------------------------------ cheap helpers

@pytest.mark.parametrize('mode', ['default', 'digits'])
def test_eskd_grids_are_a_priori_and_tuned_per_teacher(mode):
  c = eskd_config.get_config(mode)
  grids = eskd.tuning_grids(c)
  assert list(grids) == ['scratch'] + [f'KD from {n}' for n, _, _ in c.teachers]
  lrs = list(c.tuning.learning_rates)
  assert [g['learning_rate'] for g in grids['scratch']] == lrs
  assert len(lrs) >= 3  # wide enough to tell an interior choice from an edge
  for name, _, _ in c.teachers:
    g = grids[f'KD from {name}']
    assert len(g) == len(lrs) * len(c.tuning.alphas) * len(c.tuning.temperatures)
    assert set(g[0]) == {'learning_rate', 'alpha', 'temperature'}
  assert c.tuning.seed not in c.seeds and len(c.seeds) >= 5
  assert 'student_lr' not in c and 'kd' not in c  # no fixed student setting left


def test_eskd_cnn4_keeps_the_untuned_design():
  c = eskd_config.get_config('cnn4')
  assert c.tuning is None
  s = eskd.chosen_settings(c, {})
  assert s['scratch'] == {'learning_rate': c.student_lr}
  assert s['cnn8'] == {'learning_rate': c.student_lr, 'alpha': c.kd.alpha,
                       'temperature': c.kd.temperature}


def test_eskd_chosen_settings_come_from_the_tuning_record():
  c = eskd_config.get_config('quick')
  grids = eskd.tuning_grids(c)
  facts = {'tuning': {k: tuning.tune(g, lambda s: s['learning_rate'])
                      for k, g in grids.items()}}
  s = eskd.chosen_settings(c, facts)
  assert s['scratch'] == {'learning_rate': max(c.tuning.learning_rates)}
  assert s['T'] == facts['tuning']['KD from T']['chosen']


def test_eskd_stopped_objective_switches_the_kd_term_off():
  terms = eskd.kd_objectives({'alpha': 0.25, 'temperature': 2.0}, 5)
  assert len(terms['full']) == len(terms['stopped']) == 2
  assert eskd.format_setting({'learning_rate': 0.01, 'alpha': 0.25,
                              'temperature': 2.0}) == 'lr 0.01, α 0.25, τ 2'


@pytest.mark.parametrize('mode', ['default', 'digits'])
def test_ban_grids_tune_scratch_and_students_separately(mode):
  c = ban_config.get_config(mode)
  grids = ban.tuning_grids(c)
  assert list(grids) == ['scratch'] + [v for v, _, _ in c.variants]
  lrs = list(c.tuning.learning_rates)
  assert len(lrs) >= 3
  assert grids['ban'] == [{'learning_rate': lr, 'alpha': 0.0, 'temperature': 1.0} for lr in lrs]
  kd = c.tuning.kd_grids.ban_kd
  assert len(grids['ban_kd']) == len(lrs) * len(kd.alpha) * len(kd.temperature)
  assert c.tuning.seed not in c.seeds and len(c.seeds) >= 5
  assert 'learning_rate' not in c  # no fixed rate left


def test_ban_untuned_settings_are_the_configs():
  c = ban_config.get_config('quick')
  c.learning_rate = 3e-3
  assert ban.chosen_settings(c, {}) == {
      'scratch': {'learning_rate': 3e-3},
      'ban': {'learning_rate': 3e-3, 'alpha': 0.0, 'temperature': 1.0}}


# ------------------------------------------------------------------ quick runs

def _check_search(t, grid):
  assert t['grid'] == grid
  assert len(t['validation_accuracy']) == len(grid)
  assert all(0.0 <= a <= 1.0 for a in t['validation_accuracy'])
  assert t['chosen'] == grid[int(np.argmax(t['validation_accuracy']))]


def _check_report(md, comparisons):
  assert 'chosen on validation data, not test' in md
  assert any(edge in md for edge in ('Searched over two values only', 'lies at an end of its grid',
                                     'at an end of their grid'))
  assert 'Holm' in md and '95% CI [' in md and 'Wall time of the run' in md
  for name in comparisons:
    assert f'- {name}: ' in md
  assert md.count(' → better') + md.count(' → worse') + md.count(
      ' → no significant difference') >= len(comparisons)


def _run_tuned(module, config, check_results, results, plots):
  """Runs a quick mode; checks its files and that every grid was searched on validation."""
  rows = module.run(config)
  out = results / config.results
  records = check_results(out, module.COLUMNS, rows, plots)
  facts = json.loads((out / 'setup.json').read_text())['facts']
  assert facts['fit_size'] + facts['validation_size'] == facts['train_size'] == 160
  grids = module.tuning_grids(config)
  assert set(facts['tuning']) == set(grids)
  for name, grid in grids.items():
    _check_search(facts['tuning'][name], grid)
  return config, rows, records, facts, out


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.parametrize('mode', ['quick', 'digits_quick'])
def test_eskd_quick_modes_tune_on_validation(mode, quick_config, check_results, results):
  config, _, records, facts, out = _run_tuned(
      eskd, quick_config(eskd_config, mode), check_results, results,
      ['kd_loss_vs_acc.png', 'kd_loss_curves.png'])
  chosen = eskd.chosen_settings(config, facts)
  assert sorted({r['seed'] for r in records}) == list(config.seeds)
  for r in records:  # every evaluation run used the setting chosen on validation
    want = chosen['scratch' if r['teacher'].startswith('—') else r['teacher']]
    assert {k: r[k] for k in want} == want
  md = (out / 'results.md').read_text()
  _check_report(md, ['T@10 (full KD) vs scratch', 'T: checkpoint 5 vs final (10)',
                     'T: KD term stopped at 5 vs full KD'])
  assert eskd.format_setting(chosen['T']) in md


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.parametrize('mode', ['quick', 'digits_quick'])
def test_ban_quick_modes_tune_on_validation(mode, quick_config, check_results, results):
  config, rows, records, facts, out = _run_tuned(
      ban, quick_config(ban_config, mode), check_results, results, ['ban_generations.png'])
  grids = ban.tuning_grids(config)
  assert facts['tuning_runs'] >= sum(len(g) for g in grids.values())
  assert sorted({r['seed'] for r in records}) == list(config.seeds)
  md = (out / 'results.md').read_text()
  k = config.generations
  names = ['ban gen 1 vs S0', f'ban: ensemble gen 0–{k} vs independent ensemble #0–{k}']
  _check_report(md, names)
  chosen = ban.chosen_settings(config, facts)
  by_model = {r['model']: r for r in rows}
  assert by_model['S0 (scratch, BAN teacher)']['setting'] == eskd.format_setting(
      chosen['scratch'])
  for v, _, _ in config.variants:
    assert by_model[f'{v} gen 1']['setting'] == eskd.format_setting(chosen[v])
