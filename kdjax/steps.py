"""Train and eval steps: the one place where a loss meets gradients.

An objective is a tuple of :class:`Term` s, each a loss from ``kdjax.losses``
that names its inputs (the student's logits or a named feature, a teacher's
logits or feature, the labels), with a weight and an optional trainable
adapter, or a term module (heads, regressors, memory banks; see
``kdjax._terms``). Factories build the common terms: :func:`task_ce`,
:func:`soft_kd`, :func:`hint`, and the feature and relational methods
:func:`attention_transfer`, :func:`similarity_preserving`,
:func:`rkd_distance`, :func:`rkd_angle`, :func:`pkt`, :func:`crd`,
:func:`vid`, :func:`nst`, :func:`factor_transfer`, :func:`fsp`,
:func:`correlation_congruence` and :func:`triplet`, and the transformer
terms :func:`attention_distribution` and :func:`hidden_transfer`
(:func:`transformer_layer_terms` builds them per layer); :func:`init_terms`
creates their parameters and state. :func:`make_distill_step` turns an
objective and the teachers' forward functions into a pure function::

    step(state, teacher_variables, batch, rng) -> (state, metrics)

that the caller jits (``jax.jit(step, donate_argnums=0)``), pmaps or shards.
Teachers run in eval mode and their outputs are held constant; only the
student's params and the terms' params are differentiated, and the terms'
state (``TrainState.term_state``) is updated in the step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax import _evaluation
from kdjax import _update
from kdjax import losses
from kdjax._terms import attention_distribution  # noqa: F401 (re-exported)
from kdjax._terms import attention_transfer  # noqa: F401 (re-exported)
from kdjax._terms import AttentionMaps  # noqa: F401 (re-exported)
from kdjax._terms import ContrastiveMemory  # noqa: F401 (re-exported)
from kdjax._terms import correlation_congruence  # noqa: F401 (re-exported)
from kdjax._terms import crd  # noqa: F401 (re-exported)
from kdjax._terms import Embed  # noqa: F401 (re-exported)
from kdjax._terms import factor_transfer  # noqa: F401 (re-exported)
from kdjax._terms import FactorTransfer  # noqa: F401 (re-exported)
from kdjax._terms import fsp  # noqa: F401 (re-exported)
from kdjax._terms import hidden_transfer  # noqa: F401 (re-exported)
from kdjax._terms import HiddenProjection  # noqa: F401 (re-exported)
from kdjax._terms import nst  # noqa: F401 (re-exported)
from kdjax._terms import pkt  # noqa: F401 (re-exported)
from kdjax._terms import rkd_angle  # noqa: F401 (re-exported)
from kdjax._terms import rkd_distance  # noqa: F401 (re-exported)
from kdjax._terms import SAMPLE_RNG
from kdjax._terms import similarity_preserving  # noqa: F401 (re-exported)
from kdjax._terms import SpatialMaps  # noqa: F401 (re-exported)
from kdjax._terms import Term
from kdjax._terms import TERM_LOSSES
from kdjax._terms import TERM_STATE
from kdjax._terms import TermContext
from kdjax._terms import transformer_layer_terms  # noqa: F401 (re-exported)
from kdjax._terms import triplet  # noqa: F401 (re-exported)
from kdjax._terms import TripletMining  # noqa: F401 (re-exported)
from kdjax._terms import VariationalRegressor  # noqa: F401 (re-exported)
from kdjax._terms import vid  # noqa: F401 (re-exported)
from kdjax._terms import Weight
from kdjax._update import all_finite  # noqa: F401 (re-exported)
from kdjax._update import batch_mean
from kdjax._update import pmean_model_state  # noqa: F401 (re-exported)
from kdjax.losses import _checks
from kdjax.models._wrap import as_forward
from kdjax.models._wrap import ForwardFn
from kdjax.models._wrap import ModelOutput
from kdjax.state import select
from kdjax.state import TrainState


Teachers = Union[None, ForwardFn, nn.Module, Mapping[str, Union[ForwardFn, nn.Module]]]
DEFAULT_TEACHER = 'teacher'


def task_ce(weight: Weight = 1.0, *, label_smoothing: float = 0.0) -> Term:
  """The supervised cross-entropy term ``CE(y, s)``.

  Examples:
    >>> task_ce(0.1).name, task_ce().labels
    ('ce', True)
  """
  return Term('ce', losses.cross_entropy, weight, teacher=None, labels=True,
              kwargs={'label_smoothing': label_smoothing} if label_smoothing else {})


def soft_kd(weight: Weight = 1.0, *, temperature: float = 4.0,
            teacher_name: Optional[str] = None, name: str = 'kd') -> Term:
  """Hinton's soft-target term ``τ²·KL(p_T^τ ‖ p_S^τ)``.

  ``(task_ce(α), soft_kd(1 − α, temperature=τ))`` is the classic KD objective.

  Examples:
    >>> soft_kd(0.9, temperature=4.0).kwargs
    {'temperature': 4.0}
  """
  _checks.check_positive(temperature, 'temperature')
  return Term(name, losses.kl_distillation, weight, teacher_name=teacher_name,
              kwargs={'temperature': temperature})


def hard_kd(weight: Weight = 1.0, *, teacher_name: Optional[str] = None,
            name: str = 'hard_kd') -> Term:
  """The teacher's hard-label term ``CE(argmax_c t_c, s)`` (:func:`losses.hard_label_distillation`).

  Needs no labels, so it trains on an unlabeled transfer set like
  :func:`soft_kd`: the control that tells the teacher's soft targets from its
  labels.

  Examples:
    >>> hard_kd(0.5).name, hard_kd().labels
    ('hard_kd', False)
  """
  return Term(name, losses.hard_label_distillation, weight, teacher_name=teacher_name)


def hint(student_feature: str, teacher_feature: str, weight: Weight = 1.0, *,
         adapter: Optional[nn.Module] = None, teacher_name: Optional[str] = None,
         loss: Optional[Callable[..., jax.Array]] = None,
         name: Optional[str] = None, **kwargs) -> Term:
  """A feature term (FitNets hint by default) between named features.

  Args:
    student_feature: name of the student feature, e.g. ``'embedding'``.
    teacher_feature: name of the teacher feature.
    weight: term weight or schedule.
    adapter: trainable module mapping the student feature to the teacher's
      width, e.g. ``nn.Dense(teacher_dim)`` or ``nn.Conv(c, (1, 1))``.
    teacher_name: which teacher.
    loss: the feature loss (default ``kdjax.losses.hint_l2``).
    name: metric name; defaults to ``'hint/<student_feature>'``.
    **kwargs: options for the loss.

  Returns:
    A :class:`Term`.

  Examples:
    >>> hint('embedding', 'embedding').name
    'hint/embedding'
  """
  return Term(name or f'hint/{student_feature}', loss or losses.hint_l2, weight,
              student=student_feature, teacher=teacher_feature, teacher_name=teacher_name,
              adapter=adapter, kwargs=kwargs)


def _normalise_teachers(teachers: Teachers) -> tuple[dict[str, ForwardFn], bool]:
  """Returns ``({name: forward}, single)``; a lone teacher is named ``'teacher'``."""
  if teachers is None:
    return {}, False
  if isinstance(teachers, Mapping):
    return {name: as_forward(t) for name, t in teachers.items()}, False
  return {DEFAULT_TEACHER: as_forward(teachers)}, True


def _resolve_teacher(term: Term, names: Sequence[str]) -> Optional[str]:
  if term.teacher is None:
    return None
  if term.teacher_name is not None:
    if term.teacher_name not in names:
      raise ValueError(
          f'Term {term.name!r} names teacher {term.teacher_name!r}, but the teachers are '
          f'{list(names)}.')
    return term.teacher_name
  if len(names) != 1:
    raise ValueError(
        f'Term {term.name!r} takes a teacher input; with {len(names)} teachers set its '
        f'`teacher_name` to one of {list(names)}.')
  return names[0]


def _pick(output: ModelOutput, key: str, who: str) -> jax.Array:
  if key == 'logits':
    return output.logits
  if key not in output.features:
    raise ValueError(
        f'{who} has no feature {key!r}; available: {sorted(output.features)}. Models sow '
        "features into the 'intermediates' collection (see kdjax.models).")
  return output.features[key]


def _values(output: ModelOutput, names, who: str):
  """The named value, or a tuple of them for a tuple of names."""
  if isinstance(names, tuple):
    return tuple(_pick(output, n, who) for n in names)
  return _pick(output, names, who)


def _weight(weight: Weight, step: jax.Array) -> jax.Array:
  return weight(step) if callable(weight) else jnp.asarray(weight, jnp.float32)


def _context(batch: Mapping[str, Any], size: int, axis_name: Optional[str]) -> TermContext:
  mask = batch.get('mask')
  return TermContext(labels=batch.get('label'),
                     mask=jnp.ones((size,), bool) if mask is None else jnp.asarray(mask, bool),
                     ids=batch.get('id'), axis_name=axis_name)


def _leading(value) -> int:
  return jnp.shape(jax.tree.leaves(value)[0])[0]


def _sown_losses(collection: Mapping[str, Any]) -> dict[str, jax.Array]:
  """``{'a/b': value}`` from a ``'losses'`` collection of sown tuples."""
  out = {}
  for key, values in traverse_util.flatten_dict(dict(collection), sep='/').items():
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    out[key] = sum(values[1:], values[0])
  return out


def make_objective(terms: Sequence[Term], teacher_names: Sequence[str] = (),
                   *, axis_name: Optional[str] = None):
  """Builds ``objective(student_out, teacher_outs, aux_params, batch, step)``.

  The objective returns ``(loss, parts, term_state)``: ``parts`` maps each
  term's name to its (unweighted) value, and each loss a term module sows to
  ``'<term>/<name>'``; ``term_state`` is the updated ``{term_name: state}``.
  Two keyword arguments: the current ``term_state``
  (``TrainState.term_state``; default none) and ``rng``, the key of the term
  modules' ``'sample'`` stream. With
  ``axis_name``, values are this shard's share of the global mean (see
  :func:`make_distill_step`). Validates the terms at build time; a term
  module or loss that rejects its inputs at trace time raises a
  ``ValueError`` naming the term and its features.

  Raises:
    ValueError: for duplicate term names or a term whose teacher is ambiguous
      or unknown.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import ModelOutput
    >>> objective = make_objective([task_ce(0.5), soft_kd(0.5, temperature=1.0)], ['teacher'])
    >>> out = ModelOutput(jnp.zeros((2, 3)), {}, {})
    >>> batch = {'label': jnp.array([0, 1])}
    >>> loss, parts, state = objective(out, {'teacher': out}, {}, batch, jnp.array(0))
    >>> round(float(loss), 4), {k: round(float(v), 4) for k, v in parts.items()}, state
    (0.5493, {'ce': 1.0986, 'kd': 0.0}, {})
  """
  names = [t.name for t in terms]
  if len(set(names)) != len(names):
    raise ValueError(f'Term names must be unique, got {names}.')
  if not terms:
    raise ValueError('`terms` must contain at least one Term.')
  resolved = [_resolve_teacher(t, list(teacher_names)) for t in terms]

  def objective(student_out: ModelOutput, teacher_outs: Mapping[str, ModelOutput],
                aux_params: Mapping[str, Any], batch: Mapping[str, jax.Array], step: jax.Array,
                *, term_state: Optional[Mapping[str, Any]] = None,
                rng: Optional[jax.Array] = None):
    mask = batch.get('mask')
    term_state = dict(term_state or {})
    new_state = dict(term_state)
    total = jnp.zeros((), jnp.float32)
    parts = {}
    for i, (term, teacher_name) in enumerate(zip(terms, resolved)):
      s = _values(student_out, term.student, 'The student')
      t = None
      if teacher_name is not None:
        t = _values(teacher_outs[teacher_name], term.teacher, f'Teacher {teacher_name!r}')
      try:
        extras = {}
        if term.adapter is not None:
          s = term.adapter.apply({'params': aux_params[term.name]}, s)
        if term.module is not None:
          variables = {'params': aux_params.get(term.name, {})}
          if term.name in term_state:
            variables[TERM_STATE] = term_state[term.name]
          rngs = None if rng is None else {SAMPLE_RNG: jax.random.fold_in(rng, i)}
          stateful = term.name in term_state
          try:
            args, updates = term.module.apply(
                variables, s, t, _context(batch, _leading(s), axis_name), rngs=rngs,
                mutable=[TERM_STATE, TERM_LOSSES] if stateful else [TERM_LOSSES])
          except (flax.errors.ScopeCollectionNotFound, flax.errors.ScopeParamNotFoundError) as e:
            raise ValueError(
                "its module's parameters or state are missing from the train state "
                f'({type(e).__name__}): create the TrainState with '
                '`**kdjax.steps.init_terms(...)`') from e
          if stateful:
            new_state[term.name] = updates[TERM_STATE]
          extras = _sown_losses(updates.get(TERM_LOSSES, {}))
        else:
          args = [*(s if isinstance(s, tuple) else (s,))]
          if t is not None:
            args.extend(t if isinstance(t, tuple) else (t,))
          if term.labels:
            if 'label' not in batch:
              raise ValueError(
                  'it needs labels, but the batch has no "label" key (a transfer-set batch is '
                  'unlabeled: drop the term).')
            args.append(batch['label'])
        value = batch_mean(term.loss(*args, **term.kwargs), mask, axis_name)
      except ValueError as e:
        raise ValueError(
            f'Term {term.name!r} (student {term.student!r}, teacher {term.teacher!r}): '
            f'{e}') from e
      parts[term.name] = value
      for key, extra in extras.items():
        extra = batch_mean(extra, mask, axis_name)
        parts[f'{term.name}/{key}'] = extra
        value = value + extra
      total = total + _weight(term.weight, step) * value
    return total, parts, new_state

  return objective


def _teacher_output(term: Term, teacher_outputs) -> tuple[str, Optional[ModelOutput]]:
  """``(teacher name, its sample output)`` for ``term`` (``None`` without a teacher input)."""
  if term.teacher is None:
    return DEFAULT_TEACHER, None
  if teacher_outputs is None:
    raise ValueError(
        f'Term {term.name!r} has a module that takes a teacher input: pass a sample of the '
        'teacher output as `teacher_outputs`.')
  if isinstance(teacher_outputs, ModelOutput):
    return DEFAULT_TEACHER, teacher_outputs
  name = _resolve_teacher(term, list(teacher_outputs))
  return name, teacher_outputs[name]


@functools.partial(jax.jit, static_argnums=0)
def _init_module(module: nn.Module, rngs, student, teacher, context):
  """``module.init`` compiled once per module and shapes (not once per eager op)."""
  return module.init(rngs, student, teacher, context)


def init_terms(terms: Sequence[Term], student_output: ModelOutput, rng: jax.Array,
               teacher_outputs: Union[None, ModelOutput, Mapping[str, ModelOutput]] = None
               ) -> dict:
  """Initialises the adapters, term modules and term state of ``terms``.

  Args:
    terms: the objective.
    student_output: a forward pass of the student on a sample batch.
    rng: PRNG key.
    teacher_outputs: a forward pass of the teacher on a sample batch
      (``{name: output}`` for several teachers); needed when a term's module
      takes a teacher value (e.g. CRD's teacher head, VID's regressor width).

  Returns:
    ``{'aux_params': {term_name: params}, 'term_state': {term_name: state}}``,
    to pass as ``TrainState.create(..., **init_terms(...))``. Terms without
    parameters (or without state) have no entry.

  Raises:
    ValueError: for an unknown feature, or ``teacher_outputs`` missing or
      ambiguous for a term that needs it.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.models import ModelOutput
    >>> s = ModelOutput(jnp.zeros((2, 3)), {'embedding': jnp.ones((2, 4))}, {})
    >>> t = ModelOutput(jnp.zeros((2, 3)), {'embedding': jnp.ones((2, 6))}, {})
    >>> init = init_terms([crd(num_examples=10, embed_dim=8)], s, jax.random.key(0), t)
    >>> init['aux_params']['crd/embedding']['teacher_head']['kernel'].shape
    (6, 8)
    >>> init['term_state']['crd/embedding']['student_bank'].shape
    (10, 8)
  """
  aux, state = {}, {}
  for i, term in enumerate(terms):
    key = jax.random.fold_in(rng, i)
    if term.adapter is None and term.module is None:
      continue
    value = _values(student_output, term.student, 'The student')
    if term.adapter is not None:
      aux[term.name] = term.adapter.init(key, value)['params']
      continue
    t_name, t_out = _teacher_output(term, teacher_outputs)
    t = None if t_out is None else _values(t_out, term.teacher, f'Teacher {t_name!r}')
    size = _leading(value)
    context = TermContext(labels=jnp.zeros((size,), jnp.int32), mask=jnp.ones((size,), bool),
                          ids=jnp.arange(size, dtype=jnp.int32), axis_name=None)
    param_key, sample_key = jax.random.split(key)
    try:
      variables = _init_module(term.module, {'params': param_key, SAMPLE_RNG: sample_key},
                               value, t, context)
    except ValueError as e:
      raise ValueError(
          f'Term {term.name!r} (student {term.student!r}, teacher {term.teacher!r}): '
          f'{e}') from e
    if variables.get('params'):
      aux[term.name] = variables['params']
    if variables.get(TERM_STATE):
      state[term.name] = variables[TERM_STATE]
  return {'aux_params': aux, 'term_state': state}


def init_adapters(terms: Sequence[Term], student_output: ModelOutput, rng: jax.Array,
                  teacher_outputs: Union[None, ModelOutput, Mapping[str, ModelOutput]] = None
                  ) -> dict:
  """The trainable parameters of :func:`init_terms` only (``{term_name: params}``).

  For terms that keep state (e.g. :func:`crd`) use :func:`init_terms`, which
  also returns the state.

  Raises:
    ValueError: if a term keeps state.

  Examples:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> from kdjax.models import ModelOutput
    >>> s = ModelOutput(jnp.zeros((2, 3)), {'embedding': jnp.ones((2, 4))}, {})
    >>> aux = init_adapters([hint('embedding', 'embedding', adapter=nn.Dense(5))], s,
    ...                     jax.random.key(0))
    >>> aux['hint/embedding']['kernel'].shape
    (4, 5)
  """
  init = init_terms(terms, student_output, rng, teacher_outputs)
  if init['term_state']:
    raise ValueError(
        f'Terms {sorted(init["term_state"])} keep state: create the TrainState with '
        '`**kdjax.steps.init_terms(...)` (aux_params and term_state) instead.')
  return init['aux_params']


def make_distill_step(terms: Sequence[Term], teachers: Teachers = None, *,
                      axis_name: Optional[str] = None, skip_nonfinite: bool = True,
                      teacher_metrics: bool = True):
  """Builds the pure distillation step.

  Args:
    terms: the objective, e.g. ``(task_ce(0.1), soft_kd(0.9, temperature=4))``.
    teachers: ``None`` (plain supervised training), one teacher's forward
      function (or Linen module), or ``{name: forward}`` for several teachers.
    axis_name: the device axis for data parallelism under ``jax.pmap`` or
      ``jax.shard_map``; gradients and metrics are then exact global means
      (sums and counts are psum'd separately), and floating non-parameter
      state (BatchNorm statistics) is averaged over the axis so that the
      replicas stay identical. Leave ``None`` under ``jax.jit`` with sharded
      inputs.
    skip_nonfinite: if the loss or any gradient is non-finite, keep the old
      state (parameters, optimizer state, term state and step) and report
      ``metrics['skipped'] = 1``.
    teacher_metrics: report each teacher's ``agreement/<name>`` and
      ``kl/<name>`` (two cheap reductions over the logits; turn off to save
      them for very many classes).

  Returns:
    ``step(state, teacher_variables, batch, rng, *, ok=None) -> (state, metrics)``
    where ``teacher_variables`` is one teacher's variables (single teacher), a dict
    of them by name, or ``None``; ``ok`` an optional boolean scalar, False to
    keep the old state (``metrics['skipped'] = 1``, e.g. when a teacher
    output is missing; it shares the non-finite guard's ``select``);
    ``batch`` has ``'x'`` and optionally ``'label'``, a boolean ``'mask'``
    and ``'id'`` (example ids, for terms with a memory bank such as
    :func:`crd`); ``metrics`` is a flat dict of
    scalars: ``loss``, ``loss/<term>`` (and ``loss/<term>/<part>`` for the
    extra losses of a term module), and with labels ``ce``,
    ``accuracy``, ``invalid_labels`` and ``invalid_label``, per teacher
    ``agreement/<name>`` (top-1) and ``kl/<name>`` (τ=1), plus ``grad_norm``
    and ``skipped``.

    Labels outside ``[0, C)`` (``C`` the student's classes) cannot raise
    inside ``jit``: their rows are excluded from every mean, counted in
    ``invalid_labels`` (one offending value in ``invalid_label``), and
    :func:`kdjax.train.fit` stops with an error naming the step.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> from kdjax.state import TrainState
    >>> student = function_forward(lambda p, x: x @ p['w'])
    >>> teacher = function_forward(lambda p, x: 3 * x @ p['w'])
    >>> state = TrainState.create(apply_fn=student, variables={'params': {'w': jnp.zeros((4, 3))}},
    ...                           tx=optax.sgd(0.5))
    >>> step = jax.jit(make_distill_step([task_ce(0.5), soft_kd(0.5)], teacher))
    >>> batch = {'x': jnp.eye(4), 'label': jnp.array([0, 1, 2, 0])}
    >>> state, metrics = step(state, {'params': {'w': jnp.eye(4, 3)}}, batch, jax.random.key(0))
    >>> int(state.step), sorted(metrics)[:4]
    (1, ['accuracy', 'agreement/teacher', 'ce', 'grad_norm'])
  """
  teacher_fns, single = _normalise_teachers(teachers)
  objective = make_objective(terms, list(teacher_fns), axis_name=axis_name)

  def step(state: TrainState, teacher_variables, batch, rng, *, ok=None):
    if teacher_fns and teacher_variables is None:
      raise ValueError('`teacher_variables` is None, but the step was built with teachers.')
    tvars = {DEFAULT_TEACHER: teacher_variables} if single else (teacher_variables or {})
    x = batch['x']
    teacher_outs = {
        name: jax.lax.stop_gradient(fn(tvars[name], x, train=False))
        for name, fn in teacher_fns.items()}

    def loss_fn(trainable, key):
      out = state.apply_fn({'params': trainable['params'], **state.model_state}, x,
                           train=True, rngs={'dropout': key})
      clean, label_metrics = _update.clean_labels(batch, out.logits.shape[-1],
                                                  axis_name=axis_name)
      loss, parts, term_state = objective(
          out, teacher_outs, trainable['aux'], clean, state.step, term_state=state.term_state,
          rng=jax.random.fold_in(key, 1))
      return loss, (out.model_state, parts, (out.logits, clean, label_metrics, term_state))

    new_state, info, metrics = _update.update(
        state, loss_fn, rng, axis_name=axis_name, skip_nonfinite=skip_nonfinite, ok=ok)
    _, (logits, clean, label_metrics, term_state) = info.aux
    if term_state:  # e.g. CRD's memory banks; a skipped update keeps the old state
      new_state = new_state.replace(term_state=select(info.applied, term_state, state.term_state)
                                    if skip_nonfinite or ok is not None else term_state)
    metrics.update(label_metrics)
    metrics.update(_update.accuracy_metrics(logits, clean, axis_name=axis_name,
                                            cross_entropy=losses.cross_entropy))
    if teacher_metrics:
      metrics.update(_teacher_metrics(logits, teacher_outs, clean.get('mask'), axis_name))
    return new_state, metrics

  return step


def _teacher_metrics(logits, teacher_outs, mask, axis_name) -> dict:
  """Per teacher: top-1 ``agreement/<name>`` and ``kl/<name>`` (τ = 1)."""
  logits = jax.lax.stop_gradient(logits)
  pred = jnp.argmax(logits, axis=-1)
  metrics = {}
  for name, t_out in teacher_outs.items():
    metrics[f'agreement/{name}'] = _update.psum(batch_mean(
        (pred == jnp.argmax(t_out.logits, -1)).astype(jnp.float32), mask, axis_name), axis_name)
    metrics[f'kl/{name}'] = _update.psum(batch_mean(
        losses.kl_distillation(logits, t_out.logits), mask, axis_name), axis_name)
  return metrics


def make_train_step(*, label_smoothing: float = 0.0, axis_name: Optional[str] = None,
                    skip_nonfinite: bool = True):
  """Plain supervised training (a teacher, or a student from scratch).

  The same step as :func:`make_distill_step` with the task cross-entropy only
  and no teacher; call it as ``step(state, None, batch, rng)``.
  """
  return make_distill_step([task_ce(label_smoothing=label_smoothing)], None,
                           axis_name=axis_name, skip_nonfinite=skip_nonfinite)


def make_eval_step(apply_fn, *, axis_name: Optional[str] = None):
  """Builds ``eval_step(variables, batch) -> sums`` for exact evaluation.

  Returns sums, not means: ``{'correct', 'loss_sum', 'count'}`` over the valid
  rows of the batch (``batch['mask']`` drops padding), psum'd over
  ``axis_name`` if given. Accumulate them and divide once at the end
  (:func:`kdjax.train.evaluate` does).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import function_forward
    >>> eval_step = make_eval_step(function_forward(lambda p, x: x))
    >>> batch = {'x': jnp.eye(3), 'label': jnp.array([0, 2, 2]), 'mask': jnp.array([1, 1, 0], bool)}
    >>> {k: float(v) for k, v in eval_step({'params': {}}, batch).items()}
    {'correct': 1.0, 'loss_sum': 2.10..., 'count': 2.0}
  """
  forward = as_forward(apply_fn)

  def eval_step(variables, batch):
    logits = forward(variables, batch['x'], train=False).logits
    labels = batch['label']
    mask = batch.get('mask', jnp.ones(labels.shape, bool))
    sums = dict(_evaluation.classification_sums(logits, labels, mask),
                count=jnp.sum(mask).astype(jnp.float32))
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)

  return eval_step
