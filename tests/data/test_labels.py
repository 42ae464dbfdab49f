"""Local datasets validate their labels once, when loaded.

The corrupt data are real: a builder registered under the same name and
version writes bad labels into the data directory, and the ordinary
``kdata.load`` then reads those files through the real builder.
"""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import data as kd
from kdjax.data import _builders
from kdjax.data import _sources
from tests.data.conftest import SMALL


def _with_classes(builder, info, num_classes):
  """``info`` with a ``label`` feature of ``num_classes`` classes."""
  features = dict(info.features.items())
  features['label'] = tfds.features.ClassLabel(num_classes=num_classes)
  return tfds.core.DatasetInfo(builder=builder, description=info.description,
                               features=tfds.features.FeaturesDict(features),
                               supervised_keys=info.supervised_keys)


class Digits(_builders.Digits, skip_registration=True):
  """Writes ``digits`` (same name and version) with three labels changed to ``BAD``."""

  BAD = -1

  def _info(self):
    # TFDS refuses to write labels >= num_classes: declare more classes then.
    info = super()._info()
    return _with_classes(self, info, self.BAD + 1) if self.BAD >= 10 else info

  def _generate_examples(self, images, labels):
    labels = np.array(labels)
    labels[[5, 17, 400 % len(labels)]] = self.BAD
    yield from super()._generate_examples(images, labels)


class Mnist1d(_builders.Mnist1d, skip_registration=True):
  """Writes ``mnist1d`` with every tenth label shifted by ``+10``."""

  def _info(self):
    return _with_classes(self, super()._info(), 20)

  def _generate_examples(self, x, y):
    y = np.where(np.arange(len(y)) % 10 == 0, y + 10, y)
    yield from super()._generate_examples(x, y)


def _prepare(builder_cls, data_dir, **kwargs):
  builder_cls(data_dir=str(data_dir), file_format='array_record', **kwargs).download_and_prepare()


@pytest.mark.parametrize('bad', [-1, 10, 12])
@pytest.mark.parametrize('in_memory', [True, False])
def test_load_rejects_out_of_range_digits_labels(tmp_path, bad, in_memory, monkeypatch):
  monkeypatch.setattr(Digits, 'BAD', bad)
  _prepare(Digits, tmp_path)
  with pytest.raises(ValueError, match=rf"Dataset 'digits' split 'train': 3 of 1437 `label` "
                                       rf"values are outside \[0, 10\): \[{bad}\]") as e:
    kd.load('digits', 'train', data_dir=tmp_path, in_memory=in_memory)
  assert str(tmp_path / 'digits' / '1.0.0') in str(e.value)


def test_load_rejects_out_of_range_mnist1d_labels_in_every_split(tmp_path):
  _prepare(Mnist1d, tmp_path, config=SMALL)
  for split, n in [('train', 160), ('test', 40)]:
    with pytest.raises(ValueError, match=rf"'mnist1d' split '{split}': {n // 10} of {n} "
                                         r'`label` values are outside \[0, 10\): \[1\d'):
      kd.load('mnist1d', split, data_dir=tmp_path, config=SMALL)
  # The raw TFDS records are not checked: they are what is on disk.
  assert len(kd.load('mnist1d', 'test', data_dir=tmp_path, config=SMALL, raw=True)) == 40


def test_intact_local_datasets_load_and_the_check_is_cheap(data_dir):
  src = kd.load('mnist1d', 'train', data_dir=data_dir, config=SMALL)
  digits = kd.load('digits', 'train', data_dir=data_dir)
  assert set(np.unique(src.arrays()['label'])) <= set(range(10))
  assert len(digits) == 1437
  start = time.perf_counter()
  for _ in range(100):
    _sources._check_labels(digits)  # pylint: disable=protected-access
  assert (time.perf_counter() - start) / 100 < 1e-3  # one vectorised pass over 1437 labels
