"""Regenerates every committed experiment from scratch: ``python -m experiments.all``.

Finds, for each results folder under ``experiments/results/`` (benchmarks
aside), the config and mode that write it (each ``experiments/configs/*.py``
mode whose ``results`` field names that folder), runs them one after the other
with ``experiments.run``, then rewrites ``experiments/README.md``. The wall time
of every run goes to ``experiments/results/timing.json`` (``timing_quick.json``
with ``--quick``), so the cost of a full regeneration on a machine is on
record.

  python -m experiments.all                 # every experiment, full settings
  python -m experiments.all --quick         # each one's smoke mode (``<mode>_quick`` / ``quick``)
  python -m experiments.all --list          # what would run
  python -m experiments.all --only dml,one  # a subset, by results folder
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

from experiments import common


CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')


def _modes(path: str) -> list[str]:
  """The modes a config file accepts: ``'default'`` and every mode string it tests."""
  with open(path) as f:
    text = f.read()
  found = re.findall(r"mode == '([\w-]+)'", text)
  for group in re.findall(r"mode in \(([^)]*)\)", text):
    found += re.findall(r"'([\w-]+)'", group)
  return ['default'] + [m for m in dict.fromkeys(found) if m != 'default']


def _load(path: str):
  spec = importlib.util.spec_from_file_location(f'_config_{os.path.basename(path)[:-3]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def runs(quick: bool = False) -> list[dict]:
  """The ``{'results', 'config', 'mode'}`` runs that regenerate the committed results.

  With ``quick``, each run is replaced by its smoke mode (``<mode>_quick``, or
  ``quick`` for the default mode) where the config has one.
  """
  committed = {os.path.basename(d) for d in glob.glob(os.path.join(common.RESULTS, '*'))
               if os.path.isdir(d) and not os.path.basename(d).startswith('bench')}
  found = []
  for path in sorted(glob.glob(os.path.join(CONFIGS, '*.py'))):
    module = _load(path)
    modes = _modes(path)
    for mode in modes:
      config = module.get_config(mode)
      name = config.get('results')
      if name not in committed:
        continue
      run_mode = mode
      if quick:
        smoke = 'quick' if mode == 'default' else f'{mode}_quick'
        run_mode = smoke if smoke in modes else None
      if run_mode is not None:
        found.append({'results': name, 'config': os.path.relpath(path), 'mode': run_mode})
  return found


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help="each experiment's smoke mode")
  parser.add_argument('--list', action='store_true', help='print the runs and exit')
  parser.add_argument('--only', default='', help='comma-separated results folders')
  args = parser.parse_args(argv)
  todo = runs(args.quick)
  if args.only:
    keep = set(args.only.split(','))
    todo = [r for r in todo if r['results'] in keep]
  if args.list:
    for r in todo:
      print(f"{r['results']:24s} {r['config']}:{r['mode']}")
    return 0
  timing = []
  for i, r in enumerate(todo, start=1):
    spec = r['config'] if r['mode'] == 'default' else f"{r['config']}:{r['mode']}"
    print(f'[{i}/{len(todo)}] {spec}', flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'experiments.run', '--config', spec], check=True)
    timing.append(dict(r, seconds=round(time.perf_counter() - start, 1)))
  if not args.quick:
    subprocess.run([sys.executable, '-m', 'experiments.report', '--index'], check=True)
  out = os.path.join(common.RESULTS, 'timing_quick.json' if args.quick else 'timing.json')
  with open(out, 'w') as f:
    json.dump({'cpu_count': os.cpu_count(), 'runs': timing,
               'total_seconds': round(sum(t['seconds'] for t in timing), 1)}, f, indent=2)
  print(f'{len(timing)} runs in {sum(t["seconds"] for t in timing) / 60:.1f} min; see {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
