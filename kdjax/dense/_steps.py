"""Train steps for dense prediction: detection and segmentation, supervised and distilled.

Every builder returns a pure step with the engine's signature::

    step(state, teacher_variables, batch, rng) -> (state, metrics)

built on the one update core :func:`kdjax._update.update` (per-step
randomness, gradients over the student's params and the adapters, exact
cross-device means, the finite-value guard), so :func:`kdjax.train.fit`
drives, checkpoints and resumes it like any classification step. Padded rows
(``batch['mask']`` False) are left out of every mean.

Detection (batches of :func:`kdjax.data.load` ``('digits_detection', ...)``:
``'x'``, ``'boxes'``, ``'labels'`` with -1 in padding slots): the targets come
from :func:`kdjax.dense.assign_targets` inside the step. The task loss is a
softmax focal loss (or cross-entropy) over all locations with the background
class, plus the distribution focal loss (GFL) on the edge bins of the
positives; there is no IoU loss. :func:`make_detection_distill_step` adds,
each with its own weight (0 leaves the term out of the computation):

* ``hint``: FitNets hint on the ``'backbone'`` feature through a trainable
  1x1 conv adapter held in ``state.aux_params['hint']`` (Chen et al. 2017);
* ``soft``: class-weighted soft cross-entropy on the class logits, weight 1.5
  on the background (Chen et al. 2017);
* ``bounded``: teacher-bounded L2 regression with margin on the decoded edge
  distances of the positives (Chen et al. 2017);
* ``ld``: localization distillation, τ = 10, on the positive (or
  teacher-selected) locations (Zheng et al. 2022).

Segmentation (``'x'``, ``'segmentation'`` ``[B, H, W]`` class map): the task
loss is the per-pixel cross-entropy; :func:`make_segmentation_distill_step`
adds pixel-wise KD, pair-wise KD on a pooled feature and the holistic term, a
Wasserstein critic (:class:`HolisticCritic`) on (probability map, image) pairs
with gradient penalty (Liu et al. 2019). The two players live in one pytree,
:class:`AdversarialState` ``(student, critic)``, two
:class:`~kdjax.state.TrainState` s with their own optimizers; one step first
updates the critic, then the student against the updated critic, both
through :func:`kdjax._update.update`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax import _adversarial
from kdjax import _update
from kdjax import losses
from kdjax._adversarial import AdversarialState
from kdjax._update import batch_mean
from kdjax.dense import _assign
from kdjax.dense import _boxes
from kdjax.losses import _checks
from kdjax.models._wrap import as_forward
from kdjax.models._wrap import ForwardFn
from kdjax.models._wrap import ModelOutput
from kdjax.state import TrainState


Weight = _update.Weight
HINT = 'hint'  # the adapter's key in ``TrainState.aux_params``


def _feature(out: ModelOutput, key: str, who: str) -> jax.Array:
  if key not in out.features:
    raise ValueError(f'{who} has no feature {key!r}; available: {sorted(out.features)}.')
  return out.features[key]


def _teacher_output(teacher: Optional[ForwardFn], teacher_variables, x) -> Optional[ModelOutput]:
  if teacher is None:
    return None
  if teacher_variables is None:
    raise ValueError('`teacher_variables` is None, but the step was built with a teacher.')
  return jax.lax.stop_gradient(teacher(teacher_variables, x, train=False))


def _row_mask(batch: Mapping[str, Any], batch_size: int) -> jax.Array:
  mask = batch.get('mask')
  return jnp.ones((batch_size,), bool) if mask is None else jnp.asarray(mask, bool)


def hint_adapter(teacher_channels: int) -> nn.Module:
  """The trainable 1x1 conv that maps the student's hint feature to the teacher's width.

  Examples:
    >>> hint_adapter(64).features, hint_adapter(64).kernel_size
    (64, (1, 1))
  """
  return nn.Conv(int(teacher_channels), (1, 1), name=None)


def init_hint_adapter(student_output: ModelOutput, teacher_output: ModelOutput, rng: jax.Array,
                      *, feature: str = 'backbone') -> dict:
  """Initialises the hint adapter on sample outputs: ``{'hint': params}`` for ``aux_params``.

  Args:
    student_output: a student forward pass (``ModelOutput``) on a sample batch.
    teacher_output: a teacher forward pass on the same batch.
    rng: PRNG key.
    feature: the hint feature of both models (``'backbone'`` for
      :class:`kdjax.models.DenseDetector`).

  Returns:
    ``{'hint': adapter_params}``, to pass as ``TrainState.create(aux_params=...)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from kdjax.models import ModelOutput
    >>> s = ModelOutput(None, {'backbone': jnp.zeros((1, 3, 3, 8))}, {})
    >>> t = ModelOutput(None, {'backbone': jnp.zeros((1, 3, 3, 16))}, {})
    >>> aux = init_hint_adapter(s, t, jax.random.key(0))
    >>> aux['hint']['kernel'].shape
    (1, 1, 8, 16)
  """
  s = _feature(student_output, feature, 'The student')
  t = _feature(teacher_output, feature, 'The teacher')
  return {HINT: hint_adapter(t.shape[-1]).init(rng, s)['params']}


# ------------------------------------------------------------------ detection

def detection_targets(batch: Mapping[str, Any], *, image_size: Sequence[int], stride: int,
                      num_bins: int, num_classes: int, center_radius: Optional[float] = None,
                      axis_name: Optional[str] = None):
  """Per-location targets of a detection batch, with rows of invalid labels masked out.

  Labels ``>= num_classes`` in real slots cannot raise inside ``jit``: those
  rows are left out of the mask (their objects are dropped from the
  assignment) and counted in ``metrics['invalid_labels']``, one offending value
  in ``metrics['invalid_label']``, so that :func:`kdjax.train.fit` stops with
  an error naming the step. Concrete bad labels raise at once.

  Args:
    batch: ``{'boxes': [B, M, 4], 'labels': [B, M], 'mask': [B] (optional)}``.
    image_size: ``(H, W)`` in pixels.
    stride: the head's stride.
    num_bins: bins of the edge distributions.
    num_classes: object classes (the head has ``num_classes + 1`` logits).
    center_radius: optional FCOS centre-sampling radius (strides).
    axis_name: device axis to sum the counts over.

  Returns:
    ``(targets, mask, metrics)``: a :class:`kdjax.dense.DenseTargets`, the
    ``[B]`` row mask, and ``{'invalid_labels', 'invalid_label'}``.

  Raises:
    ValueError: for concrete boxes or labels that are not valid (naming them).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> batch = {'boxes': jnp.array([[[0.0, 0.0, 0.5, 0.5]], [[0.0, 0.0, 0.5, 0.5]]]),
    ...          'labels': jnp.array([[3], [12]])}
    >>> run = jax.jit(lambda b: detection_targets(b, image_size=(8, 8), stride=4,
    ...                                           num_bins=4, num_classes=10))
    >>> targets, mask, metrics = run(batch)
    >>> mask.tolist(), int(metrics['invalid_labels']), int(metrics['invalid_label'])
    ([True, False], 1, 12)
    >>> targets.classes[:, 0, 0].tolist()  # the invalid object is dropped
    [4, 0]
  """
  boxes, labels = jnp.asarray(batch['boxes']), jnp.asarray(batch['labels'])
  mask = _row_mask(batch, labels.shape[0])
  bad = (labels >= num_classes) & mask[:, None]
  row_invalid = jnp.any(bad, axis=-1)
  mask = mask & ~row_invalid
  first = jnp.argmax(bad.reshape(-1))
  metrics = {
      'invalid_labels': _update.psum(jnp.sum(row_invalid).astype(jnp.int32), axis_name),
      'invalid_label': jnp.where(jnp.any(bad), labels.reshape(-1)[first], 0).astype(jnp.int32),
  }
  concrete = _boxes._is_concrete(labels, mask)  # pylint: disable=protected-access
  if not concrete:
    labels = jnp.where(bad | ~mask[:, None], -1, labels)
  targets = _assign.assign_targets(boxes, labels, image_size=image_size, stride=stride,
                                   num_bins=num_bins, num_classes=num_classes,
                                   center_radius=center_radius)
  return targets, mask, metrics


def detection_task_loss(class_logits: jax.Array, edge_logits: jax.Array, targets, *,
                        class_loss: str = 'focal', gamma: float = 2.0) -> tuple:
  """Per-image task losses of a dense detector: ``(class_loss [B], box_loss [B])``.

  * class: ``'focal'`` (default) sums the softmax focal loss
    (:func:`kdjax.losses.softmax_focal_loss`, ``γ``) over all locations and
    divides by the image's number of positive locations (at least 1), as
    RetinaNet and FCOS normalise; ``'ce'`` is the mean cross-entropy over the
    locations.
  * box: the distribution focal loss (GFL,
    :func:`kdjax.losses.distribution_focal_loss`), averaged over the 4 edges
    and the positive locations (0 for an image without any). No IoU loss.

  Args:
    class_logits: ``[B, H', W', C + 1]`` class logits, background first.
    edge_logits: ``[B, H', W', 4, n_bins]`` edge logits.
    targets: the :class:`kdjax.dense.DenseTargets` of the batch.
    class_loss: ``'focal'`` or ``'ce'``.
    gamma: the focal loss's ``γ``.

  Returns:
    ``(class_loss, box_loss)``, each ``[B]``.

  References:
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    Li et al., "Generalized Focal Loss", NeurIPS 2020, arXiv:2006.04388.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import dense
    >>> t = dense.assign_targets(jnp.array([[[0.0, 0.0, 0.5, 0.5]]]), jnp.array([[1]]),
    ...                          image_size=8, stride=4, num_bins=4)
    >>> cls, box = detection_task_loss(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2, 4, 4)), t,
    ...                                class_loss='ce')
    >>> cls, box  # log 3 per location; uniform bins: log 4 on every edge
    (Array([1.0986...], dtype=float32), Array([1.3862...], dtype=float32))
  """
  if class_loss not in ('focal', 'ce'):
    raise ValueError(f"`class_loss` must be 'focal' or 'ce', got {class_loss!r}.")
  positive = targets.positive
  if class_loss == 'focal':
    per_location = losses.softmax_focal_loss(class_logits, targets.classes, gamma=gamma)
    count = jnp.maximum(jnp.sum(positive, axis=(1, 2)), 1).astype(per_location.dtype)
    cls = jnp.sum(per_location, axis=(1, 2)) / count
  else:
    cls = jnp.mean(losses.cross_entropy(class_logits, targets.classes), axis=(1, 2))
  dfl = jnp.mean(losses.distribution_focal_loss(edge_logits, targets.distances), axis=-1)
  box = _checks.masked_mean(dfl, positive, axis=(1, 2))
  return cls, box


def make_detection_step(*, stride: int, class_loss: str = 'focal', gamma: float = 2.0,
                        box_weight: Weight = 1.0, center_radius: Optional[float] = None,
                        axis_name: Optional[str] = None, skip_nonfinite: bool = True):
  """The supervised dense-detection step (a teacher, or a student from scratch).

  The distillation step of :func:`make_detection_distill_step` with every
  distillation weight 0 and no teacher; call it as ``step(state, None, batch,
  rng)``.

  Examples:
    >>> step = make_detection_step(stride=4)
    >>> callable(step)
    True
  """
  return make_detection_distill_step(
      None, stride=stride, class_loss=class_loss, gamma=gamma, box_weight=box_weight,
      center_radius=center_radius, axis_name=axis_name, skip_nonfinite=skip_nonfinite)


def make_detection_distill_step(
    teacher: Union[None, ForwardFn, nn.Module], *, stride: int,
    hint_weight: Weight = 0.0, soft_weight: Weight = 0.0, bounded_weight: Weight = 0.0,
    ld_weight: Weight = 0.0, class_loss: str = 'focal', gamma: float = 2.0,
    box_weight: Weight = 1.0, hint_feature: str = 'backbone', background_weight: float = 1.5,
    soft_temperature: float = 1.0, margin: float = 0.0, ld_temperature: float = 10.0,
    ld_region: str = 'positive', center_radius: Optional[float] = None,
    axis_name: Optional[str] = None, skip_nonfinite: bool = True):
  """Builds the dense-detection distillation step (Chen et al. 2017 terms and LD).

  The student loss is ``cls + box_weight·box`` (:func:`detection_task_loss`)
  plus, per image and then averaged over the valid rows:

  * ``hint_weight · hint_l2(r(F_S), F_T)`` on ``hint_feature``, ``r`` the 1x1
    conv adapter in ``state.aux_params['hint']`` (:func:`init_hint_adapter`);
  * ``soft_weight ·`` mean over locations of
    :func:`kdjax.losses.weighted_soft_cross_entropy` on the class logits,
    weight ``background_weight`` (paper: 1.5) on the background, 1 elsewhere,
    temperature ``soft_temperature``;
  * ``bounded_weight ·`` mean over the positives of
    :func:`kdjax.losses.bounded_regression` with ``margin`` on the decoded
    edge distances (:func:`kdjax.dense.edge_expectation`, in strides) against
    the assigned targets;
  * ``ld_weight ·`` mean over the selected locations of
    :func:`kdjax.losses.localization_distillation` (``ld_temperature``,
    paper: 10). ``ld_region``: ``'positive'`` (assigned locations, the
    paper's main distillation region) or ``'teacher'`` (locations the teacher
    classifies as foreground).

  A weight of 0 (a constant) leaves the term out, so with every weight 0 the
  update is the supervised one of :func:`make_detection_step`.

  Args:
    teacher: the teacher's forward function or Linen module (``None`` for
      supervised training: every distillation weight must then be 0).
    stride: the heads' stride (``DenseDetector.stride``); teacher and
      student share the grid.
    hint_weight, soft_weight, bounded_weight, ld_weight: term weights (floats
      or schedules ``step -> weight``).
    class_loss, gamma, box_weight: the task loss (:func:`detection_task_loss`).
    hint_feature: feature name of the hint in both models.
    background_weight: the soft cross-entropy's weight on class 0.
    soft_temperature: temperature of the soft cross-entropy.
    margin: the bounded regression's margin ``m`` (squared strides).
    ld_temperature: LD temperature τ.
    ld_region: ``'positive'`` or ``'teacher'``.
    center_radius: FCOS centre sampling for the targets (strides).
    axis_name: device axis under ``pmap`` / ``shard_map``.
    skip_nonfinite: keep the old state on a non-finite update.

  Returns:
    ``step(state, teacher_variables, batch, rng) -> (state, metrics)``;
    ``state`` a :class:`~kdjax.state.TrainState` (with the adapter in
    ``aux_params['hint']`` when ``hint_weight`` is not 0), ``batch`` with
    ``'x'`` ``[B, H, W, C]``, ``'boxes'``, ``'labels'`` and optionally
    ``'mask'``. Metrics: ``loss``, ``loss/cls``, ``loss/box``, ``loss/<term>``
    of the enabled terms, ``positives`` (mean positive locations per image),
    ``invalid_labels``, ``invalid_label``, ``grad_norm``, ``skipped``.

  Raises:
    ValueError: for a negative weight, a distillation weight without a
      teacher, a bad ``ld_region``, or (at trace time) a grid that does not
      match ``stride`` or a missing hint adapter.

  References:
    Chen, Choi, Yu, Han & Chandraker, "Learning Efficient Object Detection
    Models with Knowledge Distillation", NeurIPS 2017.
    Zheng, Ye, Wang, Ren, Zuo, Hou & Cheng, "Localization Distillation for
    Dense Object Detection", CVPR 2022, arXiv:2102.12252.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax.models import function_forward
    >>> from kdjax.state import TrainState
    >>> def head(p, x):  # a toy stride-4 "detector": one linear map per 4x4 patch
    ...   f = x.reshape(x.shape[0], 2, 4, 2, 4).transpose(0, 1, 3, 2, 4).reshape(-1, 2, 2, 16)
    ...   return f @ p['cls'], {'box_logits': (f @ p['box']).reshape(-1, 2, 2, 4, 4),
    ...                         'backbone': f}
    >>> student = function_forward(head)
    >>> params = {'cls': jnp.zeros((16, 3)), 'box': jnp.zeros((16, 16))}
    >>> state = TrainState.create(apply_fn=student, variables={'params': params},
    ...                           tx=optax.sgd(0.1))
    >>> step = jax.jit(make_detection_distill_step(student, stride=4, soft_weight=1.0,
    ...                                            ld_weight=1.0))
    >>> batch = {'x': jnp.ones((2, 8, 8, 1)), 'boxes': jnp.array([[[0.0, 0.0, 0.5, 0.5]]] * 2),
    ...          'labels': jnp.array([[1], [-1]])}
    >>> state, metrics = step(state, {'params': params}, batch, jax.random.key(0))
    >>> sorted(k for k in metrics if k.startswith('loss/'))
    ['loss/box', 'loss/cls', 'loss/ld', 'loss/soft']
  """
  weights = {'hint': hint_weight, 'soft': soft_weight, 'bounded': bounded_weight,
             'ld': ld_weight}
  enabled = {k: _update.term_enabled(w, f'{k}_weight') for k, w in weights.items()}
  _update.term_enabled(box_weight, 'box_weight')
  if ld_region not in ('positive', 'teacher'):
    raise ValueError(f"`ld_region` must be 'positive' or 'teacher', got {ld_region!r}.")
  if class_loss not in ('focal', 'ce'):
    raise ValueError(f"`class_loss` must be 'focal' or 'ce', got {class_loss!r}.")
  if teacher is None and any(enabled.values()):
    raise ValueError(f'Distillation weights {[k for k, v in enabled.items() if v]} need a '
                     '`teacher`.')
  teacher_fn = as_forward(teacher) if teacher is not None and any(enabled.values()) else None
  stride = int(stride)

  def step(state: TrainState, teacher_variables, batch, rng):
    x = batch['x']
    t_out = _teacher_output(teacher_fn, teacher_variables, x)
    image_size = tuple(x.shape[1:3])
    if enabled['hint'] and HINT not in state.aux_params:
      raise ValueError("The hint term needs its adapter in `state.aux_params['hint']` "
                       '(see kdjax.dense.init_hint_adapter).')

    def loss_fn(trainable, key):
      out = state.apply_fn({'params': trainable['params'], **state.model_state}, x,
                           train=True, rngs={'dropout': key})
      logits, edges = out.logits, _feature(out, 'box_logits', 'The student')
      grid = _boxes.grid_shape(image_size, stride)
      if logits.shape[1:3] != grid:
        raise ValueError(f'The class logits have grid {logits.shape[1:3]}, but images of '
                         f'{image_size} at stride {stride} give {grid}.')
      targets, mask, label_metrics = detection_targets(
          batch, image_size=image_size, stride=stride, num_bins=edges.shape[-1],
          num_classes=logits.shape[-1] - 1, center_radius=center_radius, axis_name=axis_name)
      mean = lambda v: batch_mean(v, mask, axis_name)  # noqa: E731
      cls, box = detection_task_loss(logits, edges, targets, class_loss=class_loss, gamma=gamma)
      parts = {'cls': mean(cls), 'box': mean(box)}
      total = parts['cls'] + _update.term_weight(box_weight, state.step) * parts['box']
      positive = targets.positive
      if enabled['hint']:
        s = hint_adapter(_feature(t_out, hint_feature, 'The teacher').shape[-1]).apply(
            {'params': trainable['aux'][HINT]}, _feature(out, hint_feature, 'The student'))
        parts['hint'] = mean(losses.hint_l2(s, t_out.features[hint_feature]))
      if enabled['soft']:
        w = jnp.ones((logits.shape[-1],), jnp.float32).at[0].set(background_weight)
        soft = losses.weighted_soft_cross_entropy(logits, t_out.logits, class_weights=w,
                                                  temperature=soft_temperature)
        parts['soft'] = mean(jnp.mean(soft, axis=(1, 2)))
      t_edges = None if t_out is None else _feature(t_out, 'box_logits', 'The teacher')
      if enabled['bounded']:
        reg = losses.bounded_regression(_boxes.edge_expectation(edges),
                                        _boxes.edge_expectation(t_edges), targets.distances,
                                        margin=margin)
        parts['bounded'] = mean(_checks.masked_mean(reg, positive, axis=(1, 2)))
      if enabled['ld']:
        region = positive if ld_region == 'positive' else jnp.argmax(t_out.logits, -1) > 0
        ld = losses.localization_distillation(edges, t_edges, temperature=ld_temperature,
                                              where=region)
        parts['ld'] = mean(_checks.masked_mean(ld, region, axis=(1, 2)))
      for name in ('hint', 'soft', 'bounded', 'ld'):
        if enabled[name]:
          total = total + _update.term_weight(weights[name], state.step) * parts[name]
      positives = mean(jnp.sum(positive, axis=(1, 2)).astype(jnp.float32))
      return total, (out.model_state, parts, (label_metrics, positives))

    new_state, info, metrics = _update.update(state, loss_fn, rng, axis_name=axis_name,
                                              skip_nonfinite=skip_nonfinite)
    _, (label_metrics, positives) = info.aux
    metrics.update(label_metrics)
    metrics['positives'] = _update.psum(positives, axis_name)
    return new_state, metrics

  return step


# --------------------------------------------------------------- segmentation

class HolisticCritic(nn.Module):
  """A small Wasserstein critic of (segmentation map, image) pairs (Liu et al. 2019).

  Input: the class-probability map concatenated with the image along the
  channels, ``[B, H, W, C + C_img]`` (:func:`critic_input`). Strided 3x3
  convs with leaky ReLU (slope 0.2), global average pooling and a linear
  score. No normalisation layer, so that each example's score depends on that
  example only (the gradient penalty needs it).

  Attributes:
    widths: channels of the strided convs.

  References:
    Liu, Chen, Liu, Qin, Luo & Wang, "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019, arXiv:1903.04197.
    Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> critic = HolisticCritic(widths=(4,))
    >>> v = jax.eval_shape(critic.init, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
    >>> jax.eval_shape(critic.apply, v, jnp.zeros((2, 8, 8, 3))).shape
    (2,)
  """

  widths: Sequence[int] = (16, 32)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout or normalisation
    for i, width in enumerate(self.widths, start=1):
      x = nn.Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name=f'conv{i}')(x)
      x = nn.leaky_relu(x, 0.2)
    return nn.Dense(1, name='score')(jnp.mean(x, axis=(1, 2)))[:, 0]


def critic_input(logits: jax.Array, images: jax.Array) -> jax.Array:
  """The holistic critic's input: ``concat(softmax(logits), images)`` on the channels.

  Examples:
    >>> import jax.numpy as jnp
    >>> critic_input(jnp.zeros((1, 2, 2, 3)), jnp.ones((1, 2, 2, 1)))[0, 0, 0]
    Array([0.3333..., 0.3333..., 0.3333..., 1.    ], dtype=float32)
  """
  return _concat(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1), images)


def _concat(probs, images):
  return jnp.concatenate([probs, jnp.asarray(images, probs.dtype)], axis=-1)


def segmentation_labels(batch: Mapping[str, Any], num_classes: int, *,
                        axis_name: Optional[str] = None) -> tuple[dict, dict]:
  """``{'label': batch['segmentation'], 'mask'}`` with rows of out-of-range pixels masked out.

  See :func:`kdjax._update.clean_labels`: values outside ``[0, num_classes)``
  raise when concrete; under ``jit`` their rows are left out and counted.

  Examples:
    >>> import jax.numpy as jnp
    >>> clean, m = segmentation_labels({'segmentation': jnp.zeros((2, 3, 3), jnp.uint8)}, 11)
    >>> clean['label'].shape, clean['mask'].tolist(), int(m['invalid_labels'])
    ((2, 3, 3), [True, True], 0)
  """
  labels = jnp.asarray(batch['segmentation']).astype(jnp.int32)
  rows = {'label': labels, 'mask': _row_mask(batch, labels.shape[0])}
  return _update.clean_labels(rows, num_classes, axis_name=axis_name)


def make_segmentation_step(*, axis_name: Optional[str] = None, skip_nonfinite: bool = True):
  """The supervised segmentation step: per-pixel cross-entropy, averaged per image.

  :func:`make_segmentation_distill_step` with every distillation weight 0 and
  no teacher; call it as ``step(state, None, batch, rng)`` with a
  :class:`~kdjax.state.TrainState`.

  Examples:
    >>> callable(make_segmentation_step())
    True
  """
  return make_segmentation_distill_step(None, axis_name=axis_name,
                                        skip_nonfinite=skip_nonfinite)


def make_segmentation_distill_step(
    teacher: Union[None, ForwardFn, nn.Module], *, pixel_weight: Weight = 0.0,
    pair_weight: Weight = 0.0, holistic_weight: Weight = 0.0, ce_weight: Weight = 1.0,
    temperature: float = 1.0, pair_feature: str = 'bottleneck',
    pair_pool_size: Union[None, int, Sequence[int]] = None, gp_weight: float = 10.0,
    critic_steps: int = 1, axis_name: Optional[str] = None, skip_nonfinite: bool = True):
  """Builds the structured-KD segmentation step (Liu et al. 2019), two players in one step.

  Student loss, per image then averaged over the valid rows:
  ``ce_weight·CE + pixel_weight·pixelwise_kd + pair_weight·pairwise_kd +
  holistic_weight·(−D(Q_S | I))`` with

  * pixel-wise KD (:func:`kdjax.losses.pixelwise_kd`, ``temperature``) on the
    logits;
  * pair-wise KD (:func:`kdjax.losses.pairwise_similarity_kd`) on the
    ``pair_feature`` maps of student and teacher (``'bottleneck'`` or
    ``'features'`` of :class:`kdjax.models.UNet`), pooled with
    ``pair_pool_size`` windows;
  * the holistic term: the critic ``D`` (``state.critic``, e.g.
    :class:`HolisticCritic`) scores :func:`critic_input` pairs (softmax map,
    image).

  With ``holistic_weight`` not 0 the state is an :class:`AdversarialState`,
  and one step runs ``critic_steps`` critic updates on the batch (each through
  :func:`kdjax._update.update` on ``state.critic``: loss ``D(Q_S) − D(Q_T) +
  gp_weight·GP``, the student's map held constant, WGAN-GP with λ =
  ``gp_weight``), then one student update against the updated critic. Their
  randomness (dropout, the penalty's interpolation) comes from two
  independent halves of ``rng`` folded with each player's own step, so a
  resumed run repeats the draws of an uninterrupted one. With
  ``holistic_weight`` 0 the state may be a plain
  :class:`~kdjax.state.TrainState` (or an :class:`AdversarialState`, whose
  critic is then left as it is), and every weight 0 is the supervised step.

  Args:
    teacher: the teacher's forward function or Linen module (``None``: every
      distillation weight must be 0).
    pixel_weight, pair_weight, holistic_weight: term weights (0 leaves a
      term out; floats or schedules ``step -> weight``).
    ce_weight: weight of the task cross-entropy.
    temperature: pixel-wise KD temperature (paper: 1).
    pair_feature: the feature of both models for pair-wise KD.
    pair_pool_size: pooling window ``β`` of pair-wise KD (``None``: every
      position is a node).
    gp_weight: gradient-penalty weight λ (Gulrajani et al.: 10).
    critic_steps: critic updates per step (WGAN-GP uses 5; 1 by default).
    axis_name: device axis under ``pmap`` / ``shard_map``.
    skip_nonfinite: keep a player's old state on its non-finite update.

  Returns:
    ``step(state, teacher_variables, batch, rng) -> (state, metrics)`` with
    ``batch`` holding ``'x'`` ``[B, H, W, C_img]``, ``'segmentation'`` ``[B,
    H, W]`` and optionally ``'mask'``. Metrics: ``loss``, ``loss/ce``,
    ``loss/<term>`` (``pixel``, ``pair``, ``holistic``), ``accuracy``
    (pixel accuracy), ``ce``, ``invalid_labels``, ``invalid_label``,
    ``grad_norm``, ``skipped`` (either player skipped), and for the critic
    (of its last update) ``critic/loss``, ``critic/loss/wasserstein``
    (``D(Q_S) − D(Q_T)``), ``critic/loss/gp``, ``critic/grad_norm`` and
    ``critic/skipped``.

  Raises:
    ValueError: for a negative weight, a distillation weight without a
      teacher, ``critic_steps < 1``, or (at trace time) a holistic term with a
      state that is not an :class:`AdversarialState`.

  References:
    Liu, Chen, Liu, Qin, Luo & Wang, "Structured Knowledge Distillation for
    Semantic Segmentation", CVPR 2019, arXiv:1903.04197.
    Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training of
    Wasserstein GANs", NeurIPS 2017, arXiv:1704.00028.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from kdjax import models
    >>> from kdjax.models import function_forward
    >>> from kdjax.state import TrainState
    >>> seg = function_forward(lambda p, x: (x * p['w'], {'bottleneck': x * p['w']}))
    >>> student = TrainState.create(apply_fn=seg, variables={'params': {'w': jnp.ones(3)}},
    ...                             tx=optax.sgd(0.1))
    >>> critic = HolisticCritic(widths=(2,))
    >>> x = jnp.ones((2, 4, 4, 3))
    >>> critic_vars = jax.jit(critic.init)(jax.random.key(0), critic_input(x, x))
    >>> state = AdversarialState(student, TrainState.create(
    ...     apply_fn=critic, variables=critic_vars, tx=optax.adam(1e-3)))
    >>> step = jax.jit(make_segmentation_distill_step(
    ...     seg, pixel_weight=1.0, pair_weight=1.0, holistic_weight=0.1))
    >>> batch = {'x': x, 'segmentation': jnp.zeros((2, 4, 4), jnp.uint8)}
    >>> state, metrics = step(state, {'params': {'w': 2 * jnp.ones(3)}}, batch,
    ...                       jax.random.key(1))
    >>> int(state.student.step), int(state.critic.step), 'critic/loss/gp' in metrics
    (1, 1, True)
  """
  weights = {'pixel': pixel_weight, 'pair': pair_weight, 'holistic': holistic_weight}
  enabled = {k: _update.term_enabled(w, f'{k}_weight') for k, w in weights.items()}
  _update.term_enabled(ce_weight, 'ce_weight')
  _adversarial.check_critic_options(gp_weight, critic_steps)
  if teacher is None and any(enabled.values()):
    raise ValueError(f'Distillation weights {[k for k, v in enabled.items() if v]} need a '
                     '`teacher`.')
  teacher_fn = as_forward(teacher) if teacher is not None and any(enabled.values()) else None

  def critic_scores(critic: TrainState, params, probs, images):
    return _adversarial.critic_scores(critic, params, _concat(probs, images))

  def step(state, teacher_variables, batch, rng):
    adversarial = isinstance(state, AdversarialState)
    if enabled['holistic']:
      _adversarial.check_state(state, 'The holistic term')
    student = state.student if adversarial else state
    x = batch['x']
    t_out = _teacher_output(teacher_fn, teacher_variables, x)
    critic_rng, student_rng = _adversarial.player_keys(rng)
    critic, critic_metrics = (state.critic if adversarial else None), {}

    def forward(params, key):
      return student.apply_fn({'params': params, **student.model_state}, x, train=True,
                              rngs={'dropout': key})

    if enabled['holistic']:
      key = jax.random.fold_in(student_rng, student.step)  # the student update's own key
      fake = jax.nn.softmax(jax.lax.stop_gradient(forward(student.params, key).logits), -1)
      real = jax.nn.softmax(t_out.logits.astype(jnp.float32), -1)
      fake = fake.astype(jnp.float32)
      clean, _ = segmentation_labels(batch, fake.shape[-1], axis_name=axis_name)
      score = lambda params, maps: critic_scores(critic, params, maps, x)  # noqa: E731
      critic, critic_metrics = _adversarial.critic_update(
          critic, score, real, fake, critic_rng, mask=clean['mask'], gp_weight=gp_weight,
          critic_steps=critic_steps, axis_name=axis_name, skip_nonfinite=skip_nonfinite)

    def loss_fn(trainable, key):
      out = forward(trainable['params'], key)
      logits = out.logits
      clean, label_metrics = segmentation_labels(batch, logits.shape[-1], axis_name=axis_name)
      mean = lambda v: batch_mean(v, clean['mask'], axis_name)  # noqa: E731
      parts = {'ce': mean(losses.cross_entropy(logits, clean['label']))}
      total = _update.term_weight(ce_weight, student.step) * parts['ce']
      if enabled['pixel']:
        parts['pixel'] = mean(losses.pixelwise_kd(logits, t_out.logits, temperature=temperature))
      if enabled['pair']:
        parts['pair'] = mean(losses.pairwise_similarity_kd(
            _feature(out, pair_feature, 'The student'),
            _feature(t_out, pair_feature, 'The teacher'), pool_size=pair_pool_size))
      if enabled['holistic']:
        probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
        scores = critic_scores(critic, jax.lax.stop_gradient(critic.params), probs, x)
        parts['holistic'] = mean(losses.holistic_generator_loss(scores))
      for name in ('pixel', 'pair', 'holistic'):
        if enabled[name]:
          total = total + _update.term_weight(weights[name], student.step) * parts[name]
      return total, (out.model_state, parts, (logits, clean, label_metrics))

    new_student, info, metrics = _update.update(student, loss_fn, student_rng,
                                                axis_name=axis_name,
                                                skip_nonfinite=skip_nonfinite)
    _, (logits, clean, label_metrics) = info.aux
    metrics.update(label_metrics)
    metrics.update(_update.accuracy_metrics(logits, clean, axis_name=axis_name,
                                            cross_entropy=losses.cross_entropy))
    metrics = _adversarial.join_metrics(metrics, critic_metrics)
    if adversarial:
      return AdversarialState(student=new_student, critic=critic), metrics
    return new_student, metrics

  return step
