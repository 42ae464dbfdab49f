"""Data-, peer- and multi-host parallelism for the pure steps of kdjax.

Every step of the engine is a pure function; this module only places its
inputs on devices and wraps it, in the three ways JAX offers:

* ``jax.jit`` with ``NamedSharding`` over a ``jax.sharding.Mesh``
  (:func:`sharded_step`): the batch is sharded on the ``'data'`` axis, the state
  replicated, and XLA inserts the collectives. Build the step with
  ``axis_name=None``.
* ``jax.shard_map`` (:func:`shard_map_step`): the step runs per device on its
  batch shard and its ``axis_name`` collectives (psum of sums and counts) make
  every mean exact over the global batch. With ``peer_axis`` a stacked cohort
  is also split over the ``'peer'`` axis of a 2-D ``('peer', 'data')`` mesh
  (:func:`peer_data_mesh`), and logits are exchanged with ``all_gather``.
* ``jax.pmap`` (:func:`pmap_step`, with :func:`replicate_for_pmap`,
  :func:`split_for_pmap` and :func:`unreplicate`).

:func:`initialize_distributed` starts ``jax.distributed`` from arguments or
environment variables so that the same script runs on one or several hosts;
:func:`shard_batch` then assembles each process's rows into one global batch.

Meshes are built with ``jax.sharding.Mesh(devices, names)`` (classic "auto"
axes): ``jax.make_mesh`` defaults to explicit axis types, under which
``shard_map`` rejects inputs that are not already sharded.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from kdjax.cohort import CohortState


DATA_AXIS = 'data'
PEER_AXIS = 'peer'

ENV_COORDINATOR = 'KDJAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'KDJAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'KDJAX_PROCESS_ID'


# --------------------------------------------------------------- meshes

def data_mesh(devices: Optional[Sequence[jax.Device]] = None, *,
              axis_name: str = DATA_AXIS) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all global devices) for data parallelism.

  Examples:
    >>> mesh = data_mesh()
    >>> mesh.axis_names, mesh.shape[DATA_AXIS] == jax.device_count()
    (('data',), True)
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (axis_name,))


def peer_data_mesh(num_peer_shards: int, *, devices: Optional[Sequence[jax.Device]] = None,
                   peer_axis: str = PEER_AXIS, data_axis: str = DATA_AXIS) -> Mesh:
  """A 2-D ``(peer, data)`` mesh: ``num_peer_shards`` groups of data-parallel devices.

  A stacked cohort of ``K`` peers is split into ``num_peer_shards`` groups of
  ``K / num_peer_shards`` peers; each group trains its peers data-parallel
  over the ``len(devices) / num_peer_shards`` devices of its row.

  Raises:
    ValueError: if the device count is not a multiple of ``num_peer_shards``.

  Examples:
    >>> mesh = peer_data_mesh(1)
    >>> mesh.axis_names, mesh.shape[PEER_AXIS]
    (('peer', 'data'), 1)
  """
  devices = jax.devices() if devices is None else list(devices)
  if num_peer_shards < 1 or len(devices) % num_peer_shards:
    raise ValueError(
        f'`num_peer_shards` must divide the {len(devices)} devices, got {num_peer_shards}.')
  grid = np.asarray(devices).reshape(num_peer_shards, len(devices) // num_peer_shards)
  return Mesh(grid, (peer_axis, data_axis))


# --------------------------------------------------------------- placement

def _global_array(x, sharding: NamedSharding):
  """Places a value that every process holds in full under a global sharding."""
  if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)  # one process, or already a global array
  if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    impl = jax.random.key_impl(x)
    data = _global_array(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=impl)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a full copy of every leaf of ``tree`` on every device of ``mesh``.

  Works with several processes too, as long as every process passes the same
  values (e.g. a state initialised from the same seed).

  Examples:
    >>> out = replicate({'w': jnp.ones(3)}, data_mesh())
    >>> out['w'].sharding.is_fully_replicated
    True
  """
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: _global_array(x, sharding), tree)


def shard_batch(batch: Any, mesh: Mesh, *, axis: str = DATA_AXIS) -> Any:
  """Shards every leaf of ``batch`` along its leading (example) axis over ``axis``.

  With one process, ``batch`` is the global batch. With several processes,
  each passes its own rows (see :func:`process_batch_slice`) and the result is
  one global array (``jax.make_array_from_process_local_data``).

  Args:
    batch: a pytree of ``[B, ...]`` arrays (``'x'``, ``'label'``, ``'mask'``).
    mesh: a mesh with an axis named ``axis``.
    axis: the mesh axis that splits the batch (replicated over other axes).

  Returns:
    The batch as global ``jax.Array`` s sharded ``P(axis)``.

  Raises:
    ValueError: if a leaf's leading size does not divide evenly over the
      devices of ``axis`` held by this process.

  Examples:
    >>> batch = shard_batch({'x': np.zeros((jax.device_count() * 2, 3))}, data_mesh())
    >>> batch['x'].shape[1], batch['x'].sharding.spec
    (3, P('data',))
  """
  sharding = NamedSharding(mesh, P(axis))
  n = mesh.shape[axis]
  local = max(1, n // jax.process_count())

  def place(x):
    if not jnp.ndim(x):
      raise ValueError('`batch` leaves must have a leading example axis, got a scalar.')
    if jax.process_count() == 1:
      if x.shape[0] % n:
        raise ValueError(
            f'`batch` leading size {x.shape[0]} must be divisible by the {n} devices of mesh '
            f'axis {axis!r}; pad it and pass a "mask".')
      return jax.device_put(x, sharding)
    if x.shape[0] % local:
      raise ValueError(
          f'`batch` leading size {x.shape[0]} on this process must be divisible by its '
          f'{local} devices of mesh axis {axis!r}.')
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(place, batch)


def shard_cohort(cohort: CohortState, mesh: Mesh, *, peer_axis: str = PEER_AXIS) -> CohortState:
  """Splits a stacked cohort's peer axis over ``peer_axis`` (replicated over the others).

  Raises:
    ValueError: for a tuple cohort, or ``K`` not divisible by the axis size.

  Examples:
    >>> import optax
    >>> from kdjax import cohort as co, models
    >>> fwd = models.function_forward(lambda p, x: x @ p['w'])
    >>> c = co.init_cohort(fwd, optax.sgd(0.1), jax.random.split(jax.random.key(0), 2),
    ...                    init_fn=lambda k: {'params': {'w': jnp.zeros((3, 2))}})
    >>> shard_cohort(c, peer_data_mesh(1)).peers.params['w'].sharding.spec
    P('peer',)
  """
  if not cohort.stacked:
    raise ValueError('`cohort` must hold stacked peers to be split over a peer axis.')
  if cohort.num_peers % mesh.shape[peer_axis]:
    raise ValueError(
        f'The cohort has {cohort.num_peers} peers, not divisible by the {mesh.shape[peer_axis]} '
        f'devices of mesh axis {peer_axis!r}.')
  peers = NamedSharding(mesh, P(peer_axis))
  return cohort.replace(
      step=_global_array(cohort.step, NamedSharding(mesh, P())),
      peers=jax.tree.map(lambda x: _global_array(x, peers), cohort.peers))


# --------------------------------------------------------------- step wrappers

def _batch_argnum(step: Callable, batch_argnum: Optional[int]) -> tuple[int, int]:
  """``(batch_argnum, num_args)`` of a step, found by the parameter name ``batch``."""
  params = [p for p in inspect.signature(step).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  if batch_argnum is None:
    names = [p.name for p in params]
    if 'batch' not in names:
      raise ValueError(
          f'Cannot find the batch argument of {step!r} (parameters {names}); pass '
          '`batch_argnum`.')
    batch_argnum = names.index('batch')
  if not 0 < batch_argnum < len(params):
    raise ValueError(
        f'`batch_argnum` must index a positional argument after the state, got {batch_argnum} '
        f'for {len(params)} arguments.')
  return batch_argnum, len(params)


def sharded_step(step: Callable, mesh: Mesh, *, batch_argnum: Optional[int] = None,
                 data_axis: str = DATA_AXIS, donate_state: bool = False) -> Callable:
  """``jax.jit`` of ``step`` with the batch sharded on ``data_axis`` and all else replicated.

  The step must be built with ``axis_name=None``: XLA partitions the global
  computation and inserts the cross-device sums itself, so means and
  gradients are those of the global batch.

  Args:
    step: e.g. ``make_distill_step(...)`` (``(state, teacher_variables, batch,
      rng)``) or ``make_cohort_step(...)`` (``(cohort, batch, rng)``).
    mesh: the device mesh.
    batch_argnum: position of the batch; found by the parameter name
      ``batch`` when ``None``.
    data_axis: the mesh axis the batch is split over.
    donate_state: donate the state's buffers (argument 0) to the output.

  Returns:
    The jitted step; its outputs (state and metrics) are replicated.

  Examples:
    >>> from kdjax import steps
    >>> jitted = sharded_step(steps.make_train_step(), data_mesh())
    >>> callable(jitted)
    True
  """
  argnum, num_args = _batch_argnum(step, batch_argnum)
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P(data_axis))
  in_shardings = tuple(batch if i == argnum else replicated for i in range(num_args))
  return jax.jit(step, in_shardings=in_shardings, out_shardings=replicated,
                 donate_argnums=(0,) if donate_state else ())


def shard_map_step(step: Callable, mesh: Mesh, *, batch_argnum: Optional[int] = None,
                   data_axis: str = DATA_AXIS, peer_axis: Optional[str] = None,
                   donate_state: bool = False, returns_state: bool = True) -> Callable:
  """``jax.jit(jax.shard_map(step))``: the step runs per device on its batch shard.

  Build the step with ``axis_name=data_axis`` so that its sums and counts are
  psum'd (exact global means), and for a peer-parallel cohort with
  ``peer_axis_name=peer_axis`` too (``make_cohort_step(axis_name='data',
  peer_axis_name='peer')``).

  Args:
    step: a pure step whose first argument is the state.
    mesh: a ``(data,)`` or ``(peer, data)`` mesh.
    batch_argnum: position of the batch (found by name when ``None``).
    data_axis: the mesh axis the batch is split over.
    peer_axis: if given, the state must be a stacked :class:`CohortState`
      whose peer axis is split over this mesh axis (place it with
      :func:`shard_cohort`); otherwise the state is replicated.
    donate_state: donate the state's buffers to the output.
    returns_state: the step returns ``(state, metrics)``; set ``False`` for
      an evaluation step (``make_eval_step``, ``make_cohort_eval_step``)
      that returns only replicated sums.
  Returns:
    The wrapped, jitted step with the same signature.

  Note:
    The map is built with ``check_vma=False``. kdjax steps sum their
    gradients over ``axis_name`` themselves (the ``pmap`` convention); with
    ``jax.shard_map``'s default varying-axes checking, the gradient of a
    replicated parameter would already be summed over the axis by the
    transpose, and the step's own ``psum`` would count it ``n`` times. The
    steps keep the state identical across ``data_axis`` (gradients and
    metrics are psum'd and BatchNorm statistics averaged), so the replicated output is well defined.
  """
  argnum, num_args = _batch_argnum(step, batch_argnum)
  if peer_axis is None:
    state_spec = P()
  else:
    state_spec = CohortState(step=P(), peers=P(peer_axis))
  in_specs = tuple(
      state_spec if i == 0 else P(data_axis) if i == argnum else P() for i in range(num_args))
  out_specs = (state_spec, P()) if returns_state else P()
  mapped = jax.shard_map(step, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,) if donate_state and returns_state else ())


def pmap_step(step: Callable, *, batch_argnum: Optional[int] = None,
              axis_name: str = DATA_AXIS, donate_state: bool = False) -> Callable:
  """``jax.pmap`` of ``step`` over ``axis_name``.

  The state (argument 0) and the batch carry a leading device axis
  (:func:`replicate_for_pmap`, :func:`split_for_pmap`); every other argument
  (teacher variables, rng) is broadcast to all devices. Build the step with
  ``axis_name`` set to the same name. Outputs have a leading device axis
  (identical copies; :func:`unreplicate` takes one).

  Examples:
    >>> from kdjax import steps
    >>> callable(pmap_step(steps.make_train_step(axis_name='data')))
    True
  """
  argnum, num_args = _batch_argnum(step, batch_argnum)
  in_axes = tuple(0 if i in (0, argnum) else None for i in range(num_args))
  return jax.pmap(step, axis_name=axis_name, in_axes=in_axes,
                  donate_argnums=(0,) if donate_state else ())


def replicate_for_pmap(tree: Any, num_devices: Optional[int] = None, *,
                       axis_name: str = DATA_AXIS) -> Any:
  """Copies ``tree`` onto a new leading device axis, one copy per local device.

  The copies are placed where :func:`pmap_step` keeps its outputs (a
  ``NamedSharding`` over the local devices on ``axis_name``), so the first
  and later calls see the same input placement and the step is traced once.

  Args:
    tree: the state (or any pytree) to replicate.
    num_devices: number of copies; ``jax.local_device_count()`` by default.
    axis_name: the pmap axis name the step uses.

  Examples:
    >>> replicate_for_pmap({'w': jnp.ones(3)}, 1)['w'].shape
    (1, 3)
  """
  n = jax.local_device_count() if num_devices is None else num_devices
  mesh = Mesh(np.asarray(jax.local_devices()[:n]), (axis_name,))
  sharding = NamedSharding(mesh, P(axis_name))
  return jax.tree.map(
      lambda x: jax.device_put(jnp.broadcast_to(x, (n,) + jnp.shape(x)), sharding), tree)


def unreplicate(tree: Any) -> Any:
  """The first copy of a tree with a leading device axis (outputs of a pmapped step).

  Examples:
    >>> unreplicate({'w': jnp.arange(6).reshape(2, 3)})['w'].tolist()
    [0, 1, 2]
  """
  return jax.tree.map(lambda x: x[0], tree)


def split_for_pmap(batch: Any, num_devices: Optional[int] = None) -> Any:
  """Reshapes ``[B, ...]`` leaves to ``[n, B / n, ...]`` for :func:`pmap_step`.

  Raises:
    ValueError: if ``B`` is not divisible by ``n``.

  Examples:
    >>> split_for_pmap({'x': np.zeros((6, 4))}, 3)['x'].shape
    (3, 2, 4)
  """
  n = jax.local_device_count() if num_devices is None else num_devices

  def split(x):
    if not jnp.ndim(x) or x.shape[0] % n:
      raise ValueError(
          f'`batch` leaves must have a leading size divisible by {n} devices, got shape '
          f'{jnp.shape(x)}; pad it and pass a "mask".')
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree.map(split, batch)


# --------------------------------------------------------------- multi-host

class DistributedInfo(NamedTuple):
  """Where this process sits in a (possibly single-process) run.

  Attributes:
    process_id: this process's index, ``0 <= process_id < num_processes``.
    num_processes: number of processes.
    local_device_count: devices attached to this process.
    device_count: devices over all processes.
  """
  process_id: int
  num_processes: int
  local_device_count: int
  device_count: int


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None or value == '':
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'Environment variable {name} must be an integer, got {value!r}.') from None


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, *,
                           local_device_ids: Optional[Sequence[int]] = None,
                           auto: bool = False, cpu_collectives: Optional[str] = 'gloo',
                           **kwargs) -> DistributedInfo:
  """Starts ``jax.distributed`` so that one script runs on one or several hosts.

  Arguments win over the environment variables ``KDJAX_COORDINATOR_ADDRESS``
  (``host:port`` of process 0), ``KDJAX_NUM_PROCESSES`` and
  ``KDJAX_PROCESS_ID``. Without any of them (and ``auto=False``) this is a
  no-op: a single-process run. With ``auto=True`` JAX detects the cluster
  itself (SLURM, Open MPI, Cloud TPU). Call it first thing in the script,
  before any JAX computation; a second call returns the current info.

  On CPU, collectives across processes need an implementation;
  ``cpu_collectives='gloo'`` selects gloo (``jax_cpu_collectives_implementation``;
  it does not affect GPU or TPU backends). ``None`` leaves the setting alone.

  Args:
    coordinator_address: ``'host:port'`` of process 0's coordinator service.
    num_processes: total number of processes.
    process_id: this process's index.
    local_device_ids: restrict this process to some of its local devices.
    auto: let ``jax.distributed.initialize`` detect the cluster when the
      address, count or id are missing.
    cpu_collectives: the CPU collectives implementation to select.
    **kwargs: passed to ``jax.distributed.initialize`` (e.g.
      ``initialization_timeout``).

  Returns:
    A :class:`DistributedInfo`.

  Raises:
    ValueError: for a malformed environment variable, or a multi-process
      setting without a coordinator address (and ``auto=False``).

  Examples:
    >>> info = initialize_distributed()  # no arguments, no environment: one process
    >>> info.num_processes, info.process_id
    (1, 0)
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  configured = any(v is not None for v in (coordinator_address, num_processes, process_id))
  single = num_processes == 1 or not (configured or auto)
  if not single and not jax.distributed.is_initialized():
    if not auto and (coordinator_address is None or num_processes is None or process_id is None):
      raise ValueError(
          'A multi-process run needs `coordinator_address`, `num_processes` and `process_id` '
          f'(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); got '
          f'{coordinator_address!r}, {num_processes!r}, {process_id!r}. Pass auto=True on a '
          'cluster JAX detects (SLURM, Open MPI, Cloud TPU).')
    if num_processes is not None and process_id is not None and not (
        0 <= process_id < num_processes):
      raise ValueError(f'`process_id` must be in [0, {num_processes}), got {process_id}.')
    if cpu_collectives is not None:
      jax.config.update('jax_cpu_collectives_implementation', cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, local_device_ids=local_device_ids, **kwargs)
  return DistributedInfo(jax.process_index(), jax.process_count(), jax.local_device_count(),
                         jax.device_count())


def process_batch_slice(global_batch_size: int) -> slice:
  """The rows of a global batch that this process loads (contiguous, equal shares).

  Pass the selected rows to :func:`shard_batch`; the processes together then
  form the global batch in order.

  Raises:
    ValueError: if ``global_batch_size`` is not divisible by the process count.

  Examples:
    >>> process_batch_slice(8)  # a single process loads everything
    slice(0, 8, None)
  """
  n, i = jax.process_count(), jax.process_index()
  if global_batch_size % n:
    raise ValueError(
        f'`global_batch_size` {global_batch_size} must be divisible by the {n} processes.')
  share = global_batch_size // n
  return slice(i * share, (i + 1) * share)
