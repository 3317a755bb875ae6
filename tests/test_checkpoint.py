"""Checkpoints you can trust: kill -9 and resume is bit-identical, SIGTERM saves and exits 0,
damaged checkpoints are never used silently, a NaN never reaches a checkpoint."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import jax

from conftest import REPO, run_cli
from vision_jax import checkpoint

RUN = ['--config', 'configs/default.py', '--config.train.steps=200',
       '--config.train.log_every=25', '--config.train.eval_every=0',
       '--config.checkpoint.every_steps=25', '--config.checkpoint.keep=10',
       '--config.optim.warmup_steps=10']


def _final_arrays(workdir) -> dict:
  step, state = checkpoint.read_state(str(workdir))
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {'step': step, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}}


def _assert_bit_identical(a: dict, b: dict):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _start(args, workdir, data_dir, log):
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu')
  return subprocess.Popen([sys.executable, '-m', 'vision_jax.main', *args, '--workdir',
                           str(workdir)], cwd=REPO, env=env, stdout=log, stderr=log)


def _wait_for_checkpoint(proc, workdir, step, timeout=180):
  path = workdir / 'checkpoints' / str(step)
  deadline = time.time() + timeout
  while not path.is_dir():
    assert proc.poll() is None, f'run ended before checkpoint {step}'
    assert time.time() < deadline, f'no checkpoint {step} after {timeout}s'
    time.sleep(0.05)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  proc = run_cli(RUN + ['--workdir', str(workdir)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.mark.parametrize('kill_after', [25, 125])
def test_sigkill_then_resume_is_bit_identical(tmp_path, data_dir, uninterrupted, kill_after):
  """Killed once a checkpoint exists (early, and late in the run), then resumed."""
  workdir = tmp_path / 'killed'
  with open(tmp_path / 'log1', 'w') as log:
    proc = _start(RUN, workdir, data_dir, log)
    _wait_for_checkpoint(proc, workdir, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (workdir / 'results.json').exists()
  resumed = run_cli(RUN + ['--workdir', str(workdir)], data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from checkpoint at step' in resumed.stderr
  _assert_bit_identical(_final_arrays(workdir), _final_arrays(uninterrupted))
  assert (json.loads((workdir / 'results.json').read_text()) ==
          json.loads((uninterrupted / 'results.json').read_text()))


def test_sigterm_saves_exits_zero_and_resumes_identically(tmp_path, data_dir, uninterrupted):
  workdir = tmp_path / 'preempted'
  with open(tmp_path / 'log', 'w') as log:
    proc = _start(RUN, workdir, data_dir, log)
    _wait_for_checkpoint(proc, workdir, 25)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
  output = (tmp_path / 'log').read_text()
  assert 'Preempted: saved step' in output
  saved = checkpoint.Checkpointer(str(workdir), keep=10).latest_step()
  assert 25 <= saved < 200
  resumed = run_cli(RUN + ['--workdir', str(workdir)], data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from checkpoint at step {saved}' in resumed.stderr
  _assert_bit_identical(_final_arrays(workdir), _final_arrays(uninterrupted))


def test_damaged_checkpoint_errors_or_falls_back(tmp_path, data_dir, uninterrupted):
  workdir = tmp_path / 'damaged'
  shutil.copytree(uninterrupted, workdir)
  # An unfinished save (what a kill mid-save leaves) is ignored ...
  (workdir / 'checkpoints' / '225.orbax-checkpoint-tmp-1').mkdir()
  # ... but a finished checkpoint with damaged files is not used silently.
  for root, _, files in os.walk(workdir / 'checkpoints' / '200' / 'state'):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(max(0, os.path.getsize(f.name) // 2))
  longer = RUN + ['--workdir', str(workdir), '--config.train.steps=250']
  failed = run_cli(longer, data_dir)
  assert failed.returncode == 2
  assert str(workdir / 'checkpoints' / '200') in failed.stderr
  assert '--config.checkpoint.on_corrupt=previous' in failed.stderr
  assert 'Traceback' not in failed.stderr
  fallback = run_cli(longer + ['--config.checkpoint.on_corrupt=previous'], data_dir)
  assert fallback.returncode == 0, fallback.stderr[-3000:]
  assert 'Resumed from checkpoint at step 175' in fallback.stderr
  assert json.loads((workdir / 'results.json').read_text())['step'] == 250


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  workdir = tmp_path / 'nan'
  # From step 10 on the learning rate is multiplied by 1e30: the weights blow up to inf.
  diverging = ['--config', 'configs/default.py', '--workdir', str(workdir),
               '--config.optim.schedule=piecewise', '--config.optim.warmup_steps=0',
               '--config.optim.piecewise_boundaries=(10,)',
               '--config.optim.piecewise_scales=(1e30,)', '--config.train.steps=60',
               '--config.train.log_every=2', '--config.checkpoint.every_steps=2',
               '--config.train.eval_every=0']
  proc = run_cli(diverging, data_dir)
  assert proc.returncode == 2
  assert 'Non-finite loss or gradient at step' in proc.stderr
  assert 'Traceback' not in proc.stderr
  bad_step = int(proc.stderr.split('Non-finite loss or gradient at step ')[1].split()[0])
  manager = checkpoint.Checkpointer(str(workdir), keep=3)
  last = manager.latest_step()
  assert last is not None and last < bad_step
  assert f'last good checkpoint is step {last}' in proc.stderr
  arrays = _final_arrays(workdir)
  assert all(np.isfinite(v).all() for k, v in arrays.items()
             if k != 'step' and np.issubdtype(v.dtype, np.floating))
  # The kept checkpoint restores: a run that ends at its step re-evaluates it.
  again = run_cli(diverging + [f'--config.train.steps={last}'], data_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'Training already finished at step {last}' in again.stderr


def test_dropout_rng_state_round_trips_through_a_checkpoint(tmp_path):
  """Typed PRNG keys (dropout streams) are saved as key data and come back as keys."""
  import jax.numpy as jnp
  state = {'w': jnp.arange(4.0), 'key': jax.random.key(7),
           'keys': jax.random.split(jax.random.key(3), 2)}
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  ckpt.save(1, state, {'next_step': 1})
  ckpt.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  step, restored, data = ckpt.restore_latest(abstract)
  assert step == 1 and data == {'next_step': 1}
  for name in ('key', 'keys'):
    assert restored[name].dtype == state[name].dtype
    np.testing.assert_array_equal(jax.random.key_data(restored[name]),
                                  jax.random.key_data(state[name]))
  np.testing.assert_array_equal(jax.random.uniform(restored['key']),
                                jax.random.uniform(state['key']))
