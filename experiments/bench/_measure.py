"""Shared by the benchmarks: matmul peak, XLA cost and memory, RSS, machine facts, reports."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Callable

import jax
import jax.numpy as jnp


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """Measured float32 FLOP/s of an ``n³`` matmul (best of ``repeats``)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n**3 / best


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled program (XLA cost analysis; NaN if unknown)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def compiled_memory(compiled) -> dict:
  """XLA's peak, temporary and argument bytes of a compiled program (NaN if unknown)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {'peak_bytes': float('nan'), 'temp_bytes': float('nan'),
            'argument_bytes': float('nan')}
  return {'peak_bytes': int(getattr(stats, 'peak_memory_in_bytes', -1)),
          'temp_bytes': int(stats.temp_size_in_bytes),
          'argument_bytes': int(stats.argument_size_in_bytes)}


def rss_bytes() -> int:
  """The process's current resident set size (Linux ``/proc/self/status``; -1 elsewhere)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return -1


def machine(load_average_start: float) -> dict:
  """The facts a benchmark table is read against: JAX, devices, cores, load."""
  return {
      'jax': jax.__version__, 'device': f'{jax.devices()[0].device_kind} ×{jax.device_count()}',
      'cpu_count': os.cpu_count(), 'platform': platform.platform(),
      'load_average_start': load_average_start, 'load_average_end': os.getloadavg()[0],
  }


def write_report(out: str, result: dict, markdown: Callable[[dict], str]) -> dict:
  """Writes ``out/bench.json`` and ``out/bench.md`` (``markdown(result)``), prints the table."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'bench.json'), 'w') as f:
    json.dump(result, f, indent=2, default=float)
  table = markdown(result)
  with open(os.path.join(out, 'bench.md'), 'w') as f:
    f.write(table)
  print(table)
  return result
