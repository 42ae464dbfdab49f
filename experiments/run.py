"""Command-line entry point: ``python -m experiments.run --config <file>[:arg]``.

The config's ``experiment`` field names the module ``experiments/<name>.py``
(default ``hinton``), which provides ``run(config) -> rows`` and ``COLUMNS``.
Overrides go on the command line, e.g. ``--config.teacher.num_steps=500``.
"""

import importlib
import importlib.util
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import common
from experiments import report


_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
flags.mark_flags_as_required(['config'])


def _config_arg(argv) -> str:
  """The last ``--config`` value (``path[:arg]``) on the command line, as absl takes it."""
  value = ''
  for i, arg in enumerate(argv):
    if arg == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith('--config='):
      value = arg.split('=', 1)[1]
  return value


def _keys_of(config_arg: str, path: list[str]) -> list[str]:
  """The keys of the config (or its sub-config at ``path``), best effort."""
  file, _, mode = config_arg.partition(':')
  try:
    spec = importlib.util.spec_from_file_location('_config', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    node = module.get_config(mode) if mode else module.get_config()
    for key in path:
      node = node[key]
    return sorted(node.keys())
  except Exception:  # noqa: BLE001 (only for the message)
    return []


def parse_flags(argv):
  """Parses flags; bad overrides and config files exit with a one-line usage error."""
  file = _config_arg(argv).partition(':')[0]
  if file and not os.path.isfile(file):
    _usage_error(f'--config: no config file {file!r} (relative to {os.getcwd()}).')
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()]
    if any(line.startswith('Traceback') for line in lines):  # the config file raised
      lines = [lines[0], lines[-1]]
    _usage_error(' '.join(lines))
  except (AttributeError, KeyError) as e:
    key = str(e).strip('"\'')
    override = next((a for a in argv if re.match(rf'--config(\.\w+)*\.{re.escape(key)}(=|$)', a)),
                    None)
    if override is None:
      raise
    path = override[len('--config.'):].split('=', 1)[0].split('.')[:-1]
    keys = _keys_of(_config_arg(argv), path)
    where = 'config' + ''.join(f'.{p}' for p in path)
    _usage_error(f'{override}: unknown config key {key!r}'
                 + (f'; {where} has keys {", ".join(keys)}.' if keys else '.'))


def _usage_error(message: str):
  sys.stderr.write(f'FATAL Flags parsing error: {message}\n'
                   'Pass --helpfull to see help on flags.\n')
  sys.exit(1)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = _CONFIG.value
  name = config.get('experiment', 'hinton')
  try:
    module = importlib.import_module(f'experiments.{name}')
  except ModuleNotFoundError as e:
    raise app.UsageError(f'Unknown experiment {name!r}: no module experiments/{name}.py.') from e
  rows = module.run(config)
  print()
  print(report.markdown_table(rows, module.COLUMNS))
  if 'results' in config:
    print(f'\nResults: {os.path.join(common.RESULTS, config.results)}/ (results.md, results.csv, '
          'records.json, plots).')
  print(f'Per-run metrics.csv, TensorBoard events and checkpoints: {config.workdir}/.')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
