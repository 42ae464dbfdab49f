"""grain pipelines: shuffled, augmented, batched, checkpointable.

Layout: epochs are laid end to end, each holding ``batches_per_epoch`` whole
batches, so no batch straddles two epochs. Epoch ``e`` visits the source in
the order ``np.random.default_rng([seed, e]).permutation(n)`` (a different
order per epoch, the same for the same seed; not ``grain``'s ``shuffle``,
which seeds epoch ``e`` with ``seed + e`` so that runs with seeds ``s`` and
``s + 1`` would share epoch orders). The batches form a
``grain.MapDataset`` (``range -> repeat -> map``) that is turned into a
``grain.IterDataset`` with a small thread prefetch; ``iter(ds)`` is a
``grain.DatasetIterator`` whose ``get_state()`` is a JSON-serialisable dict
(``{'next_index': k}``: the next batch to return), restored with
``set_state``; orbax saves it with ``grain.checkpoint.CheckpointSave``.

Batches are built whole (one read, one normalisation, one vectorised
augmentation per batch), which keeps the cost per MNIST-1D batch well under a
millisecond.

Batch keys (NumPy arrays with a leading ``batch_size`` axis):

* ``'x'``: model input, float32; ``'label'``: int32 (labeled sources only);
  ``'id'``: int32 example id;
* ``'mask'``: bool, False on padded rows (always present; all True when
  ``drop_remainder``);
* ``'epoch'``: int32, the batch's epoch (with ``seed`` and ``id`` it fixes an
  augmented view, see ``kdjax.data.example_keys``).

Padded rows are zeros with ``label`` 0, ``id`` -1 and ``mask`` False, so a
masked mean over a padded last batch counts every real example exactly once.
Detection batches' ``labels`` are -1 in padded rows (no object).
"""

from __future__ import annotations

import collections
import math
import threading
from typing import Any, Optional, Sequence

import grain
import numpy as np

from kdjax.data import _augment


def batches_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Number of batches in one epoch.

  Args:
    num_examples: examples in the source.
    batch_size: examples per batch.
    drop_remainder: drop the last partial batch (else it is padded).

  Returns:
    ``num_examples // batch_size`` or ``ceil(num_examples / batch_size)``.

  Examples:
    >>> from kdjax.data import batches_per_epoch
    >>> batches_per_epoch(10, 4), batches_per_epoch(10, 4, drop_remainder=False)
    (2, 3)
  """
  if drop_remainder:
    return num_examples // batch_size
  return math.ceil(num_examples / batch_size)


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The order in which an epoch visits the source.

  Args:
    num_examples: examples in the source.
    seed: run seed.
    epoch: epoch number.
    shuffle: if False, the identity order.

  Returns:
    ``[num_examples]`` int64 record positions:
    ``np.random.default_rng([seed, epoch]).permutation(num_examples)``.

  Examples:
    >>> from kdjax.data import epoch_order
    >>> epoch_order(4, seed=0, epoch=0, shuffle=False)
    array([0, 1, 2, 3])
  """
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples)


def _read_batch(source: Any, indices: np.ndarray) -> dict[str, np.ndarray]:
  read = getattr(source, 'read_batch', None)
  if read is not None:
    return dict(read(indices))
  examples = [source[int(i)] for i in indices]
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


class _MakeBatch:
  """Builds batch ``k`` of the epoch-major layout (thread-safe)."""

  def __init__(self, source, *, batch_size, steps, seed, shuffle, transform):
    self._source = source
    self._n = len(source)
    self._batch_size = batch_size
    self._steps = steps
    self._seed = seed
    self._shuffle = shuffle
    self._transform = transform
    self._orders = collections.OrderedDict()
    self._lock = threading.Lock()

  def _order(self, epoch: int) -> np.ndarray:
    with self._lock:
      order = self._orders.get(epoch)
      if order is None:
        order = epoch_order(self._n, self._seed, epoch, self._shuffle)
        self._orders[epoch] = order
        while len(self._orders) > 2:
          self._orders.popitem(last=False)
      return order

  def __call__(self, index: int, _: Any) -> dict[str, np.ndarray]:
    epoch, step = divmod(int(index), self._steps)
    start = step * self._batch_size
    positions = self._order(epoch)[start:min(start + self._batch_size, self._n)]
    batch = _read_batch(self._source, positions)
    if self._transform is not None:
      keys = _augment.example_keys(self._seed, epoch, batch['id'])
      batch = dict(self._transform(batch, keys))
    real, size = len(positions), self._batch_size
    if real < size:
      fill = {'id': -1, 'labels': -1}  # padded rows hold no object (dense labels -1)
      batch = {k: np.concatenate([v, np.full((size - real,) + v.shape[1:], fill.get(k, 0),
                                             v.dtype)])
               for k, v in batch.items()}
    batch['mask'] = np.arange(size) < real
    batch['epoch'] = np.full((size,), epoch, np.int32)
    return batch


def make_pipeline(
    source: Sequence[Any],
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    drop_remainder: bool = True,
    num_epochs: Optional[int] = None,
    transform: Optional[_augment.Transform] = None,
    read_options: Optional[grain.ReadOptions] = None,
) -> grain.IterDataset:
  """Builds a deterministic, checkpointable batch pipeline over a source.

  Args:
    source: a random-access source of example dicts with ``'x'`` and ``'id'``
      (and ``'label'``), e.g. from ``kdjax.data.load`` or
      ``kdjax.data.transfer_set``; a :class:`Source` is read a batch at a time.
    batch_size: examples per batch.
    seed: run seed, ``>= 0``: fixes the order of every epoch and, with the
      epoch and ``id``, every augmented view.
    shuffle: shuffle each epoch (a different order per epoch); else keep the
      source order.
    drop_remainder: drop each epoch's last partial batch; else pad it to
      ``batch_size`` (padded rows have ``mask`` False).
    num_epochs: number of passes; ``None`` repeats forever.
    transform: optional ``(batch, keys) -> batch`` applied to the real rows of
      each batch, with ``keys = kdjax.data.example_keys(seed, epoch, ids)``;
      e.g. ``kdjax.data.augmentation(name)``. It must treat each row as a
      function of that row and its key only.
    read_options: grain read options (default: 2 threads, 8 batches
      prefetched; ``grain.ReadOptions(num_threads=0)`` reads synchronously).

  Returns:
    A ``grain.IterDataset`` of batch dicts (keys in the module docstring);
    ``iter(ds)`` gives a checkpointable ``grain.DatasetIterator``. An epoch
    has :func:`batches_per_epoch` batches.

  Raises:
    ValueError: for an empty source, a non-positive ``batch_size`` or
      ``num_epochs``, a negative seed, or ``drop_remainder`` with fewer
      examples than ``batch_size``.

  Examples:
    >>> import numpy as np
    >>> from kdjax.data import make_pipeline
    >>> src = [{'x': np.float32([i]), 'label': np.int32(i % 2), 'id': np.int32(i)}
    ...        for i in range(5)]
    >>> ds = make_pipeline(src, batch_size=2, seed=0, shuffle=False,
    ...                    drop_remainder=False, num_epochs=1)
    >>> [b['id'].tolist() for b in ds]
    [[0, 1], [2, 3], [4, -1]]
    >>> it = iter(ds)
    >>> _ = next(it)
    >>> it.get_state()
    {'next_index': 1}
  """
  n = len(source)
  if n == 0:
    raise ValueError('`source` is empty.')
  if batch_size <= 0:
    raise ValueError(f'`batch_size` must be positive, got {batch_size}.')
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f'`num_epochs` must be positive or None, got {num_epochs}.')
  if seed < 0:
    raise ValueError(f'`seed` must be >= 0, got {seed}.')
  steps = batches_per_epoch(n, batch_size, drop_remainder)
  if steps == 0:
    raise ValueError(
        f'`batch_size` {batch_size} exceeds the {n} examples and `drop_remainder` is set; '
        'no batch would be produced.')
  make_batch = _MakeBatch(source, batch_size=batch_size, steps=steps, seed=int(seed),
                          shuffle=shuffle, transform=transform)
  ds = grain.MapDataset.range(steps).repeat(num_epochs).map_with_index(make_batch)
  if read_options is None:
    read_options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)
  return ds.to_iter_dataset(read_options)
