"""Weight distillation (Lin et al. 2020) on MNIST-1D: CNN1D teacher -> narrower CNN1D student.

Claim tested (Lin et al. 2020): weight distillation — a parameter generator maps the
teacher's weights to the student's (``W_S = P·W_T·Q``), trained through the
KD loss (phase 1), then the generated student is fine-tuned (phase 2) — beats
KD for the same student.

Every student gets ``student.num_steps`` updates in total (WD: phase 1 +
phase 2), the same KD objective, optimizer and data order. The "slice init"
row starts the student at the teacher's leading slice (WD's identity
generator, no phase 1) and trains with KD, isolating what phase 1 adds.

Usable from a notebook::

    from experiments import weight_distillation as wd
    from experiments.configs import weight_distillation as cfg
    rows = wd.run(cfg.get_config('quick'))
"""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np

from experiments import common
from experiments import stats
from experiments.netaug import fit_and_evaluate
from experiments.netaug import state_fn
from kdjax import data as kdata
from kdjax import models
from kdjax import runs
from kdjax import schemes
from kdjax import steps
from kdjax.state import TrainState


DELTA = 'Δ test vs KD (paired)'
COLUMNS = ('run', 'model', 'params', 'test accuracy', DELTA, *stats.COLUMNS, 'seeds', 'steps',
           'wall time / run (s)')
COMMAND = 'python -m experiments.run --config experiments/configs/weight_distillation.py'


def run(config) -> list[dict]:
  """Trains the teacher and the four students per seed; returns the table rows."""
  if config.fresh and os.path.isdir(config.workdir):
    shutil.rmtree(config.workdir)
  data_dir = config.data_dir or None
  train_src = kdata.load(config.dataset, 'train', data_dir=data_dir)
  test_src = kdata.load(config.dataset, 'test', data_dir=data_dir)
  sample = np.asarray(train_src[0]['x'])[None]
  teacher = models.CNN1D(num_classes=10, channels=config.teacher.channels)
  student = models.CNN1D(num_classes=10, channels=config.student.channels)
  t_label, s_label = f'CNN1D({config.teacher.channels})', f'CNN1D({config.student.channels})'
  gen = schemes.weight_generator(student, teacher, sample, bias=config.wd.bias)
  print(f'Layer pairs (student <- teacher): {dict(gen.pairs)}')

  n_total, n_1 = config.student.num_steps, config.wd.phase1_steps
  n_2 = n_total - n_1
  if n_2 <= 0:
    raise ValueError('`wd.phase1_steps` must be below `student.num_steps`.')
  kd_terms = (steps.task_ce(config.kd.alpha),
              steps.soft_kd(1 - config.kd.alpha, temperature=config.kd.temperature))
  # Built once and shared by the seeds: a TrainState's apply_fn and tx are static, so a
  # fresh closure or optimizer per seed would recompile the steps. States are created
  # under jit (one compilation instead of many eager ops).
  tx = runs.default_optimizer(config.student.learning_rate, n_total)
  tx_phase1 = runs.default_optimizer(config.wd.phase1_learning_rate, n_1)
  tx_phase2 = runs.default_optimizer(config.student.learning_rate, n_2)
  s_fwd, t_fwd, g_fwd = models.as_forward(student), models.as_forward(teacher), gen.forward(
      student)
  init_student = jax.jit(lambda rng: models.init_variables(student, rng, sample))
  new_student = state_fn(student, sample, tx)
  train_step = jax.jit(steps.make_train_step(), donate_argnums=0)
  kd_step = jax.jit(steps.make_distill_step(kd_terms, t_fwd), donate_argnums=0)
  eval_step = jax.jit(steps.make_eval_step(s_fwd))
  export = jax.jit(gen.student_variables)

  @jax.jit
  def slice_student(rng, teacher_params):
    """The student at WD's identity generator (the teacher's leading slice), untrained P/Q."""
    variables = gen.student_variables({'params': gen.init(init_student(rng)['params'],
                                                          teacher_params),
                                       schemes.TEACHER_WEIGHTS: teacher_params})
    return TrainState.create(apply_fn=s_fwd, variables=variables, tx=tx)

  @jax.jit
  def generator_state(rng, teacher_params):
    return gen.create_state(student, init_student(rng), teacher_params, tx_phase1,
                            init=config.wd.init, rng=rng).replace(apply_fn=g_fwd)

  finetune_state = jax.jit(lambda state: gen.finetune_state(state, s_fwd, tx_phase2))
  s_params = models.count_params(jax.eval_shape(init_student, jax.random.key(0))['params'])
  new_teacher = state_fn(teacher, sample, runs.default_optimizer(
      config.teacher.learning_rate, config.teacher.num_steps))
  teacher_eval = jax.jit(steps.make_eval_step(t_fwd))
  t_params = models.count_params(jax.eval_shape(new_teacher, jax.random.key(0)).params)
  eval_sets = {'test': test_src}
  common_args = dict(train_src=train_src, eval_sets=eval_sets, eval_step=eval_step,
                     batch_size=config.batch_size, progress=config.progress)

  records = []
  for seed in config.seeds:
    wdir = os.path.join(config.workdir, f'seed{seed}')
    init_rng, _, step_rng = jax.random.split(jax.random.key(seed), 3)
    t_state, t_metrics, t_seconds = fit_and_evaluate(
        new_teacher(init_rng), train_step, num_steps=config.teacher.num_steps, seed=seed,
        rng=step_rng, workdir=os.path.join(wdir, 'teacher'), desc=f'teacher s{seed}',
        **{**common_args, 'eval_step': teacher_eval})
    t_vars = t_state.variables
    records.append({'run': 'teacher', 'model': t_label, 'seed': seed, 'params': t_params,
                    'steps': config.teacher.num_steps,
                    'test_accuracy': t_metrics['test_accuracy'], 'seconds': t_seconds})

    def student_run(name, state, step_fn, num_steps, *, teacher_variables=None, export_fn=None,
                    rng=step_rng):
      final, metrics, seconds = fit_and_evaluate(
          state, step_fn, num_steps=num_steps, seed=seed, rng=rng,
          teacher_variables=teacher_variables, export=export_fn,
          workdir=os.path.join(wdir, name), desc=f'{name} s{seed}', **common_args)
      return final, metrics, seconds

    results = {}
    results['scratch'] = student_run('scratch', new_student(init_rng), train_step, n_total)[1:]
    results['KD'] = student_run('kd', new_student(init_rng), kd_step, n_total,
                                teacher_variables=t_vars)[1:]
    results['slice init + KD'] = student_run(
        'slice_kd', slice_student(init_rng, t_vars['params']), kd_step, n_total,
        teacher_variables=t_vars)[1:]
    # Weight distillation. Phase 1 trains only the generator (P, Q) through the KD loss:
    # the state's params are the generator's and its forward generates the student.
    g_state = generator_state(init_rng, t_vars['params'])
    p1_state, p1_metrics, p1_seconds = student_run(
        'wd_phase1', g_state, kd_step, n_1, teacher_variables=t_vars, export_fn=export)
    # Phase 2 fine-tunes the generated student as a normal student (same KD loss).
    f_state = finetune_state(p1_state)
    _, p2_metrics, p2_seconds = student_run('wd_phase2', f_state, kd_step, n_2,
                                            teacher_variables=t_vars,
                                            rng=jax.random.fold_in(step_rng, 2))
    results['WD: phase 1 only'] = (p1_metrics, p1_seconds)
    results['WD: phase 1 + phase 2'] = (p2_metrics, p1_seconds + p2_seconds)
    steps_of = {'WD: phase 1 only': f'{n_1}', 'WD: phase 1 + phase 2': f'{n_1} + {n_2}'}
    for name, (metrics, seconds) in results.items():
      records.append({'run': name, 'model': s_label, 'seed': seed, 'params': s_params,
                      'steps': steps_of.get(name, str(n_total)),
                      'test_accuracy': metrics['test_accuracy'], 'seconds': seconds})
      print(f'seed {seed} {name:24s} test {metrics["test_accuracy"]:.3f} ({seconds:.1f}s)',
            flush=True)

  kd_acc = {r['seed']: r['test_accuracy'] for r in records if r['run'] == 'KD'}
  for r in records:
    r['delta_kd'] = r['test_accuracy'] - kd_acc[r['seed']]
  out = common.results_dir(config.results)
  common.save_records(records, os.path.join(out, 'records.json'))
  setup = common.save_setup(
      out, experiment='weight_distillation', config=config,
      command=COMMAND + ('' if config.results == 'weight_distillation' else ':quick'),
      facts={'train_size': len(train_src), 'test_size': len(test_src),
             'layer_pairs': dict(gen.pairs)})
  return report(common.load_results(out)[0], setup, out)


def report(records: list[dict], setup: dict, out: str) -> list[dict]:
  """Writes the table, plot and verdict from the records alone; returns the table rows."""
  config, facts = common.config_of(setup), setup['facts']
  t_label, s_label = f'CNN1D({config.teacher.channels})', f'CNN1D({config.student.channels})'
  n_total, n_1 = config.student.num_steps, config.wd.phase1_steps
  n_2 = n_total - n_1
  kd_acc = {r['seed']: r['test_accuracy'] for r in records if r['run'] == 'KD'}
  for r in records:
    r['delta_kd'] = r['test_accuracy'] - kd_acc[r['seed']]
  students = [r for r in dict.fromkeys(r['run'] for r in records)
              if r not in ('teacher', 'KD', 'scratch')]
  family = [(f'{run} vs KD', common.paired(records, {'run': run}, {'run': 'KD'}, 'test_accuracy'))
            for run in students]
  family += [(f'{run} vs scratch', common.paired(records, {'run': run}, {'run': 'scratch'},
                                                 'test_accuracy'))
             for run in ('KD', 'WD: phase 1 + phase 2')]
  cmp = {c.name: c for c in stats.compare(family)}
  rows = common.aggregate(records, ['run', 'model', 'params', 'steps'],
                          ['test_accuracy', 'delta_kd', 'seconds'],
                          percent=['test_accuracy', 'delta_kd'])
  for row in rows:
    row['params'] = f'{row["params"]:,}'
    row['test accuracy'] = row['test_accuracy']
    row.update(stats.columns(cmp.get(f'{row["run"]} vs KD'), delta=DELTA))
    row['wall time / run (s)'] = f'{row["seconds_mean"]:.1f}'

  common.errorbar_plot(rows, x='run', metric='test_accuracy',
                       path=os.path.join(out, 'weight_distillation.png'),
                       title=f'Weight distillation, {t_label} -> {s_label} on MNIST-1D')
  by_run = {r['run']: r for r in rows}
  wd = cmp['WD: phase 1 + phase 2 vs KD']
  outcome = {stats.BETTER: 'reproduced', stats.WORSE: 'refuted (WD is worse)'}.get(
      wd.verdict, f'not reproduced ({wd.verdict})')
  verdict = (
      f'The paper\'s claim that WD beats KD for the same student is {outcome} on our data: '
      f'WD (phase 1 + 2) {by_run["WD: phase 1 + phase 2"]["test_accuracy"]}% vs KD '
      f'{by_run["KD"]["test_accuracy"]}%, WD − KD {stats.summary(wd)}. KD − scratch: '
      f'{stats.summary(cmp["KD vs scratch"])}.')
  notes = (
      f'Setup: MNIST-1D ({facts["train_size"]} train / {facts["test_size"]} test), teacher '
      f'{t_label} ({config.teacher.num_steps} steps, lr '
      f'{config.teacher.learning_rate:g}), student {s_label}; every student has '
      f'{n_total} Adam steps in total (cosine decay, lr {config.student.learning_rate:g}, '
      f'batch {config.batch_size}) and the KD objective α·CE + (1−α)·τ²·KL with '
      f'α = {config.kd.alpha:g}, τ = {config.kd.temperature:g} (scratch: CE only). WD phase 1: '
      f'{n_1} steps training only P and Q (Adam, lr {config.wd.phase1_learning_rate:g}, '
      f'{config.wd.init} init, bias {config.wd.bias}); phase 2: {n_2} steps fine-tuning the '
      f'generated student. Layer pairs (student ← teacher): {facts["layer_pairs"]}. "WD: phase '
      '1 only" evaluates the generated student right after phase 1. The teacher is retrained '
      'per seed. Test accuracy: mean ± std over seeds.\n\n'
      + common.comparison_lines(list(cmp.values())) +
      '\n\nPlot: `weight_distillation.png`. Raw per-seed numbers: `records.json`.')
  common.write_results(
      config.results, rows, COLUMNS, title='Weight distillation on MNIST-1D',
      finding='Weight distillation (generator phase + fine-tuning) beats KD for the same '
      'student (Lin et al. 2020).',
      verdict=verdict, command=setup['command'], notes=notes, out_dir=out,
      dataset='MNIST-1D', seeds=common.seeds_of(records))
  return rows
