"""Datasets, grain pipelines, transfer sets and augmentation.

Every dataset is read as a random-access source of standardised examples
``{'x': float32 input, 'label': int32, 'id': int32}`` (``'x'`` is always the
model input, already normalised), then batched by a deterministic grain
pipeline whose iterator state can be checkpointed::

  src = kdjax.data.load('mnist1d', 'train', data_dir=...)
  ds = kdjax.data.make_pipeline(src, batch_size=100, seed=0)
  it = iter(ds)           # it.get_state() / it.set_state(...)
  batch = next(it)        # {'x', 'label', 'id', 'mask', 'epoch'}

Local datasets (``mnist1d``, ``mnist1d/transfer``, ``digits``, and the digit
canvases ``digits_detection`` / ``digits_segmentation`` whose examples carry
boxes or class maps instead of ``'label'``) are generated into ``data_dir`` on
first use without network or TensorFlow; other TFDS
datasets must already be prepared in array_record format unless
``download=True``.

Validation data come out of ``train`` (the local ``train``/``test`` splits
are fixed): ``fit_idx, val_idx = validation_split(src, fraction=0.1, seed=0)``
(stratified by label), then ``src.subset(fit_idx)`` and ``src.subset(val_idx)``
feed the usual pipelines.
"""

# Augmentation.
from kdjax.data._augment import apply_draws
from kdjax.data._augment import augmentation
from kdjax.data._augment import crop_flip_draws
from kdjax.data._augment import example_keys
from kdjax.data._augment import ImageAugment
from kdjax.data._augment import random_crop_flip
from kdjax.data._augment import random_shift
from kdjax.data._augment import SequenceAugment
from kdjax.data._augment import shift_draws
from kdjax.data._augment import uniforms
# Local TFDS builders.
from kdjax.data._builders import Digits
from kdjax.data._builders import digits_split
from kdjax.data._builders import generate_mnist1d
from kdjax.data._builders import Mnist1d
from kdjax.data._builders import mnist1d_config
from kdjax.data._builders import Mnist1dConfig
from kdjax.data._builders import near_duplicates
from kdjax.data._dense_builders import check_dense_arrays
from kdjax.data._dense_builders import dense_digits_config
from kdjax.data._dense_builders import DenseDigitsConfig
from kdjax.data._dense_builders import DigitsDetection
from kdjax.data._dense_builders import DigitsSegmentation
from kdjax.data._dense_builders import generate_digit_canvases
# Pipelines.
from kdjax.data._pipeline import batches_per_epoch
from kdjax.data._pipeline import epoch_order
from kdjax.data._pipeline import make_pipeline
# Device-resident data.
from kdjax.data._resident import device_transform
from kdjax.data._resident import DeviceData
from kdjax.data._resident import fits_on_device
from kdjax.data._resident import training_data
# Loading.
from kdjax.data._sources import dataset_info
from kdjax.data._sources import DatasetMeta
from kdjax.data._sources import DatasetNotPreparedError
from kdjax.data._sources import load
from kdjax.data._sources import load_tf
from kdjax.data._sources import prepare
from kdjax.data._sources import Source
from kdjax.data._sources import tensorflow_available
# Transfer sets.
from kdjax.data._transfer import transfer_set
# Validation sets held out of a training split.
from kdjax.data._validation import validation_split
