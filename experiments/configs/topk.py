"""Experiment 6: KD-topk (several k), KD-pt and KD-sim vs full KD (MNIST-1D and digits).

``python -m experiments.run --config experiments/configs/topk.py`` (about 5–7
minutes on 2 shared cores; reuses the teachers in ``runs/kd_teachers``);
``:quick`` is a smoke run.
"""

import ml_collections

from experiments.configs import temperature


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = temperature.base_config('topk')
  c.alpha = 0.1               # loss = alpha*CE + (1-alpha)*L for every method
  c.temperature = 4.0         # KD, KD-topk and KD-pt
  c.ks = (1, 2, 3, 5)         # KD-topk; k = C - 1 = 9 would equal KD
  c.sim_temperatures = (0.25,)  # KD-sim: cosine similarities in [-1, 1] need a small tau
  if mode == 'quick':
    temperature.quick(c)
    c.ks = (2,)
  elif mode != 'default':
    raise ValueError(f"Unknown topk mode {mode!r}; use 'default' or 'quick'.")
  return c
