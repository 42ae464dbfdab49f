"""Smoke tests of the eskd and ban experiments' 'quick' modes (results go to tmp dirs).

The takd smoke test is in test_chain.py: it reuses that module's chain.
"""

import json

import pytest

from experiments import ban
from experiments import common
from experiments import eskd
from experiments.configs import ban as ban_config
from experiments.configs import eskd as eskd_config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def results(tmp_path, monkeypatch):
  out = tmp_path / 'results'
  monkeypatch.setattr(common, 'RESULTS', str(out))
  return out


def _config(module, data_dir, tmp_path):
  c = module.get_config('quick')
  c.workdir = str(tmp_path / 'runs')
  c.data_dir = data_dir
  return c


def _check_outputs(path, columns, rows, pngs):
  for f in ('results.md', 'results.csv', 'records.json', *pngs):
    assert (path / f).is_file(), f
  md = (path / 'results.md').read_text()
  assert '**Finding tested:**' in md and '**Verdict on our data:**' in md
  assert md.count('\n|') >= len(rows) + 1
  assert all(set(columns) <= set(r) for r in rows)
  return json.loads((path / 'records.json').read_text())


def test_eskd_quick(data_dir, tmp_path, results):
  rows = eskd.run(_config(eskd_config, data_dir, tmp_path))
  records = _check_outputs(results / 'eskd_quick', eskd.COLUMNS, rows,
                           ['kd_loss_vs_acc.png', 'kd_loss_curves.png'])
  kinds = {(r['teacher'], r['teacher_step'], r['kd_term']) for r in records}
  assert kinds == {('— (scratch)', 0, '—'), ('T', 5, 'full'), ('T', 10, 'full'),
                   ('T', 10, 'stopped at 5')}
  assert all(r['kd_loss_train'] >= 0 for r in records if r['kd_term'] != '—')


def test_ban_quick(data_dir, tmp_path, results):
  rows = ban.run(_config(ban_config, data_dir, tmp_path))
  records = _check_outputs(results / 'ban_quick', ban.COLUMNS, rows, ['ban_generations.png'])
  by_model = {r['model']: r for r in records}
  assert by_model['independent ensemble #0–1']['members'] == 2
  assert by_model['ban gen 1']['vs_s0'] == pytest.approx(
      by_model['ban gen 1']['accuracy'] - by_model['S0 (scratch, BAN teacher)']['accuracy'])
