"""BYOT on MNIST-1D: self-distilled exits of the CNN1D vs the plain CNN1D, and early exit.

Variants: BYOT with the feature term averaged over the embedding (found
necessary on this 1-D CNN), BYOT with the paper's sum, and a control with the
cross-entropy on every exit only (deep supervision, no self-distillation).
``python -m experiments.run --config experiments/configs/byot.py`` (about 1.5
minutes on 2 cores, 5 seeds); ``:quick`` is a smoke run on a tiny CNN.
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'byot'
  c.results = 'byot'        # experiments/results/<results>/
  c.workdir = 'runs/byot'   # checkpoints; complete runs are restored, not retrained
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
  # (name, alpha, temperature, feature_weight lambda, feature_reduction); the
  # first is the primary variant (early-exit plot). alpha = lambda = 0: CE only.
  c.variants = (('BYOT (λ mean)', 0.3, 3.0, 0.03, 'mean'),
                ('BYOT (λ sum, paper)', 0.3, 3.0, 0.03, 'sum'),
                ('exits, CE only', 0.0, 3.0, 0.0, 'mean'))
  # Early-exit confidence thresholds; > 1 sends every example to the deepest exit.
  c.thresholds = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)

  if mode == 'quick':
    c.results = 'byot_quick'
    c.workdir = 'runs/byot_quick'
    c.seeds = (0,)
    c.data_samples = 200
    c.batch_size = 40
    c.num_steps = 10
    c.channels = 4
    c.variants = (('BYOT (λ mean)', 0.3, 3.0, 0.03, 'mean'),
                  ('exits, CE only', 0.0, 3.0, 0.0, 'mean'))
    c.thresholds = (0.0, 0.5, 0.9, 1.01)
  elif mode != 'default':
    raise ValueError(f"Unknown byot mode {mode!r}; use 'default' or 'quick'.")
  return c
