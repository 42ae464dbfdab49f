"""Experiment: the RepDistiller set of feature and relational methods vs scratch and KD (MNIST-1D).

Tian, Krishnan & Isola (ICLR 2020, "Contrastive Representation Distillation",
arXiv:1910.10699) benchmark twelve distillation objectives on CIFAR-100 with
one protocol (their RepDistiller code). Their finding: every method helps
the student over training it alone, and CRD beats all the others, KD
included. Here every method is a :class:`kdjax.steps.Term` (``kdjax/_terms.py``)
on MNIST-1D.

Protocol (RepDistiller's ``-r 1 -a 0 -b β``): the student minimises
``CE + β·L_method``, trained jointly from the first step; KD is
``0.1·CE + 0.9·τ²·KL`` (τ = 4; ``-r 0.1 -a 0.9``), and CRD+KD, the paper's one
combination with KD, is ``CE + τ²·KL + 0.8·L_CRD`` (``-a 1 -b 0.8``). The
weights β are the paper's (RepDistiller's ``run_cifar_distill.sh``) wherever
the library's loss has the authors' normalisation; the exceptions are stated
in ``experiments/configs/repdistiller.py``. RepDistiller trains FSP and FT in
two stages (the FSP student's features, the FT paraphraser, first); here
every method is one joint stage, so FT's paraphraser learns while it is used
(:class:`kdjax._terms.FactorTransfer`) and FSP's term acts throughout.

The features are RepDistiller's choices mapped to the 1D CNN: the three conv
stages ``stage1..3`` for AT, NST and VID (one term per stage, summed), the
last stage ``stage3`` for SP, FT and FitNet's hint on ``stage2``, the flattened
``embedding`` for RKD, PKT, CC, CRD and the triplet term. Teacher and student
are the same strided CNN1D, the student narrower in its last stage, so every
stage has the same length in both (19, 10, 5). FSP needs two maps of one
length within a network and equal channel counts across the networks: the
pair (``stage1``, ``stage2``), whose first map is average-pooled from 19 to 10
positions as RepDistiller's FSP does (``adaptive_avg_pool``; see
:class:`PooledPair`).

Each seed has its own teacher (teacher seed = student seed) and every
method's student of a seed shares its initialisation and data order, so the
differences are paired by seed, against scratch and against KD, with 95%
intervals and one Holm correction over the family.

    from experiments import repdistiller
    from experiments.configs import repdistiller as cfg
    rows = repdistiller.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments import stats
from experiments import temperature as base
from kdjax import steps


COLUMNS = ('dataset', 'method', 'setting', 'seeds', *base.VS_KD_COLUMNS)
KEYS = ('dataset', 'method', 'setting')
TITLE = ('The RepDistiller set (feature and relational KD), CE + β·L_method, vs scratch and KD '
         '(0.1·CE + 0.9·τ²·KL)')
FINDING = ('Every feature or relational distillation objective beats the student trained '
           'alone, and CRD beats them all, KD included (Tian, Krishnan & Isola, ICLR 2020, '
           'CIFAR-100, the RepDistiller protocol CE + β·L_method).')


# ------------------------------------------------------------------ FSP on strided maps

def adaptive_pool_matrix(length_in: int, length_out: int) -> np.ndarray:
  """``[length_out, length_in]`` weights of adaptive average pooling (PyTorch's windows).

  Output ``i`` averages the inputs ``floor(i·L_in / L_out) .. ceil((i+1)·L_in / L_out) − 1``
  (windows overlap when ``L_out`` does not divide ``L_in``).

  Examples:
    >>> adaptive_pool_matrix(5, 3) @ np.arange(5.0)
    array([0.5, 2. , 3.5])
  """
  if not 1 <= length_out <= length_in:
    raise ValueError(f'Cannot pool {length_in} positions to {length_out}.')
  m = np.zeros((length_out, length_in))
  for i in range(length_out):
    lo = (i * length_in) // length_out
    hi = -((-(i + 1) * length_in) // length_out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def _pool_to(x: jnp.ndarray, length: int) -> jnp.ndarray:
  """``[B, L, C] -> [B, length, C]`` by adaptive average pooling (identity if equal)."""
  if x.shape[1] == length:
    return x
  return jnp.einsum('ol,blc->boc', adaptive_pool_matrix(x.shape[1], length), x)


class PooledPair(nn.Module):
  """FSP inputs from ``(in, out)`` maps of different lengths, as RepDistiller pools them.

  The longer 1-D map of each network's pair ``[B, L, C]`` is average-pooled to
  the shorter one's length (RepDistiller's FSP applies ``adaptive_avg_pool2d``
  to the larger map); all four maps are returned as ``[B, L, 1, C]`` for
  :func:`kdjax.losses.fsp_loss`. No parameters.

  Examples:
    >>> s = (jnp.ones((2, 19, 4)), jnp.ones((2, 10, 3)))
    >>> [x.shape for x in PooledPair().apply({}, s, s, None)]
    [(2, 10, 1, 4), (2, 10, 1, 3), (2, 10, 1, 4), (2, 10, 1, 3)]
  """

  def __call__(self, student, teacher, context) -> tuple:
    del context
    out = []
    for x_in, x_out in (student, teacher):
      length = min(x_in.shape[1], x_out.shape[1])
      out += [_pool_to(x_in, length)[:, :, None, :], _pool_to(x_out, length)[:, :, None, :]]
    return tuple(out)


# ------------------------------------------------------------------ the methods

def _stages(factory, weight: float, stages: Sequence[str], **kw) -> tuple:
  """One term per stage (the paper sums the method over layer pairs)."""
  return tuple(factory(s, s, weight, **kw) for s in stages)


def methods(config, setup) -> list[tuple[str, str, tuple]]:
  """``(method, setting, terms)`` for scratch, KD and every method (``CE + β·L``).

  ``setup`` (``experiments.temperature.Setup``) gives CRD its bank size (the
  training set's).
  """
  w = config.weights
  kd = config.kd
  ce = steps.task_ce(1.0)
  stages = tuple(config.stages)
  crd = steps.crd(w.crd, num_examples=len(setup.train), embed_dim=config.crd.embed_dim,
                  num_negatives=config.crd.num_negatives,
                  temperature=config.crd.temperature, momentum=config.crd.momentum)
  fsp = dataclasses.replace(steps.fsp(tuple(config.fsp_pair), tuple(config.fsp_pair), w.fsp),
                            module=PooledPair())
  hint_channels = setup.teacher_forward(setup.teacher_variables, setup.train[0]['x'][None],
                                        train=False).features[config.hint_stage].shape[-1]
  fitnet = steps.hint(config.hint_stage, config.hint_stage, w.fitnet,
                      adapter=nn.Conv(hint_channels, (3,), padding='SAME'))
  all_stages = '+'.join(stages)
  table = [
      ('scratch', '-', None),
      ('KD', f'α={kd.alpha:g}, τ={kd.temperature:g}', base.kd_terms(kd.alpha, kd.temperature)),
      ('FitNet', f'β={w.fitnet:g}, {config.hint_stage}', (ce, fitnet)),
      ('AT', f'β={w.at:g} × {all_stages}',
       (ce, *_stages(steps.attention_transfer, w.at, stages))),
      ('SP', f'β={w.sp:g}, {config.last_stage}',
       (ce, steps.similarity_preserving(config.last_stage, config.last_stage, w.sp))),
      ('CC', f'β={w.cc:g}, heads {config.cc_embed_dim}',
       (ce, steps.correlation_congruence(w.cc, embed_dim=config.cc_embed_dim))),
      ('VID', f'β={w.vid:g} × {all_stages}', (ce, *_stages(steps.vid, w.vid, stages))),
      ('RKD', f'β=1: {w.rkd_distance:g}·D + {w.rkd_angle:g}·A',
       (ce, steps.rkd_distance(w.rkd_distance), steps.rkd_angle(w.rkd_angle))),
      ('PKT', f'β={w.pkt:g}', (ce, steps.pkt(w.pkt))),
      ('FT', f'β={w.ft:g}, {config.last_stage}',
       (ce, steps.factor_transfer(config.last_stage, config.last_stage, w.ft))),
      ('FSP', f'β={w.fsp:g}, {"-".join(config.fsp_pair)}', (ce, fsp)),
      ('NST', f'β={w.nst:g} × {all_stages}', (ce, *_stages(steps.nst, w.nst, stages))),
      ('triplet', f'β={w.triplet:g}, margin {config.triplet_margin:g}',
       (ce, steps.triplet(w.triplet, margin=config.triplet_margin, student_head=True))),
      ('CRD', f'β={w.crd:g}, K={config.crd.num_negatives}', (ce, crd)),
      ('CRD+KD', f'β={w.crd:g}, K={config.crd.num_negatives}, +τ²·KL',
       (ce, steps.soft_kd(1.0, temperature=kd.temperature), crd)),
  ]
  return [m for m in table if m[0] in config.methods]


def collect(config) -> list[dict]:
  """Trains, for every seed, its teacher and every method's student; one record per run."""
  records = []
  for seed in config.seeds:
    c = copy.deepcopy(config)
    with c.unlocked():
      c.seeds, c.teacher_seed = (seed,), seed
    records += base.collect_vs_kd(c, lambda setup, c=c: methods(c, setup))
  return records


# ------------------------------------------------------------------ report

def write(config, records: list[dict]) -> list[dict]:
  """Writes records.json, setup.json, the table, plot and verdict; returns the table rows."""
  return report(*base.save(config, records))


def zero_spread_note(family) -> str:
  """A caveat for each significant comparison whose per-seed differences are all equal.

  With zero spread the paired t gives p = 0 (:func:`experiments.stats.paired_t`), so
  such a verdict rests on the seeds agreeing exactly, not on an estimated spread.

  Examples:
    >>> zero_spread_note(stats.compare({'A vs B': [0.011, 0.011, 0.011]}))
    ' A vs B: its 3 per-seed differences are all +1.1 points; with zero spread the paired t gives p = 0, so this verdict rests on the seeds agreeing exactly, not on an estimated spread.'
    >>> zero_spread_note(stats.compare({'A vs B': [0.01, 0.02, 0.03]}))
    ''
  """  # noqa: E501
  notes = [f' {c.name}: its {c.n} per-seed differences are all {stats.format_delta(c)} points; '
           'with zero spread the paired t gives p = 0, so this verdict rests on the seeds '
           'agreeing exactly, not on an estimated spread.'
           for c in family if c.verdict in (stats.BETTER, stats.WORSE)
           and len(set(c.diffs)) == 1]
  return ''.join(notes)


def _verdict(rows: list[dict], cmp: dict) -> str:
  def vs(r, baseline):
    return cmp[f'{base.label_of(r, KEYS)} vs {baseline}']

  rivals = [r for r in rows if r['method'] not in ('scratch', 'KD')]
  kd = next(r for r in rows if r['method'] == 'KD')

  def names(rs):
    return ', '.join(r['method'] for r in rs) or 'none'

  better_s = [r for r in rivals if vs(r, 'scratch').verdict == stats.BETTER]
  worse_s = [r for r in rivals if vs(r, 'scratch').verdict == stats.WORSE]
  better_kd = [r for r in rivals if vs(r, 'KD').verdict == stats.BETTER]
  worse_kd = [r for r in rivals if vs(r, 'KD').verdict == stats.WORSE]
  best = max(rivals, key=lambda r: r['accuracy_mean'])
  crd = next((r for r in rivals if r['method'] == 'CRD'), None)
  if len(better_s) == len(rivals):
    first = 'holds: every method beats scratch'
  elif better_s:
    first = f'partly: {len(better_s)} of {len(rivals)} methods beat scratch'
  else:
    first = 'not reproduced: no method is significantly better than scratch'
  text = (f'**{first}**; significantly better than scratch: {names(better_s)}; worse: '
          f'{names(worse_s)}. KD vs scratch: {stats.summary(vs(kd, "scratch"))}. '
          f'Significantly better than KD: {names(better_kd)}; worse than KD: {names(worse_kd)}. '
          f'Nominally best: {best["method"]} ({best[base.ACC]}%, vs KD '
          f'{stats.format_delta(vs(best, "KD"))} points).')
  if crd is not None:
    top = all(crd['accuracy_mean'] >= r['accuracy_mean'] for r in rivals if r is not crd
              and r['method'] != 'CRD+KD')
    text += (f' CRD {"is" if top else "is not"} the nominal best of the methods without KD; vs '
             f'KD {stats.summary(vs(crd, "KD"))}.')
  return text + zero_spread_note(cmp.values())


def report(records: list[dict], setup: dict, out_dir: str) -> list[dict]:
  """Writes the table, plot and verdict from the records alone; returns the table rows."""
  config = common.config_of(setup)
  rows = base.summarise_vs_kd(records)
  cmp = base.compare_vs_kd(records, rows)
  base_rows = {r['method']: r for r in rows if r['method'] in ('scratch', 'KD')}
  common.errorbar_plot(
      [dict(r, label=r['method']) for r in rows if r['method'] not in base_rows], x='label',
      metric='accuracy', path=os.path.join(out_dir, 'mnist1d.png'),
      title='RepDistiller methods (CE + β·L) on MNIST-1D', xlabel='method',
      baselines={f'{m} {r["accuracy_mean"] * 100:.1f}%': r['accuracy_mean']
                 for m, r in base_rows.items()})
  teacher = common.aggregate(
      [r for r in records if r['method'] == 'scratch'], ['dataset'], ['teacher accuracy'],
      percent=['teacher accuracy'])[0]['teacher accuracy']
  spec = config.datasets.mnist1d
  seconds = sum(r['seconds'] for r in records)
  notes = (
      f'Teachers: {spec.teacher.model} {dict(spec.teacher.kwargs)}, one per seed (teacher seed = '
      f'student seed), {spec.teacher.num_steps} steps, lr {spec.teacher.learning_rate:g}; test '
      f'accuracy {teacher}% (mean ± std over seeds). Students: {spec.student.model} '
      f'{dict(spec.student.kwargs)}, {spec.student.num_steps} steps, lr '
      f'{spec.student.learning_rate:g} (Adam, cosine decay, batch {config.batch_size}); the '
      'students of a seed share initialisation and data order. Objective of every method: '
      'CE + β·L_method (RepDistiller\'s -r 1 -a 0 -b β), one joint stage (RepDistiller trains '
      'FSP and FT in two); KD: 0.1·CE + 0.9·τ²·KL (τ = 4)'
      + ('; CRD+KD: CE + τ²·KL + 0.8·L_CRD. ' if 'CRD+KD' in config.methods else '. ') +
      'β are the paper\'s where the library loss has the authors\' normalisation; CC (the '
      'paper\'s CC code is another formula), the triplet term (not in RepDistiller) and CRD\'s '
      'negatives (16384 of 50000 images in the paper) are set as the config explains, '
      'nothing is tuned on the test set. CRD uses the InfoNCE form (the paper\'s NCE variant '
      'is not implemented). Δ columns: paired differences in points; accuracies: mean ± std '
      f'over seeds. Training time (sum over student runs, shared 2-core CPU): {seconds:.0f} s. '
      'Raw numbers: records.json; plot: mnist1d.png.\n\n'
      + common.comparison_lines(list(cmp.values())))
  common.write_results(
      config.results, rows, COLUMNS, title=TITLE, finding=FINDING,
      verdict=_verdict(rows, cmp), command=setup['command'], notes=notes, out_dir=out_dir,
      dataset=base.dataset_names(config), seeds=common.seeds_of(records))
  return rows


def run(config) -> list[dict]:
  """Trains every method for every seed; writes results/<config.results>/."""
  common.enable_compilation_cache(config.get('compilation_cache', ''))
  base.fresh_results(config)
  return write(config, collect(config))
