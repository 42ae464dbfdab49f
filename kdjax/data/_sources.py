"""Dataset metadata and random-access sources built on ``tfds.data_source``.

A :class:`Source` yields *standardised* examples, the same for every dataset:

* ``'x'``: the model input, float32, normalised as ``(raw / scale - mean) / std``
  per channel (see :class:`DatasetMeta`);
* ``'label'``: int32 class index (absent in unlabeled sources);
* ``'id'``: int32 example id. Local datasets store it (index in the split as
  generated); for other TFDS datasets it is the record's position in the split
  as read, which is stable for the same prepared files.

Dense datasets (``digits_detection``, ``digits_segmentation``) carry other
targets in place of ``'label'`` (see :attr:`DatasetMeta.targets`): float
targets as float32, integer ones as int32.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow_datasets as tfds

from kdjax.data import _builders


Download = Union[bool, str]


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset is not on disk (in array_record format) and downloads are off.

  The message says how to prepare it: ``tfds build <name> --data_dir=...
  --file_format=array_record`` once with network access, or ``download=True``.
  """


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What the engine needs to know about a classification dataset.

  Attributes:
    name: dataset name without config (``'cifar10'``, ``'mnist1d'``).
    num_classes: number of classes.
    input_shape: shape of one model input ``x`` (no batch axis).
    kind: ``'image'`` (``[H, W, C]``) or ``'sequence'`` (``[L]``).
    feature: key of the input in the raw TFDS example (``'image'`` or ``'x'``).
    scale: raw inputs are divided by it first (255 for uint8 images, else 1).
    mean: per-channel mean subtracted after scaling.
    std: per-channel standard deviation divided by after that.
    local: whether the dataset is generated locally (no download).
    splits: split names.
    task: ``'classification'``, ``'detection'`` or ``'segmentation'``.
    targets: keys of the raw example copied into labeled examples:
      ``('label',)`` for classification; ``('boxes', 'labels',
      'num_objects')`` for detection; ``('segmentation',)`` for segmentation.
      ``num_classes`` counts object classes for detection and map classes
      (background included) for segmentation.
  """

  name: str
  num_classes: int
  input_shape: tuple[int, ...]
  kind: str
  feature: str
  scale: float = 1.0
  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)
  local: bool = False
  splits: tuple[str, ...] = ('train', 'test')
  task: str = 'classification'
  targets: tuple[str, ...] = ('label',)

  def normalize(self, raw: Any) -> np.ndarray:
    """Maps a raw input (one example or a batch) to the float32 model input.

    Args:
      raw: ``[..., *input_shape]`` raw input, e.g. uint8 pixels.

    Returns:
      ``(raw / scale - mean) / std`` in float32, same shape.

    Examples:
      >>> import numpy as np
      >>> from kdjax.data import dataset_info
      >>> dataset_info('mnist').normalize(np.full((28, 28, 1), 255, np.uint8))[0, 0]
      array([2.8215...], dtype=float32)
    """
    x = np.asarray(raw, np.float32)
    if self.scale != 1.0:
      x = x / np.float32(self.scale)
    if self.mean != (0.0,) or self.std != (1.0,):
      x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
    return x


# Per-channel statistics of the training split after scaling to [0, 1]. CIFAR:
# the population mean/std over all training pixels (std 0.2470..., not the
# often-copied 0.2023..., which averages per-image stds). MNIST and
# Fashion-MNIST: the standard values over the 60k training images. SVHN: the
# commonly used values for the 73k train split. digits: computed from the
# local train split (checked by the tests). MNIST-1D is already standardised by
# its generator.
_KNOWN: dict[str, DatasetMeta] = {
    'mnist1d': DatasetMeta('mnist1d', 10, (40,), 'sequence', 'x', local=True),
    'digits': DatasetMeta('digits', 10, (8, 8, 1), 'image', 'image',
                          mean=(0.30543,), std=(0.37614,), local=True),
    # Digit canvases: already in [0, 1], not standardised; the input shape is
    # the default config's (load() reads it from the builder of the config used).
    'digits_detection': DatasetMeta('digits_detection', 10, (48, 48, 1), 'image', 'image',
                                    local=True, task='detection',
                                    targets=('boxes', 'labels', 'num_objects')),
    'digits_segmentation': DatasetMeta('digits_segmentation', 11, (48, 48, 1), 'image',
                                       'image', local=True, task='segmentation',
                                       targets=('segmentation',)),
    'mnist': DatasetMeta('mnist', 10, (28, 28, 1), 'image', 'image', 255.0,
                         (0.1307,), (0.3081,)),
    'fashion_mnist': DatasetMeta('fashion_mnist', 10, (28, 28, 1), 'image', 'image', 255.0,
                                 (0.2860,), (0.3530,)),
    'cifar10': DatasetMeta('cifar10', 10, (32, 32, 3), 'image', 'image', 255.0,
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': DatasetMeta('cifar100', 100, (32, 32, 3), 'image', 'image', 255.0,
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'svhn_cropped': DatasetMeta('svhn_cropped', 10, (32, 32, 3), 'image', 'image', 255.0,
                                (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                                splits=('train', 'test', 'extra')),
}


def _unknown(name: str) -> ValueError:
  return ValueError(
      f'Unknown dataset {name!r}: it is neither a local kdjax dataset '
      f'{_builders.LOCAL_NAMES} nor a registered TFDS dataset.')


def dataset_info(name: str) -> DatasetMeta:
  """Returns the metadata of a dataset.

  Known datasets (``mnist1d``, ``digits``, ``digits_detection``,
  ``digits_segmentation``, ``mnist``, ``fashion_mnist``,
  ``cifar10``, ``cifar100``, ``svhn_cropped``) come from a table with their
  normalisation statistics. Any other registered TFDS dataset with an
  ``image`` feature of fixed shape and a ``ClassLabel`` ``label`` is described
  from its ``tfds.core.DatasetInfo``; it is only scaled to ``[0, 1]`` (mean 0,
  std 1).

  Args:
    name: dataset name, optionally with a config (``'mnist1d/transfer'``).

  Returns:
    A :class:`DatasetMeta`.

  Raises:
    ValueError: for an unknown name, or a TFDS dataset that is not image
      classification with a fixed input shape.

  Examples:
    >>> from kdjax.data import dataset_info
    >>> info = dataset_info('cifar10')
    >>> info.num_classes, info.input_shape, info.kind
    (10, (32, 32, 3), 'image')
    >>> dataset_info('mnist1d/transfer').splits
    ('train',)
  """
  base, config = _builders.split_name(name)
  if base in _KNOWN:
    meta = _KNOWN[base]
    if base == 'mnist1d' and config is not None and config.startswith('transfer'):
      meta = dataclasses.replace(meta, splits=('train',))
    return meta
  try:
    builder_cls = tfds.builder_cls(base)
  except tfds.core.registered.DatasetNotFoundError:
    raise _unknown(name) from None
  try:
    info = builder_cls(**({'config': config} if config else {})).info
  except Exception as e:  # Constructing some builders needs extra packages.
    raise ValueError(f'Cannot read the TFDS metadata of {name!r}: {e}') from e
  features = info.features
  keys = set(features.keys()) if isinstance(features, tfds.features.FeaturesDict) else set()
  image = features['image'] if 'image' in keys else None
  label = features['label'] if 'label' in keys else None
  if (not isinstance(image, tfds.features.Image)
      or not isinstance(label, tfds.features.ClassLabel)
      or None in image.shape):
    raise ValueError(
        f'Dataset {name!r} is not image classification with a fixed shape (needs an '
        f'`image` Image feature and a `label` ClassLabel); use load(..., raw=True).')
  scale = 255.0 if np.dtype(image.np_dtype) == np.uint8 else 1.0
  return DatasetMeta(base, label.num_classes, tuple(image.shape), 'image', 'image', scale,
                     splits=tuple(info.splits.keys()) or ('train', 'test'))


class Source:
  """Random-access source of standardised examples (a grain data source).

  Wraps a TFDS data source: ``len(source)`` examples, ``source[i]`` is a dict
  with ``'x'``, ``'label'`` (labeled sources only) and ``'id'`` (see the module
  docstring); :meth:`read_batch` reads many at once, stacked and normalised in
  one operation. Works with ``grain.MapDataset.source`` and
  ``kdjax.data.make_pipeline``.

  Attributes:
    info: the dataset's :class:`DatasetMeta`.
    records: the wrapped TFDS source (raw feature dicts).
    labeled: whether examples carry ``'label'``.
    name: dataset name as given to :func:`load`.
    split: the split.
    in_memory: whether the raw features were read into arrays up front.
  """

  def __init__(
      self,
      records: Sequence[Mapping[str, Any]],
      info: DatasetMeta,
      *,
      labeled: bool = True,
      name: Optional[str] = None,
      split: Optional[str] = None,
      in_memory: bool = False,
      _arrays: Optional[dict[str, np.ndarray]] = None,
  ):
    self.records = records
    self.info = info
    self.labeled = labeled
    self.name = name or info.name
    self.split = split
    self._arrays = _arrays
    if in_memory and _arrays is None:
      self._arrays = self._read_raw(np.arange(len(records)))

  @property
  def in_memory(self) -> bool:
    return self._arrays is not None

  def __len__(self) -> int:
    return len(self.records)

  def _read_raw(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Raw input, label and id arrays of the records at ``indices``."""
    keys = [self.info.feature, *self.info.targets]
    out = {k: [] for k in keys + ['id']}
    for i in indices:  # TFDS's __getitems__ is no faster here, and broken under mock_data.
      r = self.records[int(i)]
      for k in keys:
        out[k].append(r[k])
      out['id'].append(r.get('id'))
    arrays = {k: np.asarray(v) for k, v in out.items() if k != 'id'}
    if len(indices) == 0:
      arrays[self.info.feature] = np.zeros((0,) + self.info.input_shape, np.float32)
    ids = np.asarray(out['id'])
    if ids.dtype == object or not np.issubdtype(ids.dtype, np.integer):
      ids = np.asarray(indices)  # No integer id stored: use the record position.
    arrays['id'] = ids.astype(np.int64)
    return arrays

  def read_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Reads the examples at ``indices`` as stacked, standardised arrays.

    Args:
      indices: ``[B]`` record positions in ``[0, len(self))``.

    Returns:
      ``{'x': [B, *input_shape] float32, 'label': [B] int32, 'id': [B] int32}``
      (no ``'label'`` if unlabeled); dense datasets have their
      :attr:`DatasetMeta.targets` instead of ``'label'``.

    Raises:
      IndexError: for a position out of range.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f'Indices out of range for {len(self)} examples: {indices}.')
    raw = ({k: v[indices] for k, v in self._arrays.items()} if self._arrays is not None
           else self._read_raw(indices))
    out = {'x': self.info.normalize(raw[self.info.feature])}
    if self.labeled:
      for k in self.info.targets:
        v = np.asarray(raw[k])
        out[k] = v.astype(np.float32 if np.issubdtype(v.dtype, np.floating) else np.int32)
    out['id'] = raw['id'].astype(np.int32)
    return out

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if index < 0:
      index += len(self)
    return {k: v[0] for k, v in self.read_batch([index]).items()}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    batch = self.read_batch(indices)
    return [{k: v[i] for k, v in batch.items()} for i in range(len(batch['id']))]

  def unlabeled(self) -> 'Source':
    """Returns the same source without ``'label'`` (a transfer source)."""
    return Source(self.records, self.info, labeled=False, name=self.name, split=self.split,
                  _arrays=self._arrays)

  def subset(self, indices: Sequence[int], *, split: Optional[str] = None) -> 'Source':
    """Returns the source of the records at ``indices``, in that order.

    The examples keep their ``'id'`` (so augmented views and a
    :func:`kdjax.data.validation_split` made from ids are unchanged), the
    labels and the in-memory arrays of this source; nothing is copied from
    disk. Use it with :func:`kdjax.data.validation_split` to train on
    "train minus validation".

    Args:
      indices: ``[M]`` record positions in ``[0, len(self))``.
      split: the new source's ``split`` label (default
        ``'<split>[subset of M]'``).

    Returns:
      A :class:`Source` with ``M`` examples; ``subset[j]`` is ``self[indices[j]]``.

    Raises:
      IndexError: for a position out of range.

    Examples:
      >>> import tempfile
      >>> from kdjax.data import load
      >>> src = load('digits', 'train', data_dir=tempfile.mkdtemp())
      >>> part = src.subset([5, 0, 7], split='mine')
      >>> len(part), part.split, bool(part[0]['id'] == src[5]['id'])
      (3, 'mine', True)
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f'Indices out of range for {len(self)} examples: {indices}.')
    arrays = None if self._arrays is None else {k: v[indices] for k, v in self._arrays.items()}
    return Source(_Subset(self.records, indices), self.info, labeled=self.labeled,
                  name=self.name, split=split or f'{self.split}[subset of {indices.size}]',
                  _arrays=arrays)

  def cached(self) -> 'Source':
    """Returns the same source with all raw features read into memory."""
    if self.in_memory:
      return self
    return Source(self.records, self.info, labeled=self.labeled, name=self.name,
                  split=self.split, in_memory=True)

  def arrays(self) -> dict[str, np.ndarray]:
    """Reads the whole source into standardised arrays, ordered by ``id``.

    Returns:
      ``{'x': [N, ...], 'label': [N], 'id': [N]}`` (no ``label`` if unlabeled).
    """
    batch = self.read_batch(np.arange(len(self)))
    order = np.argsort(batch['id'], kind='stable')
    return {k: v[order] for k, v in batch.items()}

  def __repr__(self) -> str:
    return (f'Source({self.name!r}, split={self.split!r}, n={len(self)}, '
            f'labeled={self.labeled}, in_memory={self.in_memory})')


class _Subset(Sequence):
  """The records of ``records`` at ``indices`` (a random-access view).

  A record without an integer ``'id'`` gets its position in the parent, the id
  the parent :class:`Source` would have given it.
  """

  def __init__(self, records: Sequence[Mapping[str, Any]], indices: np.ndarray):
    self._records = records
    self._indices = indices

  def __len__(self) -> int:
    return int(self._indices.size)

  def __getitem__(self, i):
    j = int(self._indices[int(i)])
    record = self._records[j]
    ident = record.get('id')
    if ident is None or not np.issubdtype(np.asarray(ident).dtype, np.integer):
      record = {**record, 'id': j}
    return record


def _check_download(download: Download) -> bool:
  if download is True or download is False:
    return download
  if download == 'auto':
    return True
  raise ValueError(f"`download` must be True, False or 'auto', got {download!r}.")


def _not_prepared(name: str, data_dir: Optional[str]) -> DatasetNotPreparedError:
  root = _builders.resolve_data_dir(data_dir)
  return DatasetNotPreparedError(
      f'TFDS dataset {name!r} is not prepared in array_record format under {root!r} and '
      f'downloads are off. Prepare it once with network access: '
      f'`tfds build {name} --data_dir={root} --file_format=array_record`, or pass '
      f'`download=True` to kdjax.data.load / kdjax.data.prepare.')


def _is_prepared(name: str, data_dir: Optional[str]) -> bool:
  try:
    return tfds.builder(name, data_dir=data_dir, file_format='array_record').is_prepared()
  except Exception:  # pylint: disable=broad-except
    return False


def _tfds_source(name: str, split: Any, data_dir: Optional[str], download: bool):
  """``tfds.data_source`` with fast, clear errors for unknown or missing datasets."""
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=download,
                            builder_kwargs={'file_format': 'array_record'})
  except tfds.core.registered.DatasetNotFoundError:
    raise _unknown(name) from None
  except Exception as e:  # pylint: disable=broad-except
    # TFDS reports missing data variously (KeyError on empty splits,
    # NotImplementedError about the file format, ...): decide by looking.
    if download or _is_prepared(name, data_dir):
      raise
    raise _not_prepared(name, data_dir) from e


def load(
    name: str,
    split: str,
    *,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    download: Download = False,
    config: Any = None,
    raw: bool = False,
    in_memory: Optional[bool] = None,
) -> Source:
  """Opens one split of a dataset as a random-access :class:`Source`.

  Local datasets (``mnist1d``, ``mnist1d/transfer``, ``digits``,
  ``digits_detection``, ``digits_segmentation``) are generated
  into ``data_dir`` on first use; no network is needed and ``download`` is
  ignored. Any other name goes through ``tfds.data_source`` (array_record
  format, no TensorFlow). Downloads are off by default, so a dataset that is
  not on disk fails at once with :class:`DatasetNotPreparedError` instead of
  retrying the network for minutes.

  Args:
    name: dataset name, optionally with a config: ``'mnist1d'``,
      ``'mnist1d/transfer'``, ``'digits'``, ``'cifar10'``, ``'mnist'``, ...
    split: split name or TFDS split expression (``'train[:90%]'``). Slices
      count records in file order; TFDS shuffles local datasets when writing
      them, so ``'train[:25%]'`` is a fixed pseudo-random quarter of the ids.
    data_dir: TFDS data directory (default ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    download: for TFDS datasets, whether to download and prepare a missing
      dataset (``True`` or ``'auto'``; both are no-ops when it is on disk).
    config: for ``mnist1d``, a :class:`Mnist1dConfig` (see
      :func:`mnist1d_config`) or a config name; for ``digits_detection`` and
      ``digits_segmentation``, a :class:`DenseDigitsConfig` (see
      :func:`dense_digits_config`).
    raw: return the TFDS source itself (raw feature dicts) instead of a
      standardised :class:`Source`.
    in_memory: read the split's raw features into NumPy arrays once (fast
      batches; CIFAR-10 train is 150 MB as uint8). Default: True for local
      datasets, False otherwise.

  Returns:
    A :class:`Source` (or the raw TFDS source if ``raw``).

  Raises:
    ValueError: for an unknown dataset name (the message names it), a bad
      ``download`` value, or a local dataset with a ``label`` outside
      ``[0, num_classes)`` (checked once per load, over the whole split); for
      the digit canvases, a box outside ``[0, 1]`` or with ``ymin > ymax``, a
      label outside ``[0, 10)`` or a class map value outside ``[0, 10]``.
    DatasetNotPreparedError: (a ``FileNotFoundError``) for a TFDS dataset that
      is not prepared in ``data_dir`` while ``download`` is off.

  Examples:
    >>> import tempfile
    >>> from kdjax.data import load, mnist1d_config
    >>> src = load('mnist1d', 'test', data_dir=tempfile.mkdtemp(),
    ...            config=mnist1d_config(200))
    >>> len(src), sorted(src[0]), src[0]['x'].shape
    (40, ['id', 'label', 'x'], (40,))
  """
  download = _check_download(download)
  meta = dataset_info(name)
  data_dir = None if data_dir is None else os.fspath(data_dir)
  if meta.local:
    builder = _builders.prepare_local(name, data_dir=data_dir, config=config)
    records = builder.as_data_source(split=split)
  else:
    if config is not None:
      raise ValueError(f'`config` is only for local datasets; put it in the name: '
                       f'"{name}/<config>".')
    records = _tfds_source(name, split, data_dir, download)
  if raw:
    return records
  if in_memory is None:
    in_memory = meta.local
  if meta.local and meta.task != 'classification':
    meta = dataclasses.replace(meta, input_shape=tuple(builder.info.features['image'].shape))
  source = Source(records, meta, name=name, split=split, in_memory=in_memory)
  if meta.local:
    _check_targets(source, where=os.fspath(builder.data_dir))
  return source


def _check_targets(source: Source, *, where: Optional[str] = None) -> None:
  """Checks the targets of a local source once at load (see :func:`_check_labels`)."""
  if source.info.task == 'classification':
    _check_labels(source, where=where)
    return
  if not source.labeled or not len(source):
    return
  from kdjax.data import _dense_builders  # pylint: disable=import-outside-toplevel

  arrays = source._arrays if source.in_memory else source._read_raw(np.arange(len(source)))
  _dense_builders.check_dense_arrays(
      {k: arrays[k] for k in source.info.targets},
      where=f'Dataset {source.name!r} split {source.split!r}'
            f'{f" (prepared files under {where})" if where else ""}')


def _check_labels(source: Source, *, where: Optional[str] = None) -> None:
  """Checks once that every ``label`` of ``source`` is in ``[0, num_classes)``.

  :func:`load` calls it for local datasets, so that a corrupt or mis-built
  split fails at load instead of training on garbage. It is one vectorised
  pass over the label column: free for an in-memory source (its arrays are
  already read), one read of the split otherwise.

  Args:
    source: a :class:`Source` (unlabeled or empty sources pass).
    where: where the data live (named in the error).

  Raises:
    ValueError: naming ``label``, the dataset and split, and the offending
      values, if any label is out of range (or not an integer).
  """
  if not source.labeled or not len(source):
    return
  arrays = source._arrays if source.in_memory else source._read_raw(np.arange(len(source)))
  labels = np.asarray(arrays['label']).reshape(-1)
  num_classes = source.info.num_classes
  if not np.issubdtype(labels.dtype, np.integer):
    bad = np.ones(labels.shape, bool)
  else:
    bad = (labels < 0) | (labels >= num_classes)
  if not bad.any():
    return
  values = np.unique(labels[bad])
  shown = values[:10].tolist()
  more = f' and {len(values) - 10} more' if len(values) > 10 else ''
  raise ValueError(
      f'Dataset {source.name!r} split {source.split!r}: {int(bad.sum())} of {len(labels)} '
      f'`label` values are outside [0, {num_classes}): {shown}{more} (e.g. at records '
      f'{np.flatnonzero(bad)[:5].tolist()}). The prepared files'
      f'{f" under {where}" if where else ""} are corrupt or were built for another number '
      'of classes; delete them to rebuild the dataset.')


def prepare(
    name: str,
    *,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    download: Download = False,
    config: Any = None,
) -> str:
  """Makes sure a dataset is on disk, building local datasets up front.

  Args:
    name: dataset name (see :func:`load`).
    data_dir: TFDS data directory.
    download: for TFDS datasets, download and prepare it if missing.
    config: for ``mnist1d``, a config or config name.

  Returns:
    The directory holding the prepared dataset version.

  Raises:
    ValueError: for an unknown name.
    DatasetNotPreparedError: for a missing TFDS dataset while ``download`` is off.

  Examples:
    >>> import os, tempfile
    >>> from kdjax.data import prepare
    >>> path = prepare('digits', data_dir=tempfile.mkdtemp())
    >>> os.path.basename(path)
    '1.0.0'
  """
  download = _check_download(download)
  meta = dataset_info(name)
  data_dir = None if data_dir is None else os.fspath(data_dir)
  if meta.local:
    return os.fspath(_builders.prepare_local(name, data_dir=data_dir, config=config).data_dir)
  builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    if not download:
      raise _not_prepared(name, data_dir)
    builder.download_and_prepare()
  return os.fspath(builder.data_dir)


def tensorflow_available() -> bool:
  """Whether TensorFlow can be imported (needed only by :func:`load_tf`)."""
  try:
    import tensorflow  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def load_tf(
    name: str,
    split: str,
    *,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    download: Download = False,
    config: Any = None,
):
  """Opens a split as a ``tf.data.Dataset`` of standardised examples.

  For users with TensorFlow (``pip install 'kdjax[tf]'``). TFDS datasets go
  through ``tfds.load`` (TFDS's default tfrecord files, prepared separately
  from the array_record files :func:`load` reads); local datasets are read
  through :func:`load` and sliced into memory (they are small). The elements
  have the same keys, dtypes and normalisation as :class:`Source` examples;
  ``id`` of a TFDS dataset is the position in the split as read.

  Args:
    name: dataset name (see :func:`load`).
    split: split name or TFDS split expression.
    data_dir: TFDS data directory.
    download: download and prepare a missing TFDS dataset.
    config: for ``mnist1d``, a config or config name.

  Returns:
    A ``tf.data.Dataset`` of ``{'x', 'label', 'id'}`` dicts.

  Raises:
    ImportError: if TensorFlow is not installed.
    ValueError: for an unknown name.
    DatasetNotPreparedError: for a missing TFDS dataset while ``download`` is off.
  """
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("load_tf needs TensorFlow: pip install 'kdjax[tf]'; "
                      'kdjax.data.load works without it.') from e
  download = _check_download(download)
  meta = dataset_info(name)
  if meta.local:
    return tf.data.Dataset.from_tensor_slices(
        load(name, split, data_dir=data_dir, config=config).arrays())
  data_dir = None if data_dir is None else os.fspath(data_dir)
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
  except tfds.core.registered.DatasetNotFoundError:
    raise _unknown(name) from None
  except (AssertionError, FileNotFoundError) as e:
    if download:
      raise
    raise DatasetNotPreparedError(
        f'TFDS dataset {name!r} is not prepared (tfrecord format) and downloads are off; '
        f'run `tfds build {name}` or pass download=True. TFDS said: {e}') from e
  mean = tf.constant(meta.mean, tf.float32)
  std = tf.constant(meta.std, tf.float32)

  def standardise(index, example):
    x = tf.cast(example[meta.feature], tf.float32) / meta.scale
    return {'x': (x - mean) / std, 'label': tf.cast(example['label'], tf.int32),
            'id': tf.cast(index, tf.int32)}

  return ds.enumerate().map(standardise, num_parallel_calls=tf.data.AUTOTUNE)
