"""Experiment 7: DKD and DIST vs classic KD (MNIST-1D and digits).

``python -m experiments.run --config experiments/configs/dkd_dist.py`` (about
4–6 minutes on 2 shared cores; reuses the teachers in ``runs/kd_teachers``);
``:quick`` is a smoke run.
"""

import ml_collections

from experiments.configs import temperature


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = temperature.base_config('dkd_dist')
  c.kd = ml_collections.ConfigDict(dict(alpha=0.1, temperature=4.0))
  # The papers' CIFAR defaults first, then one smaller setting each.
  c.dkd = [ml_collections.ConfigDict(dict(alpha=1.0, beta=8.0, temperature=4.0)),
           ml_collections.ConfigDict(dict(alpha=1.0, beta=2.0, temperature=4.0))]
  c.dkd_warmup_steps = 300
  c.dist = [ml_collections.ConfigDict(dict(beta=1.0, gamma=1.0, temperature=4.0)),
            ml_collections.ConfigDict(dict(beta=1.0, gamma=1.0, temperature=1.0))]
  if mode == 'quick':
    temperature.quick(c)
    c.dkd = c.dkd[:1]
    c.dist = c.dist[:1]
    c.dkd_warmup_steps = 5
  elif mode != 'default':
    raise ValueError(f"Unknown dkd_dist mode {mode!r}; use 'default' or 'quick'.")
  return c
