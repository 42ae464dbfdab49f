"""Pure-function distillation losses.

Every loss is a plain function of arrays: arrays first, options keyword-only,
no reduction over examples (per-example losses map ``[..., C] -> [...]``;
batch-level losses are marked as such), no ``stop_gradient`` (the train step
decides what is held constant). Inputs in float16/bfloat16 are computed in
float32. Bad shapes, dtypes or options raise a ``ValueError`` naming the
argument at trace time. See ``docs/losses.md`` for the full table.
"""

# Logit losses.
from kdjax.losses._logits import cross_entropy
from kdjax.losses._logits import hinton_kd
from kdjax.losses._logits import kl_distillation
# [logits: more names here]

# Feature, embedding and relational losses.
# [features: names here]

# Task-specific losses (detection, segmentation, transformers, metric learning).
# [tasks: names here]
