"""Command line entry point.

  python -m vision_jax.main --config configs/default.py --workdir /tmp/vision_jax/default \
      [--config.optim.learning_rate=0.01] [--mode=train]
"""
from __future__ import annotations

import json
import logging as logging_std
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # tf.data/tfds only; keep logs readable.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Run config file (configs/*.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, results.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train'], 'What to do with the run.')
flags.mark_flags_as_required(['config', 'workdir'])


class UsageError(Exception):
  """Bad input from the user: printed as one paragraph, exit code 2."""


def _check_workdir(workdir: str) -> str:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UsageError(f'--workdir={workdir} is a file, not a directory. Pass a directory '
                     '(it is created if missing).')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UsageError(f'--workdir={workdir} cannot be created ({e.strerror}). Pass a '
                     'directory you can write to.') from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UsageError(f'--workdir={workdir} is not writable. Pass a directory you can '
                     'write to.')
  return workdir


def _save_config(config, workdir: str) -> None:
  path = os.path.join(workdir, 'config.json')
  with open(path + '.tmp', 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(path + '.tmp', path)


def run(argv) -> None:
  if len(argv) > 1:
    raise UsageError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  import jax  # pylint: disable=g-import-not-at-top
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  config_lib.validate(config, num_devices=jax.device_count())
  workdir = _check_workdir(_WORKDIR.value)
  logging.info('JAX %s, backend %s, %d process(es), devices: %s', jax.__version__,
               jax.default_backend(), jax.process_count(), jax.devices())
  logging.info('Config:\n%s', config)
  if jax.process_index() == 0:
    _save_config(config, workdir)
  from vision_jax import train  # pylint: disable=g-import-not-at-top
  results = train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print(json.dumps(results['eval'] | {'step': results['step']}))


def _user_errors() -> tuple[type[BaseException], ...]:
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vision_jax import train  # pylint: disable=g-import-not-at-top
  from vision_jax.data import sources  # pylint: disable=g-import-not-at-top
  return (UsageError, config_lib.ConfigError, sources.DatasetNotFoundError,
          train.NonFiniteError)


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with bad config files and override keys as one-paragraph errors."""
  try:
    remaining = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _CONFIG.value.keys()  # ml_collections defers a load failure to first access.
    return remaining
  except flags.Error as e:
    _fail(f'{str(e).rstrip(".")}. Run with --helpshort for the flags.')
  except Exception as e:  # pylint: disable=broad-except
    from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
    _fail(config_lib.explain_override_error(argv, e))


class _QuietOrbax(logging_std.Filter):
  """Orbax logs every file it writes at INFO; keep its warnings and errors only."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or 'orbax' not in record.pathname


def main(argv) -> None:
  logging.get_absl_handler().addFilter(_QuietOrbax())
  try:
    run(argv)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, _user_errors()):
      logging.flush()
      print(f'\nerror: {e}', file=sys.stderr)
      sys.exit(2)
    raise


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
