"""Tests of the tuned TAKD experiment (experiments/takd.py): helpers, report, quick runs.

The quick-mode runs are long-marked; the rest are cheap (config and report helpers).
"""

import json
import pathlib

import numpy as np
import pytest

from experiments import takd
from experiments import tuning
from experiments.configs import takd as takd_config
from kdjax import schemes


SPEC = schemes._chain.SPEC_FILE  # pylint: disable=protected-access


# ------------------------------------------------------------------ helpers

def test_kd_models_are_every_model_a_kd_link_trains():
  assert takd.kd_models(['T', 'A1', 'A2', 'S'], ['S']) == ['A1', 'A2', 'S']
  # A model below every student is never distilled.
  assert takd.kd_models(['T', 'A', 'S1', 'S2'], ['S1']) == ['A', 'S1']
  names = [n for n, _, _ in takd_config.get_config('digits').ladder]
  assert takd.kd_models(names, ['plain2', 'plain2w2']) == names[1:]


def test_grids_are_the_cartesian_products_of_the_config():
  t = takd_config.get_config('default').tuning
  grid = takd.kd_grid(t)
  assert len(grid) == len(t.kd_learning_rates) * len(t.alphas) * len(t.temperatures)
  assert grid[0] == {'learning_rate': t.kd_learning_rates[0], 'alpha': t.alphas[0],
                     'temperature': t.temperatures[0]}
  assert takd.scratch_grid(t) == [{'learning_rate': v} for v in t.learning_rates]
  # Without a separate KD learning-rate grid, the scratch one is used.
  assert {s['learning_rate'] for s in takd.kd_grid(
      {'learning_rates': (1e-3, 1e-2), 'alphas': (0.1,), 'temperatures': (4.0,)})} == {1e-3, 1e-2}


def test_setting_text():
  assert takd.setting_text({'learning_rate': 0.03, 'alpha': 0.5, 'temperature': 2.0}) == (
      'lr 0.03, α 0.5, τ 2')


@pytest.mark.parametrize('mode', ['default', 'digits'])
def test_full_modes_tune_with_a_seed_that_is_not_an_evaluation_seed(mode):
  c = takd_config.get_config(mode)
  assert len(c.seeds) >= 5 and c.tuning.seed not in c.seeds
  # Grids wide enough to flag an edge: three or more learning rates.
  assert len(c.tuning.learning_rates) >= 3 and len(c.tuning.kd_learning_rates) >= 3
  assert 0 < c.tuning.fraction < 1


def test_config_docstrings_carry_no_hand_typed_results():
  """Numbers in the config's prose come from results files: none are measured there."""
  import re  # pylint: disable=import-outside-toplevel
  doc = takd_config.__doc__ + takd_config.get_config('digits').notes
  assert not re.search(r'\d+(\.\d+)?\s*%', doc)
  assert '~' not in doc


def _synthetic(tmp_path, seeds=(0, 1, 2)):
  """Records and a tuned setup.json of a T → A → S ladder, as takd.run writes them."""
  rng = np.random.default_rng(0)
  records = []
  for s in seeds:
    sc, d, ta = 0.80 + 0.01 * rng.standard_normal(3)
    records += [
        {'seed': s, 'student': 'S', 'path': 'T → S', 'assistants': '— (direct KD)',
         'num_links': 1, 'accuracy': d, 'gain': d - sc, 'vs_direct': 0.0, 'agreement': 0.9,
         'scratch': sc},
        {'seed': s, 'student': 'S', 'path': 'T → A → S', 'assistants': 'A', 'num_links': 2,
         'accuracy': ta, 'gain': ta - sc, 'vs_direct': ta - d, 'agreement': 0.9, 'scratch': sc},
        {'seed': s, 'student': 'T', 'path': 'T (teacher, scratch)', 'assistants': '',
         'num_links': 0, 'accuracy': 0.95, 'gain': 0.0, 'vs_direct': 0.0, 'agreement': 1.0,
         'scratch': 0.95},
        {'seed': s, 'student': 'S', 'path': 'S (scratch)', 'assistants': '', 'num_links': 0,
         'accuracy': sc, 'gain': 0.0, 'vs_direct': None, 'agreement': None, 'scratch': sc},
        {'kind': 'direct_link', 'seed': s, 'model': 'S', 'kd': d, 'scratch': sc,
         'gain': d - sc}]
  config = takd_config.get_config('quick')
  grid = takd.kd_grid({'learning_rates': (3e-3, 1e-2, 3e-2), 'alphas': (0.1,),
                       'temperatures': (4.0,)})
  kd = tuning.tune(grid, lambda s: {3e-3: 0.5, 1e-2: 0.6, 3e-2: 0.7}[s['learning_rate']])
  sc = tuning.tune(takd.scratch_grid({'learning_rates': (3e-3, 1e-2, 3e-2)}),
                   lambda s: {3e-3: 0.5, 1e-2: 0.6, 3e-2: 0.55}[s['learning_rate']])
  setup = {'experiment': 'takd', 'command': 'cmd', 'config': config.to_dict(), 'facts': {
      'train_size': 160, 'test_size': 40, 'params': {'A': 10, 'S': 5}, 'fit_size': 142,
      'validation_size': 18, 'tuning_teacher_validation_accuracy': 0.5,
      'tuning': {'S from scratch': sc, 'S: KD (direct from T; every link into S)': kd,
                 'A: KD (direct from T; every link into A)': kd},
      'scratch_settings': {'S': sc['chosen']}, 'kd_settings': {'S': kd['chosen'],
                                                               'A': kd['chosen']},
      'tuning_runs': 7, 'tuning_runs_restored': 0, 'tuning_seconds': 1.0,
      'wall_seconds': 2.0}}
  return records, json.loads(json.dumps(setup))


def test_tuned_report_shows_settings_intervals_holm_and_edges(tmp_path, monkeypatch):
  monkeypatch.setattr(takd, '_plot_paths', lambda *a, **k: None)  # plots: the long tests
  monkeypatch.setattr(takd.common, 'errorbar_plot', lambda *a, **k: None)
  records, setup = _synthetic(tmp_path)
  rows = takd.report(records, setup, str(tmp_path))
  assert all(set(takd.TUNED_COLUMNS) <= set(r) for r in rows)
  by_path = {r['path']: r for r in rows}
  assert by_path['T → S']['setting (tuned)'] == 'lr 0.03, α 0.1, τ 4'
  assert by_path['S (scratch)']['setting (tuned)'] == 'lr 0.01'
  assert by_path['T (teacher, scratch)']['setting (tuned)'].endswith('(fixed, not tuned)')
  assert by_path['T → A → S']['95% CI'].startswith('[')
  assert by_path['T → A → S']['gain Holm p'] != '—'
  md = (tmp_path / 'results.md').read_text()
  assert '| setting (tuned) |' in md and 'gain Holm p' in md
  # The direct-KD-vs-scratch comparison of a student is in the Holm family once.
  assert md.count('- T → S vs S from scratch:') == 1
  assert '(direct KD) vs S from scratch' not in md
  # The KD learning rate 0.03 is the top of its grid: flagged.
  assert 'at an end of their grid' in md and 'S: KD (direct from T; every link into S)' in md
  assert 'Validation accuracy per setting' in md and 'seed 100' in md


# ------------------------------------------------------------- quick runs

def _check_tuned_run(config, results, name):
  out = results / name
  setup = json.loads((out / 'setup.json').read_text())
  facts = setup['facts']
  assert facts['fit_size'] + facts['validation_size'] == facts['train_size'] == 160
  names = [n for n, _, _ in config.ladder]
  distilled = takd.kd_models(names, config.students)
  assert set(facts['tuning']) == (
      {f'{n} from scratch' for n in config.students}
      | {f'{n}: KD (direct from {names[0]}; every link into {n})' for n in distilled})
  for key, t in facts['tuning'].items():
    grid = takd.scratch_grid(config.tuning) if 'scratch' in key else takd.kd_grid(config.tuning)
    assert t['grid'] == json.loads(json.dumps(grid))
    assert t['chosen'] == t['grid'][tuning.select(t['validation_accuracy'])]
  assert facts['kd_settings']['S'] == facts['tuning']['S: KD (direct from T; every link into S)'][
      'chosen']
  def chains(seed):
    (root,) = pathlib.Path(config.workdir, f'seed{seed}').glob('chains*')
    return root

  # The chosen KD setting is what every evaluation link into S was trained with.
  for seed in config.seeds:
    for path in schemes.assistant_paths(names):
      link = chains(seed).joinpath(*path)
      spec = json.loads((link / SPEC).read_text())
      chosen = facts['kd_settings'][path[-1]]
      assert spec['learning_rate'] == pytest.approx(chosen['learning_rate'])
      assert spec['seed'] == seed and seed != config.tuning.seed
      ce = [t for t in spec['terms'] if t['name'] == 'ce'][0]
      assert ce['weight'] == pytest.approx(chosen['alpha'])
    teacher = json.loads(
        (chains(seed) / names[0] / SPEC).read_text())
    assert teacher['learning_rate'] == config.teacher_lr and teacher['seed'] == seed
  md = (out / 'results.md').read_text()
  assert 'never on test' in md and 'Validation accuracy per setting' in md
  assert '95% CI [' in md and 'Holm p' in md
  assert '→ no significant difference' in md or '→ better' in md or '→ worse' in md
  assert 'n < 2' not in md
  return md


@pytest.mark.long
@pytest.mark.parametrize('mode', ['quick', 'digits_quick'])
def test_takd_quick_tunes_on_validation(quick_config, check_results, results, mode):
  config = quick_config(takd_config, mode)
  config.seeds = (0, 1)  # two seeds: intervals and verdicts
  rows = takd.run(config)
  check_results(results / f'takd_{mode}', takd.COLUMNS, rows,
                ['takd_paths.png', 'kd_gain_vs_size.png'])
  assert all(set(takd.TUNED_COLUMNS) <= set(r) for r in rows)
  md = _check_tuned_run(config, results, f'takd_{mode}')
  if mode == 'digits_quick':
    assert 'scikit-learn digits (160 train / 40 test)' in md
    # A real KD search: several learning rates and α values.
    t = json.loads((results / 'takd_digits_quick' / 'setup.json').read_text())['facts']['tuning']
    assert len(t['S: KD (direct from T; every link into S)']['grid']) == 6
