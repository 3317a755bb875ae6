"""Files a run writes for the user (results.json, predictions, exports): whole or not at all.

* `atomic(path)` gives a temporary name beside `path` (same extension, the writer's pid in
  it) and renames it to `path` only when the write finished: a full disk, a size limit or a
  signal never leaves a partial file under the final name, and the previous file stays as
  it was. A failed write removes its temporary file and raises `OutputError`.
* `check_dir` / `check_file` refuse an --output that cannot be written (a directory where a
  file is wanted, a file where a directory is wanted or above it) before anything slow runs.
* `explain` turns an OSError of the environment (no space, file too large, too many open
  files, permission, read-only filesystem) into one paragraph naming the path and the fix.
* `remove_stale` removes the temporary files and folders (`<name>.tmp-<pid>`,
  `<name>.old-<pid>`) that killed writers on this host left behind.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from typing import Iterator

from vision_jax.errors import UserError

# Errors of the machine or the filesystem rather than of vision_jax: reported in one
# paragraph (main), never as a traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EMFILE, errno.ENFILE,
                      errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                      errno.EEXIST, errno.EIO, errno.ENAMETOOLONG}

_FIXES = {
    errno.ENOSPC: 'the disk is full: free space there (or write elsewhere) and rerun',
    errno.EDQUOT: 'the disk quota is used up: free space there (or write elsewhere) and rerun',
    errno.EFBIG: 'a file grew past the size limit of this process (ulimit -f): raise it '
                 '(ulimit -f unlimited) or write elsewhere, and rerun',
    errno.EMFILE: 'this process ran out of open files (ulimit -n {nofile}): raise the limit '
                  '(e.g. ulimit -n 4096) or use fewer input workers '
                  '(--config.dataset.num_workers), and rerun',
    errno.ENFILE: 'the system ran out of open files: close other programs or raise '
                  'fs.file-max, and rerun',
    errno.EROFS: 'the filesystem is read-only: write elsewhere (--output) and rerun',
    errno.EACCES: 'this user may not write there: fix its permissions or write elsewhere, '
                  'and rerun',
    errno.EPERM: 'the operation is not permitted there (e.g. an immutable file): fix it or '
                 'write elsewhere, and rerun',
    errno.ENOTDIR: 'a part of the path is a file, not a directory: pass a path under a '
                   'directory, and rerun',
    errno.EISDIR: 'the path is a directory where a file is written: pass a file path, and '
                  'rerun',
    errno.EEXIST: 'something else is already at that path: pass another one, and rerun',
}


class OutputError(UserError):
  """A file or folder that could not be written; the message says which and what to do."""


def explain(error: OSError, what: str = '') -> str:
  """One paragraph for an OSError: the path, the system's words, and the fix."""
  import resource  # pylint: disable=g-import-not-at-top
  path = error.filename or ''
  fix = _FIXES.get(error.errno, 'fix the path or the machine, and rerun')
  fix = fix.format(nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
  doing = f' while {what}' if what else ''
  reason = error.strerror or str(error)
  head = f'Could not open or write {path}{doing}' if path else f'A write failed{doing}'
  tail = ('' if error.errno in (errno.EMFILE, errno.ENFILE) else
          ' Nothing that was being written is presented as finished.')
  return f'{head} ({reason}): {fix}.{tail}'


def _temporary(path: str) -> str:
  stem, ext = os.path.splitext(path)
  return f'{stem}.tmp-{os.getpid()}{ext}'


@contextlib.contextmanager
def atomic(path: str, what: str = '') -> Iterator[str]:
  """`with atomic('results.json') as tmp: write(tmp)`: tmp becomes path when the block
  ends without error; otherwise tmp is removed and an OSError becomes OutputError."""
  from vision_jax import preemption  # pylint: disable=g-import-not-at-top
  tmp = _temporary(path)
  cleanup = lambda: _remove(tmp)
  preemption.at_exit_now(cleanup)
  try:
    yield tmp
    os.replace(tmp, path)
  except OSError as e:
    _remove(tmp)
    raise OutputError(explain(e, what or f'writing {path}')) from e
  except BaseException:
    _remove(tmp)
    raise
  finally:
    preemption.forget(cleanup)


def _remove(path: str) -> None:
  try:
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
  except OSError:
    pass


def check_dir(path: str, flag: str) -> None:
  """Refuses a directory path that cannot be created: it, or a folder above it, is a file."""
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise OutputError(f'{flag}={path} is a file; a directory is written there. Pass a '
                      'directory (it is created if missing).')
  _check_parents(path, flag)


def check_file(path: str, flag: str) -> None:
  """Refuses a file path that is a directory or lies under a file."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    raise OutputError(f'{flag}={path} is a directory; a file is written there. Pass a file '
                      f'path, e.g. {os.path.join(path, "predictions.json")}.')
  _check_parents(path, flag)


def _check_parents(path: str, flag: str) -> None:
  parent = os.path.dirname(path)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ''
  if parent and not os.path.isdir(parent):
    raise OutputError(f'{flag}={path} lies under {parent}, which is a file, not a '
                      'directory. Pass a path under a directory.')


_STALE = re.compile(r'\.(tmp|old)-(\d+)(\.[A-Za-z0-9]+)?$')


def remove_stale(directory: str, name: str) -> list[str]:
  """Removes `<name>.tmp-<pid>[.ext]` and `<name>.old-<pid>` in `directory` whose pid is no
  live process on this host (a writer killed mid-write); returns what it removed."""
  from vision_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  stem = os.path.splitext(name)[0]
  removed = []
  try:
    entries = os.listdir(directory)
  except OSError:
    return removed
  for entry in entries:
    match = _STALE.search(entry)
    if not match or entry[:match.start()] not in (name, stem):
      continue
    pid = int(match.group(2))
    if pid == os.getpid() or workdir_lib.pid_alive(pid):
      continue
    _remove(os.path.join(directory, entry))
    removed.append(entry)
  return removed
