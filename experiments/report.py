"""Writing result tables (Markdown and CSV) for experiments."""

from __future__ import annotations

import csv
import os
from typing import Mapping, Sequence


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
  """Renders ``rows`` as a GitHub Markdown table with the given column order.

  Examples:
    >>> print(markdown_table([{'a': 1, 'b': 'x'}], ['a', 'b']))
    | a | b |
    |---|---|
    | 1 | x |
  """
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(str(r.get(c, '')) for c in columns) + ' |' for r in rows]
  return '\n'.join(lines)


def write_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str], path_stem: str,
                *, title: str = '', notes: str = '') -> str:
  """Writes ``<path_stem>.md`` and ``<path_stem>.csv``; returns the Markdown text."""
  os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
  md = markdown_table(rows, columns)
  with open(path_stem + '.md', 'w') as f:
    if title:
      f.write(f'# {title}\n\n')
    f.write(md + '\n')
    if notes:
      f.write('\n' + notes.strip() + '\n')
  with open(path_stem + '.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  return md


# ------------------------------------------------------------ regenerating from records

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'README.md')


def _committed(path: str, root: str) -> bool:
  """False for smoke-run outputs (``<name>_quick/``, git-ignored)."""
  return not any(part.endswith('_quick') for part in os.path.relpath(path, root).split(os.sep))


def regenerable(root: str = RESULTS) -> list[str]:
  """Results names (paths under ``root``) that have ``records.json`` and ``setup.json``.

  Smoke-run outputs (``<name>_quick/``, git-ignored) are left out.
  """
  names = []
  for path, _, files in os.walk(root):
    if 'records.json' in files and 'setup.json' in files and _committed(path, root):
      names.append(os.path.relpath(path, root))
  return sorted(names)


def regenerate(name: str, root: str = RESULTS) -> list[dict]:
  """Rewrites ``<root>/<name>``'s tables, verdict and plots from its records; returns rows.

  The experiment module named in ``setup.json`` provides ``report(records, setup, out_dir)``.
  """
  import importlib  # pylint: disable=g-import-not-at-top

  from experiments import common  # pylint: disable=g-import-not-at-top
  out_dir = os.path.join(root, name)
  records, setup = common.load_results(out_dir)
  module = importlib.import_module(f'experiments.{setup["experiment"]}')
  return module.report(records, setup, out_dir)


# --------------------------------------------------------------------- the index

_FIELDS = {'finding': '**Finding tested:**', 'data': '**Data:**', 'seeds': '**Seeds:**',
           'verdict': '**Verdict on our data:**', 'command': '**Regenerate:**'}


def read_summary(out_dir: str) -> dict | None:
  """The index entry of a results directory, or None if it lacks results.md / records.json.

  Reads the title and the ``**Finding tested:**``, ``**Data:**``, ``**Seeds:**``,
  ``**Verdict on our data:**`` and ``**Regenerate:**`` lines of ``results.md``;
  seeds missing there are those of ``records.json``, data the records' ``dataset``
  values.
  """
  import json  # pylint: disable=g-import-not-at-top
  md_path, rec_path = (os.path.join(out_dir, f) for f in ('results.md', 'records.json'))
  if not (os.path.isfile(md_path) and os.path.isfile(rec_path)):
    return None
  with open(md_path) as f:
    lines = f.read().splitlines()
  entry = {'title': next((l[2:].strip() for l in lines if l.startswith('# ')), '')}
  for key, tag in _FIELDS.items():
    entry[key] = next((l[len(tag):].strip() for l in lines if l.startswith(tag)), '')
  if not entry['finding'] or not entry['verdict']:
    return None
  if not entry['seeds'] or not entry['data']:
    with open(rec_path) as f:
      records = json.load(f)
    records = [r for r in records if isinstance(r, dict)]
    if not entry['seeds']:
      entry['seeds'] = ', '.join(str(s) for s in sorted({r['seed'] for r in records
                                                         if 'seed' in r}))
    if not entry['data']:
      entry['data'] = ', '.join(sorted({str(r['dataset']) for r in records if 'dataset' in r}))
  entry['command'] = entry['command'].strip('`')
  entry['seconds'] = recorded_seconds(out_dir)
  return entry


def recorded_seconds(out_dir: str) -> float | None:
  """The run time a results directory's ``setup.json`` records, or None.

  Its ``wall_seconds`` (or ``total_seconds``) if recorded, else the sum of its
  ``*_seconds`` facts (training, tuning, ...).

  Examples:
    >>> import json, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, 'setup.json'), 'w') as f:
    ...   json.dump({'facts': {'train_seconds': 60.0, 'classifier_seconds': 3.0}}, f)
    >>> recorded_seconds(d)
    63.0
  """
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(out_dir, 'setup.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    facts = json.load(f).get('facts', {})
  for key in ('wall_seconds', 'total_seconds'):
    if key in facts:
      return float(facts[key])
  parts = [float(v) for k, v in facts.items() if k.endswith('_seconds')]
  return sum(parts) if parts else None


INDEX_HEAD = '''# Experiments

<!-- Generated by `python -m experiments.report --index` (`make experiments-report`) from
experiments/results/*/results.md; edit the generator in experiments/report.py, not this file. -->

Each experiment tests one published finding (the paper is cited in its
results) on the embedded data (MNIST-1D, scikit-learn
digits), with several seeds, paired by seed. Every table, verdict and plot
under `experiments/results/` is written by the code in this folder from the
per-seed records; nothing is typed in by hand. Each comparison is a paired
difference over seeds with a 95% confidence interval from the paired t
distribution; its p-value is Holm-corrected across the experiment's
comparisons, and the verdict ("better", "worse", "no significant
difference") comes from the corrected p-value (`experiments/stats.py`).
Where our numbers contradict the paper, the table says so.

Run any of them from the repository root after `make install`:

```sh
.venv/bin/python -m experiments.run --config experiments/configs/<name>.py        # full run
.venv/bin/python -m experiments.run --config experiments/configs/<name>.py:quick  # smoke run
.venv/bin/python -m experiments.run --config experiments/configs/<name>.py \\
    --config.seeds='(0,1,2,3,4)'
```

Configs are `ml_collections` files (`experiments/configs/`); any field can be
overridden with `--config.<field>=...`. Training runs, checkpoints and
TensorBoard/CSV metrics go to `runs/<name>/` (not committed); a run found
complete there is restored instead of retrained, so an interrupted experiment
resumes. Results go to `experiments/results/<name>/`: `results.md` (table,
finding, verdict, regenerate command), `results.csv`, `records.json` (every
per-seed number), `setup.json` (the config and the facts measured during the
run) and PNG plots. Smoke runs (`:quick`) write to
`experiments/results/<name>_quick/` (git-ignored), so they never overwrite the
committed results.

Tables, verdicts, plots and this index are regenerated from the committed
records, without retraining, by

```sh
.venv/bin/python -m experiments.report --from-records [name ...]  # all by default
.venv/bin/python -m experiments.report --index                    # this file
make experiments-report                                            # both
```

Every committed experiment is retrained from scratch, in sequence, by
`make experiments` (`python -m experiments.all`; `--only dml,one` for a
subset), and each one's smoke mode by `make experiments-quick`. Each run's
wall time goes to `results/timing.json` (`timing_quick.json`).

The teachers of `temperature`, `topk` and `dkd_dist` are trained once into
`runs/kd_teachers/` and shared, so run `temperature` first (the others train
them if they are missing). The demo (`make demo`, `experiments/configs/demo.py`)
prints its own one-seed table and is not indexed here.

## Index

Generated from each `results/<name>/results.md` that has a `records.json`: its
command, the finding it tests, the data and seeds, and its verdict line, which
its experiment's code writes from the records.
'''

INDEX_TAIL = '''
## Benchmarks

Benchmarks live in [`bench/`](bench/). Each prints a table, writes
`experiments/results/bench_<name>/bench.{md,json}`, compares against the
obvious alternative in the same run, and reports achieved FLOP/s against a
matmul peak measured in the same run. Nothing in the test suite asserts a
timing.

{bench}

The Python ones accept `--quick`. On CPU, `jax.vmap` over convolutions becomes a grouped
convolution, which XLA:CPU runs slowly; the cohort benchmark shows it and
`make_cohort_step(..., unroll_peers=True)` is the CPU workaround. On GPU and
TPU the vmapped form is the one to use.
'''


_BENCHMARKS = (
    {'benchmark': 'cohort', 'compares': 'K peers in one vmapped DML step vs the same step '
     'unrolled vs a Python loop of K jitted steps, K ∈ {1, 2, 4, 8}, MLP / CNN1D / resnet20',
     'command': '`make bench` or `.venv/bin/python -m experiments.bench.cohort`',
     'results': '[bench_cohort](results/bench_cohort/bench.md)'},
    {'benchmark': 'cache', 'compares': 'KD step with a cached teacher (dense and top-k) vs '
     'recomputing the teacher vs the student-only floor',
     'command': '`.venv/bin/python -m experiments.bench.cache`',
     'results': '[bench_cache](results/bench_cache/bench.md)'},
    {'benchmark': 'train_loop', 'compares': '`fit` (device-resident data and host pipeline) vs '
     'a hand-written `lax.scan` floor vs a Python call per step, KD and student alone',
     'command': '`.venv/bin/python -m experiments.bench.train_loop`',
     'results': '[bench_train_loop](results/bench_train_loop/bench.md)'},
    {'benchmark': 'convolutions', 'compares': 'resnet20 training in images/s by batch size, '
     'float32 vs bfloat16 compute',
     'command': '`.venv/bin/python -m experiments.bench.convolutions`',
     'results': '[bench_convolutions](results/bench_convolutions/bench.md)'},
    {'benchmark': 'accelerator.sh', 'compares': 'one script for a GPU/TPU host: cohort K = 1–8, '
     'resnet20 at batch 128/256 in float32 and bfloat16, fit vs the floor (`TINY=1` on CPU)',
     'command': '`experiments/bench/accelerator.sh`',
     'results': '`results/bench_accelerator/` (not run here: no accelerator)'})


def _cell(text: str) -> str:
  return text.replace('|', '\\|').replace('\n', ' ')


def index_text(root: str = RESULTS) -> str:
  """The experiments index (experiments/README.md), generated from the results files.

  Every directory under ``root`` with a ``results.md`` (with finding and verdict
  lines) and a ``records.json`` is listed, in path order; smoke-run outputs are not.
  """
  rows, sections, times = [], [], []
  for path, dirs, _ in sorted(os.walk(root)):
    dirs.sort()
    entry = read_summary(path) if _committed(path, root) else None
    if entry is None:
      continue
    name = os.path.relpath(path, root)
    command = f'`{entry["command"]}`' if entry['command'] else '—'
    seconds = entry['seconds']
    rows.append({'experiment': f'[{name}](#{_anchor(name)})', 'title': _cell(entry['title']),
                 'data': _cell(entry['data']), 'seeds': _cell(entry['seeds']),
                 'run time (min)': '—' if seconds is None else f'{seconds / 60:.0f}'})
    times.append(seconds)
    sections.append(
        f'### {name}\n\n[{entry["title"]}](results/{name}/results.md)\n\n'
        f'- **Command:** {command}\n- **Finding tested:** {entry["finding"]}\n'
        f'- **Data:** {entry["data"] or "—"}; **seeds:** {entry["seeds"] or "—"}\n'
        f'- **Verdict (generated):** {entry["verdict"]}\n')
  table = markdown_table(rows, ['experiment', 'title', 'data', 'seeds', 'run time (min)'])
  known = [t for t in times if t is not None]
  table += (
      f'\n\nRun time: what each committed run recorded in its `setup.json` (training and '
      f'tuning; often on cores shared with other runs). Their sum, {sum(known) / 3600:.1f} h '
      f'over {len(known)} of the {len(times)} results ({len(times) - len(known)} recorded no '
      'time), estimates `make experiments` on 2 cores; a measured end-to-end run of it '
      'writes `results/timing.json`.')
  bench = markdown_table(_BENCHMARKS, ['benchmark', 'compares', 'command', 'results'])
  return (INDEX_HEAD + '\n' + table + '\n\n' + '\n'.join(sections)
          + INDEX_TAIL.replace('{bench}', bench))


def _anchor(name: str) -> str:
  """The GitHub anchor of a ``### name`` heading."""
  return ''.join(c for c in name.lower() if c.isalnum() or c in '-_ ').replace(' ', '-')


def write_index(path: str = README, root: str = RESULTS) -> str:
  """Writes :func:`index_text` to ``path``; returns the text."""
  text = index_text(root)
  with open(path, 'w') as f:
    f.write(text)
  return text


def main(argv: Sequence[str] | None = None) -> None:
  """``python -m experiments.report --from-records [names...] | --index``."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='python -m experiments.report', description=(
      'Regenerates results tables, verdicts and plots from the committed records, and the '
      'experiments index, without retraining.'))
  parser.add_argument('--from-records', nargs='*', metavar='NAME', default=None,
                      help='results names under experiments/results (default: all with a '
                      'setup.json)')
  parser.add_argument('--index', action='store_true', help='write experiments/README.md')
  args = parser.parse_args(argv)
  if args.from_records is None and not args.index:
    parser.error('give --from-records [NAME ...] and/or --index')
  if args.from_records is not None:
    for name in args.from_records or regenerable():
      regenerate(name)
      print(f'regenerated {os.path.join(RESULTS, name)}/', flush=True)
  if args.index:
    write_index()
    print(f'wrote {README}')


if __name__ == '__main__':
  main()
