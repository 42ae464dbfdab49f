"""Weight distillation: generate the student's weights from the teacher's.

A parameter generator maps each paired teacher layer to a student layer,

    W_S = P · W_T · Q,        b_S = b_T · Q   (or a learned b_S),

with learned ``P ∈ R^{in_S × in_T}`` and ``Q ∈ R^{out_T × out_S}`` per student
layer. Kernels use Flax's ``[..., in, out]`` layout (conv kernels
``[k, in, out]`` are mapped tap by tap; the window must match), so ``P`` mixes
the input side and ``Q`` the output side; in the paper's ``[out, in]`` layout
the same map reads ``b_S = Q^T b_T``, the output-side matrix acting on the
bias. Two phases:

1. the generator ``(P, Q)`` is trained through the student's KD loss: the
   student's weights are generated on every forward pass, never free;
2. the generated student becomes a normal student (a plain
   :class:`~kdjax.state.TrainState` whose params are exactly the generated
   ones) and is fine-tuned.

**Pairing rule** (:func:`pair_layers`): layers that hold a ``kernel`` are
listed in call order (traced with ``flax.linen.intercept_methods``) and
grouped by kind (kernel rank: Dense ``[in, out]``, 1-D conv ``[k, in, out]``,
...). Within a kind, student layer ``i`` of ``n_S`` takes teacher layer
``round(i·(n_T − 1)/(n_S − 1))`` of ``n_T`` (uniform selection, first to
first, last to last; a single student layer of a kind takes the teacher's
last, e.g. classifier to classifier). A deeper teacher thus has layers
skipped, a shallower one has layers reused. The paper instead groups the
teacher's layers and combines each group; selection is the group-of-one case.

With the identity-like init (``P = I[in_S, in_T]``, ``Q = I[out_T, out_S]``)
the generated student starts as the teacher's leading slice ``W_T[:in_S,
:out_S]``, the "cut the teacher's parameters" initialisation the paper uses
as a baseline; when shapes match it is the teacher exactly.

Example (phase 1 with the library's distillation step, then phase 2)::

  gen = weight_generator(student, teacher, x[:1])
  state = gen.create_state(student, student_variables, teacher_variables['params'],
                           optax.adam(1e-3))
  step = jax.jit(steps.make_distill_step([steps.soft_kd(1.0)], teacher))
  state, metrics = step(state, teacher_variables, batch, rng)     # trains P and Q
  state2 = gen.finetune_state(state, student, optax.adam(1e-3))   # plain student
  state2, metrics = jax.jit(steps.make_train_step())(state2, None, batch, rng)

References:
  Lin, Li, Wang, Li, Du, Xiao & Zhu, "Weight Distillation: Transferring the
  Knowledge in Neural Network Parameters", ACL 2021, arXiv:2009.09152.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kdjax.models._wrap import as_forward
from kdjax.models._wrap import ForwardFn
from kdjax.models._wrap import init_variables
from kdjax.models._wrap import ModelOutput
from kdjax.state import TrainState


# The collection that carries the (frozen) teacher weights into the phase-1 forward.
TEACHER_WEIGHTS = 'wd_teacher'
_SEP = '/'


def _flat(params: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(dict(params), sep=_SEP) if params else {}


def _layer_of(leaf_path: str) -> str:
  return leaf_path.rpartition(_SEP)[0]


def _kernels(params: Mapping[str, Any]) -> dict[str, Any]:
  """``{layer path: kernel}`` for every leaf named ``kernel`` (the root layer is ``''``)."""
  return {_layer_of(k): v for k, v in _flat(params).items()
          if k == 'kernel' or k.endswith(_SEP + 'kernel')}


def _leaf(layer: str, name: str) -> str:
  return f'{layer}{_SEP}{name}' if layer else name


def layer_order(model: nn.Module, sample_x: Any, **kwargs) -> tuple[str, ...]:
  """The paths of ``model``'s kernel-holding layers, in the order they are called.

  The order comes from tracing ``model.init`` (abstractly, nothing is
  computed) under ``flax.linen.intercept_methods``, so it does not depend on
  the (sorted) key order of a params dict. Nested layers are joined with
  ``'/'`` (``'block1/conv'``).

  Args:
    model: a Flax Linen module.
    sample_x: a sample input (an array or a ``jax.ShapeDtypeStruct``).
    **kwargs: extra keyword arguments of ``model.init``.

  Returns:
    Layer paths; every layer whose params hold a ``kernel`` appears once.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import MLP
    >>> layer_order(MLP(hidden=(8, 8), num_classes=3), jnp.zeros((1, 5)))
    ('dense1', 'dense2', 'classifier')
  """
  calls: list[str] = []

  def interceptor(next_fun, args, call_kwargs, context):
    if context.method_name == '__call__':
      try:
        calls.append(_SEP.join(str(p) for p in context.module.path))
      except Exception:  # pylint: disable=broad-except  (an unbound module)
        pass
    return next_fun(*args, **call_kwargs)

  with nn.intercept_methods(interceptor):
    shapes = jax.eval_shape(lambda v: init_variables(model, jax.random.key(0), v, **kwargs),
                            sample_x)
  kernels = _kernels(shapes.get('params', {}))
  order = []
  for path in calls:
    if path in kernels and path not in order:
      order.append(path)
  order += sorted(k for k in kernels if k not in order)  # never called: keep them, last
  return tuple(order)


def uniform_selection(num_student: int, num_teacher: int) -> tuple[int, ...]:
  """Teacher layer index for each of ``num_student`` layers: ``round(i·(n_T−1)/(n_S−1))``.

  Rounds half up. One student layer takes the teacher's last layer.

  Args:
    num_student: number of student layers of a kind, ``>= 1``.
    num_teacher: number of teacher layers of that kind, ``>= 1``.

  Returns:
    ``num_student`` indices into the teacher's layers, non-decreasing, the
    first 0 and the last ``num_teacher − 1``.

  Raises:
    ValueError: if a count is below 1.

  Examples:
    >>> uniform_selection(3, 5), uniform_selection(2, 3), uniform_selection(3, 2)
    ((0, 2, 4), (0, 2), (0, 1, 1))
  """
  if num_student < 1 or num_teacher < 1:
    raise ValueError(
        f'`num_student` and `num_teacher` must be >= 1, got {num_student} and {num_teacher}.')
  if num_student == 1:
    return (num_teacher - 1,)
  return tuple(int(math.floor(i * (num_teacher - 1) / (num_student - 1) + 0.5))
               for i in range(num_student))


def _kind(kernel) -> str:
  rank = len(jnp.shape(kernel))
  return 'dense' if rank == 2 else f'conv{rank - 2}d'


def pair_layers(student: nn.Module, teacher: nn.Module, sample_x: Any, *,
                teacher_x: Any = None) -> dict[str, str]:
  """Pairs each student layer with a teacher layer (see the module docstring).

  Layers are kernel-holding modules in call order (:func:`layer_order`),
  grouped by kind (Dense kernels ``[in, out]``, 1-D convs ``[k, in, out]``,
  ...), and paired within a kind by :func:`uniform_selection`.

  Args:
    student: the student module.
    teacher: the teacher module.
    sample_x: a sample input of the student.
    teacher_x: a sample input of the teacher (default ``sample_x``).

  Returns:
    ``{student layer path: teacher layer path}``, in the student's call order.

  Raises:
    ValueError: if the student has a kind of layer that the teacher lacks.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import MLP
    >>> pair_layers(MLP(hidden=(4,), num_classes=3), MLP(hidden=(8, 8, 8), num_classes=3),
    ...             jnp.zeros((1, 5)))
    {'dense1': 'dense1', 'classifier': 'classifier'}
  """
  teacher_x = sample_x if teacher_x is None else teacher_x

  def grouped(model, x):
    order = layer_order(model, x)
    shapes = jax.eval_shape(lambda v: init_variables(model, jax.random.key(0), v), x)
    kernels = _kernels(shapes['params'])
    groups: dict[str, list[str]] = {}
    for path in order:
      groups.setdefault(_kind(kernels[path]), []).append(path)
    return order, groups

  s_order, s_groups = grouped(student, sample_x)
  _, t_groups = grouped(teacher, teacher_x)
  chosen = {}
  for kind, layers in s_groups.items():
    if kind not in t_groups:
      raise ValueError(
          f'The student has {kind} layers {layers} but the teacher has none (it has '
          f'{ {k: len(v) for k, v in t_groups.items()} }); pass explicit pairs.')
    t_layers = t_groups[kind]
    for s, t in zip(layers, uniform_selection(len(layers), len(t_layers))):
      chosen[s] = t_layers[t]
  return {s: chosen[s] for s in s_order}


def _identity_in(in_s: int, in_t: int, previous: Optional[tuple[int, int]], dtype):
  """The identity-like input map ``P`` (``[in_S, in_T]``).

  ``I[in_S, in_T]`` (keep the teacher's first ``in_S`` inputs), except for a
  flattened input: when ``in_S = L·C_S`` and ``in_T = L·C_T`` with ``(C_S,
  C_T)`` the previous pair's output widths and ``L > 1`` (a Dense head on a
  flattened ``[L, C]`` feature map), ``P = I_L ⊗ I[C_S, C_T]`` keeps the
  first channels at every position.
  """
  if previous is not None:
    c_s, c_t = previous
    if in_s % c_s == 0 and in_t % c_t == 0 and in_s // c_s == in_t // c_t > 1:
      return jnp.kron(jnp.eye(in_s // c_s, dtype=dtype), jnp.eye(c_s, c_t, dtype=dtype))
  return jnp.eye(in_s, in_t, dtype=dtype)


def _check_init(init: str) -> None:
  if init not in ('identity', 'random'):
    raise ValueError(f"`init` must be 'identity' or 'random', got {init!r}.")


@dataclasses.dataclass(frozen=True)
class WeightGenerator:
  """The parameter generator ``W_S = P·W_T·Q`` of weight distillation (static config).

  The generator's trainable parameters are a pytree
  ``{'P': {layer: [in_S, in_T]}, 'Q': {layer: [out_T, out_S]}, 'free': {leaf: array}}``
  keyed by student layer path; ``'free'`` holds the student leaves that are
  not generated (layers without a pair, learned biases, other parameters),
  trained directly in phase 1.

  Attributes:
    pairs: ``((student layer, teacher layer), ...)`` paths joined with ``'/'``.
    project_biases: student layers whose bias is ``b_T·Q``; the other
      biases are learned (``'free'``).

  References:
    Lin et al., "Weight Distillation: Transferring the Knowledge in Neural
    Network Parameters", ACL 2021, arXiv:2009.09152 (§3, the parameter
    generator).

  Examples:
    >>> import jax.numpy as jnp
    >>> gen = WeightGenerator(pairs=(('fc', 'fc'),), project_biases=('fc',))
    >>> teacher = {'fc': {'kernel': jnp.arange(6.0).reshape(2, 3), 'bias': jnp.ones(3)}}
    >>> student = {'fc': {'kernel': jnp.zeros((2, 2)), 'bias': jnp.zeros(2)}}
    >>> g = gen.init(student, teacher)          # identity-like P, Q: the leading slice
    >>> gen.generate(g, teacher)['fc']['kernel']
    Array([[0., 1.],
           [3., 4.]], dtype=float32)
  """

  pairs: tuple[tuple[str, str], ...]
  project_biases: tuple[str, ...] = ()

  def __post_init__(self):
    pairs = tuple((str(s), str(t)) for s, t in (
        self.pairs.items() if isinstance(self.pairs, Mapping) else self.pairs))
    students = [s for s, _ in pairs]
    if len(set(students)) != len(students):
      raise ValueError(f'`pairs` names a student layer twice: {students}.')
    unknown = set(self.project_biases) - set(students)
    if unknown:
      raise ValueError(f'`project_biases` names unpaired student layers {sorted(unknown)}.')
    object.__setattr__(self, 'pairs', pairs)
    object.__setattr__(self, 'project_biases', tuple(self.project_biases))

  # ------------------------------------------------------------- parameters

  def init(self, student_params: Mapping[str, Any], teacher_params: Mapping[str, Any], *,
           init: str = 'identity', rng: Optional[jax.Array] = None) -> dict[str, Any]:
    """Initial generator parameters.

    Args:
      student_params: the student's initial params (their shapes fix ``P`` and
        ``Q``; the non-generated leaves become the initial ``'free'`` values).
      teacher_params: the teacher's params.
      init: ``'identity'``: ``P = I[in_S, in_T]``, ``Q = I[out_T, out_S]``
        (the student starts as the teacher's leading slice; for a Dense
        layer on a flattened ``[L, C]`` map, detected from the previous
        pair's output widths, ``P = I_L ⊗ I[C_S, C_T]``, the leading channel
        slice at every position); ``'random'``:
        Gaussian entries of variance ``1/in_T`` (``P``) and ``1/out_T``
        (``Q``), so ``W_S`` keeps the scale of ``W_T``.
      rng: PRNG key, needed for ``init='random'``.

    Returns:
      ``{'P': ..., 'Q': ..., 'free': ...}``. A learned bias of a paired layer
      starts at ``b_T·Q`` (the projected value) when the teacher has a bias.

    Raises:
      ValueError: for a layer missing from either params, kernels of
        different rank or window, or ``init='random'`` without ``rng``.
    """
    _check_init(init)
    if init == 'random' and rng is None:
      raise ValueError("`init='random'` needs `rng`.")
    s_flat, t_flat = _flat(student_params), _flat(teacher_params)
    s_kernels, t_kernels = _kernels(student_params), _kernels(teacher_params)
    P, Q, generated = {}, {}, set()
    previous = None  # (out_S, out_T) of the previous pair, for flattened inputs
    for i, (s, t) in enumerate(self.pairs):
      if s not in s_kernels:
        raise ValueError(f'Student layer {s!r} has no kernel; layers: {sorted(s_kernels)}.')
      if t not in t_kernels:
        raise ValueError(f'Teacher layer {t!r} has no kernel; layers: {sorted(t_kernels)}.')
      ws, wt = s_kernels[s], t_kernels[t]
      if len(ws.shape) != len(wt.shape) or ws.shape[:-2] != wt.shape[:-2]:
        raise ValueError(
            f'Student layer {s!r} kernel {tuple(ws.shape)} and teacher layer {t!r} kernel '
            f'{tuple(wt.shape)} must agree except in their last two (in, out) axes.')
      (in_s, out_s), (in_t, out_t) = ws.shape[-2:], wt.shape[-2:]
      dtype = jnp.result_type(wt.dtype, jnp.float32)
      if init == 'identity':
        P[s], Q[s] = _identity_in(in_s, in_t, previous, dtype), jnp.eye(out_t, out_s, dtype=dtype)
      else:
        kp, kq = jax.random.split(jax.random.fold_in(rng, i))
        P[s] = jax.random.normal(kp, (in_s, in_t), dtype) / math.sqrt(in_t)
        Q[s] = jax.random.normal(kq, (out_t, out_s), dtype) / math.sqrt(out_t)
      generated.add(_leaf(s, 'kernel'))
      if s in self.project_biases:
        if _leaf(s, 'bias') not in s_flat or _leaf(t, 'bias') not in t_flat:
          raise ValueError(
              f'`project_biases` names {s!r}, but the student or teacher layer {t!r} has no bias.')
        generated.add(_leaf(s, 'bias'))
      previous = (out_s, out_t)
    free = {k: v for k, v in s_flat.items() if k not in generated}
    for s, t in self.pairs:  # learned biases start at the projection
      key, t_bias = _leaf(s, 'bias'), _leaf(t, 'bias')
      if key in free and t_bias in t_flat and free[key].shape == (Q[s].shape[1],):
        free[key] = (t_flat[t_bias] @ Q[s]).astype(free[key].dtype)
    return {'P': P, 'Q': Q, 'free': free}

  def generate(self, generator_params: Mapping[str, Any],
               teacher_params: Mapping[str, Any]) -> dict[str, Any]:
    """The student's params: ``W_S = P·W_T·Q`` per pair, ``b_S = b_T·Q``, plus the free leaves.

    Conv kernels ``[..., in, out]`` are mapped per window position:
    ``W_S[w] = P·W_T[w]·Q``.

    Args:
      generator_params: from :meth:`init` (trained or not).
      teacher_params: the teacher's params.

    Returns:
      A params pytree with the student's structure (nested dicts).
    """
    t_flat = _flat(teacher_params)
    t_kernels = _kernels(teacher_params)
    out = dict(generator_params['free'])
    for s, t in self.pairs:
      P, Q = generator_params['P'][s], generator_params['Q'][s]
      out[_leaf(s, 'kernel')] = jnp.einsum('ij,...jk,kl->...il', P, t_kernels[t], Q)
      if s in self.project_biases:
        out[_leaf(s, 'bias')] = t_flat[_leaf(t, 'bias')] @ Q
    return traverse_util.unflatten_dict(out, sep=_SEP)

  # ---------------------------------------------------------------- phase 1

  def forward(self, student: Any) -> ForwardFn:
    """The phase-1 forward function: generate the student's weights, then run it.

    Its ``variables`` are ``{'params': generator params, 'wd_teacher':
    teacher params, **student collections}``; only ``'params'`` (P, Q, free)
    is trained by the library's steps, the teacher's weights are a frozen
    collection. Returns the student's :class:`~kdjax.models.ModelOutput`.

    Args:
      student: the student's Linen module or forward function.

    Returns:
      A forward function (see :mod:`kdjax.models`).
    """
    student_fn = as_forward(student)

    def forward(variables, x, *, train: bool, rngs=None) -> ModelOutput:
      params = self.generate(variables['params'], variables[TEACHER_WEIGHTS])
      rest = {k: v for k, v in variables.items() if k not in ('params', TEACHER_WEIGHTS)}
      return student_fn({'params': params, **rest}, x, train=train, rngs=rngs)

    return forward

  def create_state(self, student: Any, student_variables: Mapping[str, Any],
                   teacher_params: Mapping[str, Any], tx: optax.GradientTransformation, *,
                   init: str = 'identity', rng: Optional[jax.Array] = None) -> TrainState:
    """The phase-1 :class:`~kdjax.state.TrainState`: the generator is what is trained.

    ``state.params`` are the generator's (P, Q, free). ``state.model_state``
    holds a copy of the teacher's weights under ``'wd_teacher'`` (never
    updated; a copy, so that a step donating the state never donates the
    teacher variables it is also given) and the student's other collections.
    ``state.apply_fn`` is :meth:`forward`. Train it with
    :func:`kdjax.steps.make_distill_step` (a KD objective and the teacher's
    forward), so the KD loss reaches P and Q through the generated weights.

    Args:
      student: the student module (or forward function).
      student_variables: the student's initial variables.
      teacher_params: the teacher's ``'params'``.
      tx: the optimizer of the generator.
      init: ``'identity'`` or ``'random'`` (see :meth:`init`).
      rng: PRNG key for ``init='random'``.

    Returns:
      A ``TrainState`` at step 0.
    """
    params = self.init(student_variables['params'], teacher_params, init=init, rng=rng)
    rest = {k: v for k, v in student_variables.items() if k != 'params'}
    # A copy: the same buffers are often also passed to the step as the KD teacher's
    # variables, and a step that donates the state must not donate those.
    teacher_copy = jax.tree.map(lambda a: jnp.array(a, copy=True), teacher_params)
    return TrainState.create(apply_fn=self.forward(student), tx=tx,
                             variables={'params': params, TEACHER_WEIGHTS: teacher_copy, **rest})

  def student_variables(self, state: Any) -> dict[str, Any]:
    """The generated student's variables from a phase-1 state (or its variables dict)."""
    variables = state.variables if isinstance(state, TrainState) else state
    rest = {k: v for k, v in variables.items() if k not in ('params', TEACHER_WEIGHTS)}
    return {'params': self.generate(variables['params'], variables[TEACHER_WEIGHTS]), **rest}

  # ---------------------------------------------------------------- phase 2

  def finetune_state(self, state: Any, student: Any,
                     tx: optax.GradientTransformation) -> TrainState:
    """The phase-2 state: a plain student ``TrainState`` starting at the generated weights.

    Args:
      state: the phase-1 state (or its variables dict).
      student: the student module (or forward function).
      tx: the fine-tuning optimizer (fresh state).

    Returns:
      ``TrainState.create(apply_fn=student, variables=student_variables(state), tx=tx)``;
      its params are exactly the generated ones.
    """
    return TrainState.create(apply_fn=student, variables=self.student_variables(state), tx=tx)


def weight_generator(student: nn.Module, teacher: nn.Module, sample_x: Any, *,
                     bias: str = 'project', pairs: Optional[Mapping[str, str]] = None,
                     teacher_x: Any = None) -> WeightGenerator:
  """Builds the :class:`WeightGenerator` for a student/teacher pair of Linen modules.

  Args:
    student: the student module.
    teacher: the teacher module.
    sample_x: a sample student input (array or ``jax.ShapeDtypeStruct``).
    bias: ``'project'``: a paired layer's bias is ``b_S = b_T·Q`` (when both
      layers have one); ``'learned'``: biases are free parameters, initialised
      at ``b_T·Q``.
    pairs: explicit ``{student layer: teacher layer}``; default
      :func:`pair_layers`.
    teacher_x: a sample teacher input (default ``sample_x``).

  Returns:
    The generator.

  Raises:
    ValueError: for an unknown ``bias`` or an impossible pairing.

  References:
    Lin et al., "Weight Distillation: Transferring the Knowledge in Neural
    Network Parameters", ACL 2021, arXiv:2009.09152.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import CNN1D
    >>> gen = weight_generator(CNN1D(channels=4), CNN1D(channels=16), jnp.zeros((1, 40)))
    >>> gen.pairs
    (('conv1', 'conv1'), ('conv2', 'conv2'), ('conv3', 'conv3'), ('classifier', 'classifier'))
  """
  if bias not in ('project', 'learned'):
    raise ValueError(f"`bias` must be 'project' or 'learned', got {bias!r}.")
  teacher_x = sample_x if teacher_x is None else teacher_x
  if pairs is None:
    pairs = pair_layers(student, teacher, sample_x, teacher_x=teacher_x)
  projected = ()
  if bias == 'project':
    s_shapes = jax.eval_shape(lambda v: init_variables(student, jax.random.key(0), v), sample_x)
    t_shapes = jax.eval_shape(lambda v: init_variables(teacher, jax.random.key(0), v), teacher_x)
    s_flat, t_flat = _flat(s_shapes['params']), _flat(t_shapes['params'])
    projected = tuple(s for s, t in pairs.items()
                      if _leaf(s, 'bias') in s_flat and _leaf(t, 'bias') in t_flat)
  return WeightGenerator(pairs=tuple(pairs.items()), project_biases=projected)
