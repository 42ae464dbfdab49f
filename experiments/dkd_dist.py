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

* KD: ``α·CE + (1−α)·τ²·KL`` (α = 0.1, τ = 4, as in experiment 1);
* DKD: ``CE + w(step)·(α_dkd·τ²·TCKD + β·τ²·NCKD)`` with the paper's linear
  warm-up of the DKD weight ``w`` (a Term weight schedule);
* DIST: ``CE + τ²·(β·inter + γ·intra)``, a scalar per batch (the step treats
  it as a batch-level term).
"""

from __future__ import annotations

import os

import jax.numpy as jnp

from experiments import common
from experiments import stats
from experiments import temperature as base
from kdjax import losses
from kdjax import steps


COLUMNS = ('dataset', 'method', 'setting', 'seeds', *base.VS_KD_COLUMNS)
KEYS = ('dataset', 'method', 'setting')


def warmup(steps_: int):
  """Linear warm-up ``step -> min(step / steps_, 1)`` (DKD's schedule, in steps)."""
  if steps_ <= 0:
    return 1.0
  return lambda step: jnp.minimum(step.astype(jnp.float32) / steps_, 1.0)


def methods(config) -> list[tuple[str, str, tuple]]:
  """``(method, setting, terms)`` for every compared objective (scratch: terms None)."""
  out = [('scratch', '-', None),
         ('KD', f'α={config.kd.alpha:g}, τ={config.kd.temperature:g}',
          base.kd_terms(config.kd.alpha, config.kd.temperature))]
  for d in config.dkd:
    out.append(('DKD', f'α={d.alpha:g}, β={d.beta:g}, τ={d.temperature:g}', (
        steps.task_ce(1.0),
        steps.Term('dkd', losses.decoupled_kd, warmup(config.dkd_warmup_steps), labels=True,
                   kwargs={'alpha': d.alpha, 'beta': d.beta, 'temperature': d.temperature}))))
  for d in config.dist:
    out.append(('DIST', f'β={d.beta:g}, γ={d.gamma:g}, τ={d.temperature:g}', (
        steps.task_ce(1.0),
        steps.Term('dist', losses.dist_loss, 1.0,
                   kwargs={'beta': d.beta, 'gamma': d.gamma, 'temperature': d.temperature}))))
  return out


def collect(config) -> list[dict]:
  """Trains every method for every dataset and seed; returns one record per run."""
  return base.collect_vs_kd(config, lambda setup: methods(config))


def write(config, records: list[dict]) -> list[dict]:
  """Writes records.json, setup.json, the table, plots and verdict; returns the table rows."""
  return report(*base.save(config, records))


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plots and verdict from the records alone; returns the table rows."""
  config = common.config_of(setup)
  rows = base.summarise_vs_kd(records)
  cmp = base.compare_vs_kd(records, rows)
  for dataset in config.datasets_run:
    sel = [dict(r, label=f"{r['method']} {r['setting']}".strip(' -'))
           for r in rows if r['dataset'] == dataset]
    scratch = next(r for r in sel if r['method'] == 'scratch')
    common.errorbar_plot([r for r in sel if r['method'] != 'scratch'], x='label',
                         metric='accuracy', path=os.path.join(out_dir, f'{dataset}.png'),
                         title=f'DKD and DIST vs KD on {dataset}',
                         xlabel='objective',
                         baselines={'scratch': scratch['accuracy_mean']})
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
    verdicts.append(f"**{dataset}**: **{summary}**. KD {kd[base.ACC]}% (vs scratch "
                    f"{stats.summary(vs(kd, 'scratch'))}). {'; '.join(parts)}.")
  common.write_results(
      config.results, rows, COLUMNS,
      title='DKD and DIST vs classic KD',
      finding='Their papers report beating KD (DKD: Zhao et al. '
      'CVPR 2022; DIST: Huang et al. NeurIPS 2022). The scratch column tests '
      'Hinton et al. (2015)\'s finding (KD-style distillation beats the same student from '
      'scratch) for them.',
      verdict=' '.join(verdicts), command=setup['command'], out_dir=out_dir,
      dataset=base.dataset_names(config), seeds=common.seeds_of(records),
      notes=('KD: α·CE + (1−α)·τ²·KL. DKD: CE + w·(α·τ²·TCKD + β·τ²·NCKD) with w warmed up '
             f'linearly over the first {config.dkd_warmup_steps} steps (the paper warms up '
             'over 20 epochs). DIST: CE + τ²·(β·inter + γ·intra), batch-level. Settings are '
             'the papers\' CIFAR defaults (DKD α=1, β=8, τ=4; DIST β=γ=1, τ=4) plus one '
             'smaller β / τ each, not tuned here. Teachers, students and the paired-by-seed '
             'design: experiments/results/temperature. Δ columns are paired differences '
             '(percentage points); accuracies are mean ± std over seeds. Training time (sum over '
             f'student runs): {sum(r["seconds"] for r in records):.0f} s. Raw numbers: '
             'records.json; plots: <dataset>.png.\n\n'
             + common.comparison_lines(list(cmp.values()))))
  return rows


def run(config) -> list[dict]:
  """Runs every method for every dataset and seed; writes the results."""
  base.fresh_results(config)
  return write(config, collect(config))
