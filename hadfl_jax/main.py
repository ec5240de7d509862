r"""Runs one algorithm on one scenario.

  python -m hadfl_jax.main --config configs/default.py --workdir /tmp/hadfl_quick \
      --config.num_devices=16 --config.hadfl.rho=0.25

``--config`` takes a file, or the name of a packaged config (``--config default``, which
works from an installed copy too; see :mod:`hadfl_jax.config_files`).
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import tensorflow_datasets as tfds

from hadfl_jax import config_files
from hadfl_jax import data
from hadfl_jax import train
from hadfl_jax import validation
from hadfl_jax import workdir

# The status of a run stopped by SIGTERM after saving its checkpoint (128 + SIGTERM, as
# for a process that the signal ended): not 0, so that a job wrapper runs it again.
PREEMPTED_EXIT_CODE = 143

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for config.json, metrics.jsonl, summary.json.')
config_flags.DEFINE_config_file(
    'config', None, 'A config file, or a packaged config by name (default, quick_compare, ...).',
    lock_config=True)
flags.DEFINE_bool('quiet', False, 'Print nothing but errors and warnings.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines are printed; keep logs quiet.
  tfds.disable_progress_bar()
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir, verbose=not FLAGS.quiet)
  except (validation.ConfigError, data.DatasetError, train.DivergenceError,
          workdir.WorkdirBusyError) as e:
    # Bad input, a diverged run, a busy workdir: the message says what and where.
    raise SystemExit(f'error: {e}') from None
  except train.Preempted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == '__main__':
  app.run(main, flags_parser=config_files.parse_flags)
