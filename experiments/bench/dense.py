"""Benchmark: training-step speed of the dense experiments, scanned chunks against a call per step.

For the detection and segmentation experiments' own models and steps
(:func:`experiments.detection.build`, :func:`experiments.segmentation.build`,
their default configs: 32 px canvases) it times :func:`kdjax.train.fit` on
device-resident data for the teacher, the scratch student and the student
with every distillation term, each

* **per step** (``compiled=False``): one jitted call per step, and
* **scanned** (``compiled=True``): ``lax.scan`` chunks of ``N`` steps.

Each case runs ``N`` steps once cold (compilation included: the
``first_chunk_seconds`` column), then ``N`` and ``2N`` steps warm, in chunks
of ``N``, ``repeats`` times (the best kept). The time per step is the warm
``T(2N) / 2N`` (compilation excluded, the call's setup included); the
marginal ``(T(2N) − T(N)) / N``, which cancels the setup too, is recorded as
well but is noisy when other jobs load the machine. It also
reports the achieved FLOP/s of a warm step (XLA's cost analysis of the
jitted step) against the machine's float32 matmul peak measured in the same
run. Teachers are randomly initialised: speed does not depend on training.

Its output, ``experiments/results/<detection|segmentation>/step_speed.json``,
is the measurement behind those configs' ``compiled`` setting; the
experiments quote it in their results.

Run ``python -m experiments.bench.dense`` (``--quick`` for a short run, ``--only
detection`` for one experiment).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from experiments import common
from experiments import detection
from experiments import segmentation
from experiments.bench._measure import compiled_flops
from experiments.bench._measure import machine
from experiments.bench._measure import matmul_peak
from experiments.configs import detection as detection_config
from experiments.configs import segmentation as segmentation_config
from experiments.dml import init_key
from kdjax import data as kdata
from kdjax import train
from kdjax.state import TrainState


EXPERIMENTS = {'detection': (detection, detection_config, '+both'),
               'segmentation': (segmentation, segmentation_config, '+pixel+pair+holistic')}


def _cases(name: str, config, sample: np.ndarray):
  """``[(model, step, state, teacher_variables)]``: teacher, scratch and all-terms student."""
  module, _, full = EXPERIMENTS[name]
  parts = module.build(config, sample)
  key = init_key(0)
  t_vars = parts.t_init(key)
  s_vars = parts.s_init(jax.random.fold_in(key, 1))
  weights = module.methods(config)[full]
  if name == 'detection':
    def student(w):
      return detection.student_state(parts, w, s_vars, t_vars, sample, jax.random.fold_in(key, 2))
  else:
    c_vars = parts.c_init(jax.random.fold_in(key, 2))

    def student(w):
      return segmentation.student_state(parts, w, s_vars, c_vars)
  teacher = TrainState.create(apply_fn=parts.t_fwd, variables=t_vars, tx=parts.t_tx)
  return [('teacher', parts.supervised, teacher, None),
          ('student scratch', parts.supervised, student({}), None),
          (f'student {full}', parts.steps[full], student(weights), t_vars)]


def _step_flops(step, state, teacher_variables, data) -> float:
  batch = data.gather(data.arrays, jax.tree.map(lambda v: v[0], data.plan(0, 1)))
  lowered = jax.jit(step).lower(state, teacher_variables, batch, jax.random.key(0))
  return compiled_flops(lowered.compile())


def bench_case(step, state, teacher_variables, src, *, batch_size: int, num_steps: int,
               compiled: bool, repeats: int = 1) -> dict:
  """Cold and warm ``fit`` times of one step and its warm ms per step."""
  data = kdata.DeviceData(src, batch_size=batch_size, seed=0)

  def timed(n: int) -> float:
    start = time.perf_counter()
    result = train.fit(state, step, data, num_steps=n, rng=jax.random.key(0),
                       teacher_variables=teacher_variables, progress=False,
                       log_every=num_steps, compiled=compiled)
    jax.block_until_ready(result.state)
    return time.perf_counter() - start

  cold = timed(num_steps)
  t1 = t2 = float('inf')
  for _ in range(repeats):  # interleaved, so a burst of load hits both lengths alike
    t1, t2 = min(t1, timed(num_steps)), min(t2, timed(2 * num_steps))
  ms = 1e3 * t2 / (2 * num_steps)
  return {'compiled': compiled, 'batch_size': batch_size, 'num_steps': num_steps,
          'first_chunk_seconds': cold, 'warm_seconds_n': t1, 'warm_seconds_2n': t2,
          'ms_per_step': ms, 'marginal_ms_per_step': 1e3 * (t2 - t1) / num_steps,
          'images_per_second': batch_size / ms * 1e3,
          'flops_per_step': _step_flops(step, state, teacher_variables, data)}


def bench_experiment(name: str, config, *, num_steps: int, scanned_steps: int,
                     repeats: int = 1, peak: float = float('nan')) -> dict:
  """Every case of one experiment, per step and scanned; the ``step_speed.json`` payload."""
  module = EXPERIMENTS[name][0]
  train_src, _ = module.load_data(config)
  sample = train_src.read_batch(np.arange(config.batch_size))['x']
  rows = []
  for model, step, state, t_vars in _cases(name, config, sample):
    for compiled, n in ((False, num_steps), (True, scanned_steps)):
      row = bench_case(step, state, t_vars, train_src, batch_size=config.batch_size,
                       num_steps=n, compiled=compiled, repeats=repeats)
      row.update(model=model, image_size=int(sample.shape[1]),
                 flop_fraction_of_peak=row['flops_per_step'] / (row['ms_per_step'] / 1e3) / peak)
      rows.append(row)
      print(f"{name} {model} {'scanned' if compiled else 'per step'}: "
            f"{row['ms_per_step']:.1f} ms/step, {row['images_per_second']:.0f} images/s")
  return {'what': ('steady-state training step time of kdjax.train.fit, compiled=True '
                   '(lax.scan chunks) vs False (one jitted call per step), on device-resident '
                   'data; warm T(2N) / 2N, compilation excluded'),
          'script': 'python -m experiments.bench.dense', 'steps': rows}


def markdown(result: dict) -> str:
  """The printed table of :func:`main`'s result."""
  lines = [f"Dense steps ({result['device']}, {result['cpu_count']} cores, load average "
           f"{result['load_average_start']:.1f} → {result['load_average_end']:.1f}; matmul "
           f"peak {result['matmul_peak_flop_per_s'] / 1e9:.0f} GFLOP/s)", '',
           '| experiment | model | loop | N | ms/step | images/s | first chunk s | '
           'GFLOP/s (% peak) |', '|---|---|---|---|---|---|---|---|']
  for name, speed in result['experiments'].items():
    for r in speed['steps']:
      rate = r['flops_per_step'] / (r['ms_per_step'] / 1e3)
      lines.append(
          f"| {name} | {r['model']} | {'scanned' if r['compiled'] else 'per step'} | "
          f"{r['num_steps']} | {r['ms_per_step']:.1f} | {r['images_per_second']:.0f} | "
          f"{r['first_chunk_seconds']:.1f} | {rate / 1e9:.2f} "
          f"({100 * r['flop_fraction_of_peak']:.1f}%) |")
  return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='tiny models and few steps')
  parser.add_argument('--only', default='', help='comma-separated experiments')
  parser.add_argument('--num-steps', type=int, default=20, help='N of the per-step loop')
  parser.add_argument('--scanned-steps', type=int, default=2, help='N of the scanned loop')
  parser.add_argument('--repeats', type=int, default=2, help='warm runs per length (best kept)')
  parser.add_argument('--out', default='', help='results root (default experiments/results)')
  args = parser.parse_args(argv)
  names = [n for n in args.only.split(',') if n] or list(EXPERIMENTS)
  load, peak = os.getloadavg()[0], matmul_peak()
  speeds = {}
  for name in names:
    config = EXPERIMENTS[name][1].get_config('quick' if args.quick else 'default')
    speeds[name] = bench_experiment(name, config, num_steps=args.num_steps,
                                    scanned_steps=args.scanned_steps, repeats=args.repeats,
                                    peak=peak)
  result = {**machine(load), 'matmul_peak_flop_per_s': peak, 'experiments': speeds}
  for name, speed in speeds.items():
    out_dir = os.path.join(args.out, name) if args.out else common.results_dir(
        EXPERIMENTS[name][1].get_config('quick' if args.quick else 'default').results)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'step_speed.json'), 'w') as f:
      json.dump({**speed, **machine(load), 'matmul_peak_flop_per_s': peak}, f, indent=1)
  print(markdown(result))
  return result


if __name__ == '__main__':
  main()
