"""A validation set held out of a training split: stratified by label, fixed by a seed.

The local builders' ``train`` and ``test`` splits are fixed (committed
results depend on them), so validation data come out of ``train``:
:func:`validation_split` returns the record positions of "train minus
validation" and of the validation set, and :meth:`kdjax.data.Source.subset`
turns each into a source that every pipeline (``make_pipeline``,
``DeviceData``, ``training_data``) reads as usual::

  train = kdjax.data.load('digits', 'train')
  fit_idx, val_idx = kdjax.data.validation_split(train, fraction=0.1, seed=0)
  fit, val = train.subset(fit_idx, split='train_fit'), train.subset(val_idx, split='validation')
  # tune on (fit, val); train the chosen setting on `train`; report `test` once.

The split depends only on the examples' ``id`` and ``label`` values, the
fraction and the seed, not on the order in which the records are stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdjax.data._pipeline import _read_batch


def validation_split(source: Any, *, fraction: float = 0.1,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Holds out a stratified validation set: ``(fit_indices, validation_indices)``.

  For every class ``c`` with ``n_c`` examples, ``round(fraction · n_c)``
  examples (halves round up) go to validation: those at the first positions of
  ``np.random.default_rng([seed, c]).permutation(n_c)`` over the class's
  examples sorted by ``id``. Each class's validation count is thus within half
  an example of ``fraction · n_c``, and the split is the same for the same ids,
  labels, fraction and seed whatever the record order.

  Args:
    source: a labeled random-access source with ``'label'`` and ``'id'``
      (a :class:`kdjax.data.Source`, or a list of example dicts).
    fraction: the share of each class held out, in ``(0, 1)``.
    seed: the split's seed (keep it fixed across the runs of a study; it is
      unrelated to the training seeds).

  Returns:
    ``(fit, validation)``: disjoint, sorted int64 record positions in
    ``[0, len(source))`` whose union is every position.

  Raises:
    ValueError: for an unlabeled or empty source, a ``fraction`` outside
      ``(0, 1)``, duplicate ids, or a class that would keep no training
      example.

  Examples:
    >>> import numpy as np
    >>> src = [{'x': np.float32([i]), 'label': np.int32(i % 2), 'id': np.int32(i)}
    ...        for i in range(20)]
    >>> fit, val = validation_split(src, fraction=0.2, seed=0)
    >>> len(fit), len(val), sorted(int(i) % 2 for i in val)
    (16, 4, [0, 0, 1, 1])
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'`fraction` must be in (0, 1), got {fraction}.')
  n = len(source)
  if n == 0:
    raise ValueError('`source` is empty.')
  rows = _read_batch(source, np.arange(n))
  if 'label' not in rows:
    raise ValueError('`source` has no labels; a stratified validation split needs them.')
  labels = np.asarray(rows['label']).reshape(n)
  ids = np.asarray(rows['id']).reshape(n)
  if np.unique(ids).size != n:
    raise ValueError('`source` has duplicate ids; the split is defined over unique ids.')
  by_id = np.argsort(ids, kind='stable')
  held_out = []
  for c in np.unique(labels):
    positions = by_id[labels[by_id] == c]
    k = int(np.floor(fraction * positions.size + 0.5))
    if k >= positions.size:
      raise ValueError(f'Class {c} has {positions.size} examples; holding out {k} of them '
                       'leaves none to train on. Use a smaller `fraction`.')
    order = np.random.default_rng([int(seed), int(c)]).permutation(positions.size)
    held_out.append(positions[order[:k]])
  validation = np.sort(np.concatenate(held_out)).astype(np.int64)
  fit = np.setdiff1d(np.arange(n, dtype=np.int64), validation)
  return fit, validation
