"""A run's workdir: who may write it, and the metadata a run leaves in it.

* `check_usable` refuses directories that are not (or not yet) a vision_jax workdir: `/`,
  the repository or one of its folders, any non-empty directory without a run in it.
* `Lock` is held by a training run (and by eval/export, which write results into it): a
  second one on the same workdir is refused with the holder's host, pid and start time.
  The lock is a file created atomically (O_CREAT | O_EXCL), which works on the shared
  filesystems multi-host runs use (NFS, Filestore, gcsfuse) where advisory locks do not.
  It is released on any exit the process survives; after a SIGKILL or a crash it is
  stale and taken over with a warning: on the same host when its pid is gone, elsewhere
  when its heartbeat (the file's mtime, touched every `HEARTBEAT_S`) is older than
  `STALE_S`. Only process 0 of a multi-host run holds it.
* `write_metadata` writes config.json and dataset.json atomically, once a run has passed
  every check that can fail before its first step; a changed config.json is kept as
  config.<time written>.json and the changes logged.
* `truncate_jsonl` drops the log lines a killed run wrote after its last checkpoint.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

from absl import logging

from vision_jax.errors import UserError

LOCK_FILE = '.vision_jax.lock'
HEARTBEAT_S = 20.0
STALE_S = 120.0
# Files and folders that make a directory a vision_jax workdir (a run, a converted
# checkpoint, or one launch/local.sh is about to start with its logs/) a run may write into.
_MARKERS = ('config.json', 'checkpoints', 'dataset.json', 'metrics.jsonl', 'logs', 'run.json',
            LOCK_FILE)


class WorkdirError(UserError):
  """A workdir that cannot be used as it is; the message says why and what to do."""


def _repository_root() -> str:
  """The checkout this package runs from (the folder above vision_jax/)."""
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_usable(workdir: str, *, creating: bool) -> None:
  """Raises WorkdirError for a directory a run must not write into.

  `creating`: the run may start a new workdir here (training; converting weights).
  """
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir={workdir} is a file, not a directory. Pass a directory '
                       '(it is created if missing).')
  repo = _repository_root()
  if workdir == os.path.sep or workdir == repo or (
      os.path.commonpath([workdir, repo]) == repo and _is_source_folder(workdir, repo)):
    what = ('the filesystem root' if workdir == os.path.sep else
            'the repository itself' if workdir == repo else 'a folder of the repository')
    raise WorkdirError(f'--workdir={workdir} is {what}: a run writes checkpoints, logs and '
                       'pictures there and would overwrite its files. Pass a new directory, '
                       'e.g. --workdir=/tmp/vision_jax/run1 (or one under workdirs/, which '
                       'git ignores).')
  if not os.path.isdir(workdir):
    if not creating:
      raise WorkdirError(f'--workdir={workdir} does not exist. Pass the --workdir of a '
                         'training run (is the path spelt right?).')
    return
  entries = [e for e in os.listdir(workdir) if not e.startswith('.')]
  if entries and not any(os.path.exists(os.path.join(workdir, m)) for m in _MARKERS):
    shown = ', '.join(sorted(entries)[:5]) + (', ...' if len(entries) > 5 else '')
    raise WorkdirError(f'--workdir={workdir} is not empty ({shown}) and holds no vision_jax '
                       'run (no config.json or checkpoints/). A run would mix its files '
                       'with these. Pass an empty or new directory, or the workdir of a run.')


def _is_source_folder(path: str, repo: str) -> bool:
  """A folder of the checkout other than the git-ignored workdirs/ (and folders in it)."""
  relative = os.path.relpath(path, repo).split(os.sep)
  return relative[0] != 'workdirs' and os.path.isdir(path)


# ------------------------------------------------------------------------------- the lock

def _holder() -> dict:
  return {'host': socket.gethostname(), 'pid': os.getpid(),
          'since': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}


def pid_alive(pid: int) -> bool:
  """Whether a process with this pid runs on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    return True
  return True


class Lock:
  """The workdir's lock, held between `acquire()` and `release()` (or as a context)."""

  def __init__(self, workdir: str, purpose: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.purpose = purpose
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._held = False

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirError naming its live holder."""
    for _ in range(3):  # A stale lock is removed, then taken like a free one.
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._take_over_if_stale()
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump({**_holder(), 'purpose': self.purpose}, f)
      self._held = True
      self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                      name='vision_jax workdir lock')
      self._thread.start()
      return
    raise WorkdirError(f'Could not take the lock {self.path}: another process keeps '
                       'creating it. Try again.')

  def _take_over_if_stale(self) -> None:
    try:
      with open(self.path) as f:
        holder = json.load(f)
      age = time.time() - os.path.getmtime(self.path)
    except (OSError, json.JSONDecodeError, ValueError):
      holder, age = {}, STALE_S + 1  # Unreadable: a half-written lock of a dead run.
    same_host = holder.get('host') == socket.gethostname()
    dead = (not pid_alive(int(holder['pid']))) if same_host and 'pid' in holder else (
        age > STALE_S)
    if not dead:
      raise WorkdirError(
          f'{os.path.dirname(self.path)} is in use: a {holder.get("purpose", "run")} '
          f'(host {holder.get("host", "?")}, pid {holder.get("pid", "?")}, since '
          f'{holder.get("since", "?")}) holds {LOCK_FILE}. Two runs in one workdir would '
          'mix their checkpoints and logs. Wait for it to finish, stop it, or pass '
          'another --workdir.')
    logging.warning('Taking over the stale lock of %s (host %s, pid %s, since %s): that '
                    'process is gone.', holder.get('purpose', 'a run'), holder.get('host'),
                    holder.get('pid'), holder.get('since'))
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        os.utime(self.path)
      except OSError:
        return

  def release(self) -> None:
    if not self._held:
      return
    self._held = False
    self._stop.set()
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass

  def __enter__(self) -> 'Lock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


# --------------------------------------------------------------------------- metadata

def write_json(path: str, obj) -> None:
  """Writes JSON atomically (a temporary file renamed): never a half-written file."""
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def write_metadata(workdir: str, config_json: str, dataset: dict) -> None:
  """config.json (the resolved config, as JSON text) and dataset.json of a run that is
  about to take its first step. A config.json that differs is kept beside it as
  config.<UTC time it was written>.json, and the differences are logged."""
  from vision_jax import config_files  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      previous = f.read()
    if previous != config_json:
      written = time.strftime('%Y%m%d-%H%M%S', time.gmtime(os.path.getmtime(path)))
      kept, n = os.path.join(workdir, f'config.{written}.json'), 1
      while os.path.exists(kept):
        kept, n = os.path.join(workdir, f'config.{written}-{n}.json'), n + 1
      os.replace(path, kept)
      try:
        changes = config_files.differences(json.loads(previous), json.loads(config_json))
      except json.JSONDecodeError:
        changes = ['the previous one is not valid JSON']
      logging.warning('The config differs from the one this workdir last ran with (kept as '
                      '%s): %s.', kept, '; '.join(changes) or 'formatting only')
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(config_json)
  os.replace(tmp, path)
  dataset_path = os.path.join(workdir, 'dataset.json')
  if os.path.exists(dataset_path):
    with open(dataset_path) as f:
      old = f.read()
    if old != json.dumps(dataset, indent=2):
      os.replace(dataset_path, dataset_path[:-len('.json')] + '.previous.json')
  write_json(dataset_path, dataset)


def truncate_jsonl(path: str, last_step: int) -> int:
  """Drops the lines of a JSON-lines log whose 'step' is after `last_step` (what a run
  killed after its last checkpoint wrote, and its resumption writes again). Returns how
  many were dropped."""
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if json.loads(line).get('step', 0) <= last_step:
        keep.append(line)
    except json.JSONDecodeError:  # A line cut short by the kill.
      pass
  if len(keep) != len(lines):
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return len(lines) - len(keep)
