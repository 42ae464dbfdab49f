"""The NetAug experiment: its pure helpers (default suite) and quick-mode runs (long)."""

import json

import numpy as np
import pytest

from experiments import netaug
from experiments import stats
from experiments.configs import netaug as netaug_config


# ------------------------------------------------------- cheap helpers (default suite)

def test_diversity_and_multipliers_of_an_augmentation_factor():
  assert [netaug.diversity_of(r) for r in (2.0, 3.0, 4.0)] == [1, 2, 3]
  assert netaug.multipliers_of(2.0) == (2.0,)
  assert netaug.multipliers_of(4.0) == (2.0, 3.0, 4.0)
  for bad in (1.0, 2.5):
    with pytest.raises(ValueError):
      netaug.diversity_of(bad)


@pytest.mark.parametrize('mode', ['default', 'quick', 'digits', 'digits_quick'])
def test_grids_are_the_configs_a_priori_grids(mode):
  c = netaug_config.get_config(mode)
  t = c.tuning
  assert t.seed not in tuple(c.seeds)
  lrs = [float(v) for v in t.learning_rates]
  for key in c.run_models:
    size = c.models[key].size
    methods = netaug.methods_of(c, size)
    names = [m['name'] for m in methods]
    assert names[:2] == [netaug.PLAIN, netaug.NETAUG]
    assert len(names) == (4 if size in c.regularised_sizes else 2)
    for m in methods:
      g = netaug.grid(c, size, m)
      assert sorted({s['learning_rate'] for s in g}) == sorted(lrs)
      if m['kind'] == 'netaug' and size in t.netaug_sizes:
        assert len(g) == len(lrs) * len(t.alphas) * len(t.augment_factors)
      elif m['kind'] == 'netaug':
        assert {(s['alpha'], s['augment_factor']) for s in g} == {(c.alpha, c.augment_factor)}
      elif m['adamw']:
        assert len(g) == len(lrs) * len(t.weight_decays)
      else:
        assert g == [{'learning_rate': lr} for lr in lrs]


def test_full_modes_run_at_least_five_seeds_and_default_learning_rates_are_gone():
  for mode in ('default', 'digits'):
    c = netaug_config.get_config(mode)
    assert len(c.seeds) >= 5
    assert all('learning_rate' not in c.models[k] for k in c.run_models)


def _records(deltas_by_training, base=0.5):
  out = []
  for training, deltas in deltas_by_training.items():
    for seed, d in enumerate(deltas):
      out.append({'model': 'M', 'training': training, 'seed': seed, 'test_accuracy': base + d})
  return out


def test_comparisons_family_and_status():
  records = _records({'plain': [0, 0, 0], 'NetAug': [0.03, 0.04, 0.05],
                      'plain + label smoothing 0.1': [0.01, -0.01, 0.0]})
  cmp = netaug.comparisons(records)
  assert list(cmp) == ['M: NetAug vs plain', 'M: plain + label smoothing 0.1 vs plain',
                       'M: NetAug vs plain + label smoothing 0.1']
  assert cmp['M: NetAug vs plain'].mean == pytest.approx(0.04)
  assert cmp['M: NetAug vs plain + label smoothing 0.1'].mean == pytest.approx(0.04)
  raw = [stats.paired_t(c.diffs).p for c in cmp.values()]
  np.testing.assert_allclose([c.p_holm for c in cmp.values()], stats.holm(raw))
  assert netaug.status_of([stats.BETTER], [stats.WORSE]) == 'Reproduced'
  assert netaug.status_of([stats.BETTER], [stats.BETTER]) == 'Not reproduced'
  assert netaug.status_of([], []) == 'Not reproduced'


def test_format_setting():
  assert netaug.format_setting({'learning_rate': 0.003, 'weight_decay': 0.1}) == 'lr 0.003, wd 0.1'


# ------------------------------------------------------------ quick-mode runs (long)

@pytest.mark.long
@pytest.mark.slow
@pytest.mark.parametrize('mode', ['quick', 'digits_quick'])
def test_netaug_quick_tunes_on_validation_and_reports_intervals(
    quick_config, check_results, results, mode):
  config = quick_config(netaug_config, mode)
  rows = netaug.run(config)
  out = results / config.results
  records = check_results(out, netaug.COLUMNS, rows, ['netaug.png', 'netaug_train.png'])
  facts = json.loads((out / 'setup.json').read_text())['facts']
  assert facts['fit_size'] + facts['validation_size'] == facts['train_size']
  # Every model and method was searched over its a-priori grid; the best validation setting
  # was the one trained for every seed.
  expected = set()
  for key in config.run_models:
    spec = config.models[key]
    for m in netaug.methods_of(config, spec.size):
      name = f'{spec.label}: {m["name"]}'
      expected.add(name)
      t = facts['tuning'][name]
      assert t['grid'] == netaug.grid(config, spec.size, m)
      assert len(t['validation_accuracy']) == len(t['grid'])
      assert t['chosen'] == t['grid'][int(np.argmax(t['validation_accuracy']))]
      runs = [r for r in records if r['model'] == spec.label and r['training'] == m['name']]
      assert sorted(r['seed'] for r in runs) == sorted(config.seeds)
      assert {r['setting'] for r in runs} == {netaug.format_setting(t['chosen'])}
  assert set(facts['tuning']) == expected
  # Paired differences to plain, per seed.
  by = {(r['model'], r['training'], r['seed']): r for r in records}
  for (model, _, seed), r in by.items():
    plain = by[(model, netaug.PLAIN, seed)]
    assert r['delta_test'] == pytest.approx(r['test_accuracy'] - plain['test_accuracy'])
    assert 0.0 <= r['test_accuracy'] <= 1.0 and 0.0 <= r['train_accuracy'] <= 1.0
  md = (out / 'results.md').read_text()
  assert 'chosen on validation data' in md and 'Holm-corrected' in md
  cmp = netaug.comparisons(records)
  assert any(name.endswith('vs plain + label smoothing 0.1') for name in cmp)
  for c in cmp.values():  # every comparison, with its interval and verdict, is in the report
    assert f'- {c.name}: {stats.summary(c)}' in md
    assert c.verdict in (stats.BETTER, stats.WORSE, stats.NO_DIFFERENCE)
  tiny = next(r for r in rows if r['size'] == 'tiny' and r['training'] == netaug.NETAUG)
  assert tiny['95% CI'].startswith('[') and tiny['verdict'] != '—'
  assert '**Verdict on our data:**' in md and 'NetAug − plain test accuracy' in md
