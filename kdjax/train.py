"""Training loops as plain functions: usable from a notebook or a runner.

:func:`fit` drives a jitted step over a data iterator with a progress bar,
metrics logging, periodic atomic checkpoints and automatic resume. A run that
is killed and started again with the same arguments restores the latest
checkpoint (state and data-iterator position) and ends bitwise-identical to a
run that was never interrupted: the step's randomness is derived from
``(rng, state.step)`` only.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm.auto as tqdm

from kdjax import _evaluation
from kdjax.checkpoint import Checkpointer


class MetricWriter:
  """Writes scalar metrics to a CSV file and TensorBoard event files.

  The CSV is in long form (``step,split,name,value``), so train and eval
  metrics with different keys share one file.

  Args:
    logdir: directory for ``metrics.csv`` and the TensorBoard events.
    tensorboard: also write TensorBoard event files (needs ``tensorboardX``).

  Examples:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with MetricWriter(d, tensorboard=False) as w:
    ...   w.write(10, {'loss': 0.5}, split='train')
    >>> open(os.path.join(d, 'metrics.csv')).read().splitlines()
    ['step,split,name,value', '10,train,loss,0.5']
  """

  def __init__(self, logdir: str | os.PathLike, *, tensorboard: bool = True):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, 'metrics.csv')
    new = not os.path.exists(self.path)
    self._file = open(self.path, 'a', newline='')
    self._csv = csv.writer(self._file)
    if new:
      self._csv.writerow(['step', 'split', 'name', 'value'])
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.fspath(logdir))

  def write(self, step: int, metrics: Mapping[str, Any], *, split: str = 'train') -> None:
    """Appends scalar ``metrics`` at ``step``."""
    for name, value in sorted(metrics.items()):
      value = float(value)
      self._csv.writerow([int(step), split, name, repr(value)])
      if self._tb is not None:
        self._tb.add_scalar(f'{split}/{name}', value, int(step))
    self._file.flush()

  def close(self) -> None:
    """Flushes and closes the files."""
    self._file.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def evaluate(eval_step: Callable, variables: Any, batches: Iterable[Mapping[str, Any]]) -> dict:
  """Exact accuracy and mean cross-entropy over ``batches``.

  Args:
    eval_step: from :func:`kdjax.steps.make_eval_step` (jitted or not).
    variables: the model's variables.
    batches: an iterable of batches; padded rows are dropped by ``'mask'``.

  Returns:
    ``{'accuracy', 'loss', 'count'}``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import function_forward
    >>> from kdjax.steps import make_eval_step
    >>> step = make_eval_step(function_forward(lambda p, x: x))
    >>> batches = [{'x': jnp.eye(2), 'label': jnp.array([0, 0])}]
    >>> evaluate(step, {'params': {}}, batches)['accuracy']
    0.5
  """
  totals = _evaluation.accumulate(eval_step, batches, variables)
  count = max(float(totals['count']), 1.0)
  return {'accuracy': float(totals['correct']) / count,
          'loss': float(totals['loss_sum']) / count, 'count': float(totals['count'])}


@dataclasses.dataclass
class FitResult:
  """What :func:`fit` returns.

  Attributes:
    state: the final train state.
    history: logged training metrics, one dict per logging step.
    eval_history: evaluation results, one dict per evaluation.
    resumed_from: the step restored from a checkpoint, or ``None``.
    skipped_steps: how many updates were skipped for non-finite values.
    seconds: wall time of this call.
    chunks: how many host calls ran the steps (one per chunk).
    compiled: whether the chunks ran as ``lax.scan`` (else a Python call per step).
  """
  state: Any
  history: list
  eval_history: list
  resumed_from: Optional[int]
  skipped_steps: int
  seconds: float
  chunks: int = 0
  compiled: bool = True


class NonFiniteError(FloatingPointError):
  """Raised when too many consecutive updates had non-finite loss or gradients."""


class InvalidLabelError(ValueError):
  """Raised when a batch held labels outside ``[0, num_classes)``.

  The step excluded those rows from the update (see
  :func:`kdjax._update.clean_labels`); :func:`fit` stops at the end of the
  chunk so that a wrong label never trains silently.
  """


def chunk_ends(first: int, num_steps: int, *, steps_per_call: int,
               periods: Sequence[Optional[int]] = (), at: Sequence[int] = ()) -> list[int]:
  """The steps after which :func:`fit` returns to the host.

  A chunk ends at every multiple of ``steps_per_call`` and of each period, at
  each step of ``at`` and at ``num_steps``, so logging, evaluation and
  checkpoints happen between chunks. The ends depend on absolute step numbers
  only: a resumed run continues with the chunks of an uninterrupted one.

  Args:
    first: the step the run starts from.
    num_steps: the last step.
    steps_per_call: the longest chunk.
    periods: further periods (``None`` entries are ignored).
    at: further single steps.

  Returns:
    The increasing chunk ends in ``(first, num_steps]``.

  Examples:
    >>> chunk_ends(0, 10, steps_per_call=4, periods=(5,))
    [4, 5, 8, 10]
    >>> chunk_ends(8, 10, steps_per_call=4, at=(9,))
    [9, 10]
  """
  if steps_per_call < 1:
    raise ValueError(f'`steps_per_call` must be >= 1, got {steps_per_call}.')
  ends = {num_steps}
  ends.update(s for s in at if first < s < num_steps)
  for period in (steps_per_call, *periods):
    if period:
      ends.update(range((first // period + 1) * period, num_steps, period))
  return sorted(e for e in ends if first < e <= num_steps)


def _stack(batches: Sequence[Mapping[str, Any]]) -> dict:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)


class _Prefetcher:
  """Draws, stacks and places the next chunk's batches in a background thread.

  Produces ``(chunk, data_state)`` for each chunk size in turn: the stacked
  ``[n, ...]`` batches already on the device (so the copy overlaps the
  previous chunk's compute) and the iterator's state after drawing them.
  """

  def __init__(self, data: Iterator, sizes: Sequence[int], place: Callable[[Any], Any]):
    self._queue: queue.Queue = queue.Queue(maxsize=1)
    self._stop = threading.Event()

    def work():
      try:
        for n in sizes:
          batches = []
          for _ in range(n):
            try:
              batches.append(next(data))
            except StopIteration:
              raise ValueError('`data` ran out of batches before `num_steps`.') from None
          data_state = data.get_state() if hasattr(data, 'get_state') else None
          item = (place(_stack(batches)), data_state)
          while not self._stop.is_set():
            try:
              self._queue.put(item, timeout=0.1)
              break
            except queue.Full:
              continue
          if self._stop.is_set():
            return
      except BaseException as e:  # pylint: disable=broad-except  # re-raised by get()
        self._queue.put((e, None))

    self._thread = threading.Thread(target=work, daemon=True)
    self._thread.start()

  def get(self) -> tuple[Any, Any]:
    item, data_state = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item, data_state

  def close(self) -> None:
    self._stop.set()
    self._thread.join()


@functools.lru_cache(maxsize=64)
def make_chunk_fn(step_fn: Callable, *, gather: Optional[Callable] = None,
                  donate: bool = True, batch_sharding: Any = None) -> Callable:
  """Compiles ``n`` steps of ``step_fn`` into one call with ``jax.lax.scan``.

  Args:
    step_fn: ``step(state, teacher_variables, batch, rng) -> (state, metrics)``
      (jitted or not; it is traced into the loop body).
    gather: ``gather(arrays, plan_row) -> batch`` for device-resident data
      (:meth:`kdjax.data.DeviceData.gather`); ``None`` scans over stacked
      batches.
    donate: donate the state's buffers to the result.
    batch_sharding: optional sharding constraint on each gathered batch (the
      data-parallel sharding on a mesh).

  Returns:
    ``chunk(state, teacher_variables, xs, rng, arrays) -> (state, metrics)``,
    jitted; ``xs`` is ``[n, ...]`` stacked batches (or plan rows) and
    ``metrics`` a dict of ``[n, ...]`` stacked step metrics. The same
    arguments return the same function (cached), so calling :func:`fit` again
    with the same step compiles nothing new.

  Examples:
    >>> import jax.numpy as jnp
    >>> step = lambda s, t, b, rng: (s + b, {'s': s})
    >>> chunk = make_chunk_fn(step, donate=False)
    >>> state, metrics = chunk(jnp.float32(0), None, jnp.arange(3.0), None, None)
    >>> float(state), metrics['s'].tolist()
    (3.0, [0.0, 0.0, 1.0])
  """

  def chunk(state, teacher_variables, xs, rng, arrays):
    def body(state, x):
      batch = x if gather is None else gather(arrays, x)
      if batch_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
      return step_fn(state, teacher_variables, batch, rng)

    return jax.lax.scan(body, state, xs)

  return jax.jit(chunk, donate_argnums=(0,) if donate else ())


def _check_chunk(fetched: Mapping[str, np.ndarray], first: int, consecutive: int,
                 max_consecutive_skips: int) -> tuple[int, int]:
  """Raises on bad labels, cache misses or too many skips; returns ``(skipped, consecutive)``."""
  count = next(iter(fetched.values())).shape[0]
  if 'invalid_labels' in fetched:
    bad = np.asarray(fetched['invalid_labels']).reshape(count, -1).sum(axis=1)
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      value = np.asarray(fetched.get('invalid_label', np.zeros(count))).reshape(count, -1)[i]
      raise InvalidLabelError(
          f'Batch {first + i} (step {first + i + 1}) has {int(bad[i])} `labels` outside '
          f'[0, num_classes), e.g. {sorted(set(value.tolist()))}; those rows were left out of '
          'the update. Fix the dataset or its num_classes.')
  if 'cache_misses' in fetched:
    misses = np.asarray(fetched['cache_misses']).reshape(count, -1).sum(axis=1)
    if misses.any():
      from kdjax.cache import CacheMissError  # pylint: disable=g-import-not-at-top
      i = int(np.flatnonzero(misses)[0])
      raise CacheMissError(
          f'Batch {first + i} (step {first + i + 1}) has {int(misses[i])} rows that are not in '
          'the teacher cache; that update was skipped. Build the cache for every epoch the run '
          'visits (kdjax.cache.epochs_needed) with the training seed and transform.')
  skipped = np.asarray(fetched['skipped']).reshape(count, -1).max(axis=1) > 0
  for i, s in enumerate(skipped):
    consecutive = consecutive + 1 if s else 0
    if consecutive >= max_consecutive_skips:
      raise NonFiniteError(
          f'{consecutive} consecutive updates had a non-finite loss or gradient (last at '
          f'step {first + i + 1}); the parameters were left untouched. Lower the learning rate '
          'or check the inputs and labels.')
  return int(skipped.sum()), consecutive


def _student_convolves_on_cpu(state: Any, data: Any, step_fn: Callable = None,
                              teacher_variables: Any = None) -> bool:
  """Whether the student of ``state`` convolves on ``data``'s batches, on the CPU backend.

  XLA:CPU runs convolution *gradients* inside a ``while`` loop (a scanned
  chunk) several times slower than the same step called from Python
  (measured: a 1D-CNN training step, 3.0 vs 0.6 ms at batch 100; a
  convolutional teacher's forward pass is not affected), so :func:`fit` keeps
  one call per step for convolutional students there. The student is
  ``state`` itself, or ``state.student`` for two-player states
  (:class:`kdjax.dense.AdversarialState`); a student that does not read the
  batch's ``'x'`` (a generator) is judged by tracing ``step_fn``. Other
  backends, states without a single ``apply_fn``/``variables`` (e.g. stacked
  peers), and plain iterators (which cannot be peeked at without losing a
  batch) always scan.
  """
  two_player = hasattr(state, 'student') and hasattr(state, 'critic')
  player = state.student if two_player else state
  apply_fn, variables = getattr(player, 'apply_fn', None), getattr(player, 'variables', None)
  if jax.default_backend() != 'cpu' or apply_fn is None or variables is None:
    return False
  if callable(getattr(data, 'plan', None)):  # DeviceData: trace its gather
    row = jax.tree.map(lambda v: v[0], data.plan(0, 1))
    batch = jax.eval_shape(lambda p: data.gather(data.arrays, p), row)
  elif callable(getattr(data, 'get_state', None)) and callable(getattr(data, 'set_state', None)):
    position = data.get_state()  # a grain iterator: peek at one batch, then rewind
    batch = jax.tree.map(np.asarray, next(data))
    data.set_state(position)
  else:  # a plain iterator cannot be peeked at without losing a batch
    return False
  try:
    jaxpr = jax.make_jaxpr(lambda v, x: apply_fn(v, x, train=False))(variables, batch['x'])
  except Exception:  # pylint: disable=broad-except  (not a plain single-model state)
    if not two_player or step_fn is None or not getattr(step_fn, 'traceable', True):
      return False
    try:  # e.g. a generator: its inputs are drawn inside the step
      jaxpr = jax.make_jaxpr(step_fn)(state, teacher_variables, batch, jax.random.key(0))
    except Exception:  # pylint: disable=broad-except
      return False
  return 'conv_general_dilated' in str(jaxpr)


def fit(state: Any, step_fn: Callable, data: Any, *,
        num_steps: int, rng: jax.Array, teacher_variables: Any = None,
        checkpointer: Optional[Checkpointer] = None, checkpoint_every: int = 500,
        save_steps: Sequence[int] = (), meta: Optional[Mapping[str, Any]] = None,
        eval_fn: Optional[Callable[[Any], Mapping[str, float]]] = None,
        eval_every: Optional[int] = None, writer: Optional[MetricWriter] = None,
        log_every: int = 100, progress: bool = True, desc: str = 'train',
        max_consecutive_skips: int = 20, steps_per_call: Optional[int] = None,
        compiled: Optional[bool] = None, donate: bool = True,
        mesh: Optional[jax.sharding.Mesh] = None, data_axis: str = 'data') -> FitResult:
  """Runs ``step_fn`` for ``num_steps`` updates in compiled chunks, resuming if it can.

  The steps between two host interactions (logging, evaluation, checkpoints)
  run as one chunk: a ``jax.lax.scan`` of ``step_fn`` compiled once per chunk
  length (:func:`make_chunk_fn`), with the state donated. The data come either

  * from a host iterator (a grain iterator from
    :func:`kdjax.data.make_pipeline`, or any iterator of batch dicts): a
    background thread draws the next chunk's batches, stacks them and copies
    them to the device while the current chunk runs; or
  * from a :class:`kdjax.data.DeviceData` already on the device: each chunk
    receives only an int32 index plan and gathers its batches in-graph.

  Both give the same batches for the same source, seed and layout, so the
  same parameters. With ``compiled=False`` every step is a Python call (the
  loop of earlier versions, kept for steps that cannot be traced into a
  scan, such as NetAug's host-sampled widths, and for comparison).

  Resume: the checkpoint stores the state, the iteration count and the data
  position (the grain iterator's state, or the next batch index of a
  ``DeviceData``); since a step's randomness is ``fold_in(rng, state.step)``
  and chunk ends depend on absolute steps only (:func:`chunk_ends`), a killed
  run started again ends bitwise-identical to one never interrupted.

  Args:
    state: the initial state (used as the restore template when resuming).
      It is not modified: ``fit`` donates its own copy.
    step_fn: ``step(state, teacher_variables, batch, rng) -> (state,
      metrics)``, e.g. from :func:`kdjax.steps.make_distill_step` (jitted or
      not). Its metrics must include ``'skipped'``; ``'invalid_labels'``
      (from :func:`kdjax._update.clean_labels`) stops the run with
      :class:`InvalidLabelError`.
    data: a host iterator of batches or a :class:`kdjax.data.DeviceData`.
    num_steps: the total number of updates of the run.
    rng: base PRNG key; step ``i`` uses ``fold_in(rng, i)`` inside the step.
    teacher_variables: frozen teacher variables passed to every step (placed
      on the device, or the mesh, once).
    checkpointer: where to save and resume from; ``None`` disables both.
    checkpoint_every: save every this many steps (and at the end).
    save_steps: further steps to save at (and evaluate at, when ``eval_fn`` is
      given), e.g. the checkpoints of an early-stopped teacher; give them to the
      checkpointer's ``keep_steps`` too so they are not deleted.
    meta: JSON record saved with each checkpoint (e.g. the teacher's path).
    eval_fn: ``eval_fn(state) -> metrics``, run every ``eval_every`` steps and
      at the end; its metrics rank the "best" checkpoint.
    eval_every: evaluation period; ``None`` evaluates only at the end.
    writer: optional :class:`MetricWriter`.
    log_every: period of training-metric logging (progress bar, writer).
    progress: show a tqdm progress bar (advanced once per chunk).
    desc: progress bar label.
    max_consecutive_skips: raise :class:`NonFiniteError` after this many
      consecutive skipped (non-finite) updates instead of spinning.
    steps_per_call: the longest chunk (default ``log_every``).
    compiled: run chunks with ``lax.scan``; ``False``: one Python call per
      step (of ``jax.jit(step_fn)``, or of ``step_fn`` itself when
      ``step_fn.traceable`` is False); ``None``: compiled unless
      ``step_fn.traceable`` is False (a step that decides on the host, e.g.
      NetAug's ``sampling='host'``) or, on the CPU backend, the student
      convolves (XLA:CPU runs convolution gradients in a loop body ~5x
      slower). The check traces the student on one batch: a
      ``DeviceData``'s, or a grain iterator's next batch, rewound
      afterwards; a plain Python iterator is not peeked at (it scans).
    donate: donate the state's buffers between chunks.
    mesh: data parallelism through ``jax.jit`` on a mesh: state and teacher
      are replicated, each batch is sharded on ``data_axis`` (build the step
      with ``axis_name=None``). For ``jax.pmap``, pass a pmapped step and
      per-device batches instead.
    data_axis: the mesh axis of the batch.

  Returns:
    A :class:`FitResult`.

  Raises:
    InvalidLabelError: a batch had labels outside ``[0, num_classes)``.
    kdjax.cache.CacheMissError: a cached-teacher step (its
      ``'cache_misses'`` metric) met a batch row missing from its cache.
    NonFiniteError: too many consecutive non-finite updates.
    ValueError: the data ran out, or bad options.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> from kdjax import data as kdata, models, steps
    >>> from kdjax.state import TrainState
    >>> src = [{'x': np.float32([i % 2, 1]), 'label': np.int32(i % 2), 'id': np.int32(i)}
    ...        for i in range(8)]
    >>> model = models.MLP(hidden=(), num_classes=2)
    >>> state = TrainState.create(
    ...     apply_fn=models.as_forward(model), tx=optax.adam(0.1),
    ...     variables=models.init_variables(model, jax.random.key(0), np.zeros((1, 2))))
    >>> resident = kdata.DeviceData(src, batch_size=4, seed=0)
    >>> result = fit(state, steps.make_train_step(), resident, num_steps=50,
    ...              rng=jax.random.key(1), progress=False, log_every=25)
    >>> int(result.state.step), result.chunks, result.history[-1]['accuracy']
    (50, 2, 1.0)
  """
  start_time = time.perf_counter()
  # A kdjax.data.DeviceData (duck-typed: anything with plan() and gather()).
  resident = callable(getattr(data, 'plan', None)) and callable(getattr(data, 'gather', None))
  if compiled is None:
    compiled = getattr(step_fn, 'traceable', True) and not _student_convolves_on_cpu(
        state, data, step_fn, teacher_variables)
  if num_steps < 0:
    raise ValueError(f'`num_steps` must be >= 0, got {num_steps}.')
  if log_every < 1:
    raise ValueError(f'`log_every` must be >= 1, got {log_every}.')

  first, resumed_from, data_state = 0, None, None
  if checkpointer is not None and checkpointer.latest_step() is not None:
    state, data_state = checkpointer.restore(state)
    first = int(data_state.get('iteration', state.step)) if data_state else int(state.step)
    resumed_from = first
    data_state = data_state or {}
    iterator_state = data_state.get('iterator') if 'iteration' in data_state else data_state
    if iterator_state and not resident and hasattr(data, 'set_state'):
      data.set_state(iterator_state)

  if mesh is not None:
    from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
    from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

    from kdjax import parallel  # pylint: disable=g-import-not-at-top
    replicated = NamedSharding(mesh, P())
    state = parallel.replicate(state, mesh)
    teacher_variables = parallel.replicate(teacher_variables, mesh)
    arrays = data.arrays if resident else None
    batch_sharding = NamedSharding(mesh, P(data_axis)) if resident else None

    def place(chunk):
      return jax.device_put(chunk, replicated if resident else
                            NamedSharding(mesh, P(None, data_axis)))
  else:
    state = jax.device_put(state)
    teacher_variables = jax.device_put(teacher_variables)
    arrays = data.arrays if resident else None
    batch_sharding = None
    place = jax.device_put
  state = jax.tree.map(jnp.copy, state)  # donated below; the caller's state stays valid

  ends = chunk_ends(first, num_steps, steps_per_call=steps_per_call or log_every,
                    periods=(log_every, checkpoint_every, eval_every), at=save_steps)
  sizes = [end - start for start, end in zip([first] + ends[:-1], ends)]
  if compiled:
    chunk_fn = make_chunk_fn(step_fn, gather=data.gather if resident else None,
                             donate=donate, batch_sharding=batch_sharding)
  else:
    gather = jax.jit(data.gather) if resident else None
    if getattr(step_fn, 'traceable', True):
      step_fn = jax.jit(step_fn, donate_argnums=(0,) if donate else ())
    if mesh is None:
      place = lambda chunk: chunk  # noqa: E731 (slice on the host; each step copies its batch)

    def chunk_fn(state, teacher_variables, xs, rng, arrays):
      per_step = []
      for i in range(len(jax.tree.leaves(xs)[0])):
        x = jax.tree.map(lambda v: v[i], xs)  # pylint: disable=cell-var-from-loop
        state, metrics = step_fn(state, teacher_variables,
                                 x if gather is None else gather(arrays, x), rng)
        per_step.append(metrics)
      return state, jax.tree.map(lambda *m: jnp.stack(m), *per_step)

  if resident:
    def chunks():
      position = first
      for n in sizes:
        plan = place(data.plan(position, n))
        position += n
        yield plan, {'next_index': position}
    source = chunks()
    next_chunk, close = lambda: next(source), lambda: None
  else:
    prefetcher = _Prefetcher(data, sizes, place)
    next_chunk, close = prefetcher.get, prefetcher.close

  def save(step, metrics=None):
    if checkpointer is not None:
      payload = {'iteration': step}
      if data_state is not None:
        payload['iterator'] = data_state
      checkpointer.save(step, state, data_state=payload, metrics=metrics, meta=meta,
                        force=True)

  history, eval_history, pending = [], [], []
  skipped_total = consecutive = 0
  bar = tqdm.tqdm(total=num_steps, initial=first, desc=desc, disable=not progress,
                  dynamic_ncols=True, leave=True)
  done = first
  try:
    for n in sizes:
      xs, data_state = next_chunk()
      state, metrics = chunk_fn(state, teacher_variables, xs, rng, arrays)
      fetched = jax.device_get(metrics)
      skipped, consecutive = _check_chunk(fetched, done, consecutive, max_consecutive_skips)
      skipped_total += skipped
      pending.append(fetched)
      done += n
      bar.update(n)
      if done % log_every == 0 or done == num_steps:
        mean = {k: float(np.mean(np.concatenate([np.asarray(p[k]).reshape(-1) for p in pending])))
                for k in pending[-1]}
        pending = []
        history.append({'step': done, **mean})
        if writer is not None:
          writer.write(done, mean, split='train')
        shown = {k: f'{mean[k]:.3g}' for k in ('loss', 'accuracy') if k in mean}
        if skipped_total:
          shown['skipped'] = skipped_total
        bar.set_postfix(shown, refresh=False)
      eval_metrics = None
      special = done in save_steps
      if eval_fn is not None and (
          (eval_every and done % eval_every == 0) or done == num_steps or special):
        eval_metrics = dict(eval_fn(state))
        eval_history.append({'step': done, **eval_metrics})
        if writer is not None:
          writer.write(done, eval_metrics, split='eval')
      if done % checkpoint_every == 0 or done == num_steps or special:
        save(done, eval_metrics)
  finally:
    close()
    bar.close()
  if checkpointer is not None:
    checkpointer.wait()
  return FitResult(state, history, eval_history, resumed_from, skipped_total,
                   time.perf_counter() - start_time, len(sizes), bool(compiled))
