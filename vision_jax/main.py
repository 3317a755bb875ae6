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
import traceback

# TensorFlow (imported for tfds and the SavedModel export) logs INFO lines at import. The
# variable is read by jaxlib's C++ logging too, so it only drops INFO: XLA's, NCCL's and the
# runtime's warnings and errors (an out-of-memory report, say) must stay visible.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

if __name__ == '__main__':  # The imports below take seconds: a SIGTERM then ends the run too.
  from vision_jax import preemption as _preemption  # pylint: disable=g-import-not-at-top
  _preemption.exit_on_sigterm(_preemption.mode_from_argv(sys.argv))

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
_OUTPUT = flags.DEFINE_string(
    'output', None, 'predict: also write the predictions as JSON to this file. eval, '
    'export: write results.json / the export into this directory instead of the workdir '
    '(for a read-only workdir).')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'predict: how many classes to print per image.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-host: host:port of process 0. Without it, '
    'jax.distributed is initialised automatically on TPU pods and SLURM clusters.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host: this process index.')
flags.mark_flags_as_required(['workdir'])


class UsageError(UserError):
  """Bad command-line input."""


# --config.key=value given without --config (eval, predict, export read the workdir's
# config.json): taken out of argv before absl sees them, applied to that config.
_WORKDIR_OVERRIDES: list[str] = []
_MODEL_OVERRIDES: list[str] = []  # --config.model.<option>=v with --config (apply_overrides).
_OWN_PROCESS = False  # True when run as `python -m vision_jax.main` (the process is ours).


def _load_config(workdir: str) -> ml_collections.ConfigDict:
  """--config if given; else, outside training, the config the workdir was trained with
  (with any --config.key=value overrides)."""
  from vision_jax import config_files  # pylint: disable=g-import-not-at-top
  from vision_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if _CONFIG.value is not None:
    config = _CONFIG.value
    config_files.apply_overrides(config, _MODEL_OVERRIDES)
    for change in config_files.absolute_paths(config):
      logging.info('Relative path made absolute, as config.json stores it (a later '
                   '--mode=eval|predict|export finds the same data from any directory): %s',
                   change)
    return config
  if _MODE.value == 'train':
    raise UsageError('--config is required to train: pass --config=configs/<name>.py '
                     '(e.g. configs/default.py).')
  workdir_lib.check_usable(workdir, creating=False)
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise UsageError(f'{workdir} has no config.json: it is not the workdir of a training '
                     'run (or the run never started). Pass the --workdir of a run, or '
                     '--config=configs/<name>.py for its config.')
  config = config_files.from_workdir_json(path)
  config_files.apply_overrides(config, _WORKDIR_OVERRIDES)
  return config


def _one_flag_per_image(argv: list[str]) -> list[str]:
  """`--images a.png b.png` (what a shell glob expands to) as `--images=a.png
  --images=b.png`: absl takes one value per flag. Order is kept."""
  out, after_images = [], False
  for arg in argv:
    if arg == '--images':
      after_images = True
      continue
    if after_images and not arg.startswith('-'):
      out.append(f'--images={arg}')
      continue
    after_images = arg.startswith('--images=')
    out.append(arg)
  return out


def _images(argv: list[str]) -> list[str]:
  """--images values, in the order given; any other positional argument is refused."""
  if argv[1:]:
    raise UsageError(f'Unexpected arguments: {" ".join(argv[1:])}. Every option is a '
                     '--flag (several images: --images a.png b.png, or a shell glob).')
  return list(_IMAGES.value)


def _lock(workdir: str, writable: bool):
  """The workdir lock for a training run (or eval/export writing into the workdir),
  taken by process 0; every process learns whether it was."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from vision_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if _MODE.value == 'predict' or not writable:
    return None
  lock, error = workdir_lib.Lock(workdir, purpose=f'{_MODE.value} run'), None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except UserError as e:
      error = e
  if jax.process_count() > 1:
    taken = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not int(taken) and error is None:
      error = workdir_lib.WorkdirError(f'Process 0 could not take the lock of {workdir} '
                                       '(its log says why).')
  if error is not None:
    raise error
  if jax.process_index() == 0:
    from vision_jax import preemption  # pylint: disable=g-import-not-at-top
    preemption.at_exit_now(lock.release)  # A SIGTERM outside the loop frees it too.
  return lock


def _has_checkpoints(workdir: str) -> bool:
  """Whether the run has saved (then it resumes, and init_from is not read)."""
  try:
    return any(name.isdigit() for name in os.listdir(os.path.join(workdir, 'checkpoints')))
  except OSError:
    return False


def run(argv: list[str]) -> None:
  """Validates everything cheap first, then dispatches on --mode."""
  images = _images(argv)
  from vision_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                     _PROCESS_ID.value)
  from vision_jax import platforms  # pylint: disable=g-import-not-at-top
  platforms.check()  # JAX_PLATFORMS=gpu without a GPU: one paragraph, before any file.
  import jax  # pylint: disable=g-import-not-at-top
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vision_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  training = _MODE.value == 'train'
  workdir_lib.check_usable(workdir, creating=training)
  if training:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise UsageError(f'--workdir={workdir} cannot be created ({e.strerror}). Pass a '
                       'directory you can write to.') from e
  writable = os.access(workdir, os.W_OK | os.X_OK)
  if training and not writable:
    raise UsageError(f'--workdir={workdir} is not writable. Pass a directory you can '
                     'write to.')
  if _MODE.value in ('eval', 'export') and not writable and not _OUTPUT.value:
    raise UsageError(f'--workdir={workdir} is read-only, and --mode={_MODE.value} writes '
                     'its results there by default. Pass --output=DIR to write them '
                     'elsewhere.')
  from vision_jax import outputs  # pylint: disable=g-import-not-at-top
  if _OUTPUT.value and _MODE.value in ('eval', 'export'):
    outputs.check_dir(_OUTPUT.value, '--output')
  distributed.check_shared_workdir(workdir)  # Multi-host: every process sees one workdir.
  lock = _lock(workdir, writable)  # Before anything slow: a second run is refused at once.
  try:
    if training:  # A checkpoints/ that is a file would fail the first save, after training.
      from vision_jax import run_identity  # pylint: disable=g-import-not-at-top
      run_identity.check_checkpoints_dir(workdir)
    config = _load_config(workdir)
    # The run's task, built once by validation and passed to every mode.
    task = config_lib.validate(config, num_devices=jax.device_count())
    if not training:  # The checkpoint it will load: this run's, saved with these keys.
      from vision_jax import inference, run_identity  # pylint: disable=g-import-not-at-top
      ckpt_workdir, step = inference.resolve_step(workdir, config.eval.checkpoint)
      run_identity.check_load(ckpt_workdir, config, _MODE.value, step)
    from vision_jax import environment  # pylint: disable=g-import-not-at-top
    environment.check(config)  # The data directory and the open-file limit.
    if training and config.init_from.checkpoint and not _has_checkpoints(workdir):
      from vision_jax import init_source  # pylint: disable=g-import-not-at-top
      init_source.check(config.init_from.checkpoint)  # Before the model is built.
    logging.info('JAX %s, backend %s, process %d of %d, devices: %s', jax.__version__,
                 jax.default_backend(), jax.process_index(), jax.process_count(),
                 jax.devices())
    logging.info('Config:\n%s', config)
    if training:
      from vision_jax import train  # pylint: disable=g-import-not-at-top
      results = train.train_and_evaluate(config, workdir, task)
    elif _MODE.value == 'eval':
      from vision_jax import evaluate  # pylint: disable=g-import-not-at-top
      results = evaluate.run(config, workdir, output=_OUTPUT.value, task=task)
    elif _MODE.value == 'predict':
      from vision_jax import predict  # pylint: disable=g-import-not-at-top
      predict.run(config, workdir, images, output=_OUTPUT.value, top_k=_TOP_K.value,
                  task=task)
      return  # It printed one line per image.
    else:
      from vision_jax import export  # pylint: disable=g-import-not-at-top
      results = export.run(config, workdir, output=_OUTPUT.value, task=task)
  finally:
    if lock is not None:
      lock.release()
  if jax.process_index() == 0:
    print(json.dumps(results))


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  _exit(2)


def _exit(code: int, grace_s: float = 1.0) -> None:
  """sys.exit(code), unless threads that are not daemons are still running `grace_s`
  after a failure: orbax leaves those of a failed save waiting for ever, and the
  interpreter would wait for them at exit (a run that printed its error and hangs). Then
  the logs are flushed and the process ends without waiting (os._exit)."""
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  if not _OWN_PROCESS:  # Called in a test's process (tests/cli_in_process.py): never end it.
    sys.exit(code)
  deadline = time.monotonic() + grace_s
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and not thread.daemon:
      thread.join(max(0.0, deadline - time.monotonic()))
  if any(t.is_alive() and not t.daemon and t is not threading.current_thread()
         for t in threading.enumerate()):
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with bad config files and override keys as one-paragraph errors.

  Without --config, --config.key=value overrides apply to the workdir's config.json.
  """
  argv = _one_flag_per_image(argv)
  _WORKDIR_OVERRIDES.clear()  # (parse_flags runs once per process; tests call it again.)
  _MODEL_OVERRIDES.clear()
  if not any(a == '--config' or a.startswith('--config=') for a in argv):
    _WORKDIR_OVERRIDES.extend(a for a in argv if a.startswith('--config.'))
    argv = [a for a in argv if not a.startswith('--config.')]
  else:  # Model options the file may not list: applied after it is loaded.
    _MODEL_OVERRIDES.extend(a for a in argv if a.startswith('--config.model.'))
    argv = [a for a in argv if not a.startswith('--config.model.')]
    sys.argv[:] = [a for a in sys.argv if not a.startswith('--config.model.')]  # (Read too.)
  try:
    remaining = flags.FLAGS(argv)
    config_given = any(a == '--config' or a.startswith('--config=') for a in argv)
    if _CONFIG.value is not None or config_given:
      _CONFIG.value.keys()  # ml_collections defers a load failure to first access.
    if config_given and not isinstance(_CONFIG.value, ml_collections.ConfigDict):
      raise TypeError('get_config() did not return a ConfigDict')
    return remaining
  except flags.Error as e:
    if 'Error whilst parsing config file' in str(e):  # Its message embeds a traceback.
      from vision_jax import config_files  # pylint: disable=g-import-not-at-top
      _fail(config_files.explain_override_error(argv, e))
    _fail(f'{str(e).rstrip(".")}. Run with --helpshort for the flags.')
  except Exception as e:  # pylint: disable=broad-except
    from vision_jax import config_files  # pylint: disable=g-import-not-at-top
    _fail(config_files.explain_override_error(argv, e))


class _QuietOrbax(logging_std.Filter):
  """Orbax logs every file it writes at INFO, and a failed background write as errors
  with tracebacks from several threads; the failure reaches the training loop, which
  reports it in one paragraph (checkpoint.Checkpointer). Keep orbax's warnings only.
  A failed read of a damaged checkpoint also leaves orbax's sibling reads as asyncio
  tasks whose exception nobody retrieves; asyncio logs each with a traceback, while the
  checkpoint module has already diagnosed the damage in one line: drop those too."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    if record.name == 'asyncio' and record.exc_info and record.exc_info[2] is not None:
      return not any('orbax' in frame.filename
                     for frame in traceback.extract_tb(record.exc_info[2]))
    return 'orbax' not in record.pathname or record.levelno == logging_std.WARNING


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(_QuietOrbax())
  # Outside the training loop (which saves at the next step), a SIGTERM ends the run at
  # once: exit 0 for training (nothing to save), 143 for eval, predict and export.
  from vision_jax import preemption  # pylint: disable=g-import-not-at-top
  preemption.exit_on_sigterm(_MODE.value)
  try:
    run(argv)
  except UserError as e:
    logging.flush()
    _fail(str(e))
  except OSError as e:  # The machine's, not ours: disk full, limits, permissions.
    from vision_jax import outputs  # pylint: disable=g-import-not-at-top
    if e.errno not in outputs.ENVIRONMENT_ERRNOS:
      raise
    logging.flush()
    _fail(outputs.explain(e))


if __name__ == '__main__':
  _OWN_PROCESS = True
  app.run(main, flags_parser=parse_flags)
