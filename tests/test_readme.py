"""The README's Python snippets run as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def _blocks():
  text = open(README).read()
  return [b for b in re.findall(r'```python\n(.*?)```', text, re.S) if 'runs.train_and_evaluate' not in b]


@pytest.mark.parametrize('index', range(len(_blocks())))
def test_readme_snippet_runs(index, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(_blocks()[index], f'README.md[{index}]', 'exec'), namespace)
  if 'metrics' in namespace:
    out = capsys.readouterr().out
    assert 'loss/hint/embedding' in out and 'agreement/teacher' in out
    assert int(namespace['metrics']['skipped']) == 0
  if 'per_example' in namespace:
    assert namespace['per_example'].shape == (8,)
