"""Stop cleanly when the machine is being taken away.

On SIGTERM (what schedulers and `kill` send) or a TPU maintenance/preemption notice, the
loop saves a checkpoint at the next step boundary and exits 0; the next launch resumes.
With several processes the decision must be the same on every host, otherwise one saves
and another hangs: JAX's coordination service provides that sync point
(`multihost_utils.reached_preemption_sync_point`), and it also listens for SIGTERM.
"""
from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """`should_stop(step)` turns True on every host at the same step after a notice."""

  def __init__(self):
    self._requested = threading.Event()
    self._multi = jax.process_count() > 1
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

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
