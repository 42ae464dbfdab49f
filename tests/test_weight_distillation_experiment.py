"""The weight-distillation experiment: config and report helpers, and its quick-mode runs."""

import json
import math
import pathlib

import numpy as np
import pytest

from experiments import stats
from experiments import tuning
from experiments import weight_distillation as wd
from experiments.configs import weight_distillation as wd_config


MODES = ('default', 'quick', 'digits', 'digits_quick')


@pytest.mark.parametrize('mode', MODES)
def test_config_modes(mode):
  c = wd_config.get_config(mode)
  assert c.mode == mode
  assert c.dataset == ('digits' if mode.startswith('digits') else 'mnist1d')
  assert 0 < c.wd.phase1_steps < c.student.num_steps
  assert c.tuning.seed not in c.seeds  # the tuning seed is not an evaluation seed
  assert len(c.seeds) >= (2 if mode.endswith('quick') else 10)
  grids = wd.tuning_grids(c)
  assert list(grids) == ['teacher', *wd.METHODS]
  assert len(grids['WD']) == len(c.tuning.learning_rates) * len(c.tuning.phase1_learning_rates)
  if not mode.endswith('quick'):  # a real search: at least three values per axis
    assert min(len(c.tuning.learning_rates), len(c.tuning.phase1_learning_rates),
               len(c.tuning.teacher_learning_rates)) >= 3
    assert c.results == ('weight_distillation_digits' if mode == 'digits'
                         else 'weight_distillation')


def test_unknown_mode():
  with pytest.raises(ValueError, match='Unknown weight_distillation mode'):
    wd_config.get_config('nope')


def test_labels_and_settings():
  assert wd.model_label(('cnn1d', {'channels': 32})) == 'CNN1D(32)'
  assert wd.model_label(('mlp', {'hidden': [256, 256]})) == 'MLP(256, 256)'
  assert wd.format_setting({'phase1_learning_rate': 1e-4, 'learning_rate': 3e-2}) == (
      'phase 1 lr 0.0001, lr 0.03')


def _records(deltas_kd, deltas_wd, seeds=range(5)):
  """Synthetic per-seed records: scratch at 0.8, KD and WD offset from it."""
  recs = []
  for i, s in enumerate(seeds):
    base = 0.8 + 0.01 * i
    for run, acc in (('teacher', 0.95), (wd.SCRATCH, base), (wd.KD, base + deltas_kd[i]),
                     (wd.SLICE, base + deltas_kd[i]), (wd.WD1, base - 0.1),
                     (wd.WD, base + deltas_kd[i] + deltas_wd[i])):
      recs.append({'run': run, 'model': 'm', 'seed': s, 'params': 10, 'steps': '3',
                   'setting': 'lr 0.01', 'test_accuracy': acc, 'seconds': 1.0,
                   'resumed': False})
  return recs


def test_comparisons_family_and_outcome():
  recs = _records([0.0, 0.01, -0.01, 0.005, -0.005], [0.05, 0.06, 0.055, 0.05, 0.065])
  cmp = wd.comparisons(recs)
  assert list(cmp) == [f'{r} vs scratch' for r in wd.VERSUS_SCRATCH] + [
      f'{r} vs KD' for r in wd.VERSUS_KD]
  raw = [c.p for c in cmp.values()]
  assert [c.p_holm for c in cmp.values()] == pytest.approx(stats.holm(raw).tolist())
  assert cmp['WD: phase 1 + phase 2 vs KD'].mean == pytest.approx(0.056)
  assert wd.claim_outcome(cmp['WD: phase 1 + phase 2 vs KD']) == 'reproduced'
  assert cmp['WD: phase 1 only vs KD'].verdict == stats.WORSE
  assert wd.claim_outcome(cmp['WD: phase 1 only vs KD']).startswith('refuted')
  assert cmp['KD vs scratch'].verdict == stats.NO_DIFFERENCE


def test_report_from_synthetic_records(tmp_path, monkeypatch):
  monkeypatch.setattr(wd.common, 'errorbar_plot', lambda *a, **k: {})  # no matplotlib: fast
  config = wd_config.get_config('quick')
  grids = wd.tuning_grids(config)
  searches = {k: tuning.tune(g, lambda s: s['learning_rate']) for k, g in grids.items()}
  setup = {'experiment': 'weight_distillation', 'command': wd.COMMAND + ':quick',
           'config': config.to_dict(),
           'facts': {'train_size': 10, 'fit_size': 9, 'validation_size': 1, 'test_size': 5,
                     'layer_pairs': {'a': 'a'}, 'tuning': searches, 'tuning_seconds': 1.0,
                     'total_seconds': 2.0}}
  setup = json.loads(json.dumps(setup, default=list))
  recs = _records([0.0, 0.01, -0.01, 0.005, -0.005], [0.05, 0.06, 0.055, 0.05, 0.065])
  rows = wd.report(recs, setup, str(tmp_path))
  assert [r['run'] for r in rows] == list(wd.RUNS)
  assert all(set(wd.COLUMNS) <= set(r) for r in rows)
  md = (tmp_path / 'results.md').read_text()
  assert 'is reproduced on our data' in md
  assert 'WD (learning_rate 0.01)' in md  # the top of the grid is flagged
  assert '95% CI [' in md and 'Holm p' in md


# ------------------------------------------------------------------ quick runs

def _check_run(config, rows, records, setup, results_path, check_results):
  check_results(results_path, wd.COLUMNS, rows, ['weight_distillation.png'])
  facts = setup['facts']
  assert facts['fit_size'] + facts['validation_size'] == facts['train_size']
  # The tuning record: every a-priori grid, scored, the best setting chosen.
  grids = wd.tuning_grids(config)
  assert set(facts['tuning']) == set(grids)
  for name, grid in grids.items():
    t = facts['tuning'][name]
    assert t['grid'] == json.loads(json.dumps(grid))
    assert len(t['validation_accuracy']) == len(grid)
    assert all(0.0 <= a <= 1.0 for a in t['validation_accuracy'])
    assert t['chosen'] == t['grid'][int(np.argmax(t['validation_accuracy']))]
  # The chosen settings were the ones trained for every seed.
  chosen = {'teacher': facts['tuning']['teacher']['chosen'],
            **{m: facts['tuning'][m]['chosen'] for m in wd.METHODS}}
  for r in records:
    method = 'WD' if r['run'] in (wd.WD1, wd.WD) else r['run']
    assert r['setting'] == wd.format_setting(chosen[method])
  assert {r['run'] for r in records} == set(wd.RUNS)
  assert sorted({r['seed'] for r in records}) == sorted(config.seeds)
  # One teacher per seed, each different and checkpointed in the seed's workdir.
  teachers = [r for r in records if r['run'] == 'teacher']
  assert len(teachers) == len(config.seeds)
  assert len({r['teacher_checksum'] for r in teachers}) == len(config.seeds)
  for seed in config.seeds:
    ckpts = list(pathlib.Path(config.workdir, f'seed{seed}').glob('teacher-*/checkpoints'))
    assert len(ckpts) == 1 and any(ckpts[0].iterdir())
  md = (results_path / 'results.md').read_text()
  assert 'chosen on validation data' in md
  assert '95% CI [' in md and 'Holm p' in md
  by_run = {r['run']: r for r in rows}
  for run in wd.VERSUS_KD:
    assert by_run[run]['95% CI vs KD'].startswith('[')
    assert by_run[run]['verdict vs KD'] in (stats.BETTER, stats.WORSE, stats.NO_DIFFERENCE)
  for run in wd.VERSUS_SCRATCH:
    assert by_run[run]['95% CI'].startswith('[')
  assert not math.isnan(facts['tuning_seconds'])


@pytest.mark.long
@pytest.mark.slow
def test_weight_distillation_quick_tunes_on_validation(quick_config, check_results, results):
  config = quick_config(wd_config, 'quick')
  rows = wd.run(config)
  records = json.loads((results / config.results / 'records.json').read_text())
  setup = json.loads((results / config.results / 'setup.json').read_text())
  _check_run(config, rows, records, setup, results / config.results, check_results)
  assert setup['command'].endswith(':quick') and setup['facts']['train_size'] == 4000


@pytest.mark.long
@pytest.mark.slow
def test_wd_digits_quick_restores_teachers(quick_config, check_results, results):
  config = quick_config(wd_config, 'digits_quick')
  rows = wd.run(config)
  path = results / config.results
  records = json.loads((path / 'records.json').read_text())
  setup = json.loads((path / 'setup.json').read_text())
  _check_run(config, rows, records, setup, path, check_results)
  assert setup['facts']['train_size'] == 160 and setup['command'].endswith(':digits_quick')
  assert not any(r['resumed'] for r in records)
  # A rerun restores every seed's teacher (and students) from the workdir: same numbers.
  wd.run(config)
  again = json.loads((path / 'records.json').read_text())
  assert all(r['resumed'] for r in again)
  key = lambda rs: {(r['run'], r['seed']): (r['test_accuracy'], r.get('teacher_checksum'))
                    for r in rs}
  assert key(again) == key(records)
