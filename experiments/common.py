"""Shared pieces of the experiments: seeds, mean ± std tables, plots, result paths, caches.

Every experiment writes ``results/<name>/records.json`` (the per-seed records)
and ``setup.json`` (what produced them: the experiment, its regenerate command,
its config and facts measured during the run such as dataset sizes and
parameter counts). Its ``report(records, setup, out_dir)`` writes the tables,
verdicts and plots from those two files alone, so ``python -m
experiments.report --from-records`` regenerates them without retraining.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from experiments import report
from experiments import stats


RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def results_dir(name: str) -> str:
  """``experiments/results/<name>``, created if missing."""
  path = os.path.join(RESULTS, name)
  os.makedirs(path, exist_ok=True)
  return path


def enable_compilation_cache(path: str) -> None:
  """Persists XLA executables in ``path``: seeds after the first and re-runs skip compiling.

  Every seed compiles the same steps (the seed is an argument, not a
  constant), so only the first seed pays for compilation. Takes effect only if
  nothing was compiled in this process before (JAX initialises its cache once).
  ``''`` leaves the cache off.
  """
  if path:
    jax.config.update('jax_compilation_cache_dir', os.path.abspath(path))


def mean_std(values: Sequence[float], *, percent: bool = True, digits: int = 1) -> str:
  """Formats ``values`` as ``'mean ± std'`` (sample std, ddof=1; 0 for one value).

  Examples:
    >>> mean_std([0.5, 0.7])
    '60.0 ± 14.1'
  """
  v = np.asarray(values, np.float64) * (100.0 if percent else 1.0)
  std = v.std(ddof=1) if v.size > 1 else 0.0
  return f'{v.mean():.{digits}f} ± {std:.{digits}f}'


def aggregate(records: Iterable[Mapping[str, object]], keys: Sequence[str],
              metrics: Sequence[str], *, percent: Sequence[str] = ()) -> list[dict]:
  """Groups per-seed ``records`` by ``keys`` and summarises ``metrics`` as mean ± std.

  Each output row has the group keys, ``'seeds'`` (how many), and for each
  metric ``m`` the formatted ``m`` plus raw ``m_mean`` and ``m_std``.

  Examples:
    >>> rows = aggregate([{'k': 'a', 'acc': 0.5}, {'k': 'a', 'acc': 0.7}], ['k'], ['acc'],
    ...                  percent=['acc'])
    >>> rows[0]['acc'], rows[0]['seeds']
    ('60.0 ± 14.1', 2)
  """
  groups: dict[tuple, list] = {}
  for r in records:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  rows = []
  for key, group in groups.items():
    row = dict(zip(keys, key))
    row['seeds'] = len(group)
    for m in metrics:
      vals = np.asarray([g[m] for g in group], np.float64)
      row[m] = mean_std(vals, percent=m in percent, digits=1 if m in percent else 3)
      row[f'{m}_mean'] = float(vals.mean())
      row[f'{m}_std'] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    rows.append(row)
  return rows


def save_records(records: Sequence[Mapping[str, object]], path: str) -> None:
  """Writes the raw per-seed records as JSON (the source of every table and plot)."""
  with open(path, 'w') as f:
    json.dump(list(records), f, indent=1, default=float)


def save_setup(out_dir: str, *, experiment: str, command: str, config: Any,
               facts: Mapping[str, Any] | None = None) -> dict:
  """Writes ``<out_dir>/setup.json``: what produced the records; returns it as read back.

  Args:
    out_dir: the experiment's results directory.
    experiment: the module name under ``experiments/`` whose ``report`` reads it.
    command: the command that reruns the experiment.
    config: the run's ``ml_collections.ConfigDict`` (stored as a plain dict).
    facts: numbers measured during the run that are not per-seed records
      (dataset sizes, parameter counts, FLOPs, training time).
  """
  cfg = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  setup = {'experiment': experiment, 'command': command, 'config': cfg,
           'facts': dict(facts or {})}
  path = os.path.join(out_dir, 'setup.json')
  with open(path, 'w') as f:
    json.dump(setup, f, indent=1, default=_json_default)
    f.write('\n')
  with open(path) as f:
    return json.load(f)


def _json_default(value):
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


def load_results(out_dir: str) -> tuple[list[dict], dict]:
  """``(records, setup)`` read from ``<out_dir>/records.json`` and ``setup.json``."""
  with open(os.path.join(out_dir, 'records.json')) as f:
    records = json.load(f)
  with open(os.path.join(out_dir, 'setup.json')) as f:
    setup = json.load(f)
  return records, setup


def config_of(setup: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The run's config from ``setup.json`` (lists where the config had tuples)."""
  return ml_collections.ConfigDict(setup['config'])


def seeds_of(records: Iterable[Mapping[str, Any]]) -> tuple:
  """The sorted seeds present in ``records``.

  Examples:
    >>> seeds_of([{'seed': 2}, {'seed': 0}, {'seed': 2}, {'other': 1}])
    (0, 2)
  """
  return tuple(sorted({r['seed'] for r in records if 'seed' in r}))


def by_seed(records: Iterable[Mapping[str, Any]], metric: str = 'accuracy',
            **where) -> dict:
  """``{seed: record[metric]}`` over the records matching every ``key=value`` of ``where``.

  Raises:
    ValueError: if a seed matches twice (the selection does not identify one run per seed).

  Examples:
    >>> by_seed([{'seed': 0, 'm': 'a', 'accuracy': 0.5}, {'seed': 0, 'm': 'b',
    ...          'accuracy': 0.7}], m='b')
    {0: 0.7}
  """
  out = {}
  for r in records:
    if all(r.get(k) == v for k, v in where.items()):
      if r['seed'] in out:
        raise ValueError(f'Seed {r["seed"]} matches twice for {where}.')
      out[r['seed']] = r[metric]
  return out


def paired(records: Iterable[Mapping[str, Any]], method: Mapping[str, Any],
           baseline: Mapping[str, Any], metric: str = 'accuracy') -> Any:
  """Per-seed differences ``metric(method) − metric(baseline)``, paired by seed."""
  records = list(records)
  return stats.paired_differences(by_seed(records, metric, **method),
                                  by_seed(records, metric, **baseline))


def versus_scratch(records: Iterable[Mapping[str, Any]], students: Sequence[str],
                   metrics: Mapping[str, str]) -> dict[str, stats.Comparison]:
  """Each student model against ``'scratch'`` on each metric, one Holm-corrected family.

  Args:
    records: per-seed records with a ``'model'`` field.
    students: the models compared with ``'scratch'``.
    metrics: ``{label: record key}``, e.g. ``{'mAP': 'map'}``.

  Returns:
    ``{'<student> vs scratch, <label>': comparison}``.
  """
  records = list(records)
  family = [(f'{m} vs scratch, {label}', paired(records, {'model': m}, {'model': 'scratch'}, key))
            for label, key in metrics.items() for m in students]
  return {c.name: c for c in stats.compare(family)}


def rows_versus_scratch(records: Sequence[Mapping[str, Any]], cmp: Mapping[str, stats.Comparison],
                        primary: tuple[str, str, str], secondary: tuple[str, str, str], *,
                        delta: str) -> tuple[list[dict], list[dict]]:
  """Table rows per model: two metrics, the paired Δs against scratch and train images/s.

  Args:
    records: per-seed records with ``'model'``, both metric keys and
      ``'images_per_second'`` (``None`` reads as unmeasured).
    cmp: from :func:`versus_scratch`.
    primary, secondary: ``(comparison label, record key, column name)``; the
      primary metric gets the full comparison columns, the secondary its Δ.
    delta: the primary Δ column's name (see ``stats.columns``).

  Returns:
    ``(rows, aggregated)``: the table rows and the per-model aggregates (for plots).
  """
  records = [dict(r, images_per_second=float('nan') if r.get('images_per_second') is None
                  else r['images_per_second']) for r in records]
  (p_label, p_key, p_col), (s_label, s_key, s_col) = primary, secondary
  agg = aggregate(records, ['model'], [p_key, s_key, 'images_per_second'],
                  percent=[p_key, s_key])
  rows = []
  for r in agg:
    c = cmp.get(f"{r['model']} vs scratch, {p_label}")
    c_s = cmp.get(f"{r['model']} vs scratch, {s_label}")
    rate = r['images_per_second_mean']
    rows.append({**r, p_col: r[p_key], s_col: r[s_key], **stats.columns(c, delta=delta),
                 f'Δ {s_col} (paired)': stats.format_delta(c_s) if c_s else '—',
                 'train images/s': '—' if np.isnan(rate) else f'{rate:.0f}'})
  return rows, agg


def reproduced_versus_scratch(cmp: Mapping[str, stats.Comparison], students: Sequence[str],
                              label: str) -> str:
  """The verdict line: which students beat the scratch student on ``label``."""
  better = [m for m in students if cmp[f'{m} vs scratch, {label}'].verdict == stats.BETTER]
  if len(better) == len(students):
    summary = f'Reproduced: every distilled student beats the scratch student in {label}'
  elif not better:
    summary = ('Not reproduced: no distilled student is significantly better than scratch in '
               f'{label}')
  else:
    summary = (f'Partly reproduced: {", ".join(better)} beat(s) the scratch student in {label}, '
               f'not {", ".join(m for m in students if m not in better)}')
  return summary + '. ' + '; '.join(
      f'{m}: {stats.summary(cmp[f"{m} vs scratch, {label}"])}' for m in students) + '.'


def comparison_lines(family: Sequence[stats.Comparison]) -> str:
  """A Markdown list of every comparison of a family, with the criterion."""
  return ('Paired comparisons (' + stats.CRITERION + '; Δ in accuracy points):\n\n'
          + '\n'.join(f'- {c.name}: {stats.summary(c)}' for c in family))


def errorbar_plot(rows: Sequence[Mapping[str, object]], *, x: str, metric: str, path: str,
                  series: str | None = None, title: str = '', xlabel: str | None = None,
                  ylabel: str = 'test accuracy (%)', percent: bool = True,
                  baselines: Mapping[str, float] | None = None,
                  xscale: str | None = None) -> dict[str, list]:
  """Plots ``metric`` mean ± std against ``x`` (one line per ``series``) into a PNG.

  String ``x`` values are categories, placed in first-seen order on one axis
  shared by all series. Returns the x positions plotted, by series name.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  scale = 100.0 if percent else 1.0
  fig, ax = plt.subplots(figsize=(6, 4))
  groups: dict[object, list] = {}
  for r in rows:
    groups.setdefault(r[series] if series else '', []).append(r)
  categorical = any(isinstance(r[x], str) for r in rows)
  # Categories keep their first-seen order; every series is placed on the same axis.
  categories = list(dict.fromkeys(str(r[x]) for r in rows)) if categorical else []
  positions = {}
  for name, group in groups.items():
    xs = [r[x] for r in group]
    pos = positions[str(name)] = [categories.index(str(v)) for v in xs] if categorical else xs
    ax.errorbar(pos, [scale * r[f'{metric}_mean'] for r in group],
                yerr=[scale * r[f'{metric}_std'] for r in group], marker='o', capsize=3,
                label=str(name) if series else None)
  if categorical:
    ax.set_xticks(range(len(categories)), categories, rotation=20)
  for label, value in (baselines or {}).items():
    ax.axhline(scale * value, linestyle='--', linewidth=1, color='gray')
    ax.annotate(label, (0.01, scale * value), xycoords=('axes fraction', 'data'),
                fontsize=8, va='bottom')
  if xscale:
    ax.set_xscale(xscale)
  ax.set_xlabel(xlabel or x)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if series:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return positions


def write_results(name: str, rows: Sequence[Mapping[str, object]], columns: Sequence[str], *,
                  title: str, finding: str, verdict: str, command: str,
                  notes: str = '', out_dir: str | None = None, dataset: str = '',
                  seeds: Sequence[int] = ()) -> str:
  """Writes ``results.{md,csv}`` with the finding tested and the verdict.

  Args:
    name: the results name (``results/<name>/``), used unless ``out_dir`` is given.
    rows: table rows.
    columns: the table's columns.
    title: the Markdown title.
    finding: the finding tested.
    verdict: the verdict on our data (generated from the records).
    command: the command that reruns the experiment.
    notes: the text after the table.
    out_dir: the directory to write to.
    dataset: the data, listed in the experiments index.
    seeds: the seeds, listed in the experiments index.
  """
  head = f'**Finding tested:** {finding}\n\n'
  if dataset:
    head += f'**Data:** {dataset}\n\n'
  if seeds:
    head += f'**Seeds:** {", ".join(str(s) for s in seeds)}\n\n'
  text = (head + f'**Verdict on our data:** {verdict}\n\n**Regenerate:** `{command}`\n\n'
          f'{notes}')
  path = out_dir if out_dir is not None else results_dir(name)
  return report.write_table(rows, columns, os.path.join(path, 'results'), title=title,
                            notes=text)


def run_seeds(fn: Callable[[int], Mapping[str, object]], seeds: Sequence[int]) -> list[dict]:
  """Calls ``fn(seed)`` for each seed and returns the records with ``'seed'`` added."""
  return [{'seed': s, **fn(s)} for s in seeds]
