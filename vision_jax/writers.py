"""Where the loop's scalars go: TensorBoard event files and the log, plus progress/ETA.

clu's default writer writes through `tf.summary`, and importing TensorFlow takes seconds
per process (and is not there at all on many GPU machines). An event file is a sequence of
framed `Event` protos; TensorBoard's package ships both (`event_pb2`, `RecordWriter`), so
this writes the same `events.out.tfevents.*` files without TensorFlow. The interface is clu's
(`write_scalars`, `flush`, `close`), so clu's writers remain a drop-in.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Mapping

from absl import logging
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class Writer:
  """Scalars to the log and, when `logdir` is given, to a TensorBoard event file there.

  Each write goes to disk at once (a few hundred bytes every log_every steps), so a crash
  loses no scalar that was logged.
  """

  def __init__(self, logdir: str | None):
    self._records = None
    if logdir:
      name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
      self._records = RecordWriter(open(os.path.join(logdir, name), 'ab'))
      self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event: event_pb2.Event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in scalars.items()))
    if self._records is None:
      return
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    if self._records is not None:
      self._records.flush()

  def close(self) -> None:
    if self._records is not None:
      self._records.close()
      self._records = None


class Progress:
  """Every `every_s` seconds (and at the last step): steps/s and ETA, logged and written.

  Called after every step; between reports a call is one clock read.
  """

  def __init__(self, total_steps: int, writer: Writer, every_s: float = 60.0):
    self.total, self.writer, self.every_s = total_steps, writer, every_s
    self._last_step: int | None = None
    self._last_time = self._next = 0.0

  def __call__(self, step: int) -> None:
    now = time.monotonic()
    if self._last_step is None:  # The first call starts the clock (after compiling).
      self._last_step, self._last_time, self._next = step, now, now + self.every_s
      return
    if now < self._next and step < self.total:
      return
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    eta_min = (self.total - step) / max(rate, 1e-9) / 60
    logging.info('Progress: step %d/%d (%.0f%%), %.2f steps/s, ETA %.1f min', step,
                 self.total, 100 * step / self.total, rate, eta_min)
    self.writer.write_scalars(step, {'steps_per_sec': rate})
    self._last_step, self._last_time, self._next = step, now, now + self.every_s
