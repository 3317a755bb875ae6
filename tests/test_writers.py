"""Scalars reach TensorBoard event files (read back with TensorBoard's own loader), progress
reports steps/s, and the training loop starts without importing TensorFlow."""
import os
import subprocess
import sys

from tensorboard.backend.event_processing import event_file_loader

from conftest import REPO
from vision_jax import writers


def read_scalars(logdir) -> dict:
  (name,) = [f for f in os.listdir(logdir) if f.startswith('events.out.tfevents')]
  out = {}
  for event in event_file_loader.LegacyEventFileLoader(os.path.join(logdir, name)).Load():
    for value in event.summary.value:
      out[(event.step, value.tag)] = value.simple_value
  return out


def test_scalars_land_in_an_event_file(tmp_path):
  writer = writers.Writer(str(tmp_path))
  writer.write_scalars(10, {'train/loss': 0.5, 'train/accuracy': 0.75})
  writer.write_scalars(20, {'train/loss': 0.25})
  # Readable before close: every write is flushed, so a crash loses nothing logged.
  assert read_scalars(tmp_path) == {(10, 'train/loss'): 0.5, (10, 'train/accuracy'): 0.75,
                                     (20, 'train/loss'): 0.25}
  writer.close()


def test_log_only_writer_writes_no_file(tmp_path):
  writer = writers.Writer(None)
  writer.write_scalars(1, {'x': 1.0})
  writer.close()
  assert not os.listdir(tmp_path)


def test_progress_reports_rate_at_the_last_step(tmp_path):
  writer = writers.Writer(str(tmp_path))
  progress = writers.Progress(total_steps=5, writer=writer, every_s=3600)
  for step in range(1, 6):
    progress(step)
  writer.close()
  scalars = read_scalars(tmp_path)
  assert list(scalars) == [(5, 'steps_per_sec')]  # Nothing in between (every_s), then 5.
  assert scalars[(5, 'steps_per_sec')] > 0


def test_training_code_does_not_import_tensorflow():
  """TensorFlow costs ~2.7 s per process: every CLI run and test would pay it."""
  code = ('import sys, tempfile, vision_jax.train, vision_jax.main; '
          'from vision_jax import writers; '
          'writers.Writer(tempfile.mkdtemp()).write_scalars(1, {"a": 1.0}); '
          'print("tensorflow" in sys.modules)')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == 'False'
