"""Command-line entry point: ``python -m experiments.run --config <file>[:arg]``.

The config's ``experiment`` field names the module ``experiments/<name>.py``
(default ``hinton``), which provides ``run(config) -> rows`` and ``COLUMNS``.
Overrides go on the command line, e.g. ``--config.teacher.num_steps=500``.
"""

import importlib
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import common
from experiments import report


_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
flags.mark_flags_as_required(['config'])


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
  app.run(main)
