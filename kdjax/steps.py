"""Train and eval steps: the one place where a loss meets gradients.

An objective is a tuple of :class:`Term` s, each a loss from ``kdjax.losses``
that names its inputs (the student's logits or a named feature, a teacher's
logits or feature, the labels), with a weight and an optional trainable
adapter for feature terms. :func:`make_distill_step` turns an objective and
the teachers' forward functions into a pure function::

    step(state, teacher_variables, batch, rng) -> (state, metrics)

that the caller jits (``jax.jit(step, donate_argnums=0)``), pmaps or shards.
Teachers run in eval mode and their outputs are held constant; only the
student's params and the adapters are differentiated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax import _evaluation
from kdjax import _update
from kdjax import losses
from kdjax._update import all_finite  # noqa: F401 (re-exported)
from kdjax._update import batch_mean
from kdjax._update import pmean_model_state  # noqa: F401 (re-exported)
from kdjax.losses import _checks
from kdjax.models._wrap import as_forward
from kdjax.models._wrap import ForwardFn
from kdjax.models._wrap import ModelOutput
from kdjax.state import TrainState


Weight = Union[float, Callable[[jax.Array], jax.Array]]
Teachers = Union[None, ForwardFn, nn.Module, Mapping[str, Union[ForwardFn, nn.Module]]]
DEFAULT_TEACHER = 'teacher'


@dataclasses.dataclass(frozen=True)
class Term:
  """One weighted term of an objective.

  The loss is called as ``loss(student_value[, teacher_value][, labels], **kwargs)``.

  Attributes:
    name: metric name, ``loss/<name>``; also the key of the adapter's params.
    loss: a function from ``kdjax.losses`` (or any with that calling form).
      Per-example outputs ``[B, ...]`` are averaged over valid examples; a
      scalar output is taken as a batch-level loss.
    weight: a float, or a schedule ``step -> weight`` (e.g. to stop the KD term
      after N steps).
    student: ``'logits'`` or the name of a student feature.
    teacher: ``'logits'``, a teacher feature name, or ``None`` for terms that
      take no teacher input (task cross-entropy).
    teacher_name: which teacher; ``None`` means the only one.
    labels: pass ``batch['label']`` after the tensors.
    adapter: optional Flax module applied to the student value (e.g. a
      ``nn.Dense`` or 1×1 ``nn.Conv`` matching the teacher's width).
    kwargs: keyword options for the loss.

  Examples:
    A Dark-Knowledge term between the student's and the teacher's logits, and a
    FitNets hint between named features through a trainable adapter:

    >>> import flax.linen as nn
    >>> from kdjax import losses
    >>> kd = Term('kd', losses.kl_distillation, 0.9, kwargs={'temperature': 4.0})
    >>> kd.student, kd.teacher
    ('logits', 'logits')
    >>> fitnet = Term('hint', losses.hint_l2, 0.5, student='stage2', teacher='stage2',
    ...               adapter=nn.Conv(64, (1, 1)))
    >>> fitnet.adapter.features
    64
  """
  name: str
  loss: Callable[..., jax.Array]
  weight: Weight = 1.0
  student: str = 'logits'
  teacher: Optional[str] = 'logits'
  teacher_name: Optional[str] = None
  labels: bool = False
  adapter: Optional[nn.Module] = None
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


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


def _weight(weight: Weight, step: jax.Array) -> jax.Array:
  return weight(step) if callable(weight) else jnp.asarray(weight, jnp.float32)


def make_objective(terms: Sequence[Term], teacher_names: Sequence[str] = (),
                   *, axis_name: Optional[str] = None):
  """Builds ``objective(student_out, teacher_outs, aux_params, batch, step) -> (loss, parts)``.

  ``parts`` maps each term's name to its (unweighted) value. With
  ``axis_name``, values are this shard's share of the global mean (see
  :func:`make_distill_step`). Validates the terms at build time.

  Raises:
    ValueError: for duplicate term names or a term whose teacher is ambiguous
      or unknown.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax.models import ModelOutput
    >>> objective = make_objective([task_ce(0.5), soft_kd(0.5, temperature=1.0)], ['teacher'])
    >>> out = ModelOutput(jnp.zeros((2, 3)), {}, {})
    >>> batch = {'label': jnp.array([0, 1])}
    >>> loss, parts = objective(out, {'teacher': out}, {}, batch, jnp.array(0))
    >>> round(float(loss), 4), {k: round(float(v), 4) for k, v in parts.items()}
    (0.5493, {'ce': 1.0986, 'kd': 0.0})
  """
  names = [t.name for t in terms]
  if len(set(names)) != len(names):
    raise ValueError(f'Term names must be unique, got {names}.')
  if not terms:
    raise ValueError('`terms` must contain at least one Term.')
  resolved = [_resolve_teacher(t, list(teacher_names)) for t in terms]

  def objective(student_out: ModelOutput, teacher_outs: Mapping[str, ModelOutput],
                aux_params: Mapping[str, Any], batch: Mapping[str, jax.Array], step: jax.Array):
    mask = batch.get('mask')
    total = jnp.zeros((), jnp.float32)
    parts = {}
    for term, teacher_name in zip(terms, resolved):
      s = _pick(student_out, term.student, 'The student')
      if term.adapter is not None:
        s = term.adapter.apply({'params': aux_params[term.name]}, s)
      args = [s]
      if teacher_name is not None:
        args.append(_pick(teacher_outs[teacher_name], term.teacher, f'Teacher {teacher_name!r}'))
      if term.labels:
        if 'label' not in batch:
          raise ValueError(
              f'Term {term.name!r} needs labels, but the batch has no "label" key '
              '(a transfer-set batch is unlabeled: drop the term).')
        args.append(batch['label'])
      value = batch_mean(term.loss(*args, **term.kwargs), mask, axis_name)
      parts[term.name] = value
      total = total + _weight(term.weight, step) * value
    return total, parts

  return objective


def init_adapters(terms: Sequence[Term], student_output: ModelOutput, rng: jax.Array) -> dict:
  """Initialises the adapters of ``terms`` on a sample student output.

  Args:
    terms: the objective.
    student_output: a forward pass of the student on a sample batch.
    rng: PRNG key.

  Returns:
    ``{term_name: adapter_params}``, to pass as ``TrainState.create(aux_params=...)``.
  """
  aux = {}
  for i, term in enumerate(terms):
    if term.adapter is not None:
      value = _pick(student_output, term.student, 'The student')
      aux[term.name] = term.adapter.init(jax.random.fold_in(rng, i), value)['params']
  return aux


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
      state (parameters, optimizer state and step) and report
      ``metrics['skipped'] = 1``.
    teacher_metrics: report each teacher's ``agreement/<name>`` and
      ``kl/<name>`` (two cheap reductions over the logits; turn off to save
      them for very many classes).

  Returns:
    ``step(state, teacher_variables, batch, rng) -> (state, metrics)`` where
    ``teacher_variables`` is one teacher's variables (single teacher), a dict
    of them by name, or ``None``; ``batch`` has ``'x'`` and optionally
    ``'label'`` and a boolean ``'mask'``; ``metrics`` is a flat dict of
    scalars: ``loss``, ``loss/<term>``, and with labels ``ce``,
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

  def step(state: TrainState, teacher_variables, batch, rng):
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
      loss, parts = objective(out, teacher_outs, trainable['aux'], clean, state.step)
      return loss, (out.model_state, parts, (out.logits, clean, label_metrics))

    new_state, info, metrics = _update.update(
        state, loss_fn, rng, axis_name=axis_name, skip_nonfinite=skip_nonfinite)
    _, (logits, clean, label_metrics) = info.aux
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
