"""Born-again networks on MNIST-1D: generations, their ensemble, and independent ensembles.

Per seed: ``generations + 1`` models of one architecture trained independently
from scratch (seeds ``seed + 1000·g``; the first is the BAN teacher ``S_0``),
and for each BAN objective in ``variants`` the generations ``S_1 … S_k``
distilled one from the previous (:func:`kdjax.schemes.born_again`; generation
``g`` shares the seed of independent model ``g``, so comparisons are paired).
Ensembles average probabilities (:func:`kdjax.schemes.evaluate_ensemble`).

``python -m experiments.run --config experiments/configs/ban.py`` (about 5
minutes on 2 cores); ``:quick`` is a smoke run on a tiny MLP.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'ban'
  c.mode = mode
  c.results = 'ban'         # experiments/results/<results>/
  c.workdir = 'runs/ban'
  c.seeds = (0, 1, 2)
  c.data_dir = ''
  c.data_samples = 0        # 0: the package's MNIST-1D (4000 train / 1000 test)
  c.progress = False
  c.batch_size = 100
  c.model = ('cnn16', 'cnn1d', {'channels': 16})
  c.generations = 3
  c.num_steps = 2000
  c.learning_rate = 1e-2
  # BAN objectives: (name, alpha, temperature) for alpha*CE + (1-alpha)*tau^2*KL.
  # alpha=0, tau=1: the teacher's output distribution alone (Furlanello et al. §3).
  c.variants = (('ban', 0.0, 1.0), ('ban_kd', 0.1, 4.0))

  if mode == 'quick':
    c.results = 'ban_quick'
    c.workdir = 'runs/ban_quick'
    c.seeds = (0,)
    c.data_samples = 200
    c.batch_size = 40
    c.model = ('T', 'mlp', {'hidden': (16,)})
    c.generations = 1
    c.num_steps = 10
    c.variants = (('ban', 0.0, 1.0),)
  elif mode != 'default':
    raise ValueError(f"Unknown ban mode {mode!r}; use 'default' or 'quick'.")
  return c
