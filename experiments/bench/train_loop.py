"""Benchmark: end-to-end training loop speed, kdjax ``fit`` against a hand-written floor.

For the demo's recipes on MNIST-1D (batch 100, Adam with cosine decay)

* **KD**: a 1D-CNN teacher → MLP(100, 100) student with
  ``0.1·CE + 0.9·τ²·KL`` (τ = 4);
* **student alone**: the same MLP with cross-entropy only;

it times, in the same process,

1. **fit (device data)**: :func:`kdjax.train.fit` on a
   :class:`kdjax.data.DeviceData` (the default for data that fit on the device);
2. **fit (host pipeline)**: ``fit`` on the grain pipeline, chunks prefetched;
3. **floor**: a minimal hand-written loop: a jitted ``lax.scan`` of a
   hand-written ``value_and_grad`` + optax step over a device array of
   pre-shuffled batches (no guard, no metrics beyond the loss, no logging);
4. **Python loop**: ``fit(compiled=False)``, one jitted call per step, which is
   how every earlier kdjax version drove training.

Each variant runs ``2N`` steps from scratch once (**cold**: compilation
included), then ``N`` and ``2N`` steps again in interleaved rounds, compiled
functions cached (**warm**: ``T(2N) / 2N``, the best round; **marginal**:
``(T(2N) − T(N)) / N``, in which set-up cancels but the noise of two timings
adds up). The table reports all three, their ratios to the floor, and the
achieved FLOP/s of a warm step (XLA's cost analysis of the floor's step)
against the machine's float32 matmul peak measured in the same run.

It also times the KD step against its parts, the teacher's forward pass
alone plus the student's step alone, each a compiled scan over the same
batches (:func:`bench_kd_overhead`), and the achieved FLOP/s of supervised
training for MLP widths 100–1024 and the 1D CNN, scan against a Python loop
(:func:`bench_efficiency`).

Run ``python -m experiments.bench.train_loop`` (``--quick`` for a short run);
results go to ``experiments/results/bench_train_loop/bench.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.bench._measure import compiled_flops
from experiments.bench._measure import machine
from experiments.bench._measure import matmul_peak
from experiments.bench._measure import write_report
from kdjax import data as kdata
from kdjax import models
from kdjax import steps
from kdjax.runs import default_optimizer
from kdjax.state import TrainState
from kdjax.train import fit
from kdjax.train import make_chunk_fn


RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results',
                       'bench_train_loop')
ALPHA, TEMPERATURE = 0.1, 4.0
VARIANTS = ('fit (device data)', 'fit (host pipeline)', 'floor', 'Python loop')


def _floor_loss(apply_fn, params, teacher_logits, batch):
  """``α·CE + (1 − α)·τ²·KL(p_T^τ ‖ p_S^τ)`` written out (``α = 1``: CE only)."""
  logits = apply_fn({'params': params}, batch['x'])
  log_p = jax.nn.log_softmax(logits)
  ce = -jnp.take_along_axis(log_p, batch['label'][:, None], axis=-1).mean()
  if teacher_logits is None:
    return ce
  log_s = jax.nn.log_softmax(logits / TEMPERATURE)
  log_t = jax.nn.log_softmax(teacher_logits / TEMPERATURE)
  kl = (jnp.exp(log_t) * (log_t - log_s)).sum(-1).mean()
  return ALPHA * ce + (1 - ALPHA) * TEMPERATURE**2 * kl


def make_floor(apply_fn, tx, teacher_apply=None):
  """The hand-written floor: ``run(params, opt_state, teacher, xs) -> (params, opt_state, loss)``.

  ``xs`` holds the run's batches stacked on a leading step axis.
  """

  def one_step(carry, batch, teacher):
    params, opt_state = carry
    teacher_logits = None if teacher_apply is None else teacher_apply(teacher, batch['x'])
    loss, grads = jax.value_and_grad(
        lambda p: _floor_loss(apply_fn, p, teacher_logits, batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  @jax.jit
  def run(params, opt_state, teacher, xs):
    (params, opt_state), losses = jax.lax.scan(
        lambda c, b: one_step(c, b, teacher), (params, opt_state), xs)
    return params, opt_state, losses

  return run, one_step


def _stacked_batches(train, batch_size: int, num_steps: int) -> dict:
  it = iter(kdata.make_pipeline(train, batch_size=batch_size, seed=0))
  batches = [next(it) for _ in range(num_steps)]
  return {k: np.stack([b[k] for b in batches]) for k in ('x', 'label')}


def bench_recipe(kd: bool, *, num_steps: int, batch_size: int = 100,
                 student_hidden=(100, 100), steps_per_call: int = 100,
                 repeats: int = 2, data_dir=None) -> dict:
  """Times the four variants of one recipe (KD or student alone).

  Each variant runs ``2N`` steps once cold (compilation included: the
  end-to-end time), then ``N`` and ``2N`` steps warm, best of ``repeats``
  interleaved rounds (the marginal time per step).
  """
  train = kdata.load('mnist1d', 'train', data_dir=data_dir)
  info = kdata.dataset_info('mnist1d')
  student = models.create('mlp', info.num_classes, hidden=tuple(student_hidden))
  x0 = np.asarray(train[0]['x'])[None]
  s_vars = models.init_variables(student, jax.random.key(2), x0)
  tx = default_optimizer(3e-3, 2 * num_steps)
  state = TrainState.create(apply_fn=models.as_forward(student), variables=s_vars, tx=tx)
  if kd:
    teacher = models.create('cnn1d', info.num_classes)
    t_vars = models.init_variables(teacher, jax.random.key(1), x0)
    step = steps.make_distill_step(
        (steps.task_ce(ALPHA), steps.soft_kd(1 - ALPHA, temperature=TEMPERATURE)),
        models.as_forward(teacher))
    t_apply = lambda v, x: teacher.apply(v, x, train=False)  # noqa: E731
  else:
    teacher, t_vars, step, t_apply = None, None, steps.make_train_step(), None
  floor_run, floor_step = make_floor(lambda v, x: student.apply(v, x, train=False), tx, t_apply)
  stacked = _stacked_batches(train, batch_size, 2 * num_steps)

  python_step = jax.jit(step, donate_argnums=0)

  def timed(variant: str, n: int) -> float:
    start = time.perf_counter()
    if variant == 'floor':
      xs = jax.device_put({k: v[:n] for k, v in stacked.items()})
      params, _, losses = floor_run(s_vars['params'], tx.init(s_vars['params']), t_vars, xs)
      jax.block_until_ready((params, losses))
    else:
      data = (kdata.DeviceData(train, batch_size=batch_size, seed=0)
              if variant == 'fit (device data)'
              else iter(kdata.make_pipeline(train, batch_size=batch_size, seed=0)))
      python = variant == 'Python loop'
      result = fit(state, python_step if python else step, data, num_steps=n,
                   rng=jax.random.key(0), teacher_variables=t_vars, progress=False,
                   log_every=steps_per_call, compiled=not python)
      jax.block_until_ready(result.state)
    return time.perf_counter() - start

  cold = {v: timed(v, 2 * num_steps) for v in VARIANTS}  # compiles (fit caches its chunks)
  # Interleaved rounds, so a burst of load from other processes hits every variant alike.
  warm = {(v, n): float('inf') for v in VARIANTS for n in (num_steps, 2 * num_steps)}
  for _ in range(repeats):
    for v, n in warm:
      warm[v, n] = min(warm[v, n], timed(v, n))
  rows = []
  for v in VARIANTS:
    t1, t2 = warm[v, num_steps], warm[v, 2 * num_steps]
    rows.append({'variant': v, 'seconds_cold_2n': cold[v], 'seconds_warm_n': t1,
                 'seconds_warm_2n': t2, 'e2e_ms_per_step': 1e3 * cold[v] / (2 * num_steps),
                 'warm_ms_per_step': 1e3 * t2 / (2 * num_steps),
                 'marginal_ms_per_step': 1e3 * max(t2 - t1, 1e-9) / num_steps})
  batch = jax.tree.map(lambda v: v[0], stacked)
  opt_state = tx.init(s_vars['params'])
  flops = compiled_flops(jax.jit(floor_step).lower(
      (s_vars['params'], opt_state), batch, t_vars).compile())
  by = {r['variant']: r for r in rows}
  for r in rows:
    r['e2e_over_floor'] = r['e2e_ms_per_step'] / by['floor']['e2e_ms_per_step']
    r['warm_over_floor'] = r['warm_ms_per_step'] / by['floor']['warm_ms_per_step']
    r['marginal_over_floor'] = r['marginal_ms_per_step'] / by['floor']['marginal_ms_per_step']
    r['flop_per_s'] = flops / (r['warm_ms_per_step'] / 1e3)
  return {'recipe': 'KD cnn1d → mlp' if kd else 'student alone (mlp)',
          'student_hidden': list(student_hidden), 'batch': batch_size, 'num_steps': num_steps,
          'steps_per_call': steps_per_call, 'flops_per_step': flops, 'rows': rows}


def bench_kd_overhead(*, num_steps: int, batch_size: int = 100, student_hidden=(100, 100),
                      repeats: int = 3, data_dir=None) -> dict:
  """The KD step against its parts: teacher forward alone plus the student step alone.

  Each of the three runs as one compiled ``lax.scan`` over the same
  ``num_steps`` device-resident batches (no donation, so the state is reused);
  the best of ``repeats`` interleaved rounds is kept.
  """
  train = kdata.load('mnist1d', 'train', data_dir=data_dir)
  info = kdata.dataset_info('mnist1d')
  student = models.create('mlp', info.num_classes, hidden=tuple(student_hidden))
  teacher = models.create('cnn1d', info.num_classes)
  x0 = np.asarray(train[0]['x'])[None]
  s_vars = models.init_variables(student, jax.random.key(2), x0)
  t_vars = models.init_variables(teacher, jax.random.key(1), x0)
  state = TrainState.create(apply_fn=models.as_forward(student), variables=s_vars,
                            tx=default_optimizer(3e-3, num_steps))
  t_fwd = models.as_forward(teacher)
  kd_step = steps.make_distill_step(
      (steps.task_ce(ALPHA), steps.soft_kd(1 - ALPHA, temperature=TEMPERATURE)), t_fwd)
  xs = jax.device_put(_stacked_batches(train, batch_size, num_steps))

  @jax.jit
  def teacher_only(t_vars, xs):
    return jax.lax.map(lambda b: t_fwd(t_vars, b['x'], train=False).logits.sum(), xs)

  kd_chunk = make_chunk_fn(kd_step, donate=False)
  student_chunk = make_chunk_fn(steps.make_train_step(), donate=False)
  runs = {
      'KD step': lambda: kd_chunk(state, t_vars, xs, jax.random.key(0), None),
      'student step alone': lambda: student_chunk(state, None, xs, jax.random.key(0), None),
      'teacher forward alone': lambda: teacher_only(t_vars, xs),
  }
  best = {}
  for name, run in runs.items():
    jax.block_until_ready(run())  # compile
    best[name] = float('inf')
  for _ in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      best[name] = min(best[name], time.perf_counter() - start)
  ms = {name: 1e3 * t / num_steps for name, t in best.items()}
  parts = ms['student step alone'] + ms['teacher forward alone']
  return {'num_steps': num_steps, 'batch': batch_size, 'ms_per_step': ms,
          'sum_of_parts_ms': parts, 'kd_over_parts': ms['KD step'] / parts}


def bench_efficiency(models_to_run=('mlp-100', 'mlp-256', 'mlp-512', 'mlp-1024', 'cnn1d'), *,
                     num_steps: int, batch_size: int = 256, repeats: int = 3,
                     data_dir=None) -> list[dict]:
  """Achieved FLOP/s of supervised training, compiled scan against a Python loop of steps.

  ``'mlp-W'`` is an MLP with two hidden layers of width ``W``. Both paths run
  the same jitted :func:`kdjax.steps.make_train_step` over the same
  ``num_steps`` device-resident batches; FLOPs per step come from XLA's cost
  analysis.
  """
  train = kdata.load('mnist1d', 'train', data_dir=data_dir)
  info = kdata.dataset_info('mnist1d')
  x0 = np.asarray(train[0]['x'])[None]
  stacked = jax.device_put(_stacked_batches(train, batch_size, num_steps))
  batches = [jax.tree.map(lambda v: v[i], stacked) for i in range(num_steps)]
  step = steps.make_train_step()
  chunk, jitted = make_chunk_fn(step, donate=False), jax.jit(step)
  runners = {}
  for name in models_to_run:
    model = (models.create('mlp', info.num_classes, hidden=(int(name[4:]),) * 2)
             if name.startswith('mlp-') else models.create(name, info.num_classes))
    state = TrainState.create(apply_fn=models.as_forward(model), tx=optax.adam(1e-3),
                              variables=models.init_variables(model, jax.random.key(0), x0))
    flops = compiled_flops(jitted.lower(state, None, batches[0], jax.random.key(0)).compile())

    def scan_run(state=state):
      return chunk(state, None, stacked, jax.random.key(0), None)

    def python_run(state=state):
      for batch in batches:
        state, metrics = jitted(state, None, batch, jax.random.key(0))
      return state, metrics

    for run in (scan_run, python_run):
      jax.block_until_ready(run())  # compile
    runners[name] = (flops, {'scan': scan_run, 'Python loop': python_run})
  best = {(n, p): float('inf') for n in runners for p in ('scan', 'Python loop')}
  for _ in range(repeats):
    for (name, path) in best:
      start = time.perf_counter()
      jax.block_until_ready(runners[name][1][path]())
      best[name, path] = min(best[name, path], time.perf_counter() - start)
  rows = []
  for name, (flops, _) in runners.items():
    row = {'model': name, 'batch': batch_size, 'flops_per_step': flops}
    for path in ('scan', 'Python loop'):
      row[f'{path}_ms_per_step'] = 1e3 * best[name, path] / num_steps
      row[f'{path}_flop_per_s'] = flops * num_steps / best[name, path]
    rows.append(row)
  return rows


def markdown(result: dict) -> str:
  peak = result['matmul_peak_flop_per_s']
  lines = [
      f"Training loop, end to end ({result['device']}, jax {result['jax']}, load avg "
      f"{result['load_average_start']:.1f} → {result['load_average_end']:.1f}; matmul peak "
      f"{peak / 1e9:.0f} GFLOP/s)",
      '',
      '| recipe | loop | ms/step cold (2N) | × floor | ms/step warm (2N) | × floor | '
      'marginal ms/step | × floor | GFLOP/s warm (% peak) |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for recipe in result['recipes']:
    name = f"{recipe['recipe']} (N={recipe['num_steps']}, batch {recipe['batch']})"
    for r in recipe['rows']:
      lines.append(
          f"| {name} | {r['variant']} | {r['e2e_ms_per_step']:.3f} | {r['e2e_over_floor']:.2f}× | "
          f"{r['warm_ms_per_step']:.3f} | {r['warm_over_floor']:.2f}× | "
          f"{r['marginal_ms_per_step']:.3f} | {r['marginal_over_floor']:.2f}× | "
          f"{r['flop_per_s'] / 1e9:.2f} ({100 * r['flop_per_s'] / peak:.1f}%) |")
  overhead = result.get('kd_overhead')
  if overhead:
    ms = overhead['ms_per_step']
    lines += [
        '', f"KD overhead (batch {overhead['batch']}, {overhead['num_steps']} steps per scan):", '',
        '| KD step ms | student step alone ms | teacher forward alone ms | '
        'KD / (student + teacher) |',
        '|---:|---:|---:|---:|',
        f"| {ms['KD step']:.3f} | {ms['student step alone']:.3f} | "
        f"{ms['teacher forward alone']:.3f} | {overhead['kd_over_parts']:.2f}× |"]
  if result.get('efficiency'):
    lines += ['', 'Arithmetic efficiency of supervised training (compiled scan vs a Python '
              'call per step):', '',
              '| model | batch | GFLOP/step | scan ms/step | scan GFLOP/s (% peak) | '
              'Python ms/step | Python GFLOP/s (% peak) |',
              '|---|---:|---:|---:|---:|---:|---:|']
    for r in result['efficiency']:
      lines.append(
          f"| {r['model']} | {r['batch']} | {r['flops_per_step'] / 1e9:.4f} | "
          f"{r['scan_ms_per_step']:.3f} | {r['scan_flop_per_s'] / 1e9:.1f} "
          f"({100 * r['scan_flop_per_s'] / peak:.1f}%) | {r['Python loop_ms_per_step']:.3f} | "
          f"{r['Python loop_flop_per_s'] / 1e9:.1f} "
          f"({100 * r['Python loop_flop_per_s'] / peak:.1f}%) |")
  return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='N = 300 instead of 1500')
  parser.add_argument('--num-steps', type=int, default=None)
  parser.add_argument('--repeats', type=int, default=3, help='warm runs per length (best kept)')
  parser.add_argument('--out', default=RESULTS)
  args = parser.parse_args(argv)
  num_steps = args.num_steps or (300 if args.quick else 1500)
  load = os.getloadavg()[0]
  recipes = [bench_recipe(kd, num_steps=num_steps, repeats=args.repeats) for kd in (True, False)]
  overhead = bench_kd_overhead(num_steps=num_steps, repeats=args.repeats)
  efficiency = bench_efficiency(num_steps=max(num_steps // 5, 2), repeats=args.repeats)
  result = {**machine(load), 'matmul_peak_flop_per_s': matmul_peak(), 'recipes': recipes,
            'kd_overhead': overhead, 'efficiency': efficiency}
  return write_report(args.out, result, markdown)


if __name__ == '__main__':
  main()
