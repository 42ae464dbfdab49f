"""Weight distillation on MNIST-1D: a CNN1D teacher's weights generate a narrower student.

Rows: the teacher; the student from scratch; KD; the student initialised as
the teacher's leading slice then trained with KD (WD's identity generator
without phase 1); weight distillation (phase 1: the generator ``W_S = P·W_T·Q``
trained through the KD loss; phase 2: the generated student fine-tuned with
the same KD loss). Every student gets the same total number of steps.
``:quick`` is a smoke run.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'weight_distillation'
  c.results = 'weight_distillation'  # experiments/results/<results>/
  c.workdir = 'runs/weight_distillation'
  c.fresh = False
  c.seeds = (0, 1, 2)
  c.data_dir = ''
  c.progress = False
  c.dataset = 'mnist1d'
  c.batch_size = 100
  c.teacher = ml_collections.ConfigDict(dict(channels=32, num_steps=5000, learning_rate=1e-2))
  c.student = ml_collections.ConfigDict(dict(channels=8, num_steps=3000, learning_rate=1e-2))
  # KD objective of every distilled student: alpha*CE + (1 - alpha)*tau^2*KL.
  c.kd = ml_collections.ConfigDict(dict(temperature=4.0, alpha=0.1))
  # WD: phase 1 (generator) steps; phase 2 gets student.num_steps - phase1_steps.
  c.wd = ml_collections.ConfigDict(dict(phase1_steps=1000, phase1_learning_rate=1e-3,
                                        init='identity', bias='project'))

  if mode == 'quick':
    c.results = 'weight_distillation_quick'
    c.workdir = 'runs/weight_distillation_quick'
    c.seeds = (0,)
    c.teacher.channels = 8
    c.teacher.num_steps = 30
    c.student.channels = 4
    c.student.num_steps = 20
    c.wd.phase1_steps = 10
  elif mode != 'default':
    raise ValueError(f"Unknown weight_distillation mode {mode!r}; use 'default' or 'quick'.")
  return c
