"""Hyperparameters chosen on a validation split, never on test.

The protocol every tuned experiment follows:

1. hold a stratified validation set out of ``train``
   (:func:`validation_sources`, :func:`kdjax.data.validation_split`);
2. for each method, train every setting of a small grid on "train minus
   validation" with one tuning seed and score it on the validation set
   (:func:`tune`);
3. pick the setting with the best validation accuracy (:func:`select`; ties
   go to the earlier setting of the grid);
4. train the chosen setting on the full ``train`` split for every seed and
   evaluate on ``test`` once.

The whole grid (settings and validation accuracies) goes into ``setup.json``
(``facts['tuning']``), so the choice can be checked from the committed files
and :func:`tuning_lines` prints it in the results.

Examples:
  >>> grid = [{'learning_rate': 3e-3}, {'learning_rate': 1e-2}]
  >>> record = tune(grid, lambda s: {3e-3: 0.90, 1e-2: 0.93}[s['learning_rate']])
  >>> record['chosen'], record['validation_accuracy']
  ({'learning_rate': 0.01}, [0.9, 0.93])
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kdjax import data as kdata


def validation_sources(train_src: kdata.Source, *, fraction: float = 0.1,
                       seed: int = 0) -> tuple[kdata.Source, kdata.Source]:
  """``(train minus validation, validation)`` sources of ``train_src``.

  Args:
    train_src: the full training split.
    fraction: the share of each class held out (:func:`kdjax.data.validation_split`).
    seed: the split's seed.

  Returns:
    Two :class:`kdjax.data.Source` objects, split ``'train_fit'`` and
    ``'validation'``, partitioning ``train_src``.
  """
  fit, val = kdata.validation_split(train_src, fraction=fraction, seed=seed)
  return (train_src.subset(fit, split='train_fit'), train_src.subset(val, split='validation'))


def grid_of(**axes: Sequence[Any]) -> list[dict]:
  """The Cartesian product of named value lists, in order (the last axis varies fastest).

  Examples:
    >>> grid_of(learning_rate=(1e-3, 1e-2), weight_decay=(0.0,))
    [{'learning_rate': 0.001, 'weight_decay': 0.0}, {'learning_rate': 0.01, 'weight_decay': 0.0}]
  """
  names = list(axes)
  return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def select(scores: Sequence[float]) -> int:
  """The index of the best validation score; ties (and NaN) resolve to the earliest setting.

  Raises:
    ValueError: for an empty grid or one where every score is NaN.

  Examples:
    >>> select([0.90, 0.93, 0.93]), select([float('nan'), 0.5])
    (1, 1)
  """
  s = np.asarray(scores, np.float64)
  if s.size == 0 or np.all(np.isnan(s)):
    raise ValueError(f'No finite validation score to select from: {list(scores)}.')
  return int(np.nanargmax(s))  # the first maximum


def tune(grid: Sequence[Mapping[str, Any]],
         score: Callable[[dict], float]) -> dict[str, Any]:
  """Scores every setting of ``grid`` and picks the best (:func:`select`).

  Args:
    grid: the settings, e.g. ``[{'learning_rate': 1e-2}, ...]``.
    score: ``setting -> validation accuracy`` (train on train minus
      validation with the tuning seed, evaluate on validation).

  Returns:
    ``{'grid': [...], 'validation_accuracy': [...], 'chosen': setting,
    'chosen_index': i}``: the JSON record of the search.
  """
  settings = [dict(s) for s in grid]
  scores = [float(score(dict(s))) for s in settings]
  best = select(scores)
  return {'grid': settings, 'validation_accuracy': scores, 'chosen': settings[best],
          'chosen_index': best}


def _format_setting(setting: Mapping[str, Any]) -> str:
  short = {'learning_rate': 'lr', 'weight_decay': 'wd', 'label_smoothing': 'ls'}
  return ', '.join(f'{short.get(k, k)} {v:g}' if isinstance(v, (int, float)) else f'{k} {v}'
                   for k, v in setting.items())


def tuning_lines(tuning: Mapping[str, Mapping[str, Any]]) -> str:
  """A Markdown list of every search: the grid with its validation accuracies and the choice.

  Examples:
    >>> print(tuning_lines({'scratch': tune([{'learning_rate': 0.01}], lambda s: 0.9)}))
    - scratch: lr 0.01 → 90.0% ⇒ **lr 0.01**
  """
  lines = []
  for name, t in tuning.items():
    tried = '; '.join(f'{_format_setting(s)} → {100 * a:.1f}%'
                      for s, a in zip(t['grid'], t['validation_accuracy']))
    lines.append(f'- {name}: {tried} ⇒ **{_format_setting(t["chosen"])}**')
  return '\n'.join(lines)


def edge_axes(record: Mapping[str, Any], *, min_values: int = 3) -> list[str]:
  """The hyperparameters whose chosen value is the smallest or largest of its grid.

  Only axes with at least ``min_values`` distinct numeric values count (by
  default three: with two, every choice is at an edge, and the grid is not a
  search of that axis' range; with one, nothing was searched).

  Examples:
    >>> rec = {'grid': [{'learning_rate': 1e-3, 'k': 1}, {'learning_rate': 3e-3, 'k': 1},
    ...                 {'learning_rate': 1e-2, 'k': 1}], 'chosen': {'learning_rate': 1e-2, 'k': 1}}
    >>> edge_axes(rec)
    ['learning_rate']
  """
  out = []
  for key, value in record['chosen'].items():
    values = sorted({s[key] for s in record['grid'] if isinstance(s.get(key), (int, float))})
    if len(values) >= max(min_values, 2) and value in (values[0], values[-1]):
      out.append(key)
  return out


def edge_choices(searches: Mapping[str, Mapping[str, Any]], *,
                 min_values: int = 2) -> list[str]:
  """``'<search> (<axis> <value>)'`` for every choice at an end of its grid axis.

  Axes of fewer than ``min_values`` values are not searches of a range (see
  :func:`edge_axes`).

  Examples:
    >>> t = tune([{'learning_rate': 1e-3}, {'learning_rate': 1e-2}],
    ...          lambda s: 1e3 * s['learning_rate'])
    >>> edge_choices({'KD': t, 'one': tune([{'learning_rate': 1e-2}], lambda s: 0.5)})
    ['KD (learning_rate 0.01)']
  """
  return [f'{name} ({axis} {t["chosen"][axis]:g})' for name, t in searches.items()
          for axis in edge_axes(t, min_values=min_values)]


def edge_note(tuning_records: Mapping[str, Mapping[str, Any]]) -> str:
  """A sentence naming every choice at the edge of its grid ('' if none)."""
  names = {'learning_rate': 'learning rate'}
  edges = [f'{name} ({", ".join(names.get(a, a) for a in edge_axes(rec))})'
           for name, rec in tuning_records.items() if edge_axes(rec)]
  two = sorted({names.get(k, k) for rec in tuning_records.values() for k in rec['chosen']
                if len({s[k] for s in rec['grid']}) == 2})
  note = (' Searched over two values only (every choice is an end, so not flagged): '
          f'{", ".join(two)}.' if two else '')
  if not edges:
    return 'No choice searched over three or more values lies at an end of its grid.' + note
  return ('Chosen values at an end of their grid (a wider grid might move them): '
          + '; '.join(edges) + '.' + note)


def widened_note(tuning_config: Mapping[str, Any]) -> str:
  """The sentence on a learning-rate grid widened after a first search ('' if not).

  Reads ``tuning_config['widened_from']``, the grid of the first search.

  Examples:
    >>> widened_note({'widened_from': (1e-3, 1e-2)})[:56]
    'The learning-rate grid was widened from (0.001, 0.01) af'
    >>> widened_note({})
    ''
  """
  first = tuning_config.get('widened_from')
  if not first:
    return ''
  return (f'The learning-rate grid was widened from ({", ".join(f"{v:g}" for v in first)}) '
          'after a first search whose choices sat at its end (validation accuracies only, not '
          'test). ')


def split_sentence(tuning_config: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
  """The report's opening clause on the validation split (no final punctuation).

  Args:
    tuning_config: the run's ``config.tuning`` (``fraction``, ``split_seed``).
    facts: ``setup.json`` facts with ``validation_size`` and ``train_size``.

  Examples:
    >>> split_sentence({'fraction': 0.1, 'split_seed': 0},
    ...                {'validation_size': 40, 'train_size': 400}).split('` holds ')[1]
    '40 of the 400 training examples out (stratified by label)'
  """
  t = tuning_config
  return ('Hyperparameters were chosen on validation data, not test: '
          f'`kdjax.data.validation_split(fraction={t["fraction"]:g}, seed={t["split_seed"]})` '
          f'holds {facts["validation_size"]} of the {facts["train_size"]} training examples '
          'out (stratified by label)')
