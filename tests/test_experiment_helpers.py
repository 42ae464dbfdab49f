"""Tests for the experiment helpers (seeds summary, plots, results files, the index)."""

import os
import shutil

import pytest

from experiments import common
from experiments import report


def _row(series, x, mean):
  return {'series': series, 'x': x, 'acc_mean': mean, 'acc_std': 0.01}


def test_errorbar_plot_places_categories_of_all_series_on_one_axis(tmp_path):
  rows = [_row('A', 'scratch', 0.6), _row('A', 'KD', 0.7), _row('B', 'KD', 0.65),
          _row('B', 'DML', 0.72)]
  path = tmp_path / 'plot.png'
  positions = common.errorbar_plot(rows, x='x', metric='acc', series='series', path=str(path))
  assert positions == {'A': [0, 1], 'B': [1, 2]}  # 'KD' is at 1 in both series
  assert path.stat().st_size > 0


def test_errorbar_plot_numeric_x_is_used_as_is(tmp_path):
  rows = [_row('', 1, 0.5), _row('', 4, 0.6)]
  positions = common.errorbar_plot(rows, x='x', metric='acc', path=str(tmp_path / 'p.png'))
  assert positions == {'': [1, 4]}


# ------------------------------------------------------------ regenerated from records

def test_committed_index_is_what_the_generator_writes():
  """experiments/README.md is generated (`python -m experiments.report --index`): no drift."""
  with open(report.README) as f:
    committed = f.read()
  assert committed == report.index_text(), (
      'experiments/README.md is stale: run `make experiments-report` (or '
      '`python -m experiments.report --index`).')


def test_index_lists_every_results_dir_with_the_expected_files(tmp_path):
  for name, finding in (('a', 'A beats B.'), ('b_quick', 'smoke')):
    out = tmp_path / name
    out.mkdir()
    common.write_results(name, [{'x': 1}], ['x'], title=f'T {name}', finding=finding,
                         verdict='no significant difference', command='cmd', out_dir=str(out),
                         dataset='MNIST-1D', seeds=(0, 1))
    common.save_records([{'seed': 0}, {'seed': 1}], str(out / 'records.json'))
  (tmp_path / 'c').mkdir()  # no results.md: not listed
  common.save_records([{'seed': 0}], str(tmp_path / 'c' / 'records.json'))
  # A results dir written by other code, with only the finding and verdict lines: seeds and
  # data come from its records.
  (tmp_path / 'd').mkdir()
  (tmp_path / 'd' / 'results.md').write_text(
      '# D\n\n**Finding tested:** D helps.\n\n**Verdict on our data:** better.\n')
  common.save_records([{'seed': 3, 'dataset': 'digits'}], str(tmp_path / 'd' / 'records.json'))
  text = report.index_text(str(tmp_path))
  assert '| [a](#a) | T a | MNIST-1D | 0, 1 |' in text
  assert ('### a\n\n[T a](results/a/results.md)\n\n- **Command:** `cmd`\n'
          '- **Finding tested:** A beats B.\n- **Data:** MNIST-1D; **seeds:** 0, 1\n'
          '- **Verdict (generated):** no significant difference\n') in text
  assert '| [d](#d) | D | digits | 3 |' in text and '- **Verdict (generated):** better.' in text
  assert '- **Command:** —' in text
  assert 'b_quick' not in text and 'results/c/' not in text


@pytest.mark.parametrize('name', report.regenerable())
def test_committed_results_regenerate_from_records(name, tmp_path):
  """A committed results.md is exactly what its report() writes from its JSON inputs.

  They are records.json and setup.json, and for the dense experiments the step-speed
  measurement step_speed.json.
  """
  src = os.path.join(common.RESULTS, name)
  for f in ('records.json', 'setup.json'):
    shutil.copy(os.path.join(src, f), tmp_path / f)
  if os.path.isfile(os.path.join(src, 'step_speed.json')):
    shutil.copy(os.path.join(src, 'step_speed.json'), tmp_path / 'step_speed.json')
  report.regenerate('.', root=str(tmp_path))
  for f in ('results.md', 'results.csv'):
    with open(os.path.join(src, f)) as a:
      assert (tmp_path / f).read_text() == a.read(), f


def test_every_committed_result_has_a_run_that_regenerates_it():
  import glob
  import os

  from experiments import all as all_experiments
  from experiments import common
  committed = {os.path.basename(d) for d in glob.glob(os.path.join(common.RESULTS, '*'))
               if os.path.isdir(d) and not os.path.basename(d).startswith('bench')}
  full = all_experiments.runs()
  assert {r['results'] for r in full} == committed
  assert len(full) == len(committed)  # one run per folder
  quick = all_experiments.runs(quick=True)
  assert {r['results'] for r in quick} == committed  # every experiment has a smoke mode
  assert all(r['mode'].endswith('quick') for r in quick)
