"""Experiment 7: DKD and DIST vs classic KD (MNIST-1D and digits).

``python -m experiments.run --config experiments/configs/dkd_dist.py`` (its
wall time is in ``results/dkd_dist/results.md``; reuses the teachers in
``runs/kd_teachers``); ``:quick`` is a smoke run. Every method's learning
rate and its own main hyperparameter (KD's α, DKD's β, DIST's τ) are chosen
on validation (``temperature.tuned``), from grids fixed before the runs (DKD's
β and DIST's τ: the papers' CIFAR default and one smaller value); the other
hyperparameters are the papers' CIFAR defaults.
"""

import ml_collections

from experiments.configs import temperature


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = temperature.tuned(temperature.base_config('dkd_dist'))
  c.mode = mode
  c.kd = ml_collections.ConfigDict(dict(alphas=(0.1, 0.5), temperature=4.0))
  c.dkd = ml_collections.ConfigDict(dict(alpha=1.0, betas=(2.0, 8.0),
                                         temperature=4.0))
  c.dkd_warmup_steps = 300
  c.dist = ml_collections.ConfigDict(dict(beta=1.0, gamma=1.0, temperatures=(1.0, 4.0)))
  if mode == 'quick':
    temperature.quick_tuned(c)
    c.kd.alphas = (0.1,)
    c.dkd.betas = (8.0,)
    c.dist.temperatures = (4.0,)
    c.dkd_warmup_steps = 5
  elif mode != 'default':
    raise ValueError(f"Unknown dkd_dist mode {mode!r}; use 'default' or 'quick'.")
  return c
