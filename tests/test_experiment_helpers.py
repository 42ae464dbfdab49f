"""Tests for the experiment helpers (seeds summary, plots, results files)."""

from experiments import common


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
