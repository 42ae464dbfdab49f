"""NetAug, network augmentation: train a tiny model as a sub-network of wider ones.

The augmented model is the base model with every hidden layer widened; it
shares the base's weights: each layer's parameters are allocated once at the
widest size, and a narrower model uses the leading slice (``kernel[..., :in,
:out]``, ``bias[:out]``). The base is the slice at multiplier 1, an augmented
model ``[W_base, W_aug]`` the slice at a larger multiplier. Training minimises

    L_aug = L(W_base) + α · L([W_base, W_aug])

with one augmented width sampled per step; only the base is exported, so
inference costs nothing extra.

The models (:class:`kdjax.models.NetAugMLP`, :class:`kdjax.models.NetAugCNN1D`,
built from :class:`kdjax.models.SlicedDense` / :class:`kdjax.models.SlicedConv`)
live in :mod:`kdjax.models`; this module has the training parts.

* :func:`make_netaug_step`: the train step (``TrainState`` compatible); the
  width is sampled inside the jitted step (``lax.switch``) or, with
  ``sampling='host'``, on the host with one compiled step per width (much
  faster for convolutions on XLA:CPU).
* :func:`augment_multipliers`: the augmented widths to sample from.

Example::

  model = models.NetAugMLP(hidden=(16,), max_multiplier=3.0)   # base width 16
  variables = models.init_variables(model, jax.random.key(0), x[:1])
  state = TrainState.create(apply_fn=model, variables=variables, tx=optax.adam(1e-3))
  step = jax.jit(make_netaug_step(model, augment_multipliers(3.0, 2)), donate_argnums=0)
  state, metrics = step(state, None, {'x': x, 'label': y}, jax.random.key(1))
  base, base_variables = model.export_base(state.variables)   # a plain MLP(hidden=(16,))

References:
  Cai, Gan, Lin & Han, "Network Augmentation for Tiny Deep Learning", ICLR 2022,
  arXiv:2110.08890.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from kdjax import _update
from kdjax import losses
from kdjax._update import batch_mean
from kdjax.models._netaug import NetAugModel
from kdjax.models._wrap import linen_forward
from kdjax.state import TrainState


Weight = Union[float, Callable[[jax.Array], jax.Array]]


def augment_multipliers(factor: float = 3.0, diversity: int = 2) -> tuple[float, ...]:
  """Candidate augmented widths: ``diversity`` multipliers evenly spaced in ``(1, factor]``.

  Our reading of the paper's augmentation factor ``r`` (the widest augmented
  model is ``r×`` the base) and diversity factor ``s`` (how many augmented
  widths are sampled from): ``1 + (r − 1)·i/s`` for ``i = 1..s``.

  Args:
    factor: the augmentation factor ``r > 1``.
    diversity: the diversity factor ``s >= 1``.

  Returns:
    The multipliers, ascending; the last is ``factor``.

  Raises:
    ValueError: for ``factor <= 1`` or ``diversity < 1``.

  References:
    Cai et al., "Network Augmentation for Tiny Deep Learning", ICLR 2022,
    arXiv:2110.08890 (§3.2).

  Examples:
    >>> augment_multipliers(3.0, 2), augment_multipliers(4.0, 3)
    ((2.0, 3.0), (2.0, 3.0, 4.0))
  """
  if not factor > 1.0:
    raise ValueError(f'`factor` must be > 1, got {factor}.')
  if isinstance(diversity, bool) or not isinstance(diversity, int) or diversity < 1:
    raise ValueError(f'`diversity` must be an int >= 1, got {diversity!r}.')
  return tuple(1.0 + (factor - 1.0) * i / diversity for i in range(1, diversity + 1))


# ------------------------------------------------------------------------ step

def make_netaug_step(model: NetAugModel, multipliers: Sequence[float], *,
                     alpha: Weight = 1.0, label_smoothing: float = 0.0,
                     sampling: str = 'switch', skip_nonfinite: bool = True,
                     donate: bool = False, axis_name: Optional[str] = None):
  """Builds the NetAug train step ``L(W_base) + α·L([W_base, W_aug])``.

  ``L`` is the cross-entropy on the labels. Each step samples one augmented
  multiplier uniformly from ``multipliers``: the index is
  ``jax.random.randint`` on a key split from ``fold_in(rng, state.step)``, so
  it is a function of ``(rng, step)`` and resumed runs repeat it exactly. Two
  ways to run the sampled width (the same index for the same inputs):

  * ``sampling='switch'`` (default): sampled **inside** the step, which runs
    ``jax.lax.switch`` over one forward per (static) width. The step is pure
    (jit, pmap or shard_map it); one compilation covers every width and only
    the sampled branch runs (under ``vmap`` every branch would). On XLA:CPU,
    convolutions inside a conditional branch are very slow (measured on this
    2-core CPU for a base-64-channel CNN1D with widths ×2, ×3: 260 ms per
    step with ``'switch'``, 10 ms with ``'host'``), so prefer ``'host'`` for
    CNNs on CPU.
  * ``sampling='host'``: the index is computed by a tiny jitted function and
    read on the host, then one of ``len(multipliers)`` jitted steps (one per
    width, compiled on first use) runs. The returned callable is already
    jitted: do not wrap it in ``jax.jit``. Reading the index synchronises
    with the device once per step.

  The base and the augmented forward share the parameters, so the gradient
  of the sum reaches the base slice from both terms and the augmented part
  from the second only. The step has the signature of
  :func:`kdjax.steps.make_distill_step` (the teacher argument is unused;
  pass ``None``), so :func:`kdjax.train.fit` drives it. Create the state with
  ``apply_fn=model`` at ``multiplier=1`` (the base) so that evaluation
  (:func:`kdjax.steps.make_eval_step` on ``state.apply_fn``) measures the
  base model. The models here have no BatchNorm; other collections, if any,
  are taken from the base pass.

  Args:
    model: a width-parametrised module with a ``multiplier`` attribute whose
      variables do not depend on it (:class:`NetAugMLP`, :class:`NetAugCNN1D`).
    multipliers: augmented widths to sample from, each ``> 1`` and at most
      ``model.max_multiplier`` (e.g. :func:`augment_multipliers`).
    alpha: weight α of the augmented loss (paper: 1), or a schedule
      ``step -> α``.
    label_smoothing: label smoothing of both cross-entropies.
    sampling: ``'switch'`` or ``'host'`` (see above).
    skip_nonfinite: keep the old state when the loss or a gradient is
      non-finite and report ``skipped = 1``.
    donate: with ``sampling='host'``, donate the state's buffers to the
      per-width steps (the caller must not reuse the input state).
    axis_name: the data-parallel device axis under ``jax.pmap`` /
      ``jax.shard_map`` (exact global means, summed gradients); every device
      samples the same width, since the key depends on ``(rng, step)`` only.

  Returns:
    ``step(state, teacher_variables, batch, rng) -> (state, metrics)``;
    ``batch`` has ``'x'``, ``'label'`` and optionally a boolean ``'mask'``.
    ``metrics`` is a flat dict: ``loss`` (the total), ``loss/base``,
    ``loss/aug``, ``ce`` and ``accuracy`` (base), ``accuracy/aug``,
    ``multiplier`` (the sampled one), ``grad_norm``, ``skipped``.

  Raises:
    ValueError: for an empty ``multipliers``, one outside
      ``(1, max_multiplier]``, or an unknown ``sampling``.

  References:
    Cai et al., "Network Augmentation for Tiny Deep Learning", ICLR 2022,
    arXiv:2110.08890 (Eq. 1).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax.models import init_variables, NetAugMLP
    >>> model = NetAugMLP(hidden=(4,), num_classes=3, max_multiplier=2.0)
    >>> x, y = jnp.ones((6, 5)), jnp.array([0, 1, 2, 0, 1, 2])
    >>> state = TrainState.create(apply_fn=model, tx=optax.sgd(0.1),
    ...                           variables=init_variables(model, jax.random.key(0), x))
    >>> step = jax.jit(make_netaug_step(model, [1.5, 2.0]))
    >>> state, metrics = step(state, None, {'x': x, 'label': y}, jax.random.key(1))
    >>> int(state.step), float(metrics['multiplier']) in (1.5, 2.0)
    (1, True)
  """
  multipliers = tuple(float(m) for m in multipliers)
  if not multipliers:
    raise ValueError('`multipliers` must name at least one augmented width.')
  for m in multipliers:
    if not 1.0 < m <= model.max_multiplier:
      raise ValueError(
          f'`multipliers` must be in (1, max_multiplier={model.max_multiplier}], got {m}.')
  if sampling not in ('switch', 'host'):
    raise ValueError(f"`sampling` must be 'switch' or 'host', got {sampling!r}.")
  base_fn = linen_forward(model.clone(multiplier=1.0, parent=None))
  aug_fns = [linen_forward(model.clone(multiplier=m, parent=None)) for m in multipliers]

  def ce(logits, batch):
    per_example = losses.cross_entropy(logits, batch['label'], label_smoothing=label_smoothing)
    return batch_mean(per_example, batch['mask'], axis_name)

  def split(key):
    pick_rng, dropout_rng = jax.random.split(key)
    return jax.random.randint(pick_rng, (), 0, len(multipliers)), dropout_rng

  def aug_branch(fn, x, batch, dropout_rng):
    def run(variables):
      logits = fn(variables, x, train=True, rngs={'dropout': dropout_rng}).logits
      return ce(logits, batch), logits
    return run

  def update(state: TrainState, batch, rng, index=None):
    """One update; ``index=None`` switches on the sampled index, an int fixes the width."""
    x = batch['x']
    weight = alpha(state.step) if callable(alpha) else jnp.asarray(alpha, jnp.float32)

    def loss_fn(trainable, key):
      sampled, dropout_rng = split(key)
      variables = {'params': trainable['params'], **state.model_state}
      out = base_fn(variables, x, train=True, rngs={'dropout': dropout_rng})
      clean, label_metrics = _update.clean_labels(batch, out.logits.shape[-1],
                                                  axis_name=axis_name)
      branches = [aug_branch(fn, x, clean, dropout_rng) for fn in aug_fns]
      loss_base = ce(out.logits, clean)
      if index is None:
        loss_aug, aug_logits = jax.lax.switch(sampled, branches, variables)
      else:
        loss_aug, aug_logits = branches[index](variables)
      total = loss_base + weight * loss_aug
      return total, (out.model_state, {'base': loss_base, 'aug': loss_aug},
                     (out.logits, aug_logits, sampled, clean, label_metrics))

    new_state, info, metrics = _update.update(
        state, loss_fn, rng, axis_name=axis_name, skip_nonfinite=skip_nonfinite)
    _, (base_logits, aug_logits, sampled, clean, label_metrics) = info.aux
    metrics.update(label_metrics)
    metrics.update(_update.accuracy_metrics(base_logits, clean, axis_name=axis_name,
                                            cross_entropy=losses.cross_entropy))
    metrics['accuracy/aug'] = _update.accuracy_metrics(
        aug_logits, clean, axis_name=axis_name)['accuracy']
    metrics['multiplier'] = (jnp.asarray(multipliers, jnp.float32)[sampled] if index is None
                             else jnp.asarray(multipliers[index], jnp.float32))
    return new_state, metrics

  if sampling == 'switch':
    def step(state: TrainState, teacher_variables, batch, rng):
      del teacher_variables  # NetAug has no teacher.
      return update(state, batch, rng)

    return step

  pick = jax.jit(lambda rng, step: split(jax.random.fold_in(rng, step))[0])
  donate_argnums = (0,) if donate else ()
  fixed = [jax.jit(functools.partial(update, index=i), donate_argnums=donate_argnums)
           for i in range(len(multipliers))]

  def host_step(state: TrainState, teacher_variables, batch, rng):
    del teacher_variables  # NetAug has no teacher.
    return fixed[int(pick(rng, state.step))](state, batch, rng)

  host_step.traceable = False  # kdjax.train.fit runs it one Python call per step
  return host_step
