"""Writing result tables (Markdown and CSV) for experiments."""

from __future__ import annotations

import csv
import os
from typing import Mapping, Sequence


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
  """Renders ``rows`` as a GitHub Markdown table with the given column order.

  Examples:
    >>> print(markdown_table([{'a': 1, 'b': 'x'}], ['a', 'b']))
    | a | b |
    |---|---|
    | 1 | x |
  """
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(str(r.get(c, '')) for c in columns) + ' |' for r in rows]
  return '\n'.join(lines)


def write_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str], path_stem: str,
                *, title: str = '', notes: str = '') -> str:
  """Writes ``<path_stem>.md`` and ``<path_stem>.csv``; returns the Markdown text."""
  os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
  md = markdown_table(rows, columns)
  with open(path_stem + '.md', 'w') as f:
    if title:
      f.write(f'# {title}\n\n')
    f.write(md + '\n')
    if notes:
      f.write('\n' + notes.strip() + '\n')
  with open(path_stem + '.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  return md
