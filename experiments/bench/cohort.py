"""Benchmark: K peers in one vmapped DML step vs a Python loop of K jitted steps.

For each model and cohort size ``K`` this times

* **vmapped**: :func:`kdjax.cohort.make_cohort_step` on a stacked cohort, one
  jitted call updating all ``K`` peers (deep mutual learning, Zhang et al.
  2018, arXiv:1706.00384);
* **unrolled**: the same step with ``unroll_peers=True``: the stacked peers
  are unrolled by a trace-time loop inside the one jitted call (plain
  convolutions instead of the grouped ones ``jax.vmap`` produces);
* **loop**: the classic implementation, a Python loop of jitted calls: one
  forward per peer to get the targets, then one single-peer update per peer
  (``kdjax.steps.make_distill_step`` with the task CE and a KL term per other
  peer, whose fixed logits enter as teachers: same objective, guard and
  metrics), ``2K`` dispatches per cohort step (``1`` for ``K = 1``).

It reports cohort steps per second, the speed-up, and the achieved FLOP/s
(XLA's cost analysis of the compiled programs) against the machine's measured
float32 matmul peak (a 2048³ matmul timed at the start and the end of the
run; the better reading is kept). Data are synthetic.

Run ``python -m experiments.bench.cohort`` (``--quick`` for a short run);
results go to ``experiments/results/bench_cohort/bench.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
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
from kdjax import cohort as co
from kdjax import models
from kdjax import steps


RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results',
                       'bench_cohort')
TEMPERATURE = 1.0

# name -> (input shape without batch, batch size, cohort sizes, min timed steps, rounds)
SUITE = {
    'mlp': ((40,), 100, (1, 2, 4, 8), 200, 3),
    'cnn1d': ((40,), 100, (1, 2, 4, 8), 100, 3),
    'resnet20': ((32, 32, 3), 32, (1, 2, 4, 8), 1, 1),
}


def _timeit(runs: dict, min_steps: int, min_seconds: float, rounds: int) -> dict:
  """Best steps/s of each ``runs[name]()`` (which blocks on its result).

  The variants are timed in interleaved rounds and the best round is kept, so
  that all of them see the same background load (the machine may be shared).
  """
  for run in runs.values():
    run()  # warm-up
  best = {name: 0.0 for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      steps, start = 0, time.perf_counter()
      while steps < min_steps or time.perf_counter() - start < min_seconds:
        run()
        steps += 1
      best[name] = max(best[name], steps / (time.perf_counter() - start))
  return best


def _constant_forward(variables, x, *, train, rngs=None):
  """A "teacher" whose output is a peer's precomputed logits (``variables['logits']``)."""
  del x, train, rngs
  return models.ModelOutput(variables['logits'], {}, {})


def make_peer_step(num_peers: int, temperature: float = TEMPERATURE):
  """The loop baseline's single-peer DML update, written with the engine alone.

  ``kdjax.steps.make_distill_step`` with the task CE and one ``soft_kd`` term
  (weight ``1/(K−1)``) per other peer, whose fixed logits enter as teachers:
  the same objective, non-finite guard and per-peer metrics as the vmapped
  cohort step, for one peer. Called as ``step(state, {name: {'logits': z}},
  batch, rng)``.
  """
  names = [f'peer{j}' for j in range(num_peers - 1)]
  terms = [steps.task_ce()] + [
      steps.soft_kd(1.0 / (num_peers - 1), temperature=temperature, teacher_name=n,
                    name=f'kl/{n}') for n in names]
  return steps.make_distill_step(terms, {n: _constant_forward for n in names} or None), names


def bench_model(name: str, num_peers: int, *, in_shape, batch_size: int, min_steps: int,
                min_seconds: float, rounds: int) -> dict:
  """Times the vmapped, unrolled and looped cohort steps for one model and ``K``."""
  model = models.create(name, num_classes=10)
  rng = np.random.default_rng(0)
  batch = {'x': jnp.asarray(rng.normal(size=(batch_size,) + in_shape), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 10, size=batch_size), jnp.int32)}
  tx = optax.adam(1e-3)
  keys = jax.random.split(jax.random.key(0), num_peers)
  cohort = co.init_cohort(model, tx, keys, batch['x'][:1])
  key = jax.random.key(1)
  compile_s, flops, runs = {}, {}, {}

  # vmapped: one jitted call for all K stacked peers; unrolled: the same stacked
  # state, peers unrolled by a trace-time loop inside the one jitted call.
  for variant, unroll in [('vmapped', False), ('unrolled', True)]:
    t = time.perf_counter()
    compiled = jax.jit(co.make_cohort_step(temperature=TEMPERATURE, unroll_peers=unroll)).lower(
        cohort, batch, key).compile()
    compile_s[variant], flops[variant] = time.perf_counter() - t, compiled_flops(compiled)
    box = {'cohort': cohort}

    def run(box=box, compiled=compiled):
      box['cohort'], metrics = compiled(box['cohort'], batch, key)
      metrics['loss'].block_until_ready()

    runs[variant] = run

  # loop: K forwards for the targets, then K single-peer engine steps.
  peers = co.unstack(cohort.peers)
  t = time.perf_counter()
  forward = jax.jit(lambda s, x: s.apply_fn(s.variables, x, train=True).logits).lower(
      peers[0], batch['x']).compile()
  peer_step, names = make_peer_step(num_peers)
  sample = {n: {'logits': jnp.zeros((batch_size, 10), jnp.float32)} for n in names} or None
  update = jax.jit(peer_step).lower(peers[0], sample, batch, key).compile()
  compile_s['loop'] = time.perf_counter() - t
  flops['loop'] = num_peers * compiled_flops(update) + (
      num_peers * compiled_flops(forward) if num_peers > 1 else 0)
  loop_state = {'peers': peers}

  def run_loop():
    ps = loop_state['peers']
    logits = [forward(p, batch['x']) for p in ps] if num_peers > 1 else []
    new = []
    for k, p in enumerate(ps):
      others = [z for j, z in enumerate(logits) if j != k]
      teachers = {n: {'logits': z} for n, z in zip(names, others)} or None
      p, metrics = update(p, teachers, batch, key)
      new.append(p)
    metrics['loss'].block_until_ready()
    loop_state['peers'] = new

  runs['loop'] = run_loop
  rates = _timeit(runs, min_steps, min_seconds, rounds)
  row = {'model': name, 'K': num_peers, 'batch': batch_size,
         'speedup_vmapped_vs_loop': rates['vmapped'] / rates['loop'],
         'speedup_unrolled_vs_loop': rates['unrolled'] / rates['loop']}
  for variant in runs:
    row[f'{variant}_steps_per_s'] = rates[variant]
    row[f'{variant}_flops_per_step'] = flops[variant]
    row[f'{variant}_flop_per_s'] = flops[variant] * rates[variant]
    row[f'{variant}_compile_s'] = compile_s[variant]
  return row


def _fmt(rate: float) -> str:
  return f'{rate:.1f}' if rate >= 10 else f'{rate:.3g}'


def markdown(result: dict) -> str:
  """The results as a Markdown table."""
  peak = result['matmul_peak_flop_per_s']
  lines = [
      f"Cohort DML step: vmapped vs unrolled vs Python loop ({result['device']}, "
      f"{result['cpu_count']} cores, jax {result['jax']}; load average "
      f"{result['load_average_start']:.1f} → {result['load_average_end']:.1f}; "
      f"measured 2048³ float32 matmul peak {peak / 1e9:.0f} GFLOP/s)",
      '',
      '| model | K | batch | vmapped steps/s | unrolled steps/s | loop steps/s | vmapped / loop | '
      'unrolled / loop | vmapped GFLOP/s (% peak) | unrolled GFLOP/s (% peak) | '
      'loop GFLOP/s (% peak) | compile s (vmap / unroll / loop) |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]

  def rate(r, v):
    return f"{r[f'{v}_flop_per_s'] / 1e9:.2f} ({100 * r[f'{v}_flop_per_s'] / peak:.1f}%)"

  for r in result['rows']:
    lines.append(
        f"| {r['model']} | {r['K']} | {r['batch']} | {_fmt(r['vmapped_steps_per_s'])} | "
        f"{_fmt(r['unrolled_steps_per_s'])} | {_fmt(r['loop_steps_per_s'])} | "
        f"{r['speedup_vmapped_vs_loop']:.2f}× | {r['speedup_unrolled_vs_loop']:.2f}× | "
        f"{rate(r, 'vmapped')} | {rate(r, 'unrolled')} | {rate(r, 'loop')} | "
        f"{r['vmapped_compile_s']:.1f} / {r['unrolled_compile_s']:.1f} / "
        f"{r['loop_compile_s']:.1f} |")
  lines += [
      '',
      'steps/s: cohort updates per second (all K peers updated once), best of interleaved '
      'rounds. vmapped: `make_cohort_step` on stacked peers (one jitted call, `jax.vmap`). '
      'unrolled: the same step with `unroll_peers=True` (trace-time loop over the peers inside '
      'the one jitted call). loop: per cohort step, K jitted forwards for the targets and K jitted '
      'single-peer `make_distill_step` updates. FLOPs: XLA cost analysis of the compiled '
      'programs; the loop recomputes each peer\'s forward, so it counts more per step.',
  ]
  return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', nargs='+', default=list(SUITE), choices=list(SUITE))
  parser.add_argument('--quick', action='store_true', help='fewer steps, K <= 4')
  parser.add_argument('--min-seconds', type=float, default=0.5,
                      help='minimum time per variant and round')
  parser.add_argument('--rounds', type=int, default=3, help='interleaved timing rounds')
  parser.add_argument('--out', default=RESULTS)
  parser.add_argument('--render', action='store_true',
                      help='only rewrite bench.md from an existing bench.json')
  args = parser.parse_args(argv)
  if args.render:
    with open(os.path.join(args.out, 'bench.json')) as f:
      result = json.load(f)
    table = markdown(result)
    with open(os.path.join(args.out, 'bench.md'), 'w') as f:
      f.write(table)
    print(table)
    return result

  load_start = os.getloadavg()[0]
  peak = matmul_peak()
  print(f'matmul peak: {peak / 1e9:.0f} GFLOP/s (2048³ float32)', flush=True)
  rows = []
  for name in args.models:
    in_shape, batch_size, ks, min_steps, rounds = SUITE[name]
    if args.quick:
      ks, min_steps = tuple(k for k in ks if k <= 4), max(1, min_steps // 4)
    for k in ks:
      row = bench_model(name, k, in_shape=in_shape, batch_size=batch_size, min_steps=min_steps,
                        min_seconds=0.2 if args.quick else args.min_seconds,
                        rounds=1 if args.quick else min(rounds, args.rounds))
      rows.append(row)
      print(f"{name:9s} K={k}: vmapped {row['vmapped_steps_per_s']:8.3g}/s  unrolled "
            f"{row['unrolled_steps_per_s']:8.3g}/s  loop {row['loop_steps_per_s']:8.3g}/s",
            flush=True)
  # Re-measured at the end: on a shared machine the best reading is the peak.
  peak = max(peak, matmul_peak())
  result = {
      **machine(load_start), 'matmul_peak_flop_per_s': peak,
      'temperature': TEMPERATURE, 'rows': rows,
  }
  return write_report(args.out, result, markdown)


if __name__ == '__main__':
  main()
