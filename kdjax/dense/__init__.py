"""Dense-prediction utilities for detectors and segmenters.

Boxes are normalised ``[ymin, xmin, ymax, xmax]``; an image holds ``M``
padded object slots (``labels`` -1 for padding). A single-level dense head
predicts, on a stride-``s`` grid, ``num_classes + 1`` class logits
(background first) and four box-edge distributions (left, top, right,
bottom; GFL). :func:`assign_targets` turns ground truth into per-location
targets (FCOS), :func:`decode_boxes` and :func:`detect` turn head outputs
into boxes and a fixed number of detections (jit-compatible :func:`nms`),
:func:`coco_map` scores them with pycocotools, and :func:`confusion_matrix`
with :func:`segmentation_metrics` score segmentations.

The train steps (:func:`make_detection_step`, :func:`make_detection_distill_step`,
:func:`make_segmentation_step`, :func:`make_segmentation_distill_step`) have
the engine's ``step(state, teacher_variables, batch, rng)`` signature; the
holistic (adversarial) segmentation step carries the student and its critic
in one :class:`AdversarialState`.
"""

# Target assignment.
from kdjax.dense._assign import assign_targets
from kdjax.dense._assign import DenseTargets
# Boxes.
from kdjax.dense._boxes import box_area
from kdjax.dense._boxes import box_iou
from kdjax.dense._boxes import check_boxes
from kdjax.dense._boxes import decode_boxes
from kdjax.dense._boxes import distances_to_boxes
from kdjax.dense._boxes import edge_expectation
from kdjax.dense._boxes import grid_shape
from kdjax.dense._boxes import location_centers
# Metrics.
from kdjax.dense._metrics import coco_map
from kdjax.dense._metrics import confusion_matrix
from kdjax.dense._metrics import segmentation_metrics
# Suppression and post-processing.
from kdjax.dense._nms import detect
from kdjax.dense._nms import Detections
from kdjax.dense._nms import nms
# Train steps.
from kdjax.dense._steps import AdversarialState
from kdjax.dense._steps import critic_input
from kdjax.dense._steps import detection_targets
from kdjax.dense._steps import detection_task_loss
from kdjax.dense._steps import HINT
from kdjax.dense._steps import hint_adapter
from kdjax.dense._steps import HolisticCritic
from kdjax.dense._steps import init_hint_adapter
from kdjax.dense._steps import make_detection_distill_step
from kdjax.dense._steps import make_detection_step
from kdjax.dense._steps import make_segmentation_distill_step
from kdjax.dense._steps import make_segmentation_step
from kdjax.dense._steps import segmentation_labels
