"""Multi-stage distillation schemes: compositions of runs, steps and checkpoints.

No trainer classes: each scheme is a function that calls
:func:`kdjax.runs.train_and_evaluate` (or a step builder) in sequence, passing
checkpoint directories from one run to the next.
"""

from kdjax.schemes._chain import assistant_paths
from kdjax.schemes._chain import born_again
from kdjax.schemes._chain import ChainResult
from kdjax.schemes._chain import distill_chain
from kdjax.schemes._chain import kd_terms
from kdjax.schemes._chain import takd_sweep
from kdjax.schemes._diagnostics import evaluate_distillation
from kdjax.schemes._diagnostics import read_metrics
from kdjax.schemes._ensemble import ensemble_predict
from kdjax.schemes._ensemble import evaluate_ensemble
from kdjax.schemes._ensemble import load_members
from kdjax.schemes._netaug import augment_multipliers
from kdjax.schemes._netaug import make_netaug_step
from kdjax.schemes._progressive import freeze_except
from kdjax.schemes._progressive import progressive_transfer
from kdjax.schemes._progressive import ProgressiveResult
from kdjax.schemes._schedules import complement
from kdjax.schemes._schedules import constant
from kdjax.schemes._schedules import cosine_decay
from kdjax.schemes._schedules import kd_until
from kdjax.schemes._schedules import linear_decay
from kdjax.schemes._schedules import piecewise_constant
from kdjax.schemes._schedules import weight_at
from kdjax.schemes._weight_distillation import layer_order
from kdjax.schemes._weight_distillation import pair_layers
from kdjax.schemes._weight_distillation import TEACHER_WEIGHTS
from kdjax.schemes._weight_distillation import uniform_selection
from kdjax.schemes._weight_distillation import weight_generator
from kdjax.schemes._weight_distillation import WeightGenerator
