"""Experiment 5 `netaug`: network augmentation on tiny vs large models (MNIST-1D, digits).

Each model is trained normally and with NetAug (``L(W_base) + α·L([W_base,
W_aug])``, one augmented width sampled per step from ×2, …, ×r, r the
augmentation factor) for the same number of steps, with the same optimizer
family, initialisation key, data order and seeds; the NetAug base is exported
as a plain model and evaluated. The tiny models are also trained with two
regularised baselines (label smoothing; AdamW weight decay), since the
paper's argument is that tiny models need capacity, not regularisation.

Protocol (Cai et al. 2022 tested under :mod:`experiments.tuning`): each
model's learning rate is chosen on a stratified validation split of train
(``c.tuning``) with the tuning seed, separately for plain training, NetAug
(tiny models: jointly with r over ``c.tuning.augment_factors``, α fixed at
``c.tuning.alphas``; the other sizes use ``c.alpha`` and
``c.augment_factor``) and each regularised baseline (AdamW: jointly with its
decay); the chosen settings are trained on the full train split for every
evaluation seed and evaluated on test once. ``:quick`` is a smoke run.

Design changes after earlier runs (all before this protocol's runs): the
previous version of this experiment used a fixed, hand-picked learning rate
per model kind, shared by plain training and NetAug, three seeds, and two
untuned NetAug ablations ("x2 only": r = 2; "widest init"). The learning
rates are now searched on validation; "x2 only" became the r = 2 point of the
NetAug grid; "widest init" is kept as an untuned extra row (the NetAug row's
chosen setting with ``init_fan='widest'``, MNIST-1D only; dropped on digits for
runtime). The grids below were fixed before any test result of this protocol
was seen; ``c.tuning.narrowed_from`` (printed in the report) records the one change
made after a launch (α no longer searched, for runtime).

``:digits`` runs on scikit-learn digits (8×8×1; results in
``results/netaug_digits/``) with MLPs only (the NetAug CNN is 1-D): tiny
MLP(4) and MLP(6), a large MLP(256, 256), and between them the MNIST-1D run's
tiny MLP(16), which fitted digits' training set in the earlier untuned run
(size ``small``: reported, not part of the verdict's tiny/large test).
``:digits_quick`` is its smoke run.
"""

import ml_collections


def _model(kind, label, size, **kwargs):
  return ml_collections.ConfigDict(dict(kind=kind, label=label, size=size, kwargs=kwargs))


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'netaug'
  c.mode = mode
  c.results = 'netaug'  # experiments/results/<results>/
  c.workdir = 'runs/netaug'
  c.fresh = False          # True: delete the workdir first (no resume)
  c.seeds = tuple(range(5))
  c.data_dir = ''          # '' = the TFDS default (~/tensorflow_datasets)
  c.progress = False
  c.dataset = 'mnist1d'     # 'mnist1d' or 'digits' (MLPs only: NetAugCNN1D is 1-D)
  c.compilation_cache = 'runs/jax_cache'  # persistent XLA compilation cache ('' = off)
  c.batch_size = 100
  c.num_steps = 3000
  # NetAug for the sizes whose alpha and augmentation factor are not searched (the paper's
  # alpha; the augmented widths are x2, ..., x<factor> of every hidden layer).
  c.alpha = 1.0
  c.augment_factor = 3.0
  # 'base': the base slice starts as a plainly initialised base model; 'widest': the
  # widest model is initialised plainly (see kdjax.models.NetAugMLP).
  c.init_fan = 'base'
  # How NetAug samples the width: 'switch' inside the step (MLPs), 'host' one compiled step
  # per width ('switch' is slow for convs on CPU; 'host' syncs with the host every step).
  c.sampling = ml_collections.ConfigDict({'mlp': 'switch', 'cnn1d': 'host'})
  c.models = ml_collections.ConfigDict({
      'mlp_tiny': _model('mlp', 'MLP(16)', 'tiny', hidden=(16,)),
      'mlp_large': _model('mlp', 'MLP(256,256)', 'large', hidden=(256, 256)),
      'cnn_tiny': _model('cnn1d', 'CNN1D(4)', 'tiny', channels=4),
      'cnn_large': _model('cnn1d', 'CNN1D(32)', 'large', channels=32),
  })
  c.run_models = ('mlp_tiny', 'mlp_large', 'cnn_tiny', 'cnn_large')
  # Regularised baselines (name, label_smoothing, adamw) of the models of these sizes; an
  # AdamW baseline's decay is searched over c.tuning.weight_decays.
  c.regularised = (('label smoothing 0.1', 0.1, False),
                   ('AdamW weight decay', 0.0, True))
  c.regularised_sizes = ('tiny',)
  # Extra, untuned NetAug settings (the NetAug row's chosen setting with these overrides),
  # run on the models of these sizes only.
  c.ablation_sizes = ('tiny',)
  c.ablations = ml_collections.ConfigDict({'widest init': {'init_fan': 'widest'}})
  c.tuning = ml_collections.ConfigDict(dict(
      fraction=0.1,         # of each class of train, held out for validation
      split_seed=0,         # fixes the validation split
      seed=100,             # the tuning runs' seed (not one of the evaluation seeds)
      learning_rates=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
      weight_decays=(1e-2, 1e-1, 1.0),
      netaug_sizes=('tiny',),   # sizes whose NetAug alpha and augmentation factor are searched
      alphas=(1.0,),
      augment_factors=(2.0, 3.0, 4.0)))
  # A design change after a launch (reported): a first launch of the MNIST-1D run also searched
  # NetAug's alpha over these values for the tiny models; it was stopped for its runtime on the
  # shared CPU before its validation search finished (no test run).
  c.tuning.narrowed_from = ml_collections.ConfigDict({'alphas': (0.3, 1.0, 3.0)})

  if mode == 'quick':
    c.results = 'netaug_quick'
    c.workdir = 'runs/netaug_quick'
    c.compilation_cache = ''
    c.seeds = (0, 1)
    c.num_steps = 20
    c.run_models = ('mlp_tiny',)
    c.tuning.learning_rates = (1e-2, 3e-2)
    c.tuning.weight_decays = (1e-1,)
    c.tuning.alphas = (1.0,)
    c.tuning.augment_factors = (3.0,)
    c.tuning.narrowed_from = ml_collections.ConfigDict()
  elif mode in ('digits', 'digits_quick'):
    c.dataset = 'digits'
    c.results = f'netaug_{mode}'
    c.workdir = f'runs/netaug_{mode}'
    c.batch_size = 64
    c.num_steps = 1500
    # MLPs only (NetAugCNN1D is 1-D). The sizes were assigned from the earlier, untuned
    # run's train accuracy: MLP(4) and MLP(6) under-fitted digits there, MLP(16) (the
    # MNIST-1D tiny model) and MLP(256, 256) fitted it.
    c.models = ml_collections.ConfigDict({
        'mlp_tiny4': _model('mlp', 'MLP(4)', 'tiny', hidden=(4,)),
        'mlp_tiny6': _model('mlp', 'MLP(6)', 'tiny', hidden=(6,)),
        'mlp_small': _model('mlp', 'MLP(16)', 'small', hidden=(16,)),
        'mlp_large': _model('mlp', 'MLP(256,256)', 'large', hidden=(256, 256)),
    })
    c.run_models = ('mlp_tiny4', 'mlp_tiny6', 'mlp_small', 'mlp_large')
    c.ablation_sizes = ()   # the untuned "widest init" row: MNIST-1D only (runtime)
    c.tuning.narrowed_from = ml_collections.ConfigDict()
    c.notes = (
        'Digits: MLPs only. The NetAug CNN (`kdjax.models.NetAugCNN1D`) is one-dimensional, '
        'so the CNN rows of the MNIST-1D table have no counterpart here. The tiny models are '
        'MLP(4) and MLP(6), not the MNIST-1D table\'s MLP(16): in the earlier, untuned run of '
        'this experiment MLP(16) fitted digits\' training set, so it is not tiny in the paper\'s '
        'sense (an under-fitting model); it is run as well (size "small", plain and NetAug '
        'only) for the comparison with the MNIST-1D table, and the verdict\'s tiny/large test '
        'leaves it out. A 4-unit hidden layer is noisy from seed to seed, hence the second '
        'tiny model, MLP(6). An even earlier, unrecorded design (MLP(4) as the only tiny '
        'model) is not reported.')
    if mode == 'digits_quick':
      c.compilation_cache = ''
      c.seeds = (0, 1)
      c.num_steps = 20
      c.run_models = ('mlp_tiny6', 'mlp_small')
      c.tuning.learning_rates = (1e-2, 3e-2)
      c.tuning.weight_decays = (1e-1,)
      c.tuning.alphas = (1.0,)
      c.tuning.augment_factors = (3.0,)
  elif mode != 'default':
    raise ValueError(f"Unknown netaug mode {mode!r}; use 'default', 'quick', 'digits' or "
                     "'digits_quick'.")
  return c
