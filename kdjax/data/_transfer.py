"""Transfer sets: unlabeled inputs a student is distilled on.

Two kinds:

* ``'generated'`` (MNIST-1D only): fresh inputs from the generator with another
  seed, built once as the TFDS config ``mnist1d/transfer...`` (50k inputs take
  about 7 s) and cached in ``data_dir``. Building checks that no input repeats
  a signal of the labeled set (train or test).
* ``'train'``: the labeled training inputs without their labels; pass an
  augmentation (``transform=kdjax.data.augmentation(name)``) to
  ``make_pipeline`` to distil on augmented views.

Either way the source has no ``'label'`` key, so its batches carry only
``'x'``, ``'id'``, ``'mask'`` and ``'epoch'``. ``labeled=True`` keeps the
labels (the generator's classes, or the training labels): the control that
trains on the same inputs with their true labels.
"""

from __future__ import annotations

import os
from typing import Optional, Union

from kdjax.data import _builders
from kdjax.data import _sources


def transfer_set(
    name: str = 'mnist1d',
    *,
    kind: str = 'generated',
    num_samples: int = 50_000,
    seed: int = 1,
    labeled_config: Optional[_builders.Mnist1dConfig] = None,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    labeled: bool = False,
) -> _sources.Source:
  """Returns an unlabeled transfer source (or, with ``labeled=True``, its labeled twin).

  Args:
    name: dataset whose inputs are imitated (``'generated'`` needs
      ``'mnist1d'``).
    kind: ``'generated'`` or ``'train'`` (see the module docstring).
    num_samples: inputs to generate (``'generated'``; a multiple of 10, since
      the generator makes ``num_samples // 10`` per class).
    seed: generator seed (``'generated'``); must differ from the labeled
      set's seed.
    labeled_config: the labeled MNIST-1D config the transfer set must not
      overlap, and for ``'train'`` the config whose training split is used
      (default: the package's 5000 examples, seed 42).
    data_dir: TFDS data directory.
    labeled: keep the ``'label'`` key (the same inputs, in the same order).

  Returns:
    A :class:`Source`, without labels (``source.labeled`` is False) unless
    ``labeled``.

  Raises:
    ValueError: for an unknown ``kind``, ``'generated'`` with a dataset other
      than MNIST-1D, or a seed equal to the labeled seed.

  Examples:
    >>> import tempfile
    >>> from kdjax.data import mnist1d_config, transfer_set
    >>> src = transfer_set(num_samples=100, labeled_config=mnist1d_config(100),
    ...                    data_dir=tempfile.mkdtemp())
    >>> len(src), sorted(src[0])
    (100, ['id', 'x'])
  """
  base, _ = _builders.split_name(name)
  if kind == 'train':
    config = labeled_config if base == 'mnist1d' else None
    src = _sources.load(name, 'train', data_dir=data_dir, config=config)
    return src if labeled else src.unlabeled()
  if kind != 'generated':
    raise ValueError(f"`kind` must be 'generated' or 'train', got {kind!r}.")
  if base != 'mnist1d':
    raise ValueError(
        f"kind='generated' needs a generator; only 'mnist1d' has one, got {name!r}. "
        "Use kind='train' with an augmentation instead.")
  reference = labeled_config or _builders.mnist1d_config()
  config = _builders.mnist1d_config(
      num_samples, seed, transfer=True,
      labeled_num_samples=reference.num_samples, labeled_seed=reference.seed)
  src = _sources.load('mnist1d', 'train', data_dir=data_dir, config=config)
  return src if labeled else src.unlabeled()
