"""Device-resident datasets: the whole source on the device, batches gathered in-graph.

A small dataset (MNIST-1D, digits, CIFAR) fits in device memory many times
over. :class:`DeviceData` places its arrays on the device once; a compiled
training loop (:func:`kdjax.train.fit`) then receives, per chunk of steps, only
a small int32 *plan* (which source rows form each batch) and gathers the
batches inside the compiled program, so the input costs no host work and no
host-to-device copy of examples.

The plan follows exactly the layout of :func:`kdjax.data.make_pipeline`
(epoch-major batches, epoch ``e`` visiting the source in the order
:func:`kdjax.data.epoch_order` ``(n, seed, e)``, padded last batches when
``drop_remainder`` is off), so batch ``k`` of a :class:`DeviceData` equals
batch ``k`` of the host pipeline with the same arguments, and a run gives the
same parameters on either data path.

Augmentation runs on the device too: a transform with a ``draws`` method
(:class:`kdjax.data.ImageAugment`, :class:`kdjax.data.SequenceAugment`) puts
each example's gather indices (a few integers, from ``(seed, epoch, id)``)
into the plan, and :meth:`DeviceData.gather` applies them in-graph with
:func:`kdjax.data.apply_draws`, bitwise equal to the host pipeline's view.
Other transforms (arbitrary host functions) need the host pipeline.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.data._augment import apply_draws
from kdjax.data._augment import example_keys
from kdjax.data._pipeline import _read_batch
from kdjax.data._pipeline import batches_per_epoch
from kdjax.data._pipeline import epoch_order
from kdjax.data._pipeline import make_pipeline


# Keys kept from the source's examples.
_KEYS = ('x', 'label', 'id')


class DeviceData:
  """A source held on the device and batched by index plans.

  Args:
    source: a random-access source of example dicts with ``'x'`` and ``'id'``
      (and ``'label'``), as for :func:`kdjax.data.make_pipeline`.
    batch_size: examples per batch.
    seed: run seed, ``>= 0``; fixes every epoch's order.
    shuffle: shuffle each epoch; else keep the source order.
    drop_remainder: drop each epoch's last partial batch; else pad it (padded
      rows are zeros with ``id`` -1 and ``mask`` False).
    num_epochs: number of passes; ``None`` repeats forever.
    sharding: where to place the arrays (a ``jax.sharding.Sharding``, e.g.
      replicated over a mesh); default: the default device.
    transform: optional augmentation with a ``draws(keys, shape, dtype)``
      method (see :func:`device_transform`), applied in-graph.

  Attributes:
    arrays: the source's ``'x'``, ``'label'`` (if any) and ``'id'`` as device
      arrays in source order, ``[n, ...]``; for a dense dataset's
      :class:`kdjax.data.Source`, its targets (``DatasetMeta.targets``) too.
    steps_per_epoch: batches per epoch.

  Examples:
    >>> import numpy as np
    >>> src = [{'x': np.float32([i]), 'label': np.int32(i % 2), 'id': np.int32(i)}
    ...        for i in range(5)]
    >>> data = DeviceData(src, batch_size=2, seed=0, shuffle=False, drop_remainder=False)
    >>> plan = data.plan(0, 3)
    >>> [DeviceData.gather(data.arrays, {k: v[i] for k, v in plan.items()})['id'].tolist()
    ...  for i in range(3)]
    [[0, 1], [2, 3], [4, -1]]
  """

  def __init__(self, source: Any, *, batch_size: int, seed: int, shuffle: bool = True,
               drop_remainder: bool = True, num_epochs: Optional[int] = None,
               sharding: Optional[jax.sharding.Sharding] = None, transform: Any = None):
    n = len(source)
    if transform is not None and not device_transform(transform):
      raise ValueError(
          f'`transform` {transform!r} has no `draws(keys, shape, dtype)` method, so it cannot '
          'run on the device; use the host pipeline (kdjax.data.make_pipeline).')
    if n == 0:
      raise ValueError('`source` is empty.')
    if batch_size <= 0:
      raise ValueError(f'`batch_size` must be positive, got {batch_size}.')
    if seed < 0:
      raise ValueError(f'`seed` must be >= 0, got {seed}.')
    if num_epochs is not None and num_epochs <= 0:
      raise ValueError(f'`num_epochs` must be positive or None, got {num_epochs}.')
    self.steps_per_epoch = batches_per_epoch(n, batch_size, drop_remainder)
    if self.steps_per_epoch == 0:
      raise ValueError(
          f'`batch_size` {batch_size} exceeds the {n} examples and `drop_remainder` is set; '
          'no batch would be produced.')
    self.num_examples = n
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.shuffle = shuffle
    self.num_epochs = num_epochs
    rows = _read_batch(source, np.arange(n))
    missing = {'x', 'id'} - set(rows)
    if missing:
      raise ValueError(f'`source` examples lack the keys {sorted(missing)}.')
    # A Source of a dense dataset also carries its targets (boxes, class maps, ...).
    keys = _KEYS + tuple(getattr(getattr(source, 'info', None), 'targets', ()))
    host = {k: np.asarray(rows[k]) for k in keys if k in rows}
    self.transform = transform
    self._ids = host['id']
    self._x_shape, self._x_dtype = host['x'].shape[1:], host['x'].dtype
    self.nbytes = sum(v.nbytes for v in host.values())
    self.arrays = jax.device_put(host, sharding)
    self._orders: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    """Total number of batches, or raises for an endless dataset."""
    if self.num_epochs is None:
      raise TypeError('An endless DeviceData (num_epochs=None) has no length.')
    return self.steps_per_epoch * self.num_epochs

  def _order(self, epoch: int) -> np.ndarray:
    order = self._orders.get(epoch)
    if order is None:
      order = epoch_order(self.num_examples, self.seed, epoch, self.shuffle)
      self._orders = {epoch: order}
    return order

  def plan(self, start: int, count: int) -> dict[str, np.ndarray]:
    """The index plan of batches ``start .. start + count - 1`` (host NumPy).

    Returns:
      ``{'index': [count, B] int32 source rows, 'mask': [count, B] bool,
      'epoch': [count] int32}``, and with a transform ``'draws'``: the views'
      draws stacked ``[count, B, ...]``.

    Raises:
      ValueError: if the plan runs past the last epoch.
    """
    if self.num_epochs is not None and start + count > len(self):
      raise ValueError(
          f'The data has {len(self)} batches ({self.num_epochs} epochs); batches {start} to '
          f'{start + count - 1} were asked for.')
    size = self.batch_size
    index = np.zeros((count, size), np.int32)
    mask = np.zeros((count, size), bool)
    epochs = np.zeros((count,), np.int32)
    for i in range(count):
      epoch, step = divmod(start + i, self.steps_per_epoch)
      rows = self._order(epoch)[step * size:(step + 1) * size]
      index[i, :len(rows)] = rows
      mask[i, :len(rows)] = True
      epochs[i] = epoch
    plan = {'index': index, 'mask': mask, 'epoch': epochs}
    if self.transform is not None:
      shape = (size,) + self._x_shape
      draws = [self.transform.draws(example_keys(self.seed, int(e), self._ids[rows]), shape,
                                    self._x_dtype) for e, rows in zip(epochs, index)]
      plan['draws'] = {k: np.stack([d[k] for d in draws]) for k in draws[0]}
    return plan

  @staticmethod
  def gather(arrays: Mapping[str, jax.Array], plan: Mapping[str, jax.Array]) -> dict:
    """The batch of one plan row, traceable (call it inside the compiled step).

    Args:
      arrays: :attr:`arrays` (passed as an argument, not closed over, so the
        dataset is not baked into the program as a constant).
      plan: one row of :meth:`plan`: ``{'index': [B], 'mask': [B], 'epoch': []}``
        (and ``'draws'`` with a transform).

    Returns:
      The batch dict of :func:`kdjax.data.make_pipeline`: ``'x'``, ``'label'``,
      ``'id'``, ``'mask'``, ``'epoch'``.
    """
    mask = plan['mask']
    batch = {}
    for key, values in arrays.items():
      rows = jnp.take(values, plan['index'], axis=0)
      if key == 'x' and 'draws' in plan:
        rows = apply_draws(rows, plan['draws'], jnp)
      fill = -1 if key in ('id', 'labels') else 0  # as the host pipeline pads
      batch[key] = jnp.where(mask.reshape(mask.shape + (1,) * (rows.ndim - 1)), rows,
                             jnp.asarray(fill, rows.dtype))
    batch['mask'] = mask
    batch['epoch'] = jnp.broadcast_to(plan['epoch'], mask.shape).astype(jnp.int32)
    return batch

  def batch(self, index: int) -> dict:
    """Batch ``index`` as device arrays (for checks; training gathers in-graph)."""
    plan = jax.tree.map(lambda v: v[0], self.plan(index, 1))
    return jax.jit(self.gather)(self.arrays, plan)


def device_transform(transform: Any) -> bool:
  """Whether ``transform`` can augment device-resident data (has ``draws``).

  Examples:
    >>> from kdjax.data import ImageAugment
    >>> device_transform(ImageAugment()), device_transform(lambda batch, keys: batch)
    (True, False)
  """
  return callable(getattr(transform, 'draws', None))


def fits_on_device(nbytes: int, *, fraction: float = 0.25,
                   device: Optional[jax.Device] = None) -> bool:
  """Whether ``nbytes`` of data take at most ``fraction`` of a device's memory.

  Uses ``device.memory_stats()['bytes_limit']`` where the backend reports it
  (GPU, TPU); on CPU, where it does not, the limit is taken as 4 GiB.

  Examples:
    >>> fits_on_device(10 * 2**20), fits_on_device(100 * 2**30)
    (True, False)
  """
  device = device or jax.devices()[0]
  limit = 4 * 2**30
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  # backends without stats
    stats = None
  if stats and stats.get('bytes_limit'):
    limit = int(stats['bytes_limit'])
  return nbytes <= fraction * limit


def training_data(source: Any, *, batch_size: int, seed: int, transform: Any = None,
                  placement: str = 'auto'):
  """The training batches of ``source`` for :func:`kdjax.train.fit`, on the device if they fit.

  Args:
    source: a random-access source (see :func:`kdjax.data.make_pipeline`).
    batch_size: examples per batch.
    seed: run seed.
    transform: optional per-example augmentation.
    placement: ``'device'``: a :class:`DeviceData`; ``'host'``: an iterator
      of :func:`kdjax.data.make_pipeline` (endless, shuffled, whole
      batches); ``'auto'``: the device when the ``transform`` (if any) can
      run there (:func:`device_transform`) and the source takes at most a
      quarter of the device memory (:func:`fits_on_device`). Both give the
      same batches.

  Returns:
    A :class:`DeviceData` or a grain iterator.

  Raises:
    ValueError: for an unknown ``placement``, or ``'device'`` with a
      ``transform`` that cannot run on the device.

  Examples:
    >>> import numpy as np
    >>> src = [{'x': np.float32([i]), 'label': np.int32(0), 'id': np.int32(i)} for i in range(4)]
    >>> type(training_data(src, batch_size=2, seed=0)).__name__
    'DeviceData'
    >>> hasattr(training_data(src, batch_size=2, seed=0, placement='host'), 'get_state')
    True
  """
  if placement not in ('auto', 'device', 'host'):
    raise ValueError(f"`placement` must be 'auto', 'device' or 'host', got {placement!r}.")
  on_device = transform is None or device_transform(transform)
  if placement == 'device' and not on_device:
    raise ValueError("`placement` is 'device' but the `transform` has no `draws` method, so it "
                     "runs in the host pipeline; use 'host' or 'auto'.")
  if placement == 'auto':
    placement = 'host'
    if on_device:
      sample = _read_batch(source, np.arange(1))
      per_example = sum(np.asarray(v).nbytes for v in sample.values())
      placement = 'device' if fits_on_device(per_example * len(source)) else 'host'
  if placement == 'device':
    return DeviceData(source, batch_size=batch_size, seed=seed, transform=transform)
  return iter(make_pipeline(source, batch_size=batch_size, seed=seed, transform=transform))
