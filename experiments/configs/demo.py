"""The `make demo` configuration: Hinton KD on the embedded MNIST-1D.

Stages: a 1D-CNN teacher, an MLP student from scratch, the same student with
KD on the labeled set, and with KD on an unlabeled transfer set of generated
MNIST-1D inputs (Hinton's original setup); then the two controls of that
last run, on the same inputs for the same steps: their true labels, and the
teacher's hard labels. Runs in a few minutes on 2 CPU cores. The multi-seed
version, with settings tuned on validation data, is
``experiments/configs/transfer.py``. ``--config experiments/configs/demo.py:long``
trains longer, with more transfer data; ``:quick`` is a smoke run.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = 'mnist1d'
  c.data_dir = ''          # '' = the TFDS default (~/tensorflow_datasets)
  c.workdir = 'runs/demo'
  c.fresh = False          # True: delete the workdir first (no resume)
  c.seed = 0
  c.stages = ('teacher', 'scratch', 'kd', 'transfer', 'transfer_labels', 'transfer_hard')
  c.batch_size = 100
  c.progress = True

  c.teacher = ml_collections.ConfigDict(dict(
      model='cnn1d', model_kwargs={}, num_steps=5000, learning_rate=1e-2))
  c.student = ml_collections.ConfigDict(dict(
      model='mlp', model_kwargs={'hidden': (100, 100)}, num_steps=3000, learning_rate=3e-3))
  # Learning rates were picked in a small sweep (Adam, cosine decay); see README.
  # alpha weights the hard-label CE: loss = alpha*CE + (1-alpha)*tau^2*KL.
  c.kd = ml_collections.ConfigDict(dict(temperature=4.0, alpha=0.1))
  c.transfer = ml_collections.ConfigDict(dict(
      num_samples=50_000, seed=1, num_steps=10_000, temperature=2.0, learning_rate=1e-2))

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
