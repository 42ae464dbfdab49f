"""Deep mutual learning on MNIST-1D: DML cohorts vs the same peers trained independently.

Cohorts: two and four MLP(100, 100) peers (one stacked state, vmapped) and a
mixed CNN1D + MLP cohort (a tuple of states, as in the DML paper's
experiments). Each cohort is trained with the mutual KL and without it, for
every seed. ``python -m experiments.run --config experiments/configs/dml.py``
(about 3.5 minutes on 2 cores, 5 seeds); ``:quick`` is a smoke run on tiny models.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'dml'
  c.results = 'dml'         # experiments/results/<results>/
  c.workdir = 'runs/dml'    # checkpoints; complete runs are restored, not retrained
  c.fresh = False           # True: delete the workdir first
  c.seeds = (0, 1, 2, 3, 4)
  c.data_dir = ''
  c.data_samples = 0        # 0: the package's MNIST-1D (4000 train / 1000 test)
  c.progress = False
  c.batch_size = 100
  c.num_steps = 3000
  c.temperature = 1.0       # DML uses the plain softmax (tau = 1)
  c.unroll_conv = True      # stacked conv peers: unroll instead of vmap (faster on CPU)
  # Peer architectures: name -> (registry model, kwargs, peak learning rate). The
  # learning rates are the reference ones of each model trained alone.
  c.archs = {'MLP': ('mlp', {'hidden': (100, 100)}, 3e-3),
             'CNN1D': ('cnn1d', {}, 1e-2)}
  # Cohorts: (name, peer architectures).
  c.cohorts = (('MLP ×2', ('MLP', 'MLP')),
               ('MLP ×4', ('MLP', 'MLP', 'MLP', 'MLP')),
               ('CNN1D + MLP', ('CNN1D', 'MLP')))

  if mode == 'quick':
    c.results = 'dml_quick'
    c.workdir = 'runs/dml_quick'
    c.seeds = (0,)
    c.data_samples = 200
    c.batch_size = 40
    c.num_steps = 10
    c.archs = {'MLP': ('mlp', {'hidden': (16,)}, 3e-3),
               'CNN1D': ('cnn1d', {'channels': 4}, 1e-2)}
    c.cohorts = (('MLP ×2', ('MLP', 'MLP')),
                 ('CNN1D + MLP', ('CNN1D', 'MLP')))
  elif mode != 'default':
    raise ValueError(f"Unknown dml mode {mode!r}; use 'default' or 'quick'.")
  return c
