"""Stop cleanly when the machine is being taken away.

On SIGTERM (what schedulers and `kill` send) or a TPU maintenance/preemption notice, the
loop saves a checkpoint at the next step boundary and exits 0; the next launch resumes.
With several processes the decision must be the same on every host, otherwise one saves
and another hangs: JAX's coordination service provides that sync point
(`multihost_utils.reached_preemption_sync_point`), and it also listens for SIGTERM.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

from absl import logging


_cleanups: list[Callable[[], None]] = []


def at_exit_now(cleanup: Callable[[], None]) -> None:
  """Runs `cleanup` (best effort) if SIGTERM ends the process outside the training loop:
  the workdir lock, temporary files of an unfinished write."""
  _cleanups.append(cleanup)


def forget(cleanup: Callable[[], None]) -> None:
  if cleanup in _cleanups:
    _cleanups.remove(cleanup)


class _ExitNow:
  """The SIGTERM handler outside the training loop: ends the process at once, with one
  message and `os._exit`. Raising an exception from a signal handler instead lands it
  wherever the main thread is (an import, a compile callback, a garbage-collection hook)
  and can leave the interpreter half torn down (seen as segmentation faults at exit);
  outside the loop nothing needs saving, so there is nothing to unwind. A training run
  exits 0 (as the scheduler asked; the next launch starts or resumes), an eval, predict
  or export run 143 (128 + SIGTERM), since what it was asked for was not done."""

  def __init__(self, mode: str, after_training: bool = False):
    self.mode, self.after_training = mode, after_training

  def __call__(self, signum, frame) -> None:
    del frame
    for cleanup in reversed(_cleanups):
      try:
        cleanup()
      except Exception:  # pylint: disable=broad-except
        pass
    if self.mode != 'train':
      code = 128 + signum
      print(f'error: --mode={self.mode} was interrupted by signal {signum} (SIGTERM) before '
            'it finished: nothing it writes was written (files it replaces are as they '
            'were). Rerun the same command.', file=sys.stderr)
    elif self.after_training:
      code = 0
      logging.warning('Received SIGTERM after the last step: stopped before the final save '
                      'or evaluation finished; rerun the same command to finish (it resumes '
                      'from the last checkpoint and evaluates).')
    else:
      code = 0
      logging.warning('Received SIGTERM while starting: stopped before training (nothing '
                      'was trained or saved; rerun the same command to start or resume).')
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def mode_from_argv(argv: list[str]) -> str:
  """The --mode of a command line, read before flags are parsed ('train' if absent)."""
  for i, arg in enumerate(argv):
    if arg.startswith('--mode='):
      return arg.split('=', 1)[1]
    if arg == '--mode' and i + 1 < len(argv):
      return argv[i + 1]
  return 'train'


def exit_on_sigterm(mode: str) -> None:
  """From now until a `PreemptionWatcher` exists (and again once it is closed), SIGTERM
  ends the process at once (`_ExitNow`); `mode` is the CLI's --mode."""
  signal.signal(signal.SIGTERM, _ExitNow(mode))


class PreemptionWatcher:
  """`should_stop(step)` turns True on every host at the same step after a notice."""

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top  # (This module loads before JAX.)
    self._requested = threading.Event()
    self._multi = jax.process_count() > 1
    self._previous = None
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def close(self) -> None:
    """Gives SIGTERM back: after the loop there is no next step to save at, so a SIGTERM
    then ends the process at once (or does what it did before the loop)."""
    if self._previous is None:
      return
    previous, self._previous = self._previous, None
    if isinstance(previous, _ExitNow):
      previous = _ExitNow(previous.mode, after_training=True)
    signal.signal(signal.SIGTERM, previous)

  def _on_signal(self, signum, frame) -> None:
    del frame
    logging.warning('Received signal %d: saving at the next step boundary.', signum)
    self._requested.set()

  def should_stop(self, step: int) -> bool:
    if self._multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # No preemption service (e.g. disabled): nothing to sync on.
        return False
    return self._requested.is_set()
