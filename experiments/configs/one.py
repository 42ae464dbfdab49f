"""ONE on MNIST-1D: the branches of an on-the-fly native ensemble vs the single-branch CNN1D.

``python -m experiments.run --config experiments/configs/one.py`` (about 1.5
minutes on 2 cores, 5 seeds); ``:quick`` is a smoke run on a tiny CNN.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'one'
  c.results = 'one'         # experiments/results/<results>/
  c.workdir = 'runs/one'    # checkpoints; complete runs are restored, not retrained
  c.fresh = False           # True: delete the workdir first
  c.seeds = (0, 1, 2, 3, 4)
  c.data_dir = ''
  c.data_samples = 0        # 0: the package's MNIST-1D (4000 train / 1000 test)
  c.progress = False
  c.batch_size = 100
  c.num_steps = 3000
  c.learning_rate = 1e-2    # the reference CNN1D learning rate (Adam, cosine decay)
  c.channels = 25           # the zoo cnn1d: 3 conv layers, kernels (5, 3, 3)
  c.kernel_sizes = (5, 3, 3)
  c.num_branches = 3
  c.shared_layers = 2       # conv1-2 shared; each branch: conv3 + classifier
  c.gate_norm = False       # True: the paper's Dense -> BN -> ReLU -> softmax gate
  c.temperature = 3.0       # paper: 3
  c.baseline_members = 3    # single-branch baselines per seed (also an independent ensemble)

  if mode == 'quick':
    c.results = 'one_quick'
    c.workdir = 'runs/one_quick'
    c.seeds = (0,)
    c.data_samples = 200
    c.batch_size = 40
    c.num_steps = 10
    c.channels = 4
    c.baseline_members = 2
  elif mode != 'default':
    raise ValueError(f"Unknown one mode {mode!r}; use 'default' or 'quick'.")
  return c
