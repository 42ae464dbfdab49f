"""Smoke tests of the dml / one / byot experiments' 'quick' modes (results go to tmp dirs)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import byot
from experiments import dml
from experiments import one
from experiments import online_baselines
from experiments.configs import byot as byot_config
from experiments.configs import dml as dml_config
from experiments.configs import one as one_config
from experiments.dml import optimizer
from kdjax import models
from kdjax import steps
from kdjax.state import TrainState


def test_run_dir_changes_with_settings():
  c = dml_config.get_config('quick')
  a = dml.run_dir(c, 0, 'x', {'lr': 1e-2, 'steps': 10})
  assert a == dml.run_dir(c, 0, 'x', {'steps': 10, 'lr': 1e-2})  # key order is irrelevant
  assert a != dml.run_dir(c, 0, 'x', {'lr': 3e-3, 'steps': 10})
  assert a != dml.run_dir(c, 1, 'x', {'lr': 1e-2, 'steps': 10})
  c.workdir = ''
  assert dml.run_dir(c, 0, 'x', {}) is None


def test_train_loop_restores_a_complete_run(tmp_path):
  src = [{'x': np.float32([i, 1.0]), 'label': np.int32(i % 2), 'id': np.int32(i)}
         for i in range(8)]
  fwd = models.function_forward(lambda p, x: x @ p['w'])
  step = jax.jit(steps.make_train_step())

  def fresh():
    return TrainState.create(apply_fn=fwd, variables={'params': {'w': jnp.zeros((2, 2))}},
                             tx=optax.sgd(0.1))

  kw = dict(num_steps=3, batch_size=4, seed=0, workdir=str(tmp_path / 'run'))
  first = dml.train_loop(fresh(), step, src, **kw)
  assert first.resumed_from is None and int(first.state.step) == 3
  again = dml.train_loop(fresh(), step, src, **kw)  # restored, not retrained
  assert again.resumed_from == 3 and again.history == []
  np.testing.assert_array_equal(again.state.params['w'], first.state.params['w'])
  assert np.any(np.asarray(first.state.params['w']) != 0)


@pytest.mark.long
@pytest.mark.slow
def test_dml_quick(quick_config, check_results, results):
  config = quick_config(dml_config)
  rows = dml.run(config)
  records = check_results(results / 'dml_quick', dml.COLUMNS, rows,
                          ['dml_peers.png', 'dml_delta.png', 'dml_ensemble.png'])
  seeds = set(config.seeds)
  methods = [m[0] for m in config.methods]
  assert {(r['cohort'], r['peer'], r['method']) for r in records} == {
      (c, p, m) for c, p in [('MLP ×2', 'mean of 2'), ('CNN1D + MLP', 'mean of 2'),
                             ('CNN1D + MLP', 'CNN1D'), ('CNN1D + MLP', 'MLP')]
      for m in methods}
  facts = json.loads((results / 'dml_quick' / 'setup.json').read_text())['facts']
  _check_tuning(config, facts, [f'{c}: {m}' for c, _ in config.cohorts for m in methods])
  by = {(r['seed'], r['cohort'], r['peer'], r['method']): r for r in records}
  for (seed, cohort, peer, method), r in by.items():
    assert seed in seeds and 0.0 <= r['accuracy'] <= 1.0
    assert r['accuracy'] == pytest.approx(np.mean(r['peer_accuracies']))
    if method == 'DML':  # paired: same seed, cohort and peer group
      ind = by[(seed, cohort, peer, 'independent')]
      assert r['delta_accuracy'] == pytest.approx(r['accuracy'] - ind['accuracy'])
  for seed in seeds:  # the mixed cohort's mean is the mean of its two architectures
    for method in methods:
      parts = [by[(seed, 'CNN1D + MLP', p, method)]['accuracy'] for p in ('CNN1D', 'MLP')]
      assert by[(seed, 'CNN1D + MLP', 'mean of 2', method)]['accuracy'] == pytest.approx(
          np.mean(parts))


@pytest.mark.long
@pytest.mark.slow
def test_dml_digits_quick_tunes_on_validation(quick_config, check_results, results):
  config = quick_config(dml_config, 'digits_quick')
  rows = dml.run(config)
  records = check_results(results / 'dml_digits_quick', dml.COLUMNS, rows,
                          ['dml_peers.png', 'dml_delta.png', 'dml_ensemble.png'])
  setup = json.loads((results / 'dml_digits_quick' / 'setup.json').read_text())
  facts = setup['facts']
  assert facts['fit_size'] + facts['validation_size'] == facts['train_size'] == 160
  methods = [m[0] for m in config.methods]
  assert {r['method'] for r in records} == set(methods)
  lrs = list(config.tuning.learning_rates)
  for cohort, _ in config.cohorts:
    for name, _, _, wd in config.methods:
      t = facts['tuning'][f'{cohort}: {name}']
      assert len(t['grid']) == len(lrs) * (len(config.tuning.weight_decays) if wd else 1)
      assert t['chosen'] == t['grid'][int(np.argmax(t['validation_accuracy']))]
  md = (results / 'dml_digits_quick' / 'results.md').read_text()
  assert 'DML vs independent + label smoothing 0.1, peer accuracy' in md
  assert 'chosen on validation data' in md


def _check_tuning(config, facts, names):
  """Every method was searched on validation over the config's a-priori grid."""
  assert facts['fit_size'] + facts['validation_size'] == facts['train_size']
  lrs = list(config.tuning.learning_rates)
  assert set(facts['tuning']) == set(names)
  for name, t in facts['tuning'].items():
    adamw = 'AdamW' in name
    assert len(t['grid']) == len(lrs) * (len(config.tuning.weight_decays) if adamw else 1)
    assert [g['learning_rate'] for g in t['grid']][::len(t['grid']) // len(lrs)] == lrs
    assert t['chosen'] == t['grid'][int(np.argmax(t['validation_accuracy']))]
    assert ('weight_decay' in t['chosen']) == adamw
    assert all(0.0 <= a <= 1.0 for a in t['validation_accuracy'])


def _check_report(md):
  assert 'chosen on validation data, not test' in md
  assert 'Holm' in md and '95% CI [' in md
  assert 'Against the regularised baselines' in md
  assert ('No choice lies at an end of its grid' in md) != ('At the edge of the grid' in md)


def _check_one(config, records, rows, md, facts):
  m = config.num_branches
  name = one.one_name(config)
  regs = online_baselines.regularised_names(config)
  _check_tuning(config, facts, [name, one.baseline_name(config), *regs])
  for seed in config.seeds:
    mine = [r for r in records if r['seed'] == seed]
    kinds = {}
    for r in mine:
      kinds.setdefault(r['kind'], []).append(r)
    assert len(kinds['branch']) == m and len(kinds['member']) == config.baseline_members
    assert {r['model'] for r in kinds['regularised']} == set(regs)
    assert kinds['branch_mean'][0]['accuracy'] == pytest.approx(
        np.mean([r['accuracy'] for r in kinds['branch']]))
    base = np.mean([r['accuracy'] for r in kinds['member']])
    assert kinds['single'][0]['accuracy'] == pytest.approx(base)
    for r in mine:
      assert r['delta'] == pytest.approx(r['accuracy'] - base)
    for kind in ('ensemble', 'branch_ensemble'):
      assert 0.0 <= kinds[kind][0]['disagreement'] <= 1.0
  assert {r['evaluated'] for r in rows} >= {'gated ensemble (model output)', 'branch 0 alone',
                                            'single model (mean over runs)', 'single model'}
  _check_report(md)
  for reg in regs:  # ONE against each regularised baseline, paired, in the Holm family
    assert f'{name}: branch mean vs {reg}:' in md
    assert f'{name}: gated ensemble vs {reg}:' in md
    assert f'{reg}: single model vs baseline:' in md
  assert '## ONE vs the regularised baselines' in md


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.parametrize('mode', ['quick', 'digits_quick'])
def test_one_quick_tunes_and_compares_with_regularised_baselines(
    quick_config, check_results, results, mode):
  config = quick_config(one_config, mode)
  rows = one.run(config)
  out = results / config.results
  records = check_results(out, one.COLUMNS, rows, ['one_branches.png'])
  setup = json.loads((out / 'setup.json').read_text())
  _check_one(config, records, rows, (out / 'results.md').read_text(), setup['facts'])
  if mode == 'digits_quick':
    assert setup['facts']['train_size'] == 160 and 'ResNet-8' in rows[0]['model']


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.parametrize('mode', ['quick', 'digits_quick'])
def test_byot_quick_tunes_and_compares_with_regularised_baselines(
    quick_config, check_results, results, mode):
  config = quick_config(byot_config, mode)
  rows = byot.run(config)
  out = results / config.results
  records = check_results(out, byot.COLUMNS, rows,
                          ['byot_exits.png', 'early_exit.png', 'early_exit_variants.png',
                           'early_exit.md', 'early_exit.csv'])
  setup = json.loads((out / 'setup.json').read_text())
  exits = [r for r in records if r['table'] == 'exits']
  early = [r for r in records if r['table'] == 'early_exit']
  names = [v[0] for v in config.variants]
  plain_name, regs = byot.plain_name(config), online_baselines.regularised_names(config)
  _check_tuning(config, setup['facts'], [*names, plain_name, *regs])
  assert {r['model'] for r in exits} == {plain_name, *regs, *names}
  for seed in config.seeds:
    plain = next(r for r in exits if r['seed'] == seed and r['model'] == plain_name)
    for reg in regs:
      r = next(r for r in exits if r['seed'] == seed and r['model'] == reg)
      assert r['delta'] == pytest.approx(r['accuracy'] - plain['accuracy'])
    for name in names:
      acc = {r['exit_index']: r['accuracy'] for r in exits
             if r['seed'] == seed and r['model'] == name}
      assert sorted(acc) == [1, 2, 3]
      for r in exits:
        if r['seed'] == seed and r['model'] == name:
          assert r['delta'] == pytest.approx(r['accuracy'] - plain['accuracy'])
      table = {r['threshold']: r for r in early if r['seed'] == seed and r['model'] == name}
      assert sorted(table) == sorted(config.thresholds)
      for r in table.values():
        assert sum(r[f'exit{k}_fraction'] for k in (1, 2, 3)) == pytest.approx(1.0)
      # Threshold 0: every example leaves at exit 1; above 1: every one at the deepest exit.
      assert table[0.0]['exit1_fraction'] == 1.0
      assert table[0.0]['accuracy'] == pytest.approx(acc[1])
      top = table[max(config.thresholds)]
      assert top['exit3_fraction'] == 1.0 and top['relative_cost'] == pytest.approx(1.0)
      assert top['accuracy'] == pytest.approx(acc[3])
      costs = [table[t]['relative_cost'] for t in sorted(table)]
      assert costs == sorted(costs)  # a higher threshold never exits earlier
  md = (out / 'results.md').read_text()
  _check_report(md)
  for reg in regs:
    assert f'{reg}: exit 3 vs plain:' in md
    for name in names:
      assert f'{name}: deepest exit vs {reg}:' in md
  assert '## Deepest exits vs the regularised baselines' in md and '## Early exit' in md


# ------------------------------------------------------- cheap helpers (default suite)

def test_regularised_baselines_and_grids_of_the_configs():
  for module in (one_config, byot_config):
    for mode in ('default', 'quick', 'digits', 'digits_quick'):
      c = module.get_config(mode)
      regs = online_baselines.regularised_of(c)
      assert [b['adamw'] for b in regs] == [False, True]
      assert regs[0]['label_smoothing'] == pytest.approx(0.1)
      lrs = tuple(c.tuning.learning_rates)
      assert online_baselines.grid(c) == [{'learning_rate': lr} for lr in lrs]
      assert len(online_baselines.grid(c, adamw=True)) == len(lrs) * len(c.tuning.weight_decays)
      assert c.tuning.seed not in c.seeds  # the tuning seed is not an evaluation seed
      if not mode.endswith('quick'):  # byot digits: a coarser grid over the same range
        assert len(c.seeds) >= 5 and len(lrs) >= 3 and len(c.tuning.weight_decays) >= 2
        assert min(lrs) <= 1e-3 and max(lrs) >= 1e-1
    assert module.get_config('digits').dataset == 'digits'
    with pytest.raises(ValueError):
      module.get_config('nope')


def test_optimizers_are_shared_per_setting_and_adamw_decays():
  txs = online_baselines.Optimizers(10)
  a = txs({'learning_rate': 1e-2})
  assert a is txs({'learning_rate': 1e-2, 'weight_decay': 0.0})
  assert a is not txs({'learning_rate': 3e-2})
  params = {'w': jnp.ones(3)}
  tx = txs({'learning_rate': 0.1, 'weight_decay': 1.0})
  assert tx is txs({'learning_rate': 0.1, 'weight_decay': 1.0})
  updates, _ = tx.update({'w': jnp.zeros(3)}, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.1 * np.ones(3), rtol=1e-6)  # lr · wd · w
  ref = optimizer(0.1, 10, 1.0)
  ref_updates, _ = ref.update({'w': jnp.zeros(3)}, ref.init(params), params)
  np.testing.assert_allclose(updates['w'], ref_updates['w'])


def test_network_names_and_plain_networks():
  mnist = one_config.get_config('quick')
  digits = one_config.get_config('digits_quick')
  assert online_baselines.net_name(mnist) == 'CNN1D'
  assert online_baselines.net_name(digits) == 'ResNet-8'
  assert isinstance(online_baselines.plain_network(digits), models.CifarResNet)
  assert one.baseline_name(digits) == 'ResNet-8 alone (baseline)'
  assert online_baselines.regularised_names(mnist) == ['CNN1D + label smoothing 0.1',
                                                       'CNN1D + AdamW weight decay']
  assert one.one_model(digits).num_branches == digits.num_branches
  assert byot.byot_model(digits).num_exits == len(digits.widths) - 1
