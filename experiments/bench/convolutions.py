"""Benchmark: resnet20 training throughput (images/s) by batch size and compute dtype.

Each configuration runs the supervised kdjax step (:func:`kdjax.steps.make_train_step`)
as one compiled ``lax.scan`` over ``--steps`` random CIFAR-shaped batches
(``[B, 32, 32, 3]``), float32 or bfloat16 compute
(:func:`kdjax.models.mixed_precision`: parameters and optimizer state stay
float32). It reports images per second (best of ``--rounds`` interleaved
rounds), the compile time, and the achieved FLOP/s (XLA's cost analysis of one
step) against the machine's float32 matmul peak measured in the same run. On
CPU, bfloat16 is emulated and slower; the numbers that matter come from
``experiments/bench/accelerator.sh`` on a GPU or TPU.

Run ``python -m experiments.bench.convolutions`` (``--batch 128 256``,
``--dtypes float32 bfloat16``); results go to
``experiments/results/bench_convolutions/bench.{json,md}``.
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
from kdjax import models
from kdjax import steps
from kdjax.state import TrainState
from kdjax.train import make_chunk_fn


RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results',
                       'bench_convolutions')
DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}


def bench_config(model_name: str, batch: int, dtype: str, *, num_steps: int,
                 image_shape=(32, 32, 3), num_classes: int = 10) -> dict:
  """Compiles one ``num_steps`` scan of training steps; returns its runner and facts."""
  model = models.create(model_name, num_classes)
  rng = np.random.default_rng(0)
  xs = jax.device_put({
      'x': rng.normal(size=(num_steps, batch, *image_shape)).astype(np.float32),
      'label': rng.integers(0, num_classes, size=(num_steps, batch)).astype(np.int32)})
  variables = models.init_variables(model, jax.random.key(0), np.zeros((1, *image_shape),
                                                                       np.float32))
  forward = (models.as_forward(model) if DTYPES[dtype] is None
             else models.mixed_precision(model, DTYPES[dtype]))
  state = TrainState.create(apply_fn=forward, variables=variables,
                            tx=optax.sgd(0.1, momentum=0.9))
  step = steps.make_train_step()
  chunk = make_chunk_fn(step, donate=False)
  start = time.perf_counter()
  jax.block_until_ready(chunk(state, None, xs, jax.random.key(1), None))
  compile_s = time.perf_counter() - start
  batch0 = jax.tree.map(lambda v: v[0], xs)
  flops = compiled_flops(jax.jit(step).lower(state, None, batch0, jax.random.key(1)).compile())

  def run() -> float:
    start = time.perf_counter()
    jax.block_until_ready(chunk(state, None, xs, jax.random.key(1), None))
    return time.perf_counter() - start

  return {'model': model_name, 'batch': batch, 'dtype': dtype, 'num_steps': num_steps,
          'compile_s': compile_s, 'flops_per_step': flops, 'run': run}


def bench(model_name: str, batches, dtypes, *, num_steps: int, rounds: int) -> list[dict]:
  configs = [bench_config(model_name, b, d, num_steps=num_steps) for b in batches for d in dtypes]
  best = [float('inf')] * len(configs)
  for _ in range(rounds):
    for i, c in enumerate(configs):
      best[i] = min(best[i], c['run']())
  rows = []
  for c, seconds in zip(configs, best):
    row = {k: v for k, v in c.items() if k != 'run'}
    row.update(seconds=seconds, images_per_s=c['batch'] * c['num_steps'] / seconds,
               flop_per_s=c['flops_per_step'] * c['num_steps'] / seconds)
    rows.append(row)
  return rows


def markdown(result: dict) -> str:
  peak = result['matmul_peak_flop_per_s']
  lines = [
      f"Convolutional training throughput ({result['device']}, jax {result['jax']}; matmul "
      f"peak {peak / 1e9:.0f} GFLOP/s)", '',
      '| model | batch | compute dtype | images/s | ms/step | GFLOP/step | GFLOP/s (% peak) | '
      'compile s |',
      '|---|---:|---|---:|---:|---:|---:|---:|',
  ]
  for r in result['rows']:
    lines.append(
        f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['images_per_s']:.0f} | "
        f"{1e3 * r['seconds'] / r['num_steps']:.1f} | {r['flops_per_step'] / 1e9:.3f} | "
        f"{r['flop_per_s'] / 1e9:.1f} ({100 * r['flop_per_s'] / peak:.1f}%) | "
        f"{r['compile_s']:.1f} |")
  return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch', type=int, nargs='+', default=[128])
  parser.add_argument('--dtypes', nargs='+', default=['float32', 'bfloat16'],
                      choices=list(DTYPES))
  parser.add_argument('--steps', type=int, default=10, help='steps per compiled scan')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--quick', action='store_true', help='3 steps per scan, 1 round')
  parser.add_argument('--out', default=RESULTS)
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.rounds = 3, 1
  load = os.getloadavg()[0]
  rows = bench(args.model, args.batch, args.dtypes, num_steps=args.steps, rounds=args.rounds)
  result = {**machine(load), 'matmul_peak_flop_per_s': matmul_peak(), 'rows': rows}
  return write_report(args.out, result, markdown)


if __name__ == '__main__':
  main()
