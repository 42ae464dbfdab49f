"""Experiment 1: KD vs scratch across temperatures τ and weights α (MNIST-1D and digits).

``python -m experiments.run --config experiments/configs/temperature.py``
(teachers are trained once into
``runs/kd_teachers`` and reused by the ``topk`` and ``dkd_dist`` experiments);
``:quick`` is a smoke run on a small MNIST-1D.

:func:`datasets` is the shared per-dataset teacher/student setup of
experiments 1, 6 and 7.
"""

import ml_collections


def datasets() -> ml_collections.ConfigDict:
  """Teacher and student per dataset (learning rates from small sweeps; see the demo)."""
  return ml_collections.ConfigDict({
      # MNIST-1D: the demo's 1D-CNN teacher and MLP(100, 100) student (their accuracies are in
      # results/temperature/).
      'mnist1d': dict(
          teacher=dict(model='cnn1d', kwargs={}, num_steps=5000, learning_rate=1e-2),
          student=dict(model='mlp', kwargs={'hidden': (100, 100)}, num_steps=3000,
                       learning_rate=3e-3)),
      # digits (8x8): a PlainCNN-4 teacher and a one-hidden-layer MLP(16) student (a small gap,
      # near the ceiling; see results/temperature/).
      'digits': dict(
          teacher=dict(model='plain_cnn_4', kwargs={}, num_steps=1000, learning_rate=3e-3),
          student=dict(model='mlp', kwargs={'hidden': (16,)}, num_steps=1500,
                       learning_rate=3e-3)),
  })


def base_config(experiment: str) -> ml_collections.ConfigDict:
  """The fields every experiment of this family has."""
  c = ml_collections.ConfigDict()
  c.experiment = experiment
  c.results = experiment      # experiments/results/<results>/
  c.workdir = f'runs/{experiment}'
  c.teacher_dir = 'runs/kd_teachers'  # shared teachers; '' = <workdir>/teachers
  c.fresh = False
  c.seeds = (0, 1, 2)
  c.teacher_seed = 0
  c.data_dir = ''
  c.data_samples = 0          # > 0: a small generated MNIST-1D (quick mode)
  c.progress = False
  c.batch_size = 100
  c.datasets = datasets()
  c.datasets_run = ('mnist1d', 'digits')
  return c


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a smoke run (small MNIST-1D, a few steps, one seed)."""
  c.results = f'{c.experiment}_quick'
  c.workdir = f'runs/{c.experiment}_quick'
  c.teacher_dir = ''
  c.seeds = (0,)
  c.data_samples = 300
  c.batch_size = 40
  c.datasets_run = ('mnist1d',)
  c.datasets.mnist1d.teacher.num_steps = 30
  c.datasets.mnist1d.teacher.kwargs = {'channels': 8}
  c.datasets.mnist1d.student.num_steps = 20
  c.datasets.mnist1d.student.kwargs = {'hidden': (16,)}
  return c


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = base_config('temperature')
  c.temperatures = (1.0, 2.0, 4.0, 8.0)
  c.alphas = (0.1, 0.5)       # loss = alpha*CE + (1-alpha)*tau^2*KL
  # Hinton's original setup: KD alone on unlabeled generated MNIST-1D inputs.
  c.transfer = ml_collections.ConfigDict(dict(
      enabled=True, num_samples=20_000, seed=1, num_steps=4000, learning_rate=1e-2,
      temperatures=(1.0, 2.0, 4.0, 8.0)))
  if mode == 'quick':
    quick(c)
    c.temperatures = (4.0,)
    c.alphas = (0.1,)
    c.transfer.num_samples = 500
    c.transfer.num_steps = 20
    c.transfer.temperatures = (2.0,)
  elif mode != 'default':
    raise ValueError(f"Unknown temperature mode {mode!r}; use 'default' or 'quick'.")
  return c
