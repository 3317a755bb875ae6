"""Stop cleanly when the machine is being taken away.

On SIGTERM (what schedulers and `kill` send) or a TPU maintenance/preemption notice, the
loop saves a checkpoint at the next step boundary and exits 0; the next launch resumes.
With several processes the decision must be the same on every host, otherwise one saves
and another hangs: JAX's coordination service provides that sync point
(`multihost_utils.reached_preemption_sync_point`), and it also listens for SIGTERM.
"""
from __future__ import annotations

import signal
import sys
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class StoppedBeforeTraining(BaseException):
  """SIGTERM arrived while the run was starting: nothing to save yet. A BaseException,
  like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


class _WhileStarting:
  """The SIGTERM handler until the loop's watcher takes over. Python drops an exception
  raised while a garbage-collection callback runs ("Exception ignored in ..."), so the
  signal is also remembered and the watcher raises it again when it is installed."""

  received = False

  def __call__(self, signum, frame) -> None:
    del signum, frame
    self.received = True
    raise StoppedBeforeTraining()


def stop_while_starting() -> None:
  """From now until a `PreemptionWatcher` exists, SIGTERM raises `StoppedBeforeTraining`
  (and Python's "Exception ignored" report of a dropped one is not printed)."""
  signal.signal(signal.SIGTERM, _WhileStarting())
  previous = sys.unraisablehook

  def unraisable_hook(unraisable):
    if unraisable.exc_type is not StoppedBeforeTraining:
      previous(unraisable)

  sys.unraisablehook = unraisable_hook


class PreemptionWatcher:
  """`should_stop(step)` turns True on every host at the same step after a notice."""

  def __init__(self):
    self._requested = threading.Event()
    self._multi = jax.process_count() > 1
    if not self._multi and threading.current_thread() is threading.main_thread():
      previous = signal.signal(signal.SIGTERM, self._on_signal)
      if isinstance(previous, _WhileStarting) and previous.received:
        raise StoppedBeforeTraining()

  def _on_signal(self, signum, frame) -> None:
    del frame
    logging.warning('Received signal %d: saving at the next step boundary.', signum)
    self._requested.set()

  def should_stop(self, step: int) -> bool:
    if self._multi:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # No preemption service (e.g. disabled): nothing to sync on.
        return False
    return self._requested.is_set()
