"""Local TFDS builders: MNIST-1D (labeled and transfer configs) and sklearn digits.

Both are ``tfds.core.GeneratorBasedBuilder`` subclasses written in the
array_record file format, so they are prepared and read without TensorFlow and
without network access. They are not added to the TFDS registry (a plain module
may be imported twice under pytest); use :func:`local_builder` or
``kdjax.data.load`` to get them.

Every example carries an ``id``: its index in the split as generated. TFDS
shuffles records when it writes them, so the record position differs from the
``id``; caches key on the ``id``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from typing import Any, Iterator, Optional

from absl import logging
import numpy as np
import tensorflow_datasets as tfds


LOCAL_NAMES = ('mnist1d', 'digits', 'digits_detection', 'digits_segmentation')

MNIST1D_LENGTH = 40
DIGITS_TEST_STRIDE = 5  # every fifth example of the class-sorted order is a test example

_MNIST1D_CITATION = """\
@article{greydanus2020scaling,
  title={Scaling down Deep Learning},
  author={Greydanus, Sam},
  journal={arXiv preprint arXiv:2011.14439},
  year={2020}
}"""


def generate_mnist1d(
    num_samples: int = 5000,
    seed: int = 42,
    train_split: float = 0.8,
) -> dict[str, np.ndarray]:
  """Generates MNIST-1D offline with the ``mnist1d`` package.

  Calls ``mnist1d.data.make_dataset`` with the package's default arguments
  except for ``num_samples``, ``seed`` and ``train_split``. That function
  reseeds NumPy's global RNG; its state is saved and restored here, so callers
  see no side effect. The package standardises each generated set with its own
  global mean and standard deviation, so the inputs have mean 0 and standard
  deviation 1 over the whole set (train and test together).

  Args:
    num_samples: total number of examples; the package makes
      ``num_samples // 10`` per class.
    seed: generator seed (the package default is 42).
    train_split: fraction of the (shuffled) examples put in the train split;
      the rest is the test split. ``1.0`` puts everything in train.

  Returns:
    A dict with ``x`` ``[n_train, 40]`` float32, ``y`` ``[n_train]`` int64,
    ``x_test`` ``[n_test, 40]`` float32 and ``y_test`` ``[n_test]`` int64.

  Raises:
    ValueError: for fewer than 10 samples or ``train_split`` outside (0, 1].

  Examples:
    >>> from kdjax.data import generate_mnist1d
    >>> d = generate_mnist1d(100, seed=0)
    >>> d['x'].shape, d['x_test'].shape, d['y'].dtype
    ((80, 40), (20, 40), dtype('int64'))
  """
  if num_samples < 10:
    raise ValueError(f'`num_samples` must be >= 10, got {num_samples}.')
  if not 0.0 < train_split <= 1.0:
    raise ValueError(f'`train_split` must be in (0, 1], got {train_split}.')
  from mnist1d import data as mnist1d_data  # pylint: disable=import-outside-toplevel

  args = mnist1d_data.get_dataset_args()
  args.num_samples = int(num_samples)
  args.seed = int(seed)
  args.train_split = float(train_split)
  state = np.random.get_state()
  try:
    d = mnist1d_data.make_dataset(args)
  finally:
    np.random.set_state(state)
  return {
      'x': np.asarray(d['x'], np.float32),
      'y': np.asarray(d['y'], np.int64),
      'x_test': np.asarray(d['x_test'], np.float32).reshape(-1, MNIST1D_LENGTH),
      'y_test': np.asarray(d['y_test'], np.int64),
  }


def near_duplicates(a: np.ndarray, b: np.ndarray, *, atol: float = 1e-6) -> np.ndarray:
  """Finds rows of ``a`` that repeat a row of ``b`` up to an affine rescaling.

  Each row is standardised on its own (zero mean, unit variance) before the
  comparison. MNIST-1D standardises a whole generated set with that set's own
  mean and standard deviation, so the same raw signal generated into two sets
  differs by a global affine map; per-row standardisation removes it. Distinct
  MNIST-1D signals are far apart (squared distance > 1 over 40 positions).

  Candidates are pairs whose projections on a fixed random unit direction
  differ by at most ``sqrt(atol)`` (a necessary condition), found by sorting;
  only those pairs are compared in full, so 50k x 5k rows take well under a
  second.

  Args:
    a: ``[n, d]`` rows to check.
    b: ``[m, d]`` reference rows.
    atol: squared-distance threshold (after row standardisation) below which
      two rows count as the same signal.

  Returns:
    ``[k]`` sorted indices into ``a`` of rows that have a near-duplicate in ``b``.

  Examples:
    >>> import numpy as np
    >>> from kdjax.data import near_duplicates
    >>> b = np.arange(12.0).reshape(3, 4) ** 2
    >>> a = np.stack([2 * b[1] + 5, b[0][::-1]])
    >>> near_duplicates(a, b)
    array([0])
  """

  def standardise(x):
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(x.std(axis=1, keepdims=True), 1e-12)

  a, b = standardise(a), standardise(b)
  if not len(a) or not len(b):
    return np.zeros((0,), np.int64)
  direction = np.random.default_rng(0).standard_normal(a.shape[1])
  direction /= np.linalg.norm(direction)
  order = np.argsort(b @ direction)
  pb = (b @ direction)[order]
  pa = a @ direction
  tol = np.sqrt(atol)
  lo = np.searchsorted(pb, pa - tol, side='left')
  counts = np.searchsorted(pb, pa + tol, side='right') - lo
  rows = np.repeat(np.arange(len(a)), counts)
  if not len(rows):
    return np.zeros((0,), np.int64)
  starts = np.cumsum(counts) - counts
  cols = order[lo[rows] + np.arange(len(rows)) - starts[rows]]
  hits = []
  for k in range(0, len(rows), 65536):
    r, c = rows[k:k + 65536], cols[k:k + 65536]
    d2 = np.sum((a[r] - b[c]) ** 2, axis=1)
    hits.append(r[d2 < atol])
  return np.unique(np.concatenate(hits)).astype(np.int64)


@dataclasses.dataclass(eq=False)
class Mnist1dConfig(tfds.core.BuilderConfig):
  """Configuration of the local MNIST-1D builder.

  Attributes:
    num_samples: total examples generated (train + test for a labeled config,
      all in ``train`` for a transfer config).
    seed: generator seed.
    train_split: train fraction of a labeled config (ignored for transfer).
    transfer: True for an unlabeled transfer set: a single ``train`` split,
      checked to share no signal with the labeled set it belongs to. Its
      ``label`` feature holds the generator's class, kept for diagnostics only;
      ``kdjax.data.transfer_set`` drops it.
    labeled_num_samples: ``num_samples`` of that labeled set (transfer only).
    labeled_seed: ``seed`` of that labeled set (transfer only).
  """

  num_samples: int = 5000
  seed: int = 42
  train_split: float = 0.8
  transfer: bool = False
  labeled_num_samples: int = 5000
  labeled_seed: int = 42


_MNIST1D_CONFIGS = (
    Mnist1dConfig(
        name='default',
        description='The package defaults: 5000 examples (4000 train / 1000 test), seed 42.'),
    Mnist1dConfig(
        name='transfer',
        description=('50000 unlabeled transfer inputs from seed 1, disjoint from the '
                     'default labeled set.'),
        num_samples=50_000, seed=1, transfer=True),
)


def mnist1d_config(
    num_samples: int = 5000,
    seed: int = 42,
    *,
    train_split: float = 0.8,
    transfer: bool = False,
    labeled_num_samples: int = 5000,
    labeled_seed: int = 42,
) -> Mnist1dConfig:
  """Returns the MNIST-1D builder config for the given parameters.

  The predefined configs (``default``: 5000 samples, seed 42; ``transfer``:
  50000 samples, seed 1) are returned as such; other parameters get a config
  whose name encodes them, so each lives in its own directory under
  ``data_dir/mnist1d/``.

  Args:
    num_samples: total number of generated examples.
    seed: generator seed.
    train_split: train fraction of a labeled set.
    transfer: build an unlabeled transfer set (see :class:`Mnist1dConfig`).
    labeled_num_samples: size of the labeled set a transfer set must avoid.
    labeled_seed: seed of that labeled set; must differ from ``seed``.

  Returns:
    A :class:`Mnist1dConfig`.

  Raises:
    ValueError: if a transfer set would use the labeled set's seed.

  Examples:
    >>> from kdjax.data import mnist1d_config
    >>> mnist1d_config().name
    'default'
    >>> mnist1d_config(500).name
    'n500_s42'
    >>> mnist1d_config(1000, seed=3, transfer=True, labeled_num_samples=500).name
    'transfer_n1000_s3_vs_n500_s42'
  """
  if transfer and seed == labeled_seed:
    raise ValueError(
        f'A transfer set needs a `seed` different from `labeled_seed` ({labeled_seed}); '
        'the same seed regenerates labeled signals.')
  if transfer:
    fields = dict(num_samples=num_samples, seed=seed, transfer=True,
                  labeled_num_samples=labeled_num_samples, labeled_seed=labeled_seed)
  else:
    fields = dict(num_samples=num_samples, seed=seed, train_split=train_split, transfer=False)
  for config in _MNIST1D_CONFIGS:
    if all(getattr(config, k) == v for k, v in fields.items()):
      return config
  if transfer:
    name = (f'transfer_n{num_samples}_s{seed}'
            f'_vs_n{labeled_num_samples}_s{labeled_seed}')
  else:
    name = f'n{num_samples}_s{seed}'
    if train_split != 0.8:
      name += f'_split{round(train_split * 1000)}'
  return Mnist1dConfig(name=name, **fields)


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Logs instead of printing to stdout when it prepares (nothing is downloaded)."""

  def _log_download_bytes(self) -> None:
    logging.info('Generating local dataset %s into %s.', self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info('Local dataset %s prepared in %s.', self.name, self.data_dir)


class Mnist1d(_LocalBuilder, skip_registration=True):
  """MNIST-1D generated offline (Greydanus, 2020).

  Features: ``x`` float32 ``[40]``, ``label`` int64 (10 classes), ``id`` int64.
  Splits: ``train`` and ``test`` (the package's 80/20 split) for a labeled
  config; ``train`` only for a transfer config.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Generated with mnist1d.data.make_dataset.'}
  BUILDER_CONFIGS = list(_MNIST1D_CONFIGS)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='MNIST-1D: 1-D procedurally generated digit signals of length 40.',
        features=tfds.features.FeaturesDict({
            'x': tfds.features.Tensor(shape=(MNIST1D_LENGTH,), dtype=np.float32),
            'label': tfds.features.ClassLabel(num_classes=10),
            'id': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('x', 'label'),
        homepage='https://github.com/greydanus/mnist1d',
        citation=_MNIST1D_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    if not c.transfer:
      d = generate_mnist1d(c.num_samples, c.seed, c.train_split)
      splits = {'train': (d['x'], d['y'])}
      if len(d['y_test']):
        splits['test'] = (d['x_test'], d['y_test'])
      return {k: self._generate_examples(x, y) for k, (x, y) in splits.items()}
    if c.seed == c.labeled_seed:
      raise ValueError(f'Transfer config {c.name!r} reuses the labeled seed {c.seed}.')
    d = generate_mnist1d(c.num_samples, c.seed, 1.0)
    ref = generate_mnist1d(c.labeled_num_samples, c.labeled_seed)
    dup = near_duplicates(d['x'], np.concatenate([ref['x'], ref['x_test']]))
    if len(dup):
      raise ValueError(
          f'Transfer config {c.name!r}: {len(dup)} inputs repeat signals of the labeled set '
          f'(num_samples={c.labeled_num_samples}, seed={c.labeled_seed}).')
    return {'train': self._generate_examples(d['x'], d['y'])}

  def _generate_examples(self, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[int, dict]]:
    for i in range(len(y)):
      yield i, {'x': x[i], 'label': int(y[i]), 'id': i}


def digits_split() -> dict[str, np.ndarray]:
  """The fixed, stratified train/test split of scikit-learn's digits.

  Rule: rank the 1797 examples by ``np.random.default_rng(0).permutation``,
  sort them stably by label, and put every fifth example of that order
  (positions 0, 5, 10, ...) in ``test``. That gives 1437 train / 360 test with
  each class's share within one example of 20%. Both splits list the original
  ``load_digits()`` indices in increasing order.

  Returns:
    ``{'train': [1437] int64, 'test': [360] int64}`` indices into
    ``sklearn.datasets.load_digits()``.

  Examples:
    >>> from kdjax.data import digits_split
    >>> s = digits_split()
    >>> len(s['train']), len(s['test'])
    (1437, 360)
  """
  from sklearn import datasets  # pylint: disable=import-outside-toplevel

  labels = datasets.load_digits().target
  order = np.random.default_rng(0).permutation(len(labels))
  order = order[np.argsort(labels[order], kind='stable')]
  test = np.sort(order[::DIGITS_TEST_STRIDE])
  train = np.setdiff1d(np.arange(len(labels)), test)
  return {'train': train.astype(np.int64), 'test': test.astype(np.int64)}


class Digits(_LocalBuilder, skip_registration=True):
  """scikit-learn's bundled 8x8 digits (UCI optical digits test set).

  Features: ``image`` float32 ``[8, 8, 1]`` in ``[0, 1]`` (the 0..16 counts
  divided by 16), ``label`` int64 (10 classes), ``id`` int64 (index within the
  split). Splits: see :func:`digits_split`.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified 1437/360 split, see kdjax.data.digits_split.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='scikit-learn load_digits(): 1797 8x8 grey images, 10 classes.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
            'label': tfds.features.ClassLabel(num_classes=10),
            'id': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Bundled with scikit-learn.
    from sklearn import datasets  # pylint: disable=import-outside-toplevel

    d = datasets.load_digits()
    images = (d.images / 16.0).astype(np.float32)[..., None]
    return {k: self._generate_examples(images[idx], d.target[idx])
            for k, idx in digits_split().items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    for i in range(len(labels)):
      yield i, {'image': images[i], 'label': int(labels[i]), 'id': i}


_BUILDERS = {'mnist1d': Mnist1d, 'digits': Digits}


def _all_builders() -> dict[str, type]:
  """Name -> builder class of every local dataset, the dense ones included."""
  from kdjax.data import _dense_builders  # pylint: disable=import-outside-toplevel

  return {**_BUILDERS, **_dense_builders.BUILDERS}


def split_name(name: str) -> tuple[str, Optional[str]]:
  """Splits ``'dataset/config'`` into ``('dataset', 'config')``."""
  base, _, config = name.partition('/')
  return base, (config or None)


def resolve_data_dir(data_dir: Optional[os.PathLike | str]) -> str:
  """``data_dir`` or TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
  if data_dir is None:
    data_dir = os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


def local_builder(
    name: str,
    *,
    data_dir: Optional[os.PathLike | str] = None,
    config: Any = None,
) -> tfds.core.DatasetBuilder:
  """Instantiates a local builder (not prepared yet).

  Args:
    name: ``'mnist1d'``, ``'mnist1d/<config name>'``, ``'digits'``,
      ``'digits_detection'`` or ``'digits_segmentation'`` (optionally with a
      config name).
    data_dir: TFDS data directory (default: TFDS's default).
    config: a :class:`Mnist1dConfig` (mnist1d), a
      :class:`kdjax.data.DenseDigitsConfig` (digit canvases) or a config name;
      overrides a config given in ``name``.

  Returns:
    A ``tfds.core.GeneratorBasedBuilder`` writing array_record files.

  Raises:
    ValueError: for a name that is not a local dataset, a config given for
      ``digits``, an unknown config name or a config of the wrong type.
  """
  base, name_config = split_name(name)
  builders = _all_builders()
  if base not in builders:
    raise ValueError(f'{name!r} is not a local dataset; local datasets are {LOCAL_NAMES}.')
  config = config if config is not None else name_config
  if base == 'digits' and config is not None:
    raise ValueError(f'Dataset "digits" has no configs, got config {config!r}.')
  predefined = [c.name for c in builders[base].BUILDER_CONFIGS]
  if isinstance(config, str) and config not in predefined:
    helper = 'mnist1d_config' if base == 'mnist1d' else 'dense_digits_config'
    raise ValueError(
        f'Unknown {base} config {config!r}; predefined configs are {predefined}. '
        f'Use kdjax.data.{helper}(...) for others.')
  # Compared by name: pytest's doctests may import a builder module twice.
  config_type = type(builders[base].BUILDER_CONFIGS[0]) if predefined else None
  if (config is not None and not isinstance(config, str)
      and type(config).__name__ != config_type.__name__):
    raise ValueError(f'`config` of {base!r} must be a config name or a '
                     f'{config_type.__name__}, got {config!r}.')
  kwargs = {} if config is None else {'config': config}
  return builders[base](data_dir=resolve_data_dir(data_dir), file_format='array_record', **kwargs)


@contextlib.contextmanager
def _file_lock(path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare_local(
    name: str,
    *,
    data_dir: Optional[os.PathLike | str] = None,
    config: Any = None,
) -> tfds.core.DatasetBuilder:
  """Prepares a local dataset once and returns its builder.

  A file lock in ``data_dir`` makes concurrent first uses (several processes
  sharing a data directory) build the dataset once.

  Args:
    name: see :func:`local_builder`.
    data_dir: TFDS data directory.
    config: see :func:`local_builder`.

  Returns:
    The prepared builder.
  """
  builder = local_builder(name, data_dir=data_dir, config=config)
  if builder.is_prepared():
    return builder
  config_name = builder.builder_config.name if builder.builder_config else 'default'
  lock = os.path.join(resolve_data_dir(data_dir), f'.kdjax-{builder.name}-{config_name}.lock')
  with _file_lock(lock):
    builder = local_builder(name, data_dir=data_dir, config=config)
    if not builder.is_prepared():
      builder.download_and_prepare()
  return builder
