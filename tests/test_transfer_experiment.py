"""The transfer-set controls experiment and the demo that prints them."""

import json
import os

import pytest

from experiments import common
from experiments import transfer
from experiments.configs import transfer as transfer_config


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_method_has_its_grid_and_objective():
  config = transfer_config.get_config()
  assert len(transfer.grid(config, transfer.TRANSFER_KD)) == 9
  assert [g['temperature'] for g in transfer.grid(config, transfer.SCRATCH)] == [None] * 3
  assert transfer.terms(config, transfer.SCRATCH, None) is None
  assert transfer.terms(config, transfer.TRUE_LABELS, None) is None
  assert [t.name for t in transfer.terms(config, transfer.KD, None)] == ['ce', 'kd']
  (soft,) = transfer.terms(config, transfer.TRANSFER_KD, 2.0)
  assert soft.kwargs == {'temperature': 2.0} and not soft.labels
  (hard,) = transfer.terms(config, transfer.HARD_LABELS, None)
  assert hard.name == 'hard_kd' and not hard.labels


def test_the_tuning_trials_are_searched_like_experiments_tuning():
  trials = [{'learning_rate': lr, 'temperature': t, 'validation_accuracy': a}
            for lr, t, a in ((1e-3, 2.0, 0.6), (3e-3, 2.0, 0.8), (1e-2, 2.0, 0.8))]
  search = transfer._search(trials)  # pylint: disable=protected-access
  assert search['chosen'] == {'learning_rate': 3e-3, 'temperature': 2.0}  # first of equals
  assert transfer._best(trials) is trials[1]  # pylint: disable=protected-access
  # Grid order: learning rate outer, temperature inner.
  config = transfer_config.get_config()
  assert [(g['learning_rate'], g['temperature']) for g in
          transfer.grid(config, transfer.TRANSFER_KD)[:4]] == [
              (1e-3, 1.0), (1e-3, 2.0), (1e-3, 4.0), (3e-3, 1.0)]


def test_the_demo_is_one_seed_of_the_transfer_design_with_its_validation_choices():
  from experiments.configs import demo
  config = demo.get_config()
  records, setup = common.load_results(demo.TRANSFER_RESULTS)
  design = common.config_of(setup)
  tests = [r for r in records if r['phase'] == 'test']
  for stage, method in demo.STAGE_METHODS.items():
    tuned = [r for r in records if r['phase'] == 'tuning' and r['method'] == method]
    best = max(tuned, key=lambda r: r['validation_accuracy'])  # ties: the first
    assert config.learning_rates[stage] == best['learning_rate']
    assert {r['learning_rate'] for r in tests if r['method'] == method} == {
        config.learning_rates[stage]}
    if method == transfer.TRANSFER_KD:
      assert config.transfer.temperature == best['temperature']
  assert config.teacher.learning_rate == design.teacher.learning_rate
  assert config.teacher.num_steps == design.teacher.num_steps
  assert config.student.num_steps == design.labeled_steps
  assert config.transfer.num_steps == design.transfer_steps
  assert (config.kd.alpha, config.kd.temperature) == (design.kd.alpha, design.kd.temperature)
  assert config.batch_size == design.batch_size


def test_readme_quotes_the_committed_results_word_for_word():
  with open(os.path.join(ROOT, 'experiments/results/transfer/records.json')) as f:
    records = json.load(f)
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = ' '.join(f.read().split())
  assert transfer.readme_sentence(records) in readme
  test = [r for r in records if r['phase'] == 'test']
  assert len({r['seed'] for r in test}) >= 5


@pytest.mark.long
def test_quick_run_and_demo(quick_config, check_results, results, data_dir):
  config = quick_config(transfer_config)
  rows = transfer.run(config)
  records = check_results(results / 'transfer_quick', transfer.COLUMNS, rows,
                          ['transfer.png', 'transfer_tuning.png'])
  assert [r['method'] for r in rows] == ['teacher', *transfer.METHODS]
  tuning = [r for r in records if r['phase'] == 'tuning']
  assert len(tuning) == 2 * 4 + 4  # 2 learning rates, x2 temperatures for transfer KD
  from experiments import hinton
  from experiments.configs import demo
  demo_config = demo.get_config('quick')
  demo_config.unlock()
  demo_config.update(data_dir=data_dir, workdir=str(results / 'demo'), progress=False)
  demo_config.teacher.num_steps = demo_config.student.num_steps = 5
  demo_config.transfer.num_steps = 5
  runs_ = [r['run'] for r in hinton.run(demo_config)]
  assert runs_[-2:] == ['student, transfer set, true labels',
                        "student, transfer set, teacher's hard labels"]
