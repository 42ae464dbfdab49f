"""Experiment 7: DKD and DIST vs classic KD (and scratch) on MNIST-1D and digits.

DKD and DIST are the standard logit methods of other KD libraries; their
papers claim to beat KD:
DKD (Zhao et al. 2022, arXiv:2203.08679) replaces KD's coupling weight
``1 − p_T,y`` of the non-target term by a constant β; DIST (Huang et al.
2022, arXiv:2205.10536) matches Pearson correlations of the probabilities
across classes (per example) and across the batch (per class), a
batch-level loss. The table says whether either beats KD here, and
whether each beats scratch (Hinton et al. 2015's finding for KD).

Objectives (each paper's form; CE weight 1 as in both papers):

* KD: ``α·CE + (1−α)·τ²·KL`` (α tuned, τ fixed as in experiment 6);
* DKD: ``CE + w(step)·(α_dkd·τ²·TCKD + β·τ²·NCKD)`` with the paper's linear
  warm-up of the DKD weight ``w`` (a Term weight schedule); β tuned;
* DIST: ``CE + τ²·(β·inter + γ·intra)``, a scalar per batch (the step treats
  it as a batch-level term); τ tuned.

Every method's learning rate (and its own hyperparameter above) is chosen on a
validation split of train (``experiments.temperature.run_tuned``); every
evaluation seed has its own teacher, shared with experiments 1 and 6.
"""

from __future__ import annotations

import jax.numpy as jnp

from experiments import common
from experiments import stats
from experiments import temperature as base
from kdjax import losses
from kdjax import steps


COLUMNS = base.TUNED_VS_KD_COLUMNS
KEYS = ('dataset', 'method', 'setting')


def warmup(steps_: int):
  """Linear warm-up ``step -> min(step / steps_, 1)`` (DKD's schedule, in steps)."""
  if steps_ <= 0:
    return 1.0
  return lambda step: jnp.minimum(step.astype(jnp.float32) / steps_, 1.0)


def methods(config, dataset: str = '') -> list[base.Method]:
  """Scratch, KD, DKD and DIST, each with its a-priori grid."""
  kd_tau, d, t = float(config.kd.temperature), config.dkd, config.dist
  return [
      base.Method('scratch', base.grid(config, {}), lambda s, setup: None),
      base.Method('KD', base.grid(config, {'τ': (kd_tau,), 'α': config.kd.alphas}),
                  lambda s, setup: base.kd_terms(s['α'], s['τ'])),
      base.Method('DKD', base.grid(config, {'α': (d.alpha,), 'β': d.betas,
                                            'τ': (d.temperature,)}),
                  lambda s, setup: (steps.task_ce(1.0), steps.Term(
                      'dkd', losses.decoupled_kd, warmup(config.dkd_warmup_steps), labels=True,
                      kwargs={'alpha': s['α'], 'beta': s['β'], 'temperature': s['τ']}))),
      base.Method('DIST', base.grid(config, {'β': (t.beta,), 'γ': (t.gamma,),
                                             'τ': t.temperatures}),
                  lambda s, setup: (steps.task_ce(1.0), steps.Term(
                      'dist', losses.dist_loss, 1.0,
                      kwargs={'beta': s['β'], 'gamma': s['γ'], 'temperature': s['τ']}))),
  ]


def collect(config) -> tuple[list[dict], dict]:
  """Tunes every method on validation; trains the choices for every dataset and seed."""
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  return base.run_tuned(config, lambda ds: methods(config, ds))


def write(config, records: list[dict], facts: dict) -> list[dict]:
  """Writes records.json, setup.json, the table, plots and verdict; returns the table rows."""
  return report(*base.save_tuned(config, records, facts))


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plots and verdict from the records alone; returns the table rows."""
  config = common.config_of(setup)
  rows, cmp = base.tuned_vs_kd_report(records, setup, out_dir, plot_title='DKD and DIST vs KD')
  verdicts = []
  for dataset in config.datasets_run:
    sel = [r for r in rows if r['dataset'] == dataset]
    kd = next(r for r in sel if r['method'] == 'KD')
    rivals = [r for r in sel if r['method'] in ('DKD', 'DIST')]

    def label(r):
      return f"{r['method']} ({r['setting']})"

    def vs(r, baseline):
      return cmp[f'{base.label_of(r, KEYS)} vs {baseline}']

    parts = [f"{label(r)}: vs KD {stats.summary(vs(r, 'KD'))} ({vs(r, 'KD').wins}/"
             f"{vs(r, 'KD').n} seeds above), vs scratch {stats.format_delta(vs(r, 'scratch'))} "
             f"points ({vs(r, 'scratch').verdict})" for r in rivals]
    beats = [label(r) for r in rivals if vs(r, 'KD').verdict == stats.BETTER]
    below = [label(r) for r in rivals if vs(r, 'KD').verdict == stats.WORSE]
    summary = (f"significantly better than KD: {', '.join(beats)}" if beats
               else 'neither DKD nor DIST is significantly better than KD')
    if below:
      summary += f"; significantly worse than KD: {', '.join(below)}"
    verdicts.append(f"**{dataset}**: **{summary}**. KD ({kd['setting']}) {kd[base.ACC]}% (vs "
                    f"scratch {stats.summary(vs(kd, 'scratch'))}). {'; '.join(parts)}.")
  method_note = (
      'KD: α·CE + (1−α)·τ²·KL. DKD: CE + w·(α·τ²·TCKD + β·τ²·NCKD) with w warmed up '
      f'linearly over the first {config.dkd_warmup_steps} steps (the paper warms up over 20 '
      'epochs). DIST: CE + τ²·(β·inter + γ·intra), batch-level. Tuned on validation: every '
      'learning rate, KD\'s α, DKD\'s β and DIST\'s τ; fixed (the setting column): KD\'s τ, '
      'DKD\'s α and τ, DIST\'s β and γ (the papers\' CIFAR defaults). The family (one Holm '
      'correction): every method vs scratch and DKD, DIST vs KD, paired by seed within its '
      'dataset.')
  common.write_results(
      config.results, rows, COLUMNS,
      title='DKD and DIST vs classic KD, tuned on validation',
      finding='Their papers report beating KD (DKD: Zhao et al. '
      'CVPR 2022; DIST: Huang et al. NeurIPS 2022). The scratch column tests '
      'Hinton et al. (2015)\'s finding (KD-style distillation beats the same student from '
      'scratch) for them.',
      verdict=' '.join(verdicts), command=setup['command'], out_dir=out_dir,
      dataset=base.dataset_names(config), seeds=common.seeds_of(records),
      notes=base.vs_kd_notes(records, setup, cmp, method_note))
  return rows


def run(config) -> list[dict]:
  """Tunes and runs every method for every dataset and seed; writes the results."""
  base.fresh_results(config)
  return write(config, *collect(config))
