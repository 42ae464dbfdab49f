"""Progressive knowledge transfer (MobileBERT): one layer per stage, then logit KD.

Stage ``l = 1 .. L`` trains the student's block ``l`` on the transfer terms of
layer ``l`` (per-head attention KL and hidden-state MSE through a trained
projection, :func:`kdjax.steps.transformer_layer_terms`) with every other
parameter frozen: the layers below keep what their stages learned, the layers
above receive no gradient from layer ``l``'s losses anyway. The first stage
also trains the parameters below block 1 (the token and position embeddings),
which nothing else would. A final stage trains all parameters on a logit
objective (by default task CE plus soft-target KD).

Every stage is one :func:`kdjax.train.fit` run of
:func:`kdjax.steps.make_distill_step`; freezing is an optimizer mask
(:func:`freeze_except`: ``optax.multi_transform`` with ``optax.set_to_zero``
for the frozen leaves), so there is no second copy of the update loop, and a
frozen parameter's optimizer state is never allocated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import optax

from kdjax import steps
from kdjax import train
from kdjax.models import as_forward
from kdjax.state import TrainState


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def freeze_except(tx: optax.GradientTransformation,
                  trainable: Callable[[str], bool]) -> optax.GradientTransformation:
  """``tx`` on the leaves ``trainable(path)`` accepts, zero updates on the others.

  Paths are ``'/'``-joined keys of the optimizer's tree, which for a
  :class:`~kdjax.state.TrainState` is ``{'params': ..., 'aux': ...}``, e.g.
  ``'params/block2/attention/query/kernel'`` or
  ``'aux/hidden_mse/hidden2/projection/kernel'``.

  Args:
    tx: the optimizer of the trained leaves.
    trainable: ``path -> bool``.

  Returns:
    ``optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> tx = freeze_except(optax.sgd(1.0), lambda path: path.startswith('params/a'))
    >>> params = {'params': {'a': jnp.ones(2), 'b': jnp.ones(2)}, 'aux': {}}
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> updates['params']['a'].tolist(), updates['params']['b'].tolist()
    ([-1.0, -1.0], [0.0, 0.0])
  """

  def labels(tree):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: 'train' if trainable(_path_str(path)) else 'freeze', tree)

  return optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)


@dataclasses.dataclass
class ProgressiveResult:
  """What :func:`progressive_transfer` returns.

  Attributes:
    variables: the student's final variables (``{'params': ...}`` plus other
      collections).
    state: the final stage's train state.
    stages: one :class:`kdjax.train.FitResult` per stage (layer stages, then
      the final one).
    stage_names: ``'layer1'`` .. ``'layer{L}'`` and ``'final'``.
  """
  variables: Any
  state: Any
  stages: list
  stage_names: list


def _prefixes(names: Sequence[str]) -> tuple[str, ...]:
  return tuple(f'params/{n}/' for n in names) + tuple(f'params/{n}' for n in names)


def progressive_transfer(
    student: Any,
    variables: Any,
    teacher: Any,
    teacher_variables: Any,
    data: Any,
    *,
    num_layers: int,
    stage_steps: int,
    final_steps: int,
    optimizer: Callable[[int], optax.GradientTransformation],
    rng: jax.Array,
    sample_x: Any,
    final_terms: Optional[Sequence[steps.Term]] = None,
    attention_weight: float = 1.0,
    hidden_weight: float = 1.0,
    block: str = 'block{}',
    below: Sequence[str] = ('embed', 'pos_embed'),
    attention: str = 'attention{}',
    hidden: str = 'hidden{}',
    progress: bool = False,
    **fit_kwargs,
) -> ProgressiveResult:
  """MobileBERT's progressive knowledge transfer on :func:`kdjax.train.fit`.

  Stage ``l`` (``1 .. num_layers``) minimises
  ``attention_weight · KL_att(l) + hidden_weight · MSE(H^S_l W_l, H^T_l)``
  over block ``l``'s parameters (and, in stage 1, those named in ``below``)
  and the projection ``W_l``, everything else frozen with
  :func:`freeze_except`. The final stage trains all of the student's
  parameters on ``final_terms``. Teacher layer ``l`` is paired with student
  layer ``l``: the models have the same depth and heads (MobileBERT's design).

  Args:
    student: the student's Linen module or forward function; its parameters
      are named ``block.format(l)`` per layer (the zoo's
      :class:`~kdjax.models.Transformer`: ``'block1'`` ..).
    variables: the student's initial variables.
    teacher: the teacher's Linen module or forward function.
    teacher_variables: the trained teacher's variables.
    data: the training data of :func:`kdjax.train.fit` (a
      :class:`kdjax.data.DeviceData` or an iterator, reused across stages), or
      a callable ``stage_index -> data`` (0-based, the final stage last).
    num_layers: number of layer stages ``L``.
    stage_steps: updates per layer stage.
    final_steps: updates of the final stage.
    optimizer: ``num_steps -> optax`` transformation, called once per stage
      (e.g. ``lambda n: kdjax.runs.default_optimizer(1e-3, n)``).
    rng: PRNG key; stage ``i`` uses ``fold_in(rng, i)``.
    sample_x: an input batch, to initialise the projections.
    final_terms: the final objective; default
      ``(task_ce(0.5), soft_kd(0.5, temperature=4))``.
    attention_weight: weight of the attention KL of each layer stage.
    hidden_weight: weight of the hidden-state MSE of each layer stage.
    block: parameter-name pattern of a student layer.
    below: parameter names trained with the first layer (below block 1).
    attention: feature-name pattern of the attention probabilities.
    hidden: feature-name pattern of the hidden states.
    progress: show progress bars.
    **fit_kwargs: further options of :func:`kdjax.train.fit` (e.g.
      ``log_every``); no ``checkpointer`` (each stage would resume the others).

  Returns:
    A :class:`ProgressiveResult`.

  Raises:
    ValueError: for ``num_layers < 1``, negative step counts, a ``block``
      pattern that names no student parameter, or a ``checkpointer``.

  References:
    Sun, Yu, Song, Liu, Yang & Zhou, "MobileBERT: a Compact Task-Agnostic BERT
    for Resource-Limited Devices", ACL 2020, arXiv:2004.02984 (Sec. 3.5,
    progressive knowledge transfer).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax import models
    >>> from kdjax.schemes import progressive_transfer
    >>> teacher = models.Transformer(width=8, depth=2, heads=2, patch=4)
    >>> student = models.Transformer(width=4, depth=2, heads=2, patch=4)
    >>> x = jax.random.normal(jax.random.key(0), (8, 16))
    >>> batch = {'x': x, 'label': jnp.arange(8) % 10}
    >>> result = progressive_transfer(  # doctest: +SKIP
    ...     # (slow to compile here; tests/test_transformer_kd.py runs it)
    ...     student, models.init_variables(student, jax.random.key(1), x),
    ...     teacher, models.init_variables(teacher, jax.random.key(2), x), iter([batch] * 8),
    ...     num_layers=2, stage_steps=2, final_steps=2, optimizer=lambda n: optax.adam(1e-3),
    ...     rng=jax.random.key(3), sample_x=x, compiled=False)
    >>> result.stage_names, [int(s.state.step) for s in result.stages]  # doctest: +SKIP
    (['layer1', 'layer2', 'final'], [2, 2, 2])
  """
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
    raise ValueError(f'`num_layers` must be an int >= 1, got {num_layers!r}.')
  for value, arg in ((stage_steps, 'stage_steps'), (final_steps, 'final_steps')):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f'`{arg}` must be an int >= 0, got {value!r}.')
  if 'checkpointer' in fit_kwargs:
    raise ValueError('`checkpointer` is not supported: each stage is a separate fit.')
  forward = as_forward(student)
  teacher_fn = as_forward(teacher)
  names = set(variables['params'])
  for layer in range(1, num_layers + 1):
    if block.format(layer) not in names:
      raise ValueError(f'`block` pattern {block!r} names no student parameter for layer '
                       f'{layer} (top-level params: {sorted(names)}).')
  if final_terms is None:
    final_terms = (steps.task_ce(0.5), steps.soft_kd(0.5, temperature=4.0))
  student_sample = forward(variables, sample_x, train=False)
  teacher_sample = teacher_fn(teacher_variables, sample_x, train=False)

  def data_for(i):
    return data(i) if callable(data) else data

  current = dict(variables)
  results, stage_names, state = [], [], None
  plan = [(f'layer{l}', l) for l in range(1, num_layers + 1)] + [('final', None)]
  for i, (stage, layer) in enumerate(plan):
    if layer is None:
      terms, num_steps = tuple(final_terms), final_steps
      tx = optimizer(num_steps)
    else:
      terms = steps.transformer_layer_terms(
          [layer], attention_weight=attention_weight, hidden_weight=hidden_weight,
          attention=attention, hidden=hidden)
      num_steps = stage_steps
      prefixes = _prefixes([block.format(layer)] + (list(below) if layer == 1 else []))
      tx = freeze_except(optimizer(num_steps),
                         lambda path, p=prefixes: path.startswith(p) or path.startswith('aux/'))
    key = jax.random.fold_in(rng, i)
    init = steps.init_terms(terms, student_sample, jax.random.fold_in(key, 1), teacher_sample)
    state = TrainState.create(apply_fn=forward, variables=current, tx=tx, **init)
    step = jax.jit(steps.make_distill_step(terms, teacher_fn, teacher_metrics=False))
    fit = train.fit(state, step, data_for(i), num_steps=num_steps, rng=key,
                    teacher_variables=teacher_variables, progress=progress,
                    desc=f'progressive {stage}', **fit_kwargs)
    state = fit.state
    current = dict(state.variables)
    results.append(fit)
    stage_names.append(stage)
  return ProgressiveResult(variables=current, state=state, stages=results,
                           stage_names=stage_names)
