"""What the ONE and BYOT experiments share: regularised baselines and the validation search.

ONE (Lan et al. 2018) and BYOT (Zhang et al. 2019) train extra heads whose
losses also regularise the network, so a fair comparison puts them next to
the plain single network trained with a standard regulariser too (as the DML
experiment does, :mod:`experiments.dml`): label smoothing (Szegedy et al.
2016) and decoupled weight decay (AdamW, Loshchilov & Hutter 2019,
:func:`experiments.dml.optimizer`). Every method's learning rate (and AdamW's
decay) is chosen on a validation split of the training set with a tuning seed
(:mod:`experiments.tuning`), never on test.

The networks of both experiments are built here from the config: the 1-D CNN
of MNIST-1D (``config.net = 'cnn1d'``) or a small CIFAR-style ResNet on
scikit-learn digits (``config.net = 'resnet'``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax

from experiments import tuning
from experiments.dml import eval_batches
from experiments.dml import init_key
from experiments.dml import jit_init
from experiments.dml import optimizer
from experiments.dml import run_dir
from experiments.dml import train_loop
from kdjax import models
from kdjax import steps
from kdjax import train
from kdjax.state import TrainState


def regularised_of(config) -> list[dict]:
  """The config's regularised baselines as ``{'name', 'label_smoothing', 'adamw'}``.

  ``config.regularised`` holds ``(name, label_smoothing, adamw)`` tuples; an
  ``adamw`` baseline has its weight decay searched over
  ``config.tuning.weight_decays``.

  Examples:
    >>> regularised_of({'regularised': [('+ LS 0.1', 0.1, False)]})
    [{'name': '+ LS 0.1', 'label_smoothing': 0.1, 'adamw': False}]
  """
  return [{'name': n, 'label_smoothing': float(ls), 'adamw': bool(wd)}
          for n, ls, wd in config.get('regularised', ())]


def grid(config, adamw: bool = False) -> list[dict]:
  """The a-priori search grid of one method: learning rates (× weight decays for AdamW)."""
  axes = {'learning_rate': tuple(float(v) for v in config.tuning.learning_rates)}
  if adamw:
    axes['weight_decay'] = tuple(float(v) for v in config.tuning.weight_decays)
  return tuning.grid_of(**axes)


def tuning_notes(config, facts: Mapping[str, Any], score: str) -> str:
  """The Markdown paragraph on the validation search (grid, choices, edge flags).

  Args:
    config: the run's config (``config.tuning``).
    facts: ``setup.json`` facts with ``fit_size``, ``validation_size``,
      ``train_size`` and ``tuning``.
    score: what the validation accuracy of a method is, e.g. ``'the mean over
      branches'``.
  """
  t = config.tuning
  edge = tuning.edge_choices(facts['tuning'])
  edge_note = (' **At the edge of the grid:** ' + '; '.join(edge) + ' (a wider grid might move '
               'these choices).' if edge else ' No choice lies at an end of its grid.')
  return (
      tuning.split_sentence(t, facts)
      + '; for every method each setting of the grid below (fixed before '
      f'the runs) trained on the other {facts["fit_size"]} with seed {t.seed} (not an '
      f'evaluation seed), scored by {score}; the best (ties: the first) was then trained on '
      'the full training split for every seed and evaluated on test once.' + edge_note
      + ' Validation accuracy per setting:\n\n' + tuning.tuning_lines(facts['tuning']) + '\n\n')


def regularised_notes(config) -> str:
  """The sentence describing the regularised baselines."""
  parts = []
  for b in regularised_of(config):
    what = ([f'label smoothing {b["label_smoothing"]:g}'] if b['label_smoothing'] else []) + (
        ['decoupled weight decay (`optax.adamw`, the same cosine schedule; decay tuned below)']
        if b['adamw'] else [])
    parts.append(f'"{b["name"]}": ' + ', '.join(what))
  return ('Regularised single-network baselines (the plain network, cross-entropy, one run per '
          'seed sharing run #0\'s initialisation and data order): ' + '; '.join(parts) + '. ')


class Optimizers:
  """One optax optimizer object per ``(learning rate, weight decay)``.

  States built with the same object share their static fields, so a jitted
  step compiles once per setting, not once per seed.
  """

  def __init__(self, num_steps: int):
    self.num_steps = num_steps
    self._cache: dict[tuple[float, float], Any] = {}

  def __call__(self, setting: Mapping[str, Any]):
    key = (float(setting['learning_rate']), float(setting.get('weight_decay', 0.0)))
    if key not in self._cache:
      self._cache[key] = optimizer(key[0], self.num_steps, key[1])
    return self._cache[key]


def net_name(config) -> str:
  """The single network's display name, e.g. ``'CNN1D'`` or ``'ResNet-8'``.

  Examples:
    >>> net_name({'net': 'resnet', 'depth': 8}), net_name({})
    ('ResNet-8', 'CNN1D')
  """
  if config.get('net', 'cnn1d') == 'resnet':
    return f'ResNet-{config["depth"]}'
  return 'CNN1D'


def regularised_names(config) -> list[str]:
  """The regularised baselines' model names, e.g. ``'CNN1D + label smoothing 0.1'``."""
  return [f'{net_name(config)} + {b["name"]}' for b in regularised_of(config)]


def plain_network(config):
  """The single network without extra heads: the zoo ``cnn1d`` or a ``CifarResNet``."""
  if config.get('net', 'cnn1d') == 'resnet':
    return models.CifarResNet(depth=config.depth, widths=tuple(config.widths), num_classes=10)
  return models.create('cnn1d', 10, channels=config.channels,
                       kernel_sizes=tuple(config.kernel_sizes))


def common_hparams(config) -> dict:
  """The hyperparameters every run of the experiment shares (they enter the run hashes)."""
  return {'num_steps': config.num_steps, 'batch_size': config.batch_size,
          'model': net_kwargs(config), 'data_samples': config.data_samples,
          'dataset': config.get('dataset', 'mnist1d')}


def fit_kwargs(config) -> dict:
  """The ``experiments.dml.train_loop`` options every run shares."""
  return dict(num_steps=config.num_steps, batch_size=config.batch_size,
              progress=config.progress)


class PlainRuns:
  """The plain single network of ONE and BYOT and its (regularised) training runs.

  Attributes:
    model: the network (:func:`plain_network`).
    forward: its forward function.
    eval_step: the jitted evaluation step.
  """

  def __init__(self, config, sample_x, optimizers: 'Optimizers', timings: list):
    self.config, self.txs, self.timings = config, optimizers, timings
    self.model = plain_network(config)
    self.forward = models.as_forward(self.model)
    self.init = jit_init(self.model, sample_x)
    self.eval_step = jax.jit(steps.make_eval_step(self.forward))
    self._steps = {}  # one compiled train step per label smoothing

  def train(self, seed: int, setting: Mapping[str, Any], label_smoothing: float, src,
            tag: str, name: str):
    """Trains one run (checkpointed when ``tag == 'train'``); returns its fit result."""
    if label_smoothing not in self._steps:
      self._steps[label_smoothing] = jax.jit(
          steps.make_train_step(label_smoothing=label_smoothing), donate_argnums=0)
    state = TrainState.create(apply_fn=self.forward, variables=self.init(init_key(seed)),
                              tx=self.txs(setting))
    hp = {**common_hparams(self.config), **setting, 'seed': seed,
          'label_smoothing': label_smoothing}
    fit = train_loop(state, self._steps[label_smoothing], src, seed=seed,
                     # Tuning runs are not checkpointed (saving costs more than retraining).
                     workdir=run_dir(self.config, seed, name, hp) if tag == 'train' else None,
                     desc=f'{name} seed {seed} ({tag})', **fit_kwargs(self.config))
    self.timings.append(fit.seconds)
    return fit

  def scorer(self, label_smoothing: float, name: str, fit_src, val_src):
    """``setting -> validation accuracy``: trains on ``fit_src`` with the tuning seed."""
    def score(setting):
      fit = self.train(self.config.tuning.seed, setting, label_smoothing, fit_src, 'train_fit',
                       name)
      return train.evaluate(self.eval_step, fit.state.variables, eval_batches(val_src))['accuracy']
    return score


def net_kwargs(config) -> dict:
  """The network options that enter the run directories' hashes."""
  if config.get('net', 'cnn1d') == 'resnet':
    return {'net': 'resnet', 'depth': config.depth, 'widths': tuple(config.widths)}
  return {'channels': config.channels, 'kernel_sizes': tuple(config.kernel_sizes)}
