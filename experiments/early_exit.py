"""Early-exit analysis for BYOT models: accuracy against compute per threshold.

A BYOT network (Zhang et al. 2019, §4.4) can answer at the first exit whose
confidence passes a threshold. :func:`collect_head_logits` gathers every
exit's test logits once, :func:`early_exit_table` sweeps thresholds,
:func:`exit_flops` prices each exit with XLA's cost analysis, and
:func:`plot_early_exit` draws the trade-off. Used by ``experiments/byot.py``.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models import as_forward
from kdjax.online import EXIT_LOGITS


def _head_logits(out, feature: str) -> jax.Array:
  if feature not in out.features:
    raise ValueError(f'collect_head_logits needs the model feature {feature!r}, but the model '
                     f'sows only {sorted(out.features)}.')
  return out.features[feature]


def collect_head_logits(apply_fn, variables: Any, batches: Iterable[Mapping[str, Any]], *,
                        feature: str = EXIT_LOGITS) -> tuple[np.ndarray, np.ndarray]:
  """Runs a model in eval mode over ``batches`` and gathers its heads' logits.

  Args:
    apply_fn: forward function or Linen module.
    variables: its variables.
    batches: batches with ``'x'``, ``'label'`` and optional ``'mask'`` (masked
      rows are dropped).
    feature: the ``[K, B, C]`` feature to gather.

  Returns:
    ``(head_logits [K, N, C], labels [N])`` as NumPy arrays.

  Raises:
    ValueError: if ``batches`` is empty or the model lacks ``feature``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import function_forward
    >>> fwd = function_forward(lambda p, x: (x, {'exit_logits': jnp.stack([x, 2 * x])}))
    >>> batch = {'x': jnp.eye(3), 'label': jnp.array([0, 1, 2]), 'mask': jnp.array([1, 1, 0], bool)}
    >>> z, y = collect_head_logits(fwd, {'params': {}}, [batch])
    >>> z.shape, y.tolist()
    ((2, 2, 3), [0, 1])
  """
  forward = as_forward(apply_fn)
  run = jax.jit(lambda v, x: _head_logits(forward(v, x, train=False), feature))
  logits, labels = [], []
  for batch in batches:
    z = np.asarray(run(variables, batch['x']))
    y = np.asarray(batch['label'])
    keep = np.ones(y.shape, bool) if batch.get('mask') is None else np.asarray(batch['mask'], bool)
    logits.append(z[:, keep])
    labels.append(y[keep])
  if not logits:
    raise ValueError('`batches` is empty: nothing to collect.')
  return np.concatenate(logits, axis=1), np.concatenate(labels)


def _softmax64(z: np.ndarray) -> np.ndarray:
  z = np.asarray(z, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def early_exit_table(exit_logits, labels, thresholds: Sequence[float], *,
                     exit_costs: Optional[Sequence[float]] = None) -> list[dict[str, float]]:
  """Accuracy and compute of confidence-based early exit, one row per threshold.

  Each example exits at the first head ``k`` whose confidence (largest
  softmax probability) is ``>= threshold``; the deepest head answers when no
  shallow head is confident. Exiting at head ``k`` runs stages and heads
  ``1..k``. Threshold 0 sends every example out at head 1; a threshold above
  1 runs every example to the deepest head.

  Args:
    exit_logits: ``[K, N, C]`` logits of the exits, shallow to deep (e.g.
      from :func:`collect_head_logits`).
    labels: ``[N]`` integer classes.
    thresholds: confidence thresholds.
    exit_costs: optional ``[K]`` cost of answering at each exit (cumulative:
      stages and heads ``1..k``), e.g. FLOPs from :func:`exit_flops`.

  Returns:
    A list of dicts (one per threshold) with ``'threshold'``, ``'accuracy'``,
    ``'mean_stages'`` (mean number of stages run, ``1..K``),
    ``'exit{k}_fraction'`` (share of examples leaving at exit ``k``) and, with
    ``exit_costs``, ``'cost'`` (mean per example) and ``'relative_cost'``
    (``cost / exit_costs[-1]``).

  Raises:
    ValueError: for inconsistent shapes.

  References:
    Zhang et al., "Be Your Own Teacher", ICCV 2019, arXiv:1905.08094 (§4.4).

  Examples:
    >>> import numpy as np
    >>> z = np.array([[[3.0, 0.0], [0.1, 0.0]],   # exit 1: confident on example 0 only
    ...               [[0.0, 5.0], [0.0, 5.0]]])  # exit 2
    >>> rows = early_exit_table(z, np.array([0, 1]), [0.0, 0.9, 1.1], exit_costs=[1.0, 3.0])
    >>> [(r['threshold'], r['accuracy'], r['mean_stages'], r['cost']) for r in rows]
    [(0.0, 0.5, 1.0, 1.0), (0.9, 1.0, 1.5, 2.0), (1.1, 0.5, 2.0, 3.0)]
  """
  z = np.asarray(exit_logits)
  y = np.asarray(labels)
  if z.ndim != 3 or y.shape != z.shape[1:2]:
    raise ValueError(
        f'`exit_logits` must be [K, N, C] and `labels` [N], got {z.shape} and {y.shape}.')
  num_exits = z.shape[0]
  if exit_costs is not None:
    exit_costs = np.asarray(exit_costs, np.float64)
    if exit_costs.shape != (num_exits,):
      raise ValueError(f'`exit_costs` must have {num_exits} entries, got {exit_costs.shape}.')
  probs = _softmax64(z)
  confidence = probs.max(axis=-1)           # [K, N]
  correct = probs.argmax(axis=-1) == y      # [K, N]
  rows = []
  for threshold in thresholds:
    passes = confidence >= threshold
    passes[-1] = True
    exit_index = np.argmax(passes, axis=0)  # first confident exit, 0-based
    row = {'threshold': float(threshold),
           'accuracy': float(np.mean(correct[exit_index, np.arange(y.shape[0])])),
           'mean_stages': float(np.mean(exit_index + 1))}
    for k in range(num_exits):
      row[f'exit{k + 1}_fraction'] = float(np.mean(exit_index == k))
    if exit_costs is not None:
      row['cost'] = float(np.mean(exit_costs[exit_index]))
      row['relative_cost'] = row['cost'] / float(exit_costs[-1])
    rows.append(row)
  return rows


def exit_flops(model, input_shape: Sequence[int], *, dtype: Any = jnp.float32) -> list[float]:
  """Per-example FLOPs of answering at each exit of a BYOT model.

  Exit ``k`` costs the stem, stages ``1..k`` and heads ``1..k`` (a sample
  leaving at head ``k`` was also checked at the earlier heads). Each value is
  XLA's cost analysis (as in :func:`kdjax.models.flops`; a multiply-add is 2
  FLOPs) of ``model.clone(max_exit=k)`` in eval mode returning all its exits'
  logits, divided by the batch size. Nothing is executed.

  Args:
    model: a :class:`kdjax.models.BYOT` module.
    input_shape: an input shape including the batch axis, e.g. ``(1, 40)``.
    dtype: input dtype.

  Returns:
    ``[K]`` cumulative FLOPs per example, increasing with ``k``; pass it as
    ``early_exit_table(..., exit_costs=...)``.

  Examples:
    >>> from kdjax.models import byot_cnn1d
    >>> costs = exit_flops(byot_cnn1d(num_classes=3, channels=4), (1, 40))
    >>> len(costs), costs[0] < costs[1] < costs[2]
    (3, True)
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  costs = []
  for k in range(1, model.num_exits + 1):
    model_k = model.clone(max_exit=k)
    variables = jax.eval_shape(
        lambda v, m=model_k: m.init(jax.random.key(0), v, train=False), x)

    def forward(v, inp, m=model_k):
      _, state = m.apply(v, inp, train=False, mutable=['intermediates'])
      return state['intermediates'][EXIT_LOGITS]

    cost = jax.jit(forward).lower(variables, x).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
      cost = {'flops': sum(c.get('flops', 0.0) for c in cost)}
    costs.append(float((cost or {}).get('flops', float('nan'))) / int(input_shape[0]))
  return costs


def plot_early_exit(table: Sequence[Mapping[str, float]], path: str | os.PathLike, *,
                    x: Optional[str] = None, title: str = 'Early exit',
                    head_points: Optional[Sequence[tuple[float, float]]] = None) -> str:
  """Plots accuracy against compute for the rows of :func:`early_exit_table`.

  Uses Matplotlib's Agg canvas directly (no global backend change, no display).

  Args:
    table: rows from :func:`early_exit_table`.
    path: output PNG path.
    x: the row key on the x-axis; default ``'relative_cost'`` when present,
      else ``'mean_stages'``.
    title: figure title.
    head_points: optional ``(x, accuracy)`` of each exit used alone (e.g.
      ``(k, accuracy of exit k)`` against ``'mean_stages'``), drawn as
      reference markers.

  Returns:
    ``path`` as a string.

  Examples:
    >>> import os, tempfile
    >>> rows = [{'threshold': 0.5, 'accuracy': 0.8, 'mean_stages': 1.5},
    ...         {'threshold': 0.9, 'accuracy': 0.9, 'mean_stages': 2.2}]
    >>> out = plot_early_exit(rows, os.path.join(tempfile.mkdtemp(), 'exit.png'))
    >>> os.path.getsize(out) > 0
    True
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # Lazy: plotting is optional.
  from matplotlib.figure import Figure

  if not table:
    raise ValueError('`table` is empty: nothing to plot.')
  if x is None:
    x = 'relative_cost' if 'relative_cost' in table[0] else 'mean_stages'
  xs = [row[x] for row in table]
  ys = [row['accuracy'] for row in table]
  fig = Figure(figsize=(5, 3.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(xs, ys, marker='o', label='early exit')
  for row, xv, yv in zip(table, xs, ys):
    ax.annotate(f"{row['threshold']:g}", (xv, yv), textcoords='offset points', xytext=(3, 3),
                fontsize=7)
  if head_points is not None:
    hx, hy = zip(*head_points)
    ax.scatter(hx, hy, marker='s', color='gray', label='single exit')
    for k, (xv, yv) in enumerate(head_points, start=1):
      ax.annotate(f'exit {k}', (xv, yv), textcoords='offset points', xytext=(3, -9), fontsize=7,
                  color='gray')
  ax.set_xlabel(x.replace('_', ' '))
  ax.set_ylabel('accuracy')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.fspath(path))
  return os.fspath(path)
