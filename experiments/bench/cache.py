"""Benchmark: a KD step reading the teacher from a cache vs one recomputing it.

For each teacher → student pair it times, with the same objective
(``task_ce(0.1) + soft_kd(0.9, τ=4)``) and batches from the real training
pipeline,

* **student only**: the supervised step (no teacher term): the floor that a
  cached step can reach;
* **live teacher**: :func:`kdjax.steps.make_distill_step`, the teacher's
  forward pass inside every step;
* **cached (full)**: :func:`kdjax.cache.make_cached_distill_step` over a
  :class:`~kdjax.cache.TeacherCache` (``[N, C]`` logits);
* **cached (top-k)**: the same over a :class:`~kdjax.cache.TopKCache`
  (``k`` logits, their classes and one tail log-mass per example).

It reports steps per second on both of :func:`kdjax.train.fit`'s paths: a
Python loop of jitted steps with donated state (``compiled=False``) and the
compiled loop, one :func:`kdjax.train.make_chunk_fn` call running all the
batches with ``lax.scan`` (``compiled=True``); then XLA's compiled memory statistics
(peak and temporary bytes of each step), the cache's bytes and build time, the
break-even point (steps after which building the cache has paid for itself),
the process RSS, and the achieved FLOP/s of each step (XLA's cost analysis)
against the machine's float32 matmul peak measured in the same run
(2048³). Teachers are randomly initialised: speed does not depend on training.

Run ``python -m experiments.bench.cache`` (``--quick`` for a short run);
results go to ``experiments/results/bench_cache/bench.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import jax
import jax.numpy as jnp
import optax

from experiments.bench._measure import compiled_flops
from experiments.bench._measure import compiled_memory
from experiments.bench._measure import machine
from experiments.bench._measure import matmul_peak
from experiments.bench._measure import rss_bytes
from experiments.bench._measure import write_report
from kdjax import cache as kc
from kdjax import data as kdata
from kdjax import models
from kdjax import steps
from kdjax.state import TrainState
from kdjax.train import make_chunk_fn


RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results',
                       'bench_cache')
TEMPERATURE = 4.0
TOPK = 3

# name -> (dataset, teacher (name, kwargs), student (name, kwargs), batch size)
SUITE = {
    'cnn1d→mlp': ('mnist1d', ('cnn1d', {}), ('mlp', {'hidden': (100, 100)}), 100),
    'cnn1d-128→mlp': ('mnist1d', ('cnn1d', {'channels': 128}), ('mlp', {'hidden': (100, 100)}),
                      100),
    'resnet20→mlp (digits)': ('digits', ('resnet20', {}), ('mlp', {'hidden': (32,)}), 100),
}


class _Runner:
  """Runs a compiled step over cycled batches, keeping its (donated) state between calls."""

  steps_per_call = 10

  def __init__(self, compiled, state, teacher, batches):
    self.compiled, self.state, self.teacher = compiled, state, teacher
    self.cycle = itertools.cycle(batches)
    self.rng = jax.random.key(0)
    self.run()  # warm-up

  def run(self) -> None:
    """Runs ``steps_per_call`` steps and waits for them."""
    metrics = None
    for _ in range(self.steps_per_call):
      self.state, metrics = self.compiled(self.state, self.teacher, next(self.cycle), self.rng)
    metrics['loss'].block_until_ready()

  def rate(self, min_steps: int, min_seconds: float) -> float:
    """Steps per second over at least ``min_steps`` steps and ``min_seconds``."""
    n, start = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - start < min_seconds:
      self.run()
      n += self.steps_per_call
    return n / (time.perf_counter() - start)


class _ScanRunner(_Runner):
  """Runs all the batches as one compiled ``lax.scan`` chunk per call (fit's compiled path)."""

  def __init__(self, step, state, teacher, batches):  # pylint: disable=super-init-not-called
    self.chunk = make_chunk_fn(step, donate=False)
    self.state, self.teacher = state, teacher
    self.stacked = jax.tree.map(lambda *v: jnp.stack(v), *batches)
    self.steps_per_call = len(batches)
    self.rng = jax.random.key(0)
    self.run()  # compile and warm up

  def run(self) -> None:
    _, metrics = self.chunk(self.state, self.teacher, self.stacked, self.rng, None)
    metrics['loss'].block_until_ready()


def bench_pair(name: str, *, min_steps: int, min_seconds: float, rounds: int = 3,
               num_batches: int = 20, data_dir=None) -> dict:
  """Times the four steps for one teacher → student pair.

  The variants are timed in ``rounds`` interleaved rounds (so a burst of load
  from other processes hits all of them alike); each reports its best round.
  """
  dataset, (t_name, t_kw), (s_name, s_kw), batch_size = SUITE[name]
  info = kdata.dataset_info(dataset)
  train = kdata.load(dataset, 'train', data_dir=data_dir)
  teacher = models.create(t_name, info.num_classes, **t_kw)
  student = models.create(s_name, info.num_classes, **s_kw)
  it = iter(kdata.make_pipeline(train, batch_size=batch_size, seed=0))
  host_batches = [next(it) for _ in range(num_batches)]
  batches = [jax.device_put(b) for b in host_batches]
  x0 = batches[0]['x']
  t_vars = models.init_variables(teacher, jax.random.key(1), x0[:1])
  s_vars = models.init_variables(student, jax.random.key(2), x0[:1])
  t_fwd = models.as_forward(teacher)
  state = TrainState.create(apply_fn=student, variables=s_vars, tx=optax.adam(1e-3))
  terms = (steps.task_ce(0.1), steps.soft_kd(0.9, temperature=TEMPERATURE))

  rss0 = rss_bytes()
  t = time.perf_counter()
  full = kc.build_cache(t_fwd, t_vars, train, batch_size=256)
  jax.block_until_ready(full)
  build_full = time.perf_counter() - t
  t = time.perf_counter()
  topk = kc.build_topk_cache(t_fwd, t_vars, train, k=TOPK, temperature=TEMPERATURE,
                             batch_size=256)
  jax.block_until_ready(topk)
  build_topk = time.perf_counter() - t
  rss_cache = rss_bytes()

  variants = {
      'student only': (steps.make_train_step(), None),
      'live teacher': (steps.make_distill_step(terms, t_fwd), t_vars),
      'cached (full)': (kc.make_cached_distill_step(terms), full),
      f'cached (top-{TOPK})': (kc.make_cached_distill_step(terms), topk),
  }
  rows, runners, scanners = [], [], []
  for variant, (step, teacher_in) in variants.items():
    t = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(
        state, teacher_in, batches[0], jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t
    # Donation consumes the state: give each variant its own copy.
    runners.append(_Runner(compiled, jax.tree.map(jnp.copy, state), teacher_in, batches))
    scanners.append(_ScanRunner(step, state, teacher_in, batches))
    flops = compiled_flops(compiled)
    rows.append({'pair': name, 'variant': variant, 'batch': batch_size, 'flops_per_step': flops,
                 'compile_s': compile_s, **compiled_memory(compiled)})
  everyone = runners + scanners
  rates = [[r.rate(min_steps, min_seconds / rounds) for r in everyone] for _ in range(rounds)]
  for j, row in enumerate(rows):
    best = max(round_[j] for round_ in rates)
    scan = max(round_[len(runners) + j] for round_ in rates)
    row.update(steps_per_s=best, ms_per_step=1e3 / best, flop_per_s=row['flops_per_step'] * best,
               steps_per_s_rounds=[round_[j] for round_ in rates],
               scan_steps_per_s=scan, scan_ms_per_step=1e3 / scan,
               scan_flop_per_s=row['flops_per_step'] * scan,
               scan_steps_per_s_rounds=[round_[len(runners) + j] for round_ in rates])
  by = {r['variant']: r for r in rows}
  live, cached, floor = by['live teacher'], by['cached (full)'], by['student only']
  saved = live['ms_per_step'] - cached['ms_per_step']
  topk_row = by[f'cached (top-{TOPK})']
  return {
      'pair': name, 'dataset': dataset, 'num_examples': len(train),
      'teacher': f'{t_name} {t_kw or ""}'.strip(), 'student': f'{s_name} {s_kw or ""}'.strip(),
      'teacher_params': models.count_params(t_vars['params']),
      'student_params': models.count_params(s_vars['params']),
      'teacher_forward_flops': models.flops(teacher, x0.shape, variables=t_vars),
      'cache_full_bytes': full.nbytes, 'cache_topk_bytes': topk.nbytes,
      'build_full_s': build_full, 'build_topk_s': build_topk,
      'speedup': live['ms_per_step'] / cached['ms_per_step'],
      'cached_over_floor': cached['ms_per_step'] / floor['ms_per_step'],
      'scan_speedup': live['scan_ms_per_step'] / cached['scan_ms_per_step'],
      'scan_cached_over_floor': cached['scan_ms_per_step'] / floor['scan_ms_per_step'],
      'scan_topk_over_floor': topk_row['scan_ms_per_step'] / floor['scan_ms_per_step'],
      'break_even_steps': build_full / (saved / 1e3) if saved > 0 else float('inf'),
      'rss_before_cache_bytes': rss0, 'rss_after_cache_bytes': rss_cache,
      'rows': rows,
  }


def _mb(x: float) -> str:
  return f'{x / 2**20:.2f}'


def markdown(result: dict) -> str:
  peak = result['matmul_peak_flop_per_s']
  lines = [
      f"KD step with a cached teacher vs recomputing it ({result['device']}, jax "
      f"{result['jax']}, load avg {result['load_average_start']:.1f} → "
      f"{result['load_average_end']:.1f}; matmul peak {peak / 1e9:.0f} GFLOP/s)",
      '',
      '| pair | step | Python loop: steps/s | ms/step | GFLOP/s (% peak) | scan: steps/s | '
      'ms/step | GFLOP/s (% peak) | GFLOP/step | XLA peak MB | XLA temp MB | compile s |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for pair in result['pairs']:
    for r in pair['rows']:
      lines.append(
          f"| {r['pair']} | {r['variant']} | {r['steps_per_s']:.0f} | {r['ms_per_step']:.3f} | "
          f"{r['flop_per_s'] / 1e9:.2f} ({100 * r['flop_per_s'] / peak:.1f}%) | "
          f"{r['scan_steps_per_s']:.0f} | {r['scan_ms_per_step']:.3f} | "
          f"{r['scan_flop_per_s'] / 1e9:.2f} ({100 * r['scan_flop_per_s'] / peak:.1f}%) | "
          f"{r['flops_per_step'] / 1e9:.4f} | {_mb(r['peak_bytes'])} | "
          f"{_mb(r['temp_bytes'])} | {r['compile_s']:.1f} |")
  lines += [
      '',
      '| pair | teacher (params, fwd GFLOP/batch) | student params | examples | cache MB full / '
      f'top-{TOPK} | build s full / top-{TOPK} | speed-up cached vs live (loop / scan) | '
      f'cached / floor (loop / scan) | top-{TOPK} / floor (scan) | break-even steps | '
      'RSS MB before → after caches |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for p in result['pairs']:
    lines.append(
        f"| {p['pair']} | {p['teacher']} ({p['teacher_params']:,}, "
        f"{p['teacher_forward_flops'] / 1e9:.4f}) | {p['student_params']:,} | "
        f"{p['num_examples']:,} | {_mb(p['cache_full_bytes'])} / {_mb(p['cache_topk_bytes'])} | "
        f"{p['build_full_s']:.2f} / {p['build_topk_s']:.2f} | {p['speedup']:.2f}× / "
        f"{p['scan_speedup']:.2f}× | {p['cached_over_floor']:.2f}× / "
        f"{p['scan_cached_over_floor']:.2f}× | {p['scan_topk_over_floor']:.2f}× | "
        f"{p['break_even_steps']:.0f} | "
        f"{_mb(p['rss_before_cache_bytes'])} → {_mb(p['rss_after_cache_bytes'])} |")
  lines += [
      '',
      'Python loop: one jitted call per step with donated state over 20 cycled pipeline '
      'batches (`fit(compiled=False)`); scan: the same 20 batches stacked on the device and '
      'run as one `make_chunk_fn` call (`fit`\'s compiled loop); each is the best of 3 '
      'rounds, all variants interleaved. Goal (issue 8): cached / floor ≤ 1.05×. FLOPs: XLA cost '
      'analysis of each compiled step (the cached steps count the lookup, not the teacher). '
      'XLA peak/temp MB: `compiled.memory_analysis()` (peak includes the arguments, hence the '
      'cache for the cached steps). Break-even: the full cache\'s build time divided by the '
      'time saved per step. '
      f'Objective: 0.1·CE + 0.9·KD (τ={TEMPERATURE:g}); the top-{TOPK} cache gives the KD-topk '
      'target, not the full one (same cost either way). Caches are keyed by id (no '
      'augmentation); an epoch-keyed cache multiplies the bytes and build time by the number of '
      'epochs and leaves the step time unchanged.',
  ]
  return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--pairs', nargs='+', default=list(SUITE), choices=list(SUITE))
  parser.add_argument('--quick', action='store_true', help='short timing runs')
  parser.add_argument('--min-seconds', type=float, default=3.0,
                      help='timing per variant, split over 3 rounds')
  parser.add_argument('--min-steps', type=int, default=50)
  parser.add_argument('--out', default=RESULTS)
  args = parser.parse_args(argv)

  load_start = os.getloadavg()[0]
  peak = matmul_peak()
  print(f'matmul peak: {peak / 1e9:.0f} GFLOP/s (2048³ float32)', flush=True)
  pairs = []
  for name in args.pairs:
    p = bench_pair(name, min_steps=5 if args.quick else args.min_steps,
                   min_seconds=0.3 if args.quick else args.min_seconds)
    pairs.append(p)
    for r in p['rows']:
      print(f"{name:24s} {r['variant']:15s} {r['steps_per_s']:8.0f} steps/s (loop) "
            f"{r['scan_steps_per_s']:8.0f} (scan) {r['flop_per_s'] / 1e9:7.2f} GFLOP/s",
            flush=True)
  result = {
      **machine(load_start), 'matmul_peak_flop_per_s': peak,
      'temperature': TEMPERATURE, 'topk': TOPK,
      'rss_end_bytes': rss_bytes(), 'pairs': pairs,
  }
  return write_report(args.out, result, markdown)


if __name__ == '__main__':
  main()
