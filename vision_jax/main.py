"""Command line entry point.

  python -m vision_jax.main --config configs/default.py --workdir /tmp/vision_jax/default \
      [--config.optim.learning_rate=0.01] [--mode=train|eval|predict|export]

Bad input (an unknown config key or model, a missing dataset, a checkpoint that does not
fit) is reported as one paragraph on stderr with exit code 2; nothing in the workdir is lost.
"""
from __future__ import annotations

import json
import logging as logging_std
import os
import sys
import time

# TensorFlow (imported for tfds and the SavedModel export) logs INFO lines at import. The
# variable is read by jaxlib's C++ logging too, so it only drops INFO: XLA's, NCCL's and the
# runtime's warnings and errors (an out-of-memory report, say) must stay visible.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from vision_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Run config file (configs/*.py). Optional outside --mode=train: the '
    "workdir's config.json is used by default.")
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, results.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'export'],
                          'train (or resume); eval, predict or export a trained workdir.')
_IMAGES = flags.DEFINE_multi_string(
    'images', [], 'predict: image files or folders; --images a.png b.png, a shell glob '
    '(--images photos/*.jpg) and repeated --images all work.')
_OUTPUT = flags.DEFINE_string('output', None, 'predict: also write predictions as JSON here.')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'predict: how many classes to print per image.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-host: host:port of process 0. Without it, '
    'jax.distributed is initialised automatically on TPU pods and SLURM clusters.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host: this process index.')
flags.mark_flags_as_required(['workdir'])


class UsageError(UserError):
  """Bad command-line input."""


def _check_workdir(workdir: str) -> str:
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


def _save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the run's config.json. A different one already there (the run resumed with a
  changed config) is kept as config.<when it was written>.json, and the changes logged."""
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'config.json')
  text = config.to_json_best_effort(indent=2)
  if os.path.exists(path):
    with open(path) as f:
      previous = f.read()
    if previous == text:
      return
    written = time.strftime('%Y%m%d-%H%M%S', time.gmtime(os.path.getmtime(path)))
    kept, n = os.path.join(workdir, f'config.{written}.json'), 1
    while os.path.exists(kept):
      kept, n = os.path.join(workdir, f'config.{written}-{n}.json'), n + 1
    os.replace(path, kept)
    try:
      changes = config_lib.differences(json.loads(previous), json.loads(text))
    except json.JSONDecodeError:
      changes = ['the previous one is not valid JSON']
    logging.warning('The config differs from the one this workdir last ran with (kept as '
                    '%s): %s.', kept, '; '.join(changes) or 'formatting only')
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def _load_config(workdir: str) -> ml_collections.ConfigDict:
  """--config if given; else, outside training, the config the workdir was trained with."""
  if _CONFIG.value is not None:
    return _CONFIG.value
  path = os.path.join(workdir, 'config.json')
  if _MODE.value == 'train' or not os.path.exists(path):
    raise UsageError(f'--config is required (there is no {path} to reuse). Pass '
                     '--config=configs/<name>.py.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _images(argv: list[str]) -> list[str]:
  """--images values plus, in predict mode, the positional arguments after them: absl
  takes one value per flag, so `--images a.png b.png` (or a shell glob) leaves b.png
  positional."""
  extra = argv[1:]
  if extra and (_MODE.value != 'predict' or not _IMAGES.value):
    raise UsageError(f'Unexpected arguments: {" ".join(extra)}. Every option is a --flag'
                     '; only --mode=predict takes several --images values.')
  return list(_IMAGES.value) + extra


def run(argv: list[str]) -> None:
  """Validates everything cheap first, then dispatches on --mode."""
  images = _images(argv)
  from vision_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                     _PROCESS_ID.value)
  import jax  # pylint: disable=g-import-not-at-top
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  config = _load_config(workdir)
  config_lib.validate(config, num_devices=jax.device_count())
  workdir = _check_workdir(workdir)
  distributed.check_shared_workdir(workdir)  # Multi-host: every process sees one workdir.
  logging.info('JAX %s, backend %s, process %d of %d, devices: %s', jax.__version__,
               jax.default_backend(), jax.process_index(), jax.process_count(), jax.devices())
  logging.info('Config:\n%s', config)
  if _MODE.value == 'train':
    if jax.process_index() == 0:
      _save_config(config, workdir)
    from vision_jax import train  # pylint: disable=g-import-not-at-top
    results = train.train_and_evaluate(config, workdir)
  elif _MODE.value == 'eval':
    from vision_jax import evaluate  # pylint: disable=g-import-not-at-top
    results = evaluate.run(config, workdir)
  elif _MODE.value == 'predict':
    from vision_jax import predict  # pylint: disable=g-import-not-at-top
    predict.run(config, workdir, images, output=_OUTPUT.value, top_k=_TOP_K.value)
    return  # It printed one line per image.
  else:
    from vision_jax import export  # pylint: disable=g-import-not-at-top
    results = export.run(config, workdir)
  if jax.process_index() == 0:
    print(json.dumps(results))


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


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(_QuietOrbax())
  try:
    run(argv)
  except UserError as e:
    logging.flush()
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
