"""kdjax: functional knowledge distillation for JAX and Flax.

The functional core is three modules: :mod:`kdjax.losses` (pure loss
functions), :mod:`kdjax.state` (the student's train state) and
:mod:`kdjax.steps` (jit-able train/eval steps built from loss terms).
Around it: :mod:`kdjax.models` (Flax zoo and the model protocol),
:mod:`kdjax.checkpoint` (orbax), :mod:`kdjax.train` (the fit loop),
:mod:`kdjax.cohort` (K peers in one vmapped step), :mod:`kdjax.gan` (GAN
feature KD: conditional WGAN-GP, student generators, Fréchet distance),
:mod:`kdjax.online` (ONE, BYOT) and :mod:`kdjax.parallel` (pmap, meshes,
multi-host). Import
:mod:`kdjax.data` (TFDS + grain), :mod:`kdjax.runs` (one run, one call),
:mod:`kdjax.cache` (teacher-output caches) and :mod:`kdjax.schemes` (TAKD,
BAN, ESKD, NetAug, weight distillation) explicitly: they load TFDS.
"""

from kdjax import checkpoint
from kdjax import cohort
from kdjax import gan
from kdjax import losses
from kdjax import models
from kdjax import online
from kdjax import parallel
from kdjax import state
from kdjax import steps
from kdjax import train
from kdjax.checkpoint import Checkpointer
from kdjax.checkpoint import load_variables
from kdjax.state import TrainState
from kdjax.steps import hint
from kdjax.steps import init_terms
from kdjax.steps import make_distill_step
from kdjax.steps import make_eval_step
from kdjax.steps import make_train_step
from kdjax.steps import soft_kd
from kdjax.steps import task_ce
from kdjax.steps import Term


__version__ = '0.1.0'
