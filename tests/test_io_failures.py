"""I/O failures and signals outside the training loop: eval, predict and export with a
full disk or an unusable --output, a killed export's leftovers, a killed input worker,
SIGTERM while starting, and an unusable environment. Each ends in one paragraph and a
non-zero exit (0 for a training run stopped while starting), with no partial file
presented as finished."""
import hashlib
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import time

from cli_in_process import one_paragraph, run_main
from conftest import REPO, TINY_RUN, run_cli

IMAGE = str(sorted(pathlib.Path(REPO, 'docs', 'digits').iterdir())[0])


def _hashes(path: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(path.rglob('*')) if p.is_file()}


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(src, dst))


def _env(data_dir: str) -> dict:
  return dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu')


def _limited(args, data_dir, limit, value):
  """The CLI in a subprocess under a resource limit (e.g. RLIMIT_FSIZE: a full disk)."""
  def preexec():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(limit, (value, value))
  return subprocess.run([sys.executable, '-m', 'vision_jax.main', *args], cwd=REPO,
                        env=_env(data_dir), capture_output=True, text=True, timeout=180,
                        preexec_fn=preexec)


def _no_temporaries(path: pathlib.Path) -> None:
  left = [p for p in path.rglob('*') if '.tmp-' in p.name or '.old-' in p.name]
  assert not left, left


# ------------------------------------------------------------- unusable --output paths

def test_unusable_output_paths_are_refused_before_loading(tmp_path, tiny_run):
  workdir = _copy(tiny_run, tmp_path / 'W')
  afile = tmp_path / 'afile'
  afile.write_text('mine')
  before = _hashes(tmp_path)
  for args, needles in (
      (['--mode=eval', f'--output={afile}'], ('is a file; a directory is written there',)),
      (['--mode=eval', f'--output={afile / "out"}'], ('lies under', 'which is a file')),
      (['--mode=export', f'--output={afile / "x"}'], ('lies under', 'which is a file')),
      (['--mode=predict', '--images', IMAGE, f'--output={tmp_path}'],
       ('is a directory; a file is written there', 'predictions.json')),
  ):
    code, err = run_main(args + ['--workdir', str(workdir)])
    one_paragraph(code, err, '--output=', *needles)
  assert _hashes(tmp_path) == before


def test_an_unwritable_results_json_leaves_nothing_half_written(tmp_path, tiny_run):
  workdir = _copy(tiny_run, tmp_path / 'W')
  (workdir / 'results.json').unlink()
  (workdir / 'results.json').mkdir()  # Cannot be replaced by a file.
  code, err = run_main(['--mode=eval', '--workdir', str(workdir)])
  one_paragraph(code, err, 'results.json', 'Is a directory', 'presented as finished')
  assert (workdir / 'results.json').is_dir()
  _no_temporaries(workdir)


def test_eval_and_export_on_a_full_disk(tmp_path, data_dir, tiny_run):
  workdir = _copy(tiny_run, tmp_path / 'W')
  results = (workdir / 'results.json').read_text()
  # Leftovers of killed exports: a dead pid's are removed, a live one's are kept.
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  for name in (f'export.tmp-{dead.pid}', f'export.old-{dead.pid}', f'export.tmp-{os.getpid()}'):
    (workdir / name).mkdir()
    (workdir / name / 'weights.npz').write_bytes(b'\0' * 1000)
  proc = _limited(['--mode=export', '--workdir', str(workdir)], data_dir,
                  resource.RLIMIT_FSIZE, 100 << 10)
  one_paragraph(proc.returncode, proc.stderr, 'exporting to', 'File too large', 'ulimit -f')
  left = sorted(p for p in os.listdir(workdir) if p.startswith('export'))
  assert left == [f'export.tmp-{os.getpid()}'], left  # No export, no staging, no stale.
  proc = _limited(['--mode=eval', '--workdir', str(workdir)], data_dir,
                  resource.RLIMIT_FSIZE, 20 << 10)
  one_paragraph(proc.returncode, proc.stderr, 'File too large', 'presented as finished')
  assert (workdir / 'results.json').read_text() == results  # As it was.
  assert not [p for p in os.listdir(workdir) if '.tmp-' in p and not p.startswith('export')]


# ---------------------------------------------------------------------------- processes

def _children(pid: int) -> list[tuple[int, str]]:
  out = []
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat') as f:
        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        cmdline = f.read().replace(b'\0', b' ').decode()
    except (OSError, ValueError, IndexError):
      continue
    if ppid == pid:
      out.append((int(entry), cmdline))
  return out


def _kill_a_worker(args: list[str], data_dir: str, log_path: pathlib.Path,
                   when: str | None) -> int:
  """Runs the CLI with two input workers and SIGKILLs one: as soon as it appears (when
  None: before it has read its dataset) or once `when` is in the log. Returns the exit
  code (the run must end within 60 s of the kill)."""
  with open(log_path, 'w') as log:
    proc = subprocess.Popen([sys.executable, '-m', 'vision_jax.main', *args,
                             '--config.dataset.num_workers=2'], cwd=REPO, env=_env(data_dir),
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
      deadline = time.time() + 120
      while True:
        workers = [pid for pid, cmd in _children(proc.pid) if 'spawn_main' in cmd]
        if workers and (when is None or when in log_path.read_text()):
          break
        assert proc.poll() is None and time.time() < deadline, log_path.read_text()
        time.sleep(0.002 if when is None else 0.05)
      os.kill(workers[0], signal.SIGKILL)
      return proc.wait(timeout=60)
    finally:
      proc.kill()


def test_a_killed_input_worker_stops_the_run_and_the_rerun_resumes(tmp_path, data_dir,
                                                                  tiny_run):
  """Killed while starting (before it has read its dataset: without spawn_watch.py the
  start blocked for ever) or while reading batches, one paragraph and exit 2 in seconds,
  the checkpoints as they were; the rerun resumes exactly."""
  workdir = _copy(tiny_run, tmp_path / 'W')
  checkpoints = _hashes(workdir / 'checkpoints')
  longer = TINY_RUN + ['--workdir', str(workdir), '--config.train.steps=150']
  code = _kill_a_worker(longer, data_dir, tmp_path / 'starting.log', when=None)
  one_paragraph(code, (tmp_path / 'starting.log').read_text(), 'input worker process',
                'SIGKILL', 'resumes')
  assert _hashes(workdir / 'checkpoints') == checkpoints
  # Once the rerun has resumed and is reading batches from its workers.
  code = _kill_a_worker(longer, data_dir, tmp_path / 'reading.log', when='] [25] train/')
  stderr = (tmp_path / 'reading.log').read_text()
  assert 'Resumed from checkpoint at step 20' in stderr
  if code != 0:  # (0: it had every batch it needed already, nothing more to test here.)
    one_paragraph(code, stderr, 'input worker process', 'SIGKILL', 'resumes')
    again = run_cli(longer, data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'Resumed from checkpoint at step' in again.stderr
  assert json.loads((workdir / 'results.json').read_text())['step'] == 150


def _catches_sigterm(pid: int) -> bool:
  with open(f'/proc/{pid}/status') as f:
    caught = next(line for line in f if line.startswith('SigCgt:')).split()[1]
  return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


def test_sigterm_while_starting_never_crashes(tmp_path, data_dir, tiny_run):
  """Eval, predict and export interrupted while starting exit 143 saying so (not 0 and
  'stopped before training'); a training run stopped while importing exits 0."""
  runs = {'eval': ['--mode=eval'], 'predict': ['--mode=predict', '--images', IMAGE],
          'export': ['--mode=export']}
  procs = {}
  workdirs = {mode: _copy(tiny_run, tmp_path / mode) for mode in runs}  # Each locks its own.
  before = _hashes(tiny_run)
  for mode, args in runs.items():
    workdir = workdirs[mode]
    log = open(tmp_path / f'{mode}.log', 'w')  # pylint: disable=consider-using-with
    procs[mode] = subprocess.Popen([sys.executable, '-m', 'vision_jax.main', *args,
                                    '--workdir', str(workdir)], cwd=REPO,
                                   env=_env(data_dir), stdout=log, stderr=subprocess.STDOUT)
  train_dir = tmp_path / 'train'
  procs['train'] = subprocess.Popen(
      [sys.executable, '-m', 'vision_jax.main', *TINY_RUN, '--workdir', str(train_dir)],
      cwd=REPO, env=_env(data_dir), stdout=open(tmp_path / 'train.log', 'w'),  # pylint: disable=consider-using-with
      stderr=subprocess.STDOUT)
  deadline = time.time() + 60
  while not _catches_sigterm(procs['train'].pid):  # Its handler is the first thing it sets.
    assert procs['train'].poll() is None and time.time() < deadline
    time.sleep(0.01)
  procs['train'].send_signal(signal.SIGTERM)  # Still importing.
  deadline = time.time() + 120
  pending = set(runs)
  while pending:  # Each as soon as it has loaded its config, before it has finished.
    for mode in list(pending):
      if 'Config:' in (tmp_path / f'{mode}.log').read_text():
        procs[mode].send_signal(signal.SIGTERM)
        pending.discard(mode)
      assert procs[mode].poll() is None and time.time() < deadline, mode
    time.sleep(0.02)
  for mode, proc in procs.items():
    code = proc.wait(timeout=120)
    log = (tmp_path / f'{mode}.log').read_text()
    assert 'Traceback' not in log and 'Segmentation' not in log and code >= 0, (mode, log)
    if mode == 'train':
      assert code == 0 and 'stopped before training' in log, log
    else:
      assert code == 143, (mode, code, log[-2000:])
      assert f'--mode={mode} was interrupted' in log and 'stopped before training' not in log
  for workdir in workdirs.values():
    assert _hashes(workdir) == before  # Nothing written, the lock released.
  assert not (train_dir / '.vision_jax.lock').exists()


# ----------------------------------------------------------------------- the environment

def test_a_tfds_data_dir_under_a_file_is_one_paragraph(tmp_path, monkeypatch, data_dir):
  (tmp_path / 'afile').write_text('mine')
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'afile' / 'tfds'))
  code, err = run_main(TINY_RUN + ['--workdir', str(tmp_path / 'W')])
  one_paragraph(code, err, 'TFDS_DATA_DIR', 'lies under', 'afile')
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'afile'))
  code, err = run_main(TINY_RUN + ['--workdir', str(tmp_path / 'W')])
  one_paragraph(code, err, 'TFDS_DATA_DIR', 'is a file, not a directory')


def test_too_few_open_files_for_the_workers_is_one_paragraph(tmp_path, data_dir):
  proc = _limited(TINY_RUN + ['--workdir', str(tmp_path / 'W'),
                              '--config.dataset.num_workers=2'], data_dir,
                  resource.RLIMIT_NOFILE, 64)
  one_paragraph(proc.returncode, proc.stderr, 'Too many open files', 'ulimit -n 64',
                'num_workers')
