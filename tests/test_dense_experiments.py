"""Smoke tests of the detection / segmentation experiments' 'quick' modes (tmp results)."""

import pytest

from experiments import detection
from experiments import segmentation
from experiments.configs import detection as detection_config
from experiments.configs import segmentation as segmentation_config


@pytest.mark.long
@pytest.mark.slow
def test_detection_quick(quick_config, check_results, results):
  config = quick_config(detection_config)
  rows = detection.run(config)
  records = check_results(results / 'detection_quick', detection.COLUMNS, rows,
                          ['detection_map.png', 'detection_examples.png'])
  models = {'teacher', 'scratch', '+Chen', '+LD', '+both'}
  assert {r['model'] for r in records} == models == {r['model'] for r in rows}
  assert all(0.0 <= r['map'] <= r['map50'] <= 1.0 for r in records)


@pytest.mark.long
@pytest.mark.slow
def test_segmentation_quick(quick_config, check_results, results):
  config = quick_config(segmentation_config)
  rows = segmentation.run(config)
  records = check_results(results / 'segmentation_quick', segmentation.COLUMNS, rows,
                          ['segmentation_miou.png', 'segmentation_examples.png'])
  models = {'teacher', 'scratch', '+pixel', '+pixel+pair', '+pixel+pair+holistic'}
  assert {r['model'] for r in records} == models == {r['model'] for r in rows}
  assert all(0.0 <= r['miou'] <= 1.0 and 0.0 <= r['pixel_accuracy'] <= 1.0 for r in records)
