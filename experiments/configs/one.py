"""ONE: the branches of an on-the-fly native ensemble vs the single-branch network.

Default mode, MNIST-1D: ONE over the 1-D CNN (conv1-2 shared, three branches
of conv3 + classifier) against the zoo ``cnn1d`` (trunk + one branch) trained
alone, plain and with two regularised baselines (label smoothing 0.1 and AdamW
decoupled weight decay), since ONE's extra losses also regularise. Every
method's learning rate (and the weight decay) is chosen on a validation split
of the training set (``c.tuning``, :mod:`experiments.tuning`) from the a-priori
grids below, never on test; then every evaluation seed trains the chosen
setting on the full training split. ``python -m experiments.run --config
experiments/configs/one.py``; ``:quick`` is a smoke run on a tiny CNN.

``:digits`` (results in ``results/one_digits/``): the same design on
scikit-learn digits with ONE over a narrow CIFAR ResNet-8
(``kdjax.models.one_resnet``: the stem and the first two stages shared, each
branch the last stage) against ``CifarResNet`` of the same depth and widths.
The widths were picked before any run, small so that a full run is cheap on 2
CPU cores. ``:digits_quick`` is its smoke run.

The grids were fixed before the runs: learning rates 1e-3 to 1e-1 in
half-decades around the reference CNN1D rate (1e-2), weight decays 1e-3 to 1
in decades (``optax.adamw`` multiplies the decay by the scheduled learning
rate).
"""

import ml_collections


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'one'
  c.mode = mode
  c.results = 'one'         # experiments/results/<results>/
  c.workdir = 'runs/one'    # checkpoints; complete runs are restored, not retrained
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
  c.num_branches = 3
  c.shared_layers = 2       # conv1-2 shared; each branch: conv3 + classifier (cnn1d only)
  c.gate_norm = False       # True: the paper's Dense -> BN -> ReLU -> softmax gate
  c.temperature = 3.0       # paper: 3
  c.baseline_members = 3    # single-branch baselines per seed (also an independent ensemble)
  # Regularised single-network baselines: (name, label_smoothing, adamw); an AdamW
  # baseline's decay is searched over c.tuning.weight_decays.
  c.regularised = (('label smoothing 0.1', 0.1, False),
                   ('AdamW weight decay', 0.0, True))
  c.tuning = ml_collections.ConfigDict(dict(
      fraction=0.1,         # of each class of train, held out for validation
      split_seed=0,         # fixes the validation split
      seed=100,             # the tuning runs' seed (not one of the evaluation seeds)
      learning_rates=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
      weight_decays=(1e-3, 1e-2, 1e-1, 1.0)))

  if mode == 'quick':
    c.results = 'one_quick'
    c.workdir = 'runs/one_quick'
    c.compilation_cache = ''
    c.seeds = (0, 1)
    c.data_samples = 200
    c.batch_size = 40
    c.num_steps = 10
    c.channels = 4
    c.baseline_members = 2
    c.tuning.learning_rates = (1e-2, 3e-2)
    c.tuning.weight_decays = (1e-1,)
  elif mode in ('digits', 'digits_quick'):
    c.dataset = 'digits'      # experiments.takd.load_data: 1437 train / 360 test
    c.results = 'one_digits'
    c.workdir = 'runs/one_digits'
    c.batch_size = 64         # ~20 steps per epoch on train minus validation
    c.num_steps = 1000
    c.net = 'resnet'
    c.depth = 8               # one BasicBlock per stage
    c.widths = (8, 8, 16, 32)  # stem, stages 1-3 (8x8 -> 4x4 -> 2x2)
    if mode == 'digits_quick':
      c.results = 'one_digits_quick'
      c.workdir = 'runs/one_digits_quick'
      c.compilation_cache = ''
      c.seeds = (0, 1)
      c.data_samples = 200    # the first 160 train / 40 test records
      c.batch_size = 40
      c.num_steps = 10
      c.widths = (4, 4, 4, 8)
      c.baseline_members = 2
      c.tuning.learning_rates = (1e-2, 3e-2)
      c.tuning.weight_decays = (1e-1,)
  elif mode != 'default':
    raise ValueError(f"Unknown one mode {mode!r}; use 'default', 'quick', 'digits' or "
                     "'digits_quick'.")
  return c
