"""Worker processes: the same batches as in-process reading, resume at any step, errors
that name the file, and no process or /dev/shm segment left behind however the run ends."""
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, signal_dispositions
from vision_jax.config import base_config
from vision_jax.data import decode, input_pipeline as ip, preprocess, sources
from vision_jax.data import spawn_watch, workers as workers_lib


def _photo_folder(root, n=24, broken=False):
  """root/{a,b}/*.jpg: crops of scikit-learn's two real photos, 80x60, quality 90."""
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images
  rng = np.random.default_rng(0)
  for i in range(n):
    top, left = rng.integers(0, 300), rng.integers(0, 500)
    crop = photos[i % 2][top:top + 120, left:left + 160]
    os.makedirs(root / 'ab'[i % 2], exist_ok=True)
    Image.fromarray(crop).resize((80, 60)).save(root / 'ab'[i % 2] / f'{i}.jpg', quality=90)
  if broken:
    (root / 'a' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
  return root


def _train(root, **dataset):
  config = base_config()
  config.dataset.update(name=f'folder:{root}', cache='none', folder_test_fraction=0.0,
                        **dataset)
  source, _ = sources.open_split(config.dataset, 'train')
  fn = preprocess.make_preprocess('inception', 32, train=True, channels=3)
  return ip.train_dataset(source, fn, global_batch=6, seed=4,
                          skip_corrupt=config.dataset.skip_corrupt)


def _workers() -> set[int]:
  """Live worker processes of this one (spawned children; multiprocessing's resource
  tracker, another child, lives as long as this process)."""
  found = set()
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        spawned = b'spawn_main' in f.read()
    except OSError:
      continue
    if int(fields[1]) == os.getpid() and fields[0] != 'Z' and spawned:
      found.add(int(pid))
  return found


def _mapped_shm() -> set[str]:
  """/dev/shm names some live process has mapped (its own, or a concurrent test's)."""
  names = set()
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/maps') as f:
        names |= {line.split('/dev/shm/')[1].split()[0] for line in f if '/dev/shm/' in line}
    except OSError:
      continue
  return names


def _shm() -> set[str]:
  """What Python's multiprocessing puts in /dev/shm (shared memory psm_*, semaphores
  sem.mp-*) and no live process maps: a leak. Other names belong to other programs, and
  segments in use belong to tests running alongside (pytest-xdist workers)."""
  found = {n for n in os.listdir('/dev/shm') if n.startswith(('psm_', 'sem.mp-'))}
  return found - _mapped_shm() if found else found


def _wait_until(condition, timeout=10.0) -> bool:
  end = time.time() + timeout
  while time.time() < end:
    gc.collect()  # Arrays in /dev/shm are unlinked when collected.
    if condition():
      return True
    time.sleep(0.1)
  return condition()


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  return _photo_folder(tmp_path_factory.mktemp('photos'))


def test_same_batches_with_0_1_2_workers_and_after_resume(photos, monkeypatch):
  dataset = _train(photos)
  steps = 9  # 54 examples from 24: crosses two epochs.
  with ip.iterate(dataset, 0, num_threads=0) as batches:
    reference = [next(batches) for _ in range(steps)]
  before = _shm()
  start = int(np.random.default_rng().integers(1, steps - 3))  # A resume at a random step.
  for workers, first, shm_min_free in ((1, 0, 1 << 62), (2, start, 0)):
    # One worker handing batches over through a pipe (as with a small /dev/shm), two
    # through /dev/shm.
    monkeypatch.setattr(workers_lib, 'SHM_MIN_FREE', shm_min_free)
    with ip.iterate(dataset, first, num_workers=workers) as batches:
      for k in range(first, steps):
        batch = next(batches)
        assert len(_workers()) == workers
        assert sorted(batch) == ['image', 'label']
        np.testing.assert_array_equal(batch['image'], reference[k]['image'], err_msg=k)
        np.testing.assert_array_equal(batch['label'], reference[k]['label'])
  del batch  # Its arrays may live in /dev/shm: freed with the batch.
  assert _wait_until(lambda: not _workers())  # Closed: every worker is gone,
  assert _wait_until(lambda: not _shm() - before), _shm() - before  # and /dev/shm clean.


def test_an_error_in_a_worker_is_the_corrupt_image_error_naming_the_file(tmp_path):
  root = _photo_folder(tmp_path, n=6, broken=True)
  before = _shm()
  with pytest.raises(decode.CorruptImageError, match='broken.jpg.*skip_corrupt'):
    with ip.iterate(_train(root), 0, num_workers=1) as batches:
      for _ in range(4):  # 7 files, 6 a batch: the broken one comes up within 2 steps.
        next(batches)
  assert _wait_until(lambda: not _workers())
  assert _wait_until(lambda: not _shm() - before), _shm() - before
  with ip.iterate(_train(root, skip_corrupt=True), 0, num_workers=1) as batches:
    assert next(batches)['image'].shape == (6, 32, 32, 3)  # Skipped in the worker too.


_SCRIPT = """
import glob, sys, time
sys.path.insert(0, {repo!r})
import grain, numpy as np
from vision_jax.data import folder, preprocess, stream, workers

if __name__ == '__main__':  # Imports no TensorFlow: starts in seconds.
  import signal  # As a process started from a shell, whatever the test process ignores.
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  paths = sorted(glob.glob('{root}/*/*.jpg'))
  source = folder.FolderSource(paths, np.zeros(len(paths), np.int64))
  fn = preprocess.make_preprocess('inception', 32, train=True, channels=3)
  batch = stream.TrainBatch(stream.Examples(source, fn, seed=4), stream.EpochOrder(len(paths), 4),
                            6, stream.HostShard())
  with workers.Batches(grain.MapDataset.range(0, sys.maxsize).map(batch), 0,
                       num_workers=2) as batches:
    next(batches)
    print('ready', flush=True)
    while True:
      next(batches)
      time.sleep(0.05)
"""


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_no_worker_or_shared_memory_left_after_a_signal(photos, tmp_path, sig):
  script = tmp_path / 'read.py'
  script.write_text(textwrap.dedent(_SCRIPT.format(repo=REPO, root=photos)))
  before = _shm()
  proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  try:
    assert proc.stdout.readline().strip() == 'ready', proc.stderr.read()[-3000:]
    workers = _descendants(proc.pid)
    assert len(workers) >= 2  # Two workers (and multiprocessing's resource tracker).
    proc.send_signal(sig)
    proc.wait(timeout=60)
  finally:
    proc.kill()
  assert _wait_until(lambda: not any(_alive(pid) for pid in workers)), workers
  assert _wait_until(lambda: not _shm() - before), _shm() - before


def _descendants(pid: int) -> set[int]:
  out, frontier = set(), {pid}
  while frontier:
    parent = frontier.pop()
    for child in filter(str.isdigit, os.listdir('/proc')):
      try:
        with open(f'/proc/{child}/stat') as f:
          ppid = int(f.read().rsplit(')', 1)[1].split()[1])
      except OSError:
        continue
      if ppid == parent and int(child) not in out:
        out.add(int(child))
        frontier.add(int(child))
  return out


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


def test_a_worker_killed_before_reading_its_dataset_does_not_block_its_start(tmp_path):
  """The child of a spawn start, killed before it has read its payload (here it never
  reads: it sleeps), leaves Process.start() blocked writing to it; the watch completes the
  start, and the process is then seen dead by its exit code, as grain looks for it."""
  from multiprocessing import resource_tracker, spawn  # pylint: disable=g-import-not-at-top
  resource_tracker.ensure_running()  # Started with the real interpreter, not the sleeper.
  sleeper = tmp_path / 'python'
  sleeper.write_text('#!/bin/sh\nexec sleep 120\n')
  sleeper.chmod(0o755)
  context, executable = multiprocessing.get_context('spawn'), spawn.get_executable()
  context.set_executable(str(sleeper))
  watch = None
  try:  # 4 MB of dataset, as a worker's start carries it: far more than a pipe holds.
    proc = context.Process(target=print, args=(b'x' * (4 << 20),), daemon=True)
    starter = threading.Thread(target=proc.start, daemon=True)
    starter.start()
    deadline = time.time() + 10
    while not (child := [pid for pid in _descendants(os.getpid())
                         if str(sleeper) in _cmdline(pid) or _cmdline(pid) == 'sleep 120 ']):
      assert time.time() < deadline
      time.sleep(0.01)
    os.kill(child[0], signal.SIGKILL)
    starter.join(2 * spawn_watch.POLL_S)
    assert starter.is_alive()  # Blocked for ever without the watch,
    watch = spawn_watch.SpawnWatch()
    starter.join(10)
    assert not starter.is_alive()  # and done with it,
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL  # the worker seen dead.
  finally:
    context.set_executable(executable)
    if watch is not None:
      watch.stop()


def _cmdline(pid: int) -> str:
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      return f.read().replace(b'\0', b' ').decode()
  except OSError:
    return ''


def _ignores(pid: int, sig: int) -> bool:
  with open(f'/proc/{pid}/status') as f:
    ignored = int(next(line for line in f if line.startswith('SigIgn:')).split()[1], 16)
  return bool(ignored & (1 << (sig - 1)))


def test_workers_ignore_sigint_and_sigterm_and_the_reader_does_not(photos):
  """Ctrl-C and SIGTERM are the training process's to handle: its workers ignore them,
  and reading through workers leaves the reader's own handling as it was (a process it
  starts later must not inherit an ignored signal)."""
  before = signal_dispositions()
  with ip.iterate(_train(photos), 0, num_workers=1) as batches:
    next(batches)
    (worker,) = _workers()
    assert _ignores(worker, signal.SIGINT) and _ignores(worker, signal.SIGTERM)
    assert signal_dispositions() == before
  assert signal_dispositions() == before
