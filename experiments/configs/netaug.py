"""Experiment 5 `netaug`: network augmentation on tiny vs large models (MNIST-1D).

Each model is trained normally and with NetAug (``L(W_base) + α·L([W_base,
W_aug])``, one augmented width sampled per step from ``augment_multipliers(
augment_factor, diversity)``) for the same number of steps, with the same
optimizer, data order and seeds; the NetAug base is exported as a plain model
and evaluated. ``:quick`` is a smoke run.
"""

import ml_collections


def _model(kind, label, size, learning_rate, **kwargs):
  return ml_collections.ConfigDict(dict(kind=kind, label=label, size=size,
                                        learning_rate=learning_rate, kwargs=kwargs))


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'netaug'
  c.results = 'netaug'  # experiments/results/<results>/
  c.workdir = 'runs/netaug'
  c.fresh = False          # True: delete the workdir first (no resume)
  c.seeds = (0, 1, 2)
  c.data_dir = ''          # '' = the TFDS default (~/tensorflow_datasets)
  c.progress = False
  c.dataset = 'mnist1d'
  c.batch_size = 100
  c.num_steps = 3000
  # NetAug: alpha weights the augmented loss (paper: 1); the augmented widths are
  # 1 + (factor - 1) * i / diversity, i = 1..diversity (here x2 and x3).
  c.alpha = 1.0
  c.augment_factor = 3.0
  c.diversity = 2
  # 'base': the base slice starts as a plainly initialised base model; 'widest': the
  # widest model is initialised plainly (see kdjax.schemes.NetAugMLP).
  c.init_fan = 'base'
  c.sampling = 'host'      # one compiled step per width ('switch' is slow for convs on CPU)
  # Learning rates as in the demo: MLP 3e-3, CNN 1e-2 (Adam, cosine decay).
  c.models = ml_collections.ConfigDict({
      'mlp_tiny': _model('mlp', 'MLP(16)', 'tiny', 3e-3, hidden=(16,)),
      'mlp_large': _model('mlp', 'MLP(256,256)', 'large', 3e-3, hidden=(256, 256)),
      'cnn_tiny': _model('cnn1d', 'CNN1D(4)', 'tiny', 1e-2, channels=4),
      'cnn_large': _model('cnn1d', 'CNN1D(32)', 'large', 1e-2, channels=32),
  })
  c.run_models = ('mlp_tiny', 'mlp_large', 'cnn_tiny', 'cnn_large')
  # Extra NetAug settings, run on the models of these sizes only (cheap: tiny models).
  c.ablation_sizes = ('tiny',)
  c.ablations = ml_collections.ConfigDict({
      'x2 only': {'augment_factor': 2.0, 'diversity': 1},
      'widest init': {'init_fan': 'widest'},
  })

  if mode == 'quick':
    c.results = 'netaug_quick'
    c.workdir = 'runs/netaug_quick'
    c.seeds = (0, 1)
    c.num_steps = 20
    c.run_models = ('mlp_tiny',)
    c.ablation_sizes = ()
  elif mode != 'default':
    raise ValueError(f"Unknown netaug mode {mode!r}; use 'default' or 'quick'.")
  return c
