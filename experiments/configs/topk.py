"""Experiment 6: KD-topk (several k), KD-pt and KD-sim vs full KD (MNIST-1D and digits).

``python -m experiments.run --config experiments/configs/topk.py`` (its wall
time is in ``results/topk/results.md``; reuses the teachers in
``runs/kd_teachers``); ``:quick`` is a smoke run. Every method's learning rate
and α are chosen on validation (``temperature.tuned``), from grids fixed
before the runs.
"""

import ml_collections

from experiments.configs import temperature


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = temperature.tuned(temperature.base_config('topk'))
  c.mode = mode
  c.alphas = (0.1, 0.5)       # loss = alpha*CE + (1-alpha)*L for every method (tuned)
  c.temperature = 4.0         # KD, KD-topk and KD-pt (fixed)
  c.ks = (2, 5)               # KD-topk; k = C - 1 = 9 would equal KD (k = 1: about KD-pt)
  c.sim_temperatures = (0.25,)  # KD-sim: cosine similarities in [-1, 1] need a small tau
  if mode == 'quick':
    temperature.quick_tuned(c)
    c.alphas = (0.1,)
    c.ks = (2,)
  elif mode != 'default':
    raise ValueError(f"Unknown topk mode {mode!r}; use 'default' or 'quick'.")
  return c
