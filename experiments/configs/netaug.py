"""Experiment 5 `netaug`: network augmentation on tiny vs large models (MNIST-1D, digits).

Each model is trained normally and with NetAug (``L(W_base) + α·L([W_base,
W_aug])``, one augmented width sampled per step from ``augment_multipliers(
augment_factor, diversity)``) for the same number of steps, with the same
optimizer, data order and seeds; the NetAug base is exported as a plain model
and evaluated. ``:quick`` is a smoke run.

``:digits`` runs on scikit-learn digits (8×8×1; results in
``results/netaug_digits/``) with MLPs only (the NetAug CNN is 1-D):
tiny MLP(4) and MLP(6), which under-fit digits, a large MLP(256, 256), and
between them the MNIST-1D run's tiny MLP(16), which fits digits' training set
(size ``small``: reported, not part of the verdict's tiny/large test). About
1–1.5 minutes on 2 shared cores; ``:digits_quick`` is its smoke run.
"""

import ml_collections


def _model(kind, label, size, learning_rate, **kwargs):
  return ml_collections.ConfigDict(dict(kind=kind, label=label, size=size,
                                        learning_rate=learning_rate, kwargs=kwargs))


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'netaug'
  c.mode = mode
  c.results = 'netaug'  # experiments/results/<results>/
  c.workdir = 'runs/netaug'
  c.fresh = False          # True: delete the workdir first (no resume)
  c.seeds = (0, 1, 2)
  c.data_dir = ''          # '' = the TFDS default (~/tensorflow_datasets)
  c.progress = False
  c.dataset = 'mnist1d'     # 'mnist1d' or 'digits' (MLPs only: NetAugCNN1D is 1-D)
  c.compilation_cache = ''  # a directory: persistent XLA compilation cache ('' = off)
  c.batch_size = 100
  c.num_steps = 3000
  # NetAug: alpha weights the augmented loss (paper: 1); the augmented widths are
  # 1 + (factor - 1) * i / diversity, i = 1..diversity (here x2 and x3).
  c.alpha = 1.0
  c.augment_factor = 3.0
  c.diversity = 2
  # 'base': the base slice starts as a plainly initialised base model; 'widest': the
  # widest model is initialised plainly (see kdjax.models.NetAugMLP).
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
  elif mode in ('digits', 'digits_quick'):
    c.dataset = 'digits'
    c.results = f'netaug_{mode}'
    c.workdir = f'runs/netaug_{mode}'
    c.compilation_cache = 'runs/jax_cache'
    c.batch_size = 64
    c.num_steps = 1500
    # MLPs only (NetAugCNN1D is 1-D), all at the demo's MLP rate. MLP(4) and MLP(6)
    # under-fit digits (their train accuracy is in results/netaug_digits/); MLP(16), the
    # MNIST-1D tiny model, and MLP(256, 256) fit it.
    c.models = ml_collections.ConfigDict({
        'mlp_tiny4': _model('mlp', 'MLP(4)', 'tiny', 3e-3, hidden=(4,)),
        'mlp_tiny6': _model('mlp', 'MLP(6)', 'tiny', 3e-3, hidden=(6,)),
        'mlp_small': _model('mlp', 'MLP(16)', 'small', 3e-3, hidden=(16,)),
        'mlp_large': _model('mlp', 'MLP(256,256)', 'large', 3e-3, hidden=(256, 256)),
    })
    c.run_models = ('mlp_tiny4', 'mlp_tiny6', 'mlp_small', 'mlp_large')
    c.notes = (
        'Digits: MLPs only. The NetAug CNN (`kdjax.models.NetAugCNN1D`) is one-dimensional, '
        'so the CNN rows of the MNIST-1D table have no counterpart here. The tiny models are '
        'MLP(4) and MLP(6), not the MNIST-1D table\'s MLP(16): on digits MLP(16) fits the '
        'training set, so it is not tiny in the paper\'s sense (an under-fitting model); it is '
        'run as well (size "small") for the comparison with the MNIST-1D table, and the '
        'verdict\'s tiny/large test leaves it out. A 4-unit hidden layer is noisy from seed to '
        'seed (the plain rows of the table show its spread), hence the second tiny model, '
        'MLP(6). An earlier, unrecorded design (MLP(4) as the only tiny model, lr 1e-2) is not '
        'reported.')
    if mode == 'digits_quick':
      c.compilation_cache = ''
      c.seeds = (0,)
      c.num_steps = 20
      c.run_models = ('mlp_tiny6',)
      c.ablation_sizes = ()
  elif mode != 'default':
    raise ValueError(f"Unknown netaug mode {mode!r}; use 'default', 'quick', 'digits' or "
                     "'digits_quick'.")
  return c
