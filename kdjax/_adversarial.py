"""The two-player machinery shared by every adversarial step of kdjax.

The holistic segmentation term (:func:`kdjax.dense.make_segmentation_distill_step`)
and the GAN steps (:mod:`kdjax.gan`) train a player (the student segmenter,
or a generator) against a Wasserstein critic. This module owns what they
share, in one place:

* :class:`AdversarialState`: both players as one pytree (two
  :class:`~kdjax.state.TrainState` s with their own optimizers), checkpointed
  and resumed like a single state;
* :func:`critic_scores`: the critic's ``[B]`` scores of any input;
* :func:`critic_update`: ``critic_steps`` WGAN-GP critic updates (loss
  ``D(fake) − D(real) + λ·GP``) through the one update core
  :func:`kdjax._update.update`;
* :func:`player_keys` and :func:`join_metrics`: the independent randomness of
  the two players and the step's merged metrics.

A step first updates the critic against the player's output (held constant),
then the player against the updated critic.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from flax import struct
import jax
import jax.numpy as jnp

from kdjax import _update
from kdjax import losses
from kdjax._update import batch_mean
from kdjax.models._wrap import ForwardFn
from kdjax.state import TrainState


class AdversarialState(struct.PyTreeNode):
  """The two players of an adversarial step, as one pytree.

  Both are :class:`~kdjax.state.TrainState` s with their own optimizers: the
  student (a segmenter, or a generator; ``aux_params`` may hold adapters) and
  the critic (e.g. :class:`kdjax.dense.HolisticCritic` or
  :class:`kdjax.models.GanCritic`, ``apply_fn`` its forward function).
  Checkpoint and restore it like a single state
  (:class:`kdjax.checkpoint.Checkpointer`, :func:`kdjax.train.fit`).
  ``step``, ``apply_fn`` and ``variables`` are the student's, so loops and
  evaluation read it like a student state.

  Attributes:
    student: the student's (generator's) train state.
    critic: the critic's train state.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> make = lambda: TrainState.create(apply_fn=function_forward(lambda p, x: x),
    ...                                  variables={'params': {'w': jnp.zeros(2)}},
    ...                                  tx=optax.sgd(0.1))
    >>> state = AdversarialState(student=make(), critic=make())
    >>> int(state.step), len(jax.tree.leaves(state))
    (0, 4)
  """

  student: TrainState
  critic: TrainState

  @property
  def step(self) -> jax.Array:
    """The student's update count (one per two-player step)."""
    return self.student.step

  @property
  def apply_fn(self) -> ForwardFn:
    """The student's forward function."""
    return self.student.apply_fn

  @property
  def variables(self) -> dict:
    """The student's variables."""
    return self.student.variables


def check_state(state: Any, what: str) -> None:
  """Raises a ``ValueError`` unless ``state`` is an :class:`AdversarialState`.

  Examples:
    >>> check_state(None, 'The holistic term')
    Traceback (most recent call last):
    ...
    ValueError: The holistic term needs an AdversarialState(student, critic) as the state, ...
  """
  if not isinstance(state, AdversarialState):
    raise ValueError(f'{what} needs an AdversarialState(student, critic) as the state, got '
                     f'{type(state).__name__}.')


def player_keys(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(critic_rng, student_rng)``: two independent halves of the step's base key.

  Each player's update folds in its own step (:func:`kdjax._update.update`),
  so a resumed run repeats the draws of an uninterrupted one.
  """
  critic_rng, student_rng = jax.random.split(rng)
  return critic_rng, student_rng


def critic_scores(critic: TrainState, params: Any, inputs: Any) -> jax.Array:
  """The critic's ``[B]`` scores of ``inputs`` with parameters ``params`` (eval mode).

  ``inputs`` is whatever the critic's forward function takes (an array, or a
  dict such as ``{'image', 'label'}``); its logits are reshaped to ``[B]``.
  """
  out = critic.apply_fn({'params': params, **critic.model_state}, inputs, train=False)
  return out.logits.reshape(-1)


def critic_update(critic: TrainState, score_fn: Callable[[Any, jax.Array], jax.Array],
                  real: jax.Array, fake: jax.Array, rng: jax.Array, *,
                  mask: Optional[jax.Array] = None, gp_weight: float = 10.0,
                  critic_steps: int = 1, axis_name: Optional[str] = None,
                  skip_nonfinite: bool = True) -> tuple[TrainState, dict]:
  """``critic_steps`` WGAN-GP updates of ``critic`` on one batch.

  Each update minimises ``mean(D(fake) − D(real)) + gp_weight·mean(GP)``
  (:func:`kdjax.losses.holistic_discriminator_loss`,
  :func:`kdjax.losses.gradient_penalty` on interpolates of ``real`` and
  ``fake``) through :func:`kdjax._update.update`, which folds the critic's
  own step into ``rng`` (the penalty's interpolation weights).

  Args:
    critic: the critic's train state.
    score_fn: ``score_fn(params, v) -> [B]`` scores of the interpolable input
      ``v`` (close over any conditioning: the image, the labels).
    real: ``[B, ...]`` real inputs (the teacher's maps, data images).
    fake: ``[B, ...]`` fake inputs (the player's output, held constant).
    rng: the critic's base key.
    mask: optional ``[B]`` valid rows.
    gp_weight: penalty weight λ (Gulrajani et al.: 10).
    critic_steps: updates on this batch (WGAN-GP: 5).
    axis_name: device axis under ``pmap`` / ``shard_map``.
    skip_nonfinite: keep the old critic on a non-finite update.

  Returns:
    ``(critic, metrics)``, the metrics of the last update prefixed
    ``critic/``: ``critic/loss``, ``critic/loss/wasserstein``,
    ``critic/loss/gp``, ``critic/grad_norm``, ``critic/skipped``.

  References:
    Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training of
    Wasserstein GANs", NeurIPS 2017, arXiv:1704.00028.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> critic = TrainState.create(
    ...     apply_fn=function_forward(lambda p, x: x.reshape(x.shape[0], -1) @ p['w']),
    ...     variables={'params': {'w': jnp.zeros(2)}}, tx=optax.sgd(0.1))
    >>> score = lambda params, v: critic_scores(critic, params, v)
    >>> new, m = critic_update(critic, score, jnp.ones((4, 2)), jnp.zeros((4, 2)),
    ...                        jax.random.key(0), gp_weight=0.0, critic_steps=2)
    >>> int(new.step), float(m['critic/loss/wasserstein'])  # D(real) rises
    (2, -0.2...)
  """
  def loss_fn(trainable, key):
    score = lambda v: score_fn(trainable['params'], v)  # noqa: E731
    distance = losses.holistic_discriminator_loss(score(real), score(fake))
    gp = losses.gradient_penalty(score, real, fake, key=key)
    parts = {'wasserstein': batch_mean(distance, mask, axis_name),
             'gp': batch_mean(gp, mask, axis_name)}
    return parts['wasserstein'] + gp_weight * parts['gp'], ({}, parts, None)

  metrics = {}
  for _ in range(int(critic_steps)):
    critic, _, metrics = _update.update(critic, loss_fn, rng, axis_name=axis_name,
                                        skip_nonfinite=skip_nonfinite)
  return critic, {f'critic/{k}': v for k, v in metrics.items()}


def check_critic_options(gp_weight: float, critic_steps: int) -> None:
  """Raises a ``ValueError`` naming ``critic_steps`` or ``gp_weight`` when out of range."""
  if int(critic_steps) < 1:
    raise ValueError(f'`critic_steps` must be >= 1, got {critic_steps}.')
  if not gp_weight >= 0:
    raise ValueError(f'`gp_weight` must be >= 0, got {gp_weight}.')


def join_metrics(metrics: dict, critic_metrics: dict) -> dict:
  """The player's metrics with the critic's; ``skipped`` is 1 if either player skipped."""
  if critic_metrics:
    metrics.update(critic_metrics)
    metrics['skipped'] = jnp.maximum(metrics['skipped'], critic_metrics['critic/skipped'])
  return metrics
