"""The README's Python snippets run as written (with shorter training)."""

import os
import re

import numpy as np
import pytest


README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')
CONTINUES = '# (continues the cohort example)'
# The README trains for real; the test only shortens the runs.
SHORTER = {'num_steps=5000': 'num_steps=30', 'num_steps=10_000': 'num_steps=30',
           'num_samples=50_000': 'num_samples=500', 'range(300)': 'range(30)'}


def _snippets() -> list[str]:
  snippets = []
  for block in re.findall(r'```python\n(.*?)```', open(README).read(), re.S):
    for old, new in SHORTER.items():
      block = block.replace(old, new)
    if block.startswith(CONTINUES):
      snippets[-1] += '\n' + block
    else:
      snippets.append(block)
  return snippets


def test_training_lengths_are_shortened():
  text = '\n'.join(_snippets())
  assert not any(old in text for old in SHORTER), 'a README run was not shortened'


@pytest.mark.parametrize('index', range(len(_snippets())))
def test_readme_snippet_runs(index, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(_snippets()[index], f'README.md[{index}]', 'exec'), namespace)
  out = capsys.readouterr().out
  if 'teacher_variables' in namespace:  # the functional core
    assert 'loss/hint/embedding' in out and 'agreement/teacher' in out
    assert int(namespace['metrics']['skipped']) == 0
  if 'batches' in namespace:  # the compiled loop on device-resident data
    assert type(namespace['batches']).__name__ == 'DeviceData'
    assert int(namespace['result'].state.step) == 30 and namespace['result'].chunks == 1
  if 'per_example' in namespace:
    assert namespace['per_example'].shape == (8,)
  if 'cohort_metrics' in namespace:
    got = namespace['cohort_metrics']
    assert {'accuracy/0', 'accuracy/3', 'ensemble_accuracy'} <= set(got) and got['count'] == 1000
    assert 'ensemble_accuracy' in out
    # The mesh step updated the (replicated) cohort once more.
    assert int(namespace['peers'].step) == 31 and np.isfinite(float(namespace['metrics']['loss']))
  if 'box_map' in namespace:  # detection and segmentation
    assert 0.0 <= namespace['box_map']['mAP'] <= namespace['box_map']['mAP@.5'] <= 1.0
    assert namespace['targets'].positive.any() and 'mIoU 0.102, pixel accuracy 0.917' in out
  if 'crd/embedding' in _snippets()[index]:  # the feature and relational terms
    metrics, state = namespace['metrics'], namespace['state']
    assert "['student_bank', 'teacher_bank'] ['crd/embedding', 'vid/embedding']" in out
    assert state.term_state['crd/embedding']['teacher_bank'].shape == (4000, 128)
    assert int(metrics['skipped']) == 0 and np.isfinite(float(metrics['loss/crd/embedding']))
  if 'tfm_metrics' in namespace:  # transformer KD: attention and hidden transfer
    metrics = namespace['tfm_metrics']
    assert int(metrics['skipped']) == 0 and int(namespace['state'].step) == 1
    assert np.isfinite(float(metrics['loss/attention_kl/attention1']))
    assert "['loss/attention_kl/attention1', 'loss/ce', 'loss/hidden_mse/hidden1'" in out
  if 'det_metrics' in namespace:  # the dense distillation step
    assert int(namespace['det_metrics']['skipped']) == 0 and int(namespace['state'].step) == 1
    assert "'loss/hint', 'loss/ld', 'loss/soft']" in out
  if 'runs.train_and_evaluate' in _snippets()[index]:  # the notebook example
    for run in (namespace['teacher'], namespace['student']):
      assert 0.0 <= run.metrics['accuracy'] <= 1.0
