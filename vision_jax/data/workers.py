"""Reading a dataset's batches ahead: on the caller's thread, in threads, or in worker
processes (grain's `mp_prefetch`), with an explicit end.

Element k of a dataset is a pure function of k (stream.py), so the reader changes only
who computes it: `Batches(dataset, start)` yields dataset[start], dataset[start + 1], ...
with 0, 1 or N workers alike. Worker w of N computes the elements w, w + N, ... of
`dataset[start:]` and grain hands them back in order; a resumed run starts at its step with
any worker count.

Worker processes (spawned, not forked: safe with JAX's and TF's threads) end with the run:
  - `close()` (or leaving the `with` block) stops them; the training loop calls it in a
    `finally`, so an exception ends them too;
  - they ignore SIGINT and SIGTERM: Ctrl-C or a preemption notice goes to the training
    process, which decides (save, then close), instead of killing the reader mid-save;
  - each one watches its parent and exits when the parent is gone (killed, crashed), so
    none is ever left behind;
  - one killed while it starts ends the run as one killed later does (spawn_watch.py:
    otherwise the start blocks for ever writing the worker's dataset to it);
  - batches travel through /dev/shm (grain's hand-over: a third of the training process's
    CPU per batch that a pipe costs) when it has room (`SHM_MIN_FREE`), else through a
    pipe: a small /dev/shm (Docker's default is 64 MB) would crash the run (SIGBUS) with
    large batches in flight. Every segment is unlinked once its batch is dropped, when the
    reader closes, and, after a kill, by multiprocessing's resource tracker.
An exception raised in a worker (e.g. decode.CorruptImageError naming the file) is raised
again, the same type and message, by `next()` in the training process.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time

import grain
from absl import flags

from vision_jax.data import spawn_watch
from vision_jax.errors import UserError

SHM_MIN_FREE = 1 << 30  # Bytes /dev/shm must have free for batches to go through it.


def _shm_free() -> int:
  try:
    stat = os.statvfs('/dev/shm')
  except OSError:
    return 0
  return stat.f_bavail * stat.f_frsize


def _end_with_parent(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(0.2)
  os._exit(0)  # pylint: disable=protected-access


def _worker_init(parent: int, index: int, count: int) -> None:
  """Runs first in every worker process."""
  del index, count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  threading.Thread(target=_end_with_parent, args=(parent,), daemon=True).start()
  if not flags.FLAGS.is_parsed():  # grain reads its absl flags in the worker.
    flags.FLAGS.mark_as_parsed()


class WorkerDiedError(UserError):
  """An input worker process ended without a Python error (killed, crashed)."""


# What grain raises in the reading process when a worker process is gone.
_WORKER_DIED = re.compile(r'Worker process was terminated unexpectedly with exit code (-?\d+)')


def _worker_died_message(code: int, num_workers: int) -> str:
  how = (f'killed by signal {-code} ({signal.Signals(-code).name}; SIGKILL is also what the '
         "kernel's out-of-memory killer sends)" if code < 0 and -code in
         signal.valid_signals() else f'exit code {code}')
  return (f'An input worker process ({num_workers} were reading batches) ended '
          f'unexpectedly: {how}. The run stopped; its checkpoints are intact and the input '
          'stream is a function of the step, so rerunning the same command resumes from the '
          'last checkpoint exactly. If it recurs, give the machine more memory or lower '
          '--config.dataset.num_workers.')


class Batches:
  """dataset[start], dataset[start + 1], ...: read ahead by `num_workers` processes, or
  with num_workers=0 by `num_threads` threads (0: on the caller's thread, one read per
  `next`). An iterator and a context manager; `close()` ends the readers (idempotent)."""

  def __init__(self, dataset: grain.MapDataset, start: int = 0, *, num_threads: int = 4,
               num_workers: int = 0):
    if num_workers < 0 or num_threads < 0:
      raise ValueError(f'num_workers={num_workers}, num_threads={num_threads}: use >= 0.')
    self.num_workers, self._closed, self._watch = num_workers, False, None
    if num_workers:
      if not flags.FLAGS.is_parsed():  # grain reads its absl flags when it starts workers.
        flags.FLAGS.mark_as_parsed()
      ds = dataset[start:].to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                             prefetch_buffer_size=0))
      if _shm_free() < SHM_MIN_FREE:  # grain hands over arrays >= min_shm_size via shm.
        ds = grain.experimental.WithOptionsIterDataset(
            ds, grain.experimental.DatasetOptions(min_shm_size=1 << 62))
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                       per_worker_buffer_size=2),
                          worker_init_fn=_InitWorker(os.getpid()))
      self._it = iter(ds)
      self._watch = spawn_watch.SpawnWatch()  # A worker killed while starting: no hang.
    elif num_threads:
      options = grain.ReadOptions(num_threads=num_threads,
                                  prefetch_buffer_size=2 * num_threads)
      self._it = iter(dataset[start:].to_iter_dataset(options))
    else:
      self._it = (dataset[i] for i in range(start, len(dataset)))

  def __iter__(self) -> 'Batches':
    return self

  def __next__(self) -> dict:
    if self._closed:
      raise StopIteration
    try:
      return next(self._it)
    except RuntimeError as e:
      died = _WORKER_DIED.search(str(e))
      if not died:
        raise
      raise WorkerDiedError(_worker_died_message(int(died.group(1)), self.num_workers)) from e

  def close(self) -> None:
    """Ends the readers: worker processes are stopped and joined."""
    if not self._closed:
      self._closed = True
      it, self._it = self._it, iter(())
      close = getattr(it, 'close', None)
      if close is not None:
        close()  # Batches it had read ahead are freed with it (/dev/shm included).
      if self._watch is not None:
        self._watch.stop()  # After: closing waits for starts it may have to unblock.

  def __enter__(self) -> 'Batches':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self) -> None:
    if not sys.is_finalizing():
      self.close()


class _InitWorker:
  """`_worker_init` bound to the training process's pid (picklable, unlike a lambda)."""

  def __init__(self, parent: int):
    self.parent = parent

  def __call__(self, index: int, count: int) -> None:
    _worker_init(self.parent, index, count)
