"""Real multi-host runs on one machine: 2 processes started by launch/local.sh (gloo
collectives over 127.0.0.1) against 1 process with 2 simulated devices.

The global batch is the same for any number of processes, so the two runs must agree;
checkpoints are written by every process together and restore under another process
count and another sharding.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_cli

ARGS = ['--config', 'configs/default.py', '--config.train.steps=20',
        '--config.train.log_every=10', '--config.train.eval_every=0',
        '--config.checkpoint.every_steps=20', '--config.optim.warmup_steps=5']


def _local(n: int, args: list[str], data_dir: str, tmp: str) -> subprocess.CompletedProcess:
  """`launch/local.sh n ARGS` with one CPU device per process."""
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, TMPDIR=tmp)
  env.pop('XLA_FLAGS', None)
  return subprocess.run(['bash', os.path.join(REPO, 'launch', 'local.sh'), str(n), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _last_train_loss(workdir) -> float:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').open()][-1]['train/loss']


def _results(workdir) -> dict:
  return json.loads((workdir / 'results.json').read_text())


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory, data_dir):
  """The default config for 20 steps in 2 processes x 1 CPU device."""
  workdir = tmp_path_factory.mktemp('two_processes') / 'run'
  proc = _local(2, ARGS + ['--workdir', str(workdir)], data_dir, str(workdir.parent))
  logs = workdir / 'logs'
  assert proc.returncode == 0, proc.stderr[-2000:] + (logs / 'process_1.log').read_text()[-2000:]
  return workdir


def test_two_processes_equal_one_process_with_two_devices(two_process_run, tmp_path,
                                                          data_dir):
  logs = sorted(os.listdir(two_process_run / 'logs'))
  assert logs == ['process_0.log', 'process_1.log']
  log1 = (two_process_run / 'logs' / 'process_1.log').read_text()
  assert 'process 1 of 2' in log1 and 'Traceback' not in log1
  two = _results(two_process_run)
  assert two['step'] == 20
  # Only process 0 writes: one line per logged step, not two.
  assert [json.loads(l)['step'] for l in (two_process_run / 'metrics.jsonl').open()] == [
      10, 20]

  workdir = tmp_path / 'one_process'
  proc = run_cli(ARGS + ['--workdir', str(workdir)], data_dir,
                 env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
                      'TMPDIR': str(tmp_path)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  one = _results(workdir)
  assert abs(one['eval']['test']['loss'] - two['eval']['test']['loss']) < 1e-5
  assert one['eval']['test']['accuracy'] == two['eval']['test']['accuracy']
  assert abs(_last_train_loss(workdir) - _last_train_loss(two_process_run)) < 1e-5


def test_checkpoint_moves_between_process_counts_and_shardings(two_process_run, data_dir):
  workdir, tmp = str(two_process_run), {'TMPDIR': str(two_process_run.parent)}
  # 2 processes with the state split between them (FSDP) restore the replicated
  # checkpoint, and save one whose arrays each process holds only half of.
  fsdp = ['--config.mesh.fsdp=2', '--config.mesh.fsdp_min_mib=0']
  two = _local(2, ARGS + ['--workdir', workdir, '--config.train.steps=25'] + fsdp, data_dir,
               tmp['TMPDIR'])
  log0 = (two_process_run / 'logs' / 'process_0.log').read_text()
  assert two.returncode == 0, two.stderr[-2000:] + log0[-2000:]
  assert 'Resumed from checkpoint at step 20' in log0
  assert 'state arrays sharded' in log0

  # 1 process, 1 device, replicated state: resumes from that checkpoint.
  one = run_cli(ARGS + ['--workdir', workdir, '--config.train.steps=30'], data_dir, env=tmp)
  assert one.returncode == 0, one.stderr[-3000:]
  assert 'Resumed from checkpoint at step 25' in one.stderr
  assert _results(two_process_run)['step'] == 30
  assert sorted(os.listdir(two_process_run / 'checkpoints')) == ['20', '25', '30']


def test_workdir_not_shared_between_processes_is_refused(tmp_path, data_dir):
  """Per-host disks, simulated: each process gets its own --workdir. All stop, none hang."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, TMPDIR=str(tmp_path), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'vision_jax.main', *ARGS, f'--workdir={tmp_path}/host{i}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 2, err[-2000:]
    assert 'is not shared between the processes: process(es) 1 cannot see' in err
    assert 'Traceback' not in err
  assert not (tmp_path / 'host0' / 'checkpoints').exists()


def test_sigterm_to_one_host_stops_every_host_at_the_same_step(tmp_path, data_dir):
  """A preemption notice reaching one process: all save the same step and exit 0."""
  import signal
  import time
  workdir = tmp_path / 'preempted'
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, TMPDIR=str(tmp_path))
  env.pop('XLA_FLAGS', None)
  args = ['--config', 'configs/default.py', '--workdir', str(workdir),
          '--config.train.steps=5000', '--config.checkpoint.every_steps=50',
          '--config.train.eval_every=0']
  launcher = subprocess.Popen(['bash', os.path.join(REPO, 'launch', 'local.sh'), '2', *args],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 240
  while not (workdir / 'checkpoints' / '50').is_dir():
    assert launcher.poll() is None and time.time() < deadline, 'no checkpoint at step 50'
    time.sleep(0.1)
  worker = subprocess.run(['pgrep', '-f', f'process_id=1.*{workdir}|{workdir}.*process_id=1'],
                          capture_output=True, text=True).stdout.split()
  assert worker, 'process 1 not found'
  os.kill(int(worker[0]), signal.SIGTERM)
  assert launcher.wait(timeout=240) == 0
  logs = [(workdir / 'logs' / f'process_{i}.log').read_text() for i in range(2)]
  saved = [int(log.split('Preempted: saved step ')[1].split()[0]) for log in logs]
  assert saved[0] == saved[1] and 50 <= saved[0] < 5000
  assert str(saved[0]) in os.listdir(workdir / 'checkpoints')


@pytest.mark.parametrize('config', ['digits_simclr.py', 'digits_byol.py'])
def test_ssl_in_two_processes_equals_one_process_with_two_devices(tmp_path, data_dir, config):
  """SimCLR's NT-Xent negatives span both processes' views, BYOL's two networks (online
  and EMA target) and their BatchNorm statistics are global: the same losses and k-NN
  accuracy as one process whose two devices hold the same global batch."""
  args = ['--config', f'configs/{config}', '--config.train.steps=4',
          '--config.train.batch_size=32', '--config.train.log_every=2',
          '--config.train.eval_every=0', '--config.checkpoint.every_steps=4',
          '--config.optim.warmup_steps=1']
  two = tmp_path / 'two'
  proc = _local(2, args + ['--workdir', str(two)], data_dir, str(tmp_path))
  assert proc.returncode == 0, (proc.stderr[-2000:] +
                                (two / 'logs' / 'process_1.log').read_text()[-2000:])
  one = tmp_path / 'one'
  proc = run_cli(args + ['--workdir', str(one)], data_dir,
                 env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
                      'TMPDIR': str(tmp_path)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert abs(_last_train_loss(one) - _last_train_loss(two)) < 1e-5
  knn = [_results(w)['eval']['test']['knn_accuracy'] for w in (one, two)]
  assert knn[0] == knn[1], knn
