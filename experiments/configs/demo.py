"""The `make demo` configuration: Hinton KD on the embedded MNIST-1D.

Stages: a 1D-CNN teacher, an MLP student from scratch, the same student with
KD on the labeled set, and with KD on an unlabeled transfer set of generated
MNIST-1D inputs (Hinton's original setup); then the two controls of that
last run, on the same inputs for the same steps: their true labels, and the
teacher's hard labels. Runs in a few minutes on 2 CPU cores.

The demo is one seed of the transfer experiment (``experiments/configs/transfer.py``),
which repeats it over many seeds: the models, steps, KD weights and the
teacher's recipe are that experiment's, and every student's learning rate and
the transfer temperature are its choices on a separate validation set, read
from its committed results (``experiments/results/transfer/``), never tuned
on test. ``--config experiments/configs/demo.py:long`` trains longer, with
more transfer data; ``:quick`` is a smoke run.
"""

import os

import ml_collections

from experiments import common
from experiments import transfer


TRANSFER_RESULTS = os.path.join(os.path.dirname(__file__), os.pardir, 'results', 'transfer')
# The demo's stage that trains each method of the transfer experiment.
STAGE_METHODS = {'scratch': transfer.SCRATCH, 'kd': transfer.KD,
                 'transfer': transfer.TRANSFER_KD, 'transfer_labels': transfer.TRUE_LABELS,
                 'transfer_hard': transfer.HARD_LABELS}


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  records, setup = common.load_results(TRANSFER_RESULTS)
  design = common.config_of(setup)
  chosen = transfer.chosen_settings(records)
  c = ml_collections.ConfigDict()
  c.dataset = 'mnist1d'
  c.data_dir = ''          # '' = the TFDS default (~/tensorflow_datasets)
  c.workdir = 'runs/demo'
  c.fresh = False          # True: delete the workdir first (no resume)
  c.seed = 0
  c.stages = ('teacher', 'scratch', 'kd', 'transfer', 'transfer_labels', 'transfer_hard')
  c.batch_size = design.batch_size
  c.progress = True

  c.teacher = ml_collections.ConfigDict(dict(
      model=design.teacher.model, model_kwargs=design.teacher.kwargs.to_dict(),
      num_steps=design.teacher.num_steps, learning_rate=design.teacher.learning_rate))
  c.student = ml_collections.ConfigDict(dict(
      model=design.student.model, model_kwargs=design.student.kwargs.to_dict(),
      num_steps=design.labeled_steps))
  # Each student stage's peak learning rate (Adam, cosine decay): the transfer
  # experiment's validation choice for that method.
  c.learning_rates = {stage: chosen[m]['learning_rate'] for stage, m in STAGE_METHODS.items()}
  # alpha weights the hard-label CE: loss = alpha*CE + (1-alpha)*tau^2*KL.
  c.kd = ml_collections.ConfigDict(dict(temperature=design.kd.temperature,
                                        alpha=design.kd.alpha))
  c.transfer = ml_collections.ConfigDict(dict(
      num_samples=design.transfer.num_samples, seed=design.transfer.seed,
      num_steps=design.transfer_steps,
      temperature=chosen[transfer.TRANSFER_KD]['temperature']))

  if mode == 'long':
    c.teacher.num_steps = 10_000
    c.teacher.model_kwargs = {'channels': 32}
    c.transfer.num_samples = 200_000
    c.transfer.num_steps = 40_000
    c.workdir = 'runs/demo_long'
  elif mode == 'quick':
    c.teacher.num_steps = 200
    c.student.num_steps = 200
    c.transfer.num_samples = 2000
    c.transfer.num_steps = 200
    c.workdir = 'runs/demo_quick'
  elif mode != 'default':
    raise ValueError(f"Unknown demo mode {mode!r}; use 'default', 'long' or 'quick'.")
  return c
