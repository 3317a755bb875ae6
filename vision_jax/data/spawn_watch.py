"""A worker process killed while it starts must not hang the process that started it.

multiprocessing's spawn start (`popen_spawn_posix.Popen._launch`, CPython 3.8 to 3.13)
writes the pickled process object -- for an input worker, its dataset -- into a pipe that
the new interpreter reads, while the parent still holds that pipe's read end open (it
closes it only after the write). A payload larger than the pipe's buffer (64 KiB on
Linux; the digits split held in memory is ~100 KB) is written as the child reads it. A
child killed before it has read everything (a SIGKILL, the out-of-memory killer) leaves
the write blocked for ever: the parent's own read end keeps the pipe open, so the write
never fails with EPIPE. `Process.start()` never returns, grain never looks at the dead
worker, and the run hangs with its training process idle.

`SpawnWatch` is a thread that finds such a start (a thread whose innermost frame is
`_launch`, its child already exited) and reads the rest of the payload from that pipe
itself. The write completes, `start()` returns, and grain finds the worker dead by its
exit code, as it does for a worker killed later: `workers.WorkerDiedError`, one paragraph.
It reads only a pipe it has proven is that start's (the read end of the pipe whose write
end the start holds), so a descriptor number reused meanwhile is never touched.
"""
from __future__ import annotations

import fcntl
import os
import stat
import sys
import threading
import time

try:
  from multiprocessing import popen_spawn_posix
  _LAUNCH = popen_spawn_posix.Popen._launch.__code__  # pylint: disable=protected-access
except (ImportError, AttributeError):  # Not POSIX, or another multiprocessing: no watch.
  _LAUNCH = None

POLL_S = 0.5  # How often the watch looks; a blocked start ends within about this long.


def _exited(pid: int) -> bool:
  """Whether child `pid` has ended (without reaping it: its Popen still will)."""
  try:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
  except (ChildProcessError, AttributeError):  # Not our child / no waitid here.
    return False


def _launching(ident: int) -> bool:
  frame = sys._current_frames().get(ident)  # pylint: disable=protected-access
  return frame is not None and frame.f_code is _LAUNCH


def _pipe_read_end_of(fd: int, write_end: int) -> bool:
  """Whether `fd` is the read end of the pipe whose write end is `write_end`."""
  read_st, write_st = os.fstat(fd), os.fstat(write_end)
  return (stat.S_ISFIFO(read_st.st_mode) and
          (read_st.st_dev, read_st.st_ino) == (write_st.st_dev, write_st.st_ino) and
          fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY)


def _drain(ident: int, child_r: int, parent_w: int) -> bool:
  """Reads the start-up payload of thread `ident`'s dead child until its write is done.
  Returns whether it did (False: the pipe was already gone, nothing touched)."""
  try:
    write_end = os.dup(parent_w)  # Open until the Popen (which the frame holds) is freed.
  except OSError:
    return False
  try:
    read_end = os.dup(child_r)  # Closed by _launch only after the write: prove it is ours.
  except OSError:
    os.close(write_end)
    return False
  try:
    if not _pipe_read_end_of(read_end, write_end):
      return False
    os.set_blocking(read_end, False)
    while _launching(ident):
      try:
        os.read(read_end, 1 << 20)
      except BlockingIOError:
        time.sleep(0.01)
    return True
  finally:
    os.close(read_end)
    os.close(write_end)


def unblock_dead_starts() -> int:
  """Completes every start blocked on a child that has already exited (module
  docstring); returns how many it found."""
  if _LAUNCH is None:
    return 0
  found = 0
  for ident, frame in list(sys._current_frames().items()):  # pylint: disable=protected-access
    if frame.f_code is not _LAUNCH or ident == threading.get_ident():
      continue
    names = frame.f_locals
    pid = getattr(names.get('self'), 'pid', None)  # Set once the child exists.
    child_r, parent_w = names.get('child_r'), names.get('parent_w')
    del frame, names
    if pid and child_r is not None and parent_w is not None and _exited(pid):
      found += _drain(ident, child_r, parent_w)
  return found


class SpawnWatch:
  """Runs `unblock_dead_starts` every POLL_S seconds in a daemon thread until `stop()`."""

  def __init__(self):
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name='vision_jax-spawn-watch')
    self._thread.start()

  def _run(self) -> None:
    while not self._stop.wait(POLL_S):
      unblock_dead_starts()

  def stop(self) -> None:
    self._stop.set()
