"""Which run a workdir holds, and whether its checkpoints are that run's.

A workdir's first training run writes `run.json` (a random run id, when and where it
started); every checkpoint it saves records that id, the config values that define the run
(`run_keys`) and their fingerprint. Copying the workdir copies run.json, so a copy resumes
as the same run; a `checkpoints/` reached through a symlink from another workdir, or
checkpoints copied in without their run.json, carry another run's id and are refused
before anything is built, moved or written.

What defines a run (`run_keys`) may not change on resume, because the checkpoint would then
mean something other than the config says: the task, the model's architecture (every
model.* option except the compute options, train_state.COMPUTE_OPTIONS), the
training data and its labels (dataset.name, classes, train_split, the folder split's seed
and test fraction, image_size, channels, task.num_classes) and the optimiser whose state the
checkpoint holds (optim.name, optim.freeze). Everything else may change on resume and
applies from that step on: the length and schedule (train.*, optim.* hyperparameters),
seed, augmentation, evaluation, checkpointing, the device mesh and the input workers.

Checkpoints written before checkpoints recorded their run (no run id) are adopted by the
workdir that holds them, with a warning, and their fixed keys are compared with the
workdir's config.json instead.

--mode=eval, predict and export (`check_load`) load only the workdir's own checkpoints, with
the values they were saved with of the keys that say what a checkpoint holds: the task, the
model's architecture and the optimiser. The data keys may differ there (other data, another
image size).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid

from absl import logging

from vision_jax.errors import UserError

RUN_FILE = 'run.json'
_FIXED = ('task.name', 'task.num_classes', 'dataset.name', 'dataset.classes',
          'dataset.train_split', 'dataset.folder_split_seed', 'dataset.folder_test_fraction',
          'dataset.image_size', 'dataset.channels', 'optim.name', 'optim.freeze')
# The run keys besides model.* that eval, predict and export compare (`_load_keys`).
_LOAD_KEYS = ('task.name', 'task.num_classes', 'optim.name', 'optim.freeze')


class RunIdentityError(UserError):
  """Checkpoints that are not this workdir's run's; the message says whose and what to do."""


def _plain(value):
  """JSON-comparable: tuples as lists (config.json stores them so)."""
  return json.loads(json.dumps(value, default=str))


def run_keys(config) -> dict:
  """{'dotted.key': value} of the config values that define the run (module docstring)."""
  out = {}
  for dotted in _FIXED:
    section, key = dotted.split('.')
    node = config.get(section) if hasattr(config, 'get') else None
    if node is not None and key in node:
      out[dotted] = _plain(node[key])
  from vision_jax import train_state  # pylint: disable=g-import-not-at-top
  model = config.get('model') or {}
  for key in sorted(model.keys()):
    if key not in train_state.COMPUTE_OPTIONS:
      out[f'model.{key}'] = _plain(model[key])
  return out


def fingerprint(keys: dict) -> str:
  return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def check_checkpoints_dir(workdir: str) -> None:
  """Refuses a workdir whose `checkpoints` is not a directory (a file, a broken link):
  every save would fail after compiling and training, and nothing could be resumed."""
  path = os.path.join(workdir, 'checkpoints')
  if not os.path.lexists(path) or os.path.isdir(path):
    return
  what = ('a symlink to nowhere' if os.path.islink(path) and not os.path.exists(path) else
          'a file, not a directory')
  raise RunIdentityError(
      f'{path} is {what}, so no checkpoint could be saved or resumed. Nothing was changed. '
      'Move it away (or, if it is a link, point it at this run\'s own checkpoints '
      'directory) and rerun.')


def checkpoint_records(workdir: str) -> dict[int, dict | None]:
  """{step: the JSON `data` item of that finished checkpoint (None if unreadable)}."""
  directory = os.path.join(workdir, 'checkpoints')
  try:
    names = os.listdir(directory)
  except OSError:
    return {}
  records = {}
  for name in names:
    if not name.isdigit():
      continue
    try:
      with open(os.path.join(directory, name, 'data', 'metadata')) as f:
        record = json.load(f)
      records[int(name)] = record if isinstance(record, dict) else None
    except (OSError, ValueError):
      records[int(name)] = None  # Unfinished or damaged: the restore says which.
  return dict(sorted(records.items()))


def read_run(workdir: str) -> dict | None:
  """run.json of the workdir, or None if it has none (or it is unreadable)."""
  try:
    with open(os.path.join(workdir, RUN_FILE)) as f:
      run = json.load(f)
  except (OSError, ValueError):
    return None
  return run if isinstance(run, dict) and isinstance(run.get('run'), str) else None


def _first_foreign(run: dict | None, records: dict[int, dict | None]
                   ) -> tuple[int, dict] | None:
  """(step, record) of the first checkpoint written by another run than `run`."""
  for step, record in records.items():
    if record is not None and 'run' in record and (run is None or
                                                   record['run'] != run['run']):
      return step, record
  return None


def _whose(workdir: str, run: dict | None, step: int, record: dict) -> str:
  """'Checkpoint S in DIR (a symlink to ...) was written by run R (...), and ours is ...'"""
  directory = os.path.join(workdir, 'checkpoints')
  link = (f' ({directory} is a symlink to {os.path.realpath(directory)})'
          if os.path.islink(directory) else '')
  ours = (f"this workdir's run is {run['run']}" if run else
          f'this workdir has no run of its own yet (no {RUN_FILE})')
  return (f'Checkpoint {step} in {directory}{link} was written by run {record["run"]} '
          f'(saved from {record.get("workdir", "another workdir")}), and {ours}')


def _foreign(workdir: str, run: dict | None, step: int, record: dict) -> RunIdentityError:
  return RunIdentityError(
      f'{_whose(workdir, run, step, record)}: resuming would continue '
      'another run and write this one\'s steps into its checkpoints. Nothing was changed. '
      'Give this workdir its own checkpoints directory (remove the link, or pass a new '
      '--workdir), or resume that run from its own workdir; to continue from its weights in '
      'a new run, pass --config.init_from.checkpoint=<its workdir>. If you copied these '
      f'checkpoints here on purpose, copy that workdir\'s {RUN_FILE} with them.')


def _model_defaults(name) -> dict:
  """{'model.<option>': default} of model `name`'s constructor options that define the
  run: what a config that does not list an option builds ({} for an unknown model)."""
  import inspect  # pylint: disable=g-import-not-at-top
  from vision_jax import models, train_state  # pylint: disable=g-import-not-at-top
  try:
    parameters = inspect.signature(models.model_class(name).__init__).parameters
  except (ValueError, TypeError):
    return {}
  return {f'model.{p.name}': _plain(p.default) for p in parameters.values()
          if p.default is not inspect.Parameter.empty and p.name not in
          ('self', 'num_classes', 'rngs', 'kernels', *train_state.COMPUTE_OPTIONS)}


def _changed(then: dict, now: dict) -> list[str]:
  """'key: old -> new' for the keys both know. A model option only one side lists is
  compared with the model's default (--config.model.width=32 where training used the
  default is a change); any other key only one side has is from another version of the
  code, not a change."""
  if then.get('model.name') == now.get('model.name'):
    defaults = _model_defaults(now.get('model.name'))
    then, now = {**defaults, **then}, {**defaults, **now}
  return [f'{k}: {json.dumps(then[k])} -> {json.dumps(now[k])}'
          for k in sorted(set(then) & set(now)) if then[k] != now[k]]


def _load_keys(keys: dict) -> dict:
  """The run keys that say what a checkpoint holds (the task, the model's architecture, and
  the optimiser whose state is restored with the weights): what eval, predict and export
  must load it with. The data may differ there: evaluating a model on other data, at
  another image size, is what --mode=eval is for."""
  return {k: v for k, v in keys.items() if k.startswith('model.') or k in _LOAD_KEYS}


def _legacy_keys(workdir: str) -> dict | None:
  """The run keys of the workdir's config.json (for checkpoints without their own)."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      return run_keys(json.load(f))
  except (OSError, ValueError, AttributeError):
    return None


def check_resume(workdir: str, config) -> dict | None:
  """Raises RunIdentityError if the workdir's checkpoints are another run's, or were
  saved with other values of the keys that define the run. Returns run.json (None for a
  workdir without one). Reads only small JSON files: call it before building anything."""
  run, records = read_run(workdir), checkpoint_records(workdir)
  legacy = [s for s, r in records.items() if r is not None and 'run' not in r]
  foreign = _first_foreign(run, records)
  if foreign is not None:
    raise _foreign(workdir, run, *foreign)
  known = [r for r in records.values() if r is not None]
  if not known:
    return run
  then = known[-1].get('run_keys') or _legacy_keys(workdir)
  now = run_keys(config)
  changes = _changed(then, now) if then is not None else []
  if changes:
    step = max(s for s, r in records.items() if r is not None)
    raise RunIdentityError(
        f'The checkpoints in {os.path.join(workdir, "checkpoints")} (latest step {step}) '
        f'were saved by a run with other values of keys that define it: '
        f'{"; ".join(changes)}. Resuming would train another model, task or dataset on '
        'from them (or mix two runs\' results). Nothing was changed. Rerun with the '
        'original values (omit those overrides), or start a new --workdir; to start '
        'from these weights there, pass --config.init_from.checkpoint='
        f'{workdir}.')
  if legacy and run is None:
    logging.warning('Checkpoints %s in %s were written before checkpoints recorded their '
                    'run; this workdir adopts them as its run%s.', legacy,
                    os.path.join(workdir, 'checkpoints'),
                    ' (its config.json has the same values of the keys that define a run)'
                    if then is not None else ' (it has no config.json to compare with)')
  return run


def claim(workdir: str, config) -> dict:
  """For a training run: checks the checkpoints (`check_resume`), writes run.json at the
  workdir's first run, and returns what every checkpoint of this run records:
  {'run', 'workdir', 'run_keys', 'config_fingerprint'}. Every process of a multi-host
  run returns the same (process 0 writes run.json)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  run = check_resume(workdir, config)
  # Every process takes the same barriers, whatever it read: all have read the workdir
  # before process 0 writes run.json, and all read it back after.
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('vision_jax: run identity checked')
  if run is None and jax.process_index() == 0:
    from vision_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    workdir_lib.write_json(os.path.join(workdir, RUN_FILE), {
        'run': uuid.uuid4().hex, 'host': socket.gethostname(),
        'started': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
        'workdir': workdir})
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('vision_jax: run.json written')
  if run is None:
    run = read_run(workdir)
    if run is None:
      raise RunIdentityError(f'{os.path.join(workdir, RUN_FILE)} could not be written or '
                             'read back. Check that the workdir is writable and rerun.')
  keys = run_keys(config)
  return {'run': run['run'], 'workdir': workdir, 'run_keys': keys,
          'config_fingerprint': fingerprint(keys)}


def check_load(workdir: str, config, mode: str, step: int) -> None:
  """For --mode=eval|predict|export (`mode`), about to load checkpoint `step` of the
  checkpoints in `workdir` with `config`: raises RunIdentityError if any of them was
  written by another run than the workdir's run.json (a symlinked or copied-in
  checkpoints/), or if that checkpoint was saved with other values of the keys that
  define what it holds than `config` has (`_load_keys`: the task, the architecture, the
  optimiser; the data may differ). The same rules as a resume (`check_resume`): a copied
  workdir is its run, checkpoints without a run id are compared with config.json. Reads
  only small JSON files: call it before building anything."""
  run, records = read_run(workdir), checkpoint_records(workdir)
  foreign = _first_foreign(run, records)
  if foreign is not None:
    step_, record = foreign
    directory = os.path.join(workdir, 'checkpoints')
    where = (os.path.dirname(os.path.realpath(directory)) if os.path.islink(directory) else
             record.get('workdir') or "<that run's workdir>")
    raise RunIdentityError(
        f'{_whose(workdir, run, step_, record)}: --mode={mode} would present another '
        'run\'s checkpoint as this one\'s. Nothing was changed. Pass that run\'s own '
        f'workdir (--workdir={where}), or give this workdir its own checkpoints directory '
        '(remove the link); if you copied these checkpoints here on purpose, copy that '
        f'workdir\'s {RUN_FILE} with them.')
  record = records.get(step)
  if record is None:  # Unreadable: compare with the latest readable one, as a resume does.
    known = [s for s, r in records.items() if r is not None]
    if not known:
      return
    step = known[-1]
    record = records[step]
  then = record.get('run_keys') or _legacy_keys(workdir)
  changes = _changed(_load_keys(then), _load_keys(run_keys(config))) if then else []
  if changes:
    raise RunIdentityError(
        f'Checkpoint {step} in {os.path.join(workdir, "checkpoints")} was saved by a run '
        f'with other values of keys that define what it holds than --mode={mode} would '
        f'load it with: {"; ".join(changes)}. That would build another model, task or '
        'optimiser than its weights were saved with (a failed restore, or results that '
        'mean something else). Nothing was changed. Omit those overrides (the workdir\'s '
        'config.json holds the values it was trained with) or pass the --config it was '
        'trained with; '
        'for these weights with other values, train a new run from them with '
        f'--config.init_from.checkpoint={workdir}.')
