"""Command-line entry point: ``python -m experiments.run --config <file>[:arg]``.

Overrides go on the command line, e.g. ``--config.teacher.num_steps=500``.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import hinton
from experiments import report

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
flags.mark_flags_as_required(['config'])

EXPERIMENTS = {'hinton': hinton}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = _CONFIG.value
  name = config.get('experiment', 'hinton')
  if name not in EXPERIMENTS:
    raise app.UsageError(f'Unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}.')
  module = EXPERIMENTS[name]
  rows = module.run(config)
  print()
  print(report.markdown_table(rows, module.COLUMNS))
  print(f'\nResults written to {config.workdir}/summary.md and summary.csv; '
        f'metrics.csv and TensorBoard events per run under {config.workdir}/.')


if __name__ == '__main__':
  app.run(main)
