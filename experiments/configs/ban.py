"""Born-again networks on MNIST-1D and digits: generations, ensembles, independent ensembles.

Per seed: ``generations + 1`` models of one architecture trained independently
from scratch (seeds ``seed + 1000·g``; the first is the BAN teacher ``S_0``),
and for each BAN objective in ``variants`` the generations ``S_1 … S_k``
distilled one from the previous (:func:`kdjax.schemes.born_again`; generation
``g`` shares the seed of independent model ``g``, so comparisons are paired).
Ensembles average probabilities (:func:`kdjax.schemes.evaluate_ensemble`).

Protocol (``c.tuning``, :mod:`experiments.tuning`), decided before the runs:
the scratch learning rate (generation 0 and the independent models) is chosen
on a stratified validation split of train with the tuning seed; the born-again
students do not share it: each objective's learning rate (and for ``ban_kd``
its α and τ, ``c.tuning.kd_grids``) is chosen on validation with generation 1
distilled from the tuning generation 0, and that one setting is used for every
generation 1 … k. The paper's BAN objective (α = 0, τ = 1) is a definition and
keeps its α and τ. Test accuracy is measured once per chosen setting and seed.

``python -m experiments.run --config experiments/configs/ban.py``; ``:quick``
is a smoke run on a tiny MLP.

``:digits`` runs on scikit-learn digits (8×8×1; results in
``results/ban_digits/``) with ``plain2w4``, TAKD's depth-2 plain CNN at width
4, which does not saturate digits as the width-16 CNN does, so an ensemble of
independent ones can gain over a single one (see the results), which leaves
the generations room to improve. ``:digits_quick`` is its smoke run.

Design changes after a run: the earlier runs of the default and digits modes
used one fixed learning rate for every model and three seeds; they were
replaced by this protocol (the grids below were set before any tuned run).
The first tuned runs chose the top of the learning-rate grid, 3e-2, in 4 of
the 5 searches (validation accuracies only); 1e-1 was then added to the grid
of both modes (``c.tuning.widened_from``) and the runs repeated, restoring the
complete runs of unchanged settings.
"""

import ml_collections


def _tuning(**kw) -> ml_collections.ConfigDict:
  t = dict(
      fraction=0.1,           # of each class of train, held out for validation
      split_seed=0,           # fixes the validation split
      seed=100,               # the tuning runs' seed (not an evaluation seed)
      learning_rates=(1e-3, 3e-3, 1e-2, 3e-2),  # peak learning rates (scratch and students)
      # (α, τ) grids of the objectives that search them; the others keep their own.
      kd_grids={'ban_kd': {'alpha': (0.1, 0.5), 'temperature': (2.0, 4.0)}})
  t.update(kw)
  return ml_collections.ConfigDict(t)


def get_config(mode: str = 'default') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'ban'
  c.mode = mode
  c.results = 'ban'         # experiments/results/<results>/
  c.workdir = 'runs/ban'    # checkpoints; complete runs are restored, not retrained
  c.seeds = tuple(range(5))  # five seeds: the time budget of the shared 2-core CPU
  c.data_dir = ''
  c.dataset = 'mnist1d'     # 'mnist1d' or 'digits' (experiments.takd.load_data)
  c.data_samples = 0        # 0: the whole dataset
  c.compilation_cache = 'runs/jax_cache'  # persistent XLA compilation cache ('' = off)
  c.progress = False
  c.batch_size = 100
  c.model = ('cnn16', 'cnn1d', {'channels': 16})
  c.generations = 3
  c.num_steps = 2000
  # BAN objectives: (name, alpha, temperature) for alpha*CE + (1-alpha)*tau^2*KL.
  # alpha=0, tau=1: the teacher's output distribution alone (Furlanello et al. §3). An
  # objective listed in c.tuning.kd_grids searches its alpha and tau there instead.
  c.variants = (('ban', 0.0, 1.0), ('ban_kd', 0.1, 4.0))
  c.tuning = _tuning(learning_rates=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
                     widened_from=(1e-3, 3e-3, 1e-2, 3e-2))

  if mode == 'quick':
    c.results = 'ban_quick'
    c.workdir = 'runs/ban_quick'
    c.compilation_cache = ''
    c.seeds = (0, 1)
    c.data_samples = 200
    c.batch_size = 40
    c.model = ('T', 'mlp', {'hidden': (16,)})
    c.generations = 1
    c.num_steps = 10
    c.variants = (('ban', 0.0, 1.0),)
    c.tuning = _tuning(learning_rates=(3e-3, 1e-2), kd_grids={})
  elif mode == 'digits':
    c.dataset = 'digits'
    c.results = 'ban_digits'
    c.workdir = 'runs/ban_digits'
    c.batch_size = 64
    # plain_cnn_2 at width 16 nearly saturates digits, leaving nothing to gain; at width 4
    # independent models disagree more (the disagreement column of results/ban_digits/).
    c.model = ('plain2w4', 'plain_cnn_2', {'plan': (((4,), (4,)), ())})
    c.num_steps = 1000
    c.notes = (
        'Model: plain2w4 is TAKD\'s depth-2 plain CNN (`plain_cnn_2`, conv | conv |, then the '
        'classifier) at width 4 instead of 16. At width 16 it nearly saturates digits, which '
        'leaves the generations nothing to gain. A first design used an MLP(16), whose '
        'independent models disagreed too little for an ensemble to gain; that run left no '
        'records, so its numbers are not reported.')
  elif mode == 'digits_quick':
    c.dataset = 'digits'
    c.results = 'ban_digits_quick'
    c.workdir = 'runs/ban_digits_quick'
    c.compilation_cache = ''
    c.seeds = (0, 1)
    c.data_samples = 200      # the first 160 train / 40 test records
    c.batch_size = 40
    c.model = ('T', 'mlp', {'hidden': (16,)})
    c.generations = 1
    c.num_steps = 10
    c.variants = (('ban', 0.0, 1.0), ('ban_kd', 0.1, 4.0))
    c.tuning = _tuning(learning_rates=(3e-3, 1e-2),
                       kd_grids={'ban_kd': {'alpha': (0.1,), 'temperature': (2.0, 4.0)}})
  elif mode != 'default':
    raise ValueError(f"Unknown ban mode {mode!r}; use 'default', 'quick', 'digits' or "
                     "'digits_quick'.")
  return c
