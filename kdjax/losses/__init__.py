"""Pure-function distillation losses.

Every loss is a plain function of arrays: arrays first, options keyword-only,
no ``stop_gradient`` (the train step decides what is held constant).
Per-example losses do not reduce over examples (``[..., C] -> [...]``, or
``[B, ...] -> [B]`` where documented); the batch-level losses (``dist_loss``,
``similarity_preserving``, ``rkd_distance``, ``rkd_angle``, ``pkt``,
``cc_loss``) couple the examples of one ``[B, ...]`` batch (axis 0, no further
leading axes) and return a scalar. Inputs in float16/bfloat16 are computed in
float32. Bad shapes, dtypes or concrete options raise a ``ValueError`` naming
the argument at trace time; traced options (e.g. schedules under ``jit``) are
not range-checked. See ``docs/losses.md`` for the full table.
"""

# Task-specific losses (detection, segmentation, transformers, metric learning).
from kdjax.losses._detection import bounded_regression
from kdjax.losses._detection import distribution_focal_loss
from kdjax.losses._detection import localization_distillation
from kdjax.losses._detection import softmax_focal_loss
from kdjax.losses._detection import weighted_soft_cross_entropy
# Feature, embedding and relational losses.
from kdjax.losses._features import attention_transfer
from kdjax.losses._features import factor_transfer
from kdjax.losses._features import fsp_loss
from kdjax.losses._features import fsp_matrix
from kdjax.losses._features import hint_l2
from kdjax.losses._features import nst_mmd
from kdjax.losses._features import vid
# Logit losses.
from kdjax.losses._logits import class_similarity_distillation
from kdjax.losses._logits import cross_entropy
from kdjax.losses._logits import decoupled_kd
from kdjax.losses._logits import dist_loss
from kdjax.losses._logits import hard_label_distillation
from kdjax.losses._logits import hinton_kd
from kdjax.losses._logits import kl_distillation
from kdjax.losses._logits import mutual_kl
from kdjax.losses._logits import teacher_label_smoothing
from kdjax.losses._logits import topk_distillation
from kdjax.losses._metric import triplet_distillation
# Online-distillation objectives (ONE, BYOT).
from kdjax.losses._online import byot_loss
from kdjax.losses._online import byot_loss_terms
from kdjax.losses._online import one_loss
from kdjax.losses._online import one_loss_terms
from kdjax.losses._relational import cc_loss
from kdjax.losses._relational import crd_nce
from kdjax.losses._relational import pkt
from kdjax.losses._relational import rkd_angle
from kdjax.losses._relational import rkd_distance
from kdjax.losses._relational import similarity_preserving
from kdjax.losses._segmentation import gradient_penalty
from kdjax.losses._segmentation import holistic_discriminator_loss
from kdjax.losses._segmentation import holistic_generator_loss
from kdjax.losses._segmentation import pairwise_similarity_kd
from kdjax.losses._segmentation import pixelwise_kd
from kdjax.losses._transformer import attention_kl
from kdjax.losses._transformer import hidden_state_mse
