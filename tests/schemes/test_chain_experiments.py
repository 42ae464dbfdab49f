"""Smoke tests of the eskd, ban and takd experiments' quick modes, MNIST-1D and digits (tmp dirs).

The takd MNIST-1D smoke test is in test_chain.py: it reuses that module's chain.
"""

import jax
import pytest

from experiments import ban
from experiments import eskd
from experiments import takd
from experiments.configs import ban as ban_config
from experiments.configs import eskd as eskd_config
from experiments.configs import takd as takd_config
from kdjax import models


@pytest.mark.long
@pytest.mark.slow
def test_eskd_quick(quick_config, check_results, results):
  rows = eskd.run(quick_config(eskd_config))
  records = check_results(results / 'eskd_quick', eskd.COLUMNS, rows,
                          ['kd_loss_vs_acc.png', 'kd_loss_curves.png'])
  kinds = {(r['teacher'], r['teacher_step'], r['kd_term']) for r in records}
  assert kinds == {('— (scratch)', 0, '—'), ('T', 5, 'full'), ('T', 10, 'full'),
                   ('T', 10, 'stopped at 5')}
  assert all(r['kd_loss_train'] >= 0 for r in records if r['kd_term'] != '—')


@pytest.mark.long
@pytest.mark.slow
def test_ban_quick(quick_config, check_results, results):
  rows = ban.run(quick_config(ban_config))
  records = check_results(results / 'ban_quick', ban.COLUMNS, rows, ['ban_generations.png'])
  by_model = {r['model']: r for r in records}
  assert by_model['independent ensemble #0–1']['members'] == 2
  assert by_model['ban gen 1']['vs_s0'] == pytest.approx(
      by_model['ban gen 1']['accuracy'] - by_model['S0 (scratch, BAN teacher)']['accuracy'])


def _check_digits_text(md, config_file, mode='digits_quick'):
  """A digits run's results.md names digits (never MNIST-1D) and its own mode."""
  assert '(scikit-learn digits)' in md and 'scikit-learn digits (160 train / 40 test)' in md
  assert 'MNIST-1D' not in md
  assert f'--config experiments/configs/{config_file}:{mode}`' in md


@pytest.mark.long
@pytest.mark.slow
def test_eskd_digits_quick(quick_config, check_results, results):
  rows = eskd.run(quick_config(eskd_config, 'digits_quick'))
  records = check_results(results / 'eskd_digits_quick', eskd.COLUMNS, rows,
                          ['kd_loss_vs_acc.png', 'kd_loss_curves.png'])
  _check_digits_text((results / 'eskd_digits_quick' / 'results.md').read_text(), 'eskd.py')
  assert {(r['teacher'], r['teacher_step'], r['kd_term']) for r in records} == {
      ('— (scratch)', 0, '—'), ('T', 5, 'full'), ('T', 10, 'full'), ('T', 10, 'stopped at 5')}


@pytest.mark.long
@pytest.mark.slow
def test_ban_digits_quick(quick_config, check_results, results):
  rows = ban.run(quick_config(ban_config, 'digits_quick'))
  records = check_results(results / 'ban_digits_quick', ban.COLUMNS, rows,
                          ['ban_generations.png'])
  _check_digits_text((results / 'ban_digits_quick' / 'results.md').read_text(), 'ban.py')
  assert {r['model'] for r in records} >= {'S0 (scratch, BAN teacher)', 'ban gen 1',
                                           'independent ensemble #0–1'}


@pytest.mark.long
@pytest.mark.slow
def test_takd_digits_quick(quick_config, check_results, results):
  rows = takd.run(quick_config(takd_config, 'digits_quick'))
  records = check_results(results / 'takd_digits_quick', takd.COLUMNS, rows,
                          ['takd_paths.png', 'kd_gain_vs_size.png'])
  md = (results / 'takd_digits_quick' / 'results.md').read_text()
  assert '(scikit-learn digits)' in md and 'scikit-learn digits (160 train / 40 test)' in md
  assert 'Teacher − student gap' in md
  by_path = {r['path']: r for r in records if 'path' in r}
  assert {'T → S', 'T → A → S', 'S (scratch)', 'T (teacher, scratch)'} <= set(by_path)
  assert by_path['T → A → S']['vs_direct'] == pytest.approx(
      by_path['T → A → S']['accuracy'] - by_path['T → S']['accuracy'])


@pytest.mark.parametrize('mode', ['digits', 'digits_resnet'])
def test_takd_digits_ladders_shrink_on_8x8_images(mode):
  """The digits ladders build on 8×8×1 inputs, teacher largest, students on the ladder."""
  c = takd_config.get_config(mode)
  x = jax.ShapeDtypeStruct((1, 8, 8, 1), 'float32')
  sizes = []
  for _, name, kwargs in c.ladder:
    model = models.create(name, 10, **dict(kwargs))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (1, 10)
    sizes.append(models.count_params(variables['params']))
  assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
  assert set(c.students) <= {n for n, _, _ in c.ladder} and c.dataset == 'digits'
