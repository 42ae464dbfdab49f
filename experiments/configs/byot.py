"""BYOT: self-distilled exits vs the plain network, regularised baselines, and early exit.

Default mode, MNIST-1D: the CNN1D with an exit after every conv layer.
Variants: BYOT with the feature term averaged over the embedding (found
necessary on this 1-D CNN), BYOT with the paper's sum, and a control with the
cross-entropy on every exit only (deep supervision, no self-distillation).
Baselines: the plain CNN1D, and the plain CNN1D with label smoothing 0.1 or
with AdamW decoupled weight decay (BYOT's extra heads also regularise). Every
method's learning rate (and the weight decay) is chosen on a validation split
of the training set (``c.tuning``, :mod:`experiments.tuning`) from the
a-priori grids below, never on test. ``python -m experiments.run --config
experiments/configs/byot.py``; ``:quick`` is a smoke run on a tiny CNN.

``:digits`` (results in ``results/byot_digits/``): the same design on
scikit-learn digits with a narrow CIFAR ResNet-8 (``kdjax.models.byot_resnet``,
an exit after each of its 3 stages) against ``CifarResNet`` of the same depth
and widths, picked before any run, small so that a full run is cheap on 2 CPU
cores. Cut for the time budget of the shared 2 cores (decided after the ONE
digits run took 26 minutes, before any BYOT digits result existed): 5
evaluation seeds, the primary BYOT variant and the CE-only control only, and
the grids coarsened over the same range (learning rates 1e-3, 1e-2, 1e-1;
weight decays 1e-3, 1e-1).
``:digits_quick`` is its smoke run.

The grids were fixed before the runs: learning rates 1e-3 to 1e-1 in
half-decades around the reference CNN1D rate (1e-2), weight decays 1e-3 to 1
in decades (``optax.adamw`` multiplies the decay by the scheduled learning
rate).
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'byot'
  c.mode = mode
  c.results = 'byot'        # experiments/results/<results>/
  c.workdir = 'runs/byot'   # checkpoints; complete runs are restored, not retrained
  c.fresh = False           # True: delete the workdir first
  c.compilation_cache = 'runs/jax_cache'
  c.seeds = tuple(range(10))
  c.data_dir = ''
  c.dataset = 'mnist1d'
  c.data_samples = 0        # 0: the package's MNIST-1D (4000 train / 1000 test)
  c.progress = False
  c.batch_size = 100
  c.num_steps = 3000
  c.net = 'cnn1d'
  c.channels = 25           # the zoo cnn1d: 3 conv layers, kernels (5, 3, 3)
  c.kernel_sizes = (5, 3, 3)
  # (name, alpha, temperature, feature_weight lambda, feature_reduction); the
  # first is the primary variant (early-exit plot). alpha = lambda = 0: CE only.
  c.variants = (('BYOT (λ mean)', 0.3, 3.0, 0.03, 'mean'),
                ('BYOT (λ sum, paper)', 0.3, 3.0, 0.03, 'sum'),
                ('exits, CE only', 0.0, 3.0, 0.0, 'mean'))
  # Regularised plain-network baselines: (name, label_smoothing, adamw); an AdamW
  # baseline's decay is searched over c.tuning.weight_decays.
  c.regularised = (('label smoothing 0.1', 0.1, False),
                   ('AdamW weight decay', 0.0, True))
  c.tuning = ml_collections.ConfigDict(dict(
      fraction=0.1,         # of each class of train, held out for validation
      split_seed=0,         # fixes the validation split
      seed=100,             # the tuning runs' seed (not one of the evaluation seeds)
      learning_rates=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
      weight_decays=(1e-3, 1e-2, 1e-1, 1.0)))
  # Early-exit confidence thresholds; > 1 sends every example to the deepest exit.
  c.thresholds = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)

  if mode == 'quick':
    c.results = 'byot_quick'
    c.workdir = 'runs/byot_quick'
    c.compilation_cache = ''
    c.seeds = (0, 1)
    c.data_samples = 200
    c.batch_size = 40
    c.num_steps = 10
    c.channels = 4
    c.variants = (('BYOT (λ mean)', 0.3, 3.0, 0.03, 'mean'),
                  ('exits, CE only', 0.0, 3.0, 0.0, 'mean'))
    c.thresholds = (0.0, 0.5, 0.9, 1.01)
    c.tuning.learning_rates = (1e-2, 3e-2)
    c.tuning.weight_decays = (1e-1,)
  elif mode in ('digits', 'digits_quick'):
    c.dataset = 'digits'      # experiments.takd.load_data: 1437 train / 360 test
    c.results = 'byot_digits'
    c.workdir = 'runs/byot_digits'
    c.batch_size = 64         # ~20 steps per epoch on train minus validation
    c.num_steps = 1000
    c.net = 'resnet'
    c.depth = 8               # one BasicBlock per stage
    c.widths = (8, 8, 16, 32)  # stem, stages 1-3 (8x8 -> 4x4 -> 2x2)
    # Cut for the time budget of the shared 2 cores (decided after the ONE digits run
    # and before any BYOT digits result): 5 seeds, the primary variant and the CE-only
    # control, and a coarser grid over the same range.
    c.seeds = tuple(range(5))
    c.variants = (('BYOT (λ mean)', 0.3, 3.0, 0.03, 'mean'),
                  ('exits, CE only', 0.0, 3.0, 0.0, 'mean'))
    c.tuning.learning_rates = (1e-3, 1e-2, 1e-1)
    c.tuning.weight_decays = (1e-3, 1e-1)
    if mode == 'digits_quick':
      c.results = 'byot_digits_quick'
      c.workdir = 'runs/byot_digits_quick'
      c.compilation_cache = ''
      c.seeds = (0, 1)
      c.data_samples = 200    # the first 160 train / 40 test records
      c.batch_size = 40
      c.num_steps = 10
      c.widths = (4, 4, 4, 8)
      c.variants = (('BYOT (λ mean)', 0.3, 3.0, 0.03, 'mean'),
                    ('exits, CE only', 0.0, 3.0, 0.0, 'mean'))
      c.thresholds = (0.0, 0.5, 0.9, 1.01)
      c.tuning.learning_rates = (1e-2, 3e-2)
      c.tuning.weight_decays = (1e-1,)
  elif mode != 'default':
    raise ValueError(f"Unknown byot mode {mode!r}; use 'default', 'quick', 'digits' or "
                     "'digits_quick'.")
  return c
