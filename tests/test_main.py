"""The real entry point, end to end, and its answers to bad input."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_cli

SHORT = ['--config', 'configs/default.py', '--config.train.steps=30',
         '--config.train.log_every=10', '--config.train.eval_every=20',
         '--config.checkpoint.every_steps=20', '--config.optim.warmup_steps=5']


def test_trains_evaluates_and_checkpoints(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  proc = run_cli(SHORT + ['--workdir', str(workdir)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert results['step'] == 30
  test = results['eval']['test']
  assert test['num_examples'] == 360  # The stratified 20% split, every example once.
  assert 0.5 < test['accuracy'] <= 1.0  # 30 steps already learn most digits.
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['20', '30']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  config = json.loads((workdir / 'config.json').read_text())
  assert config['train']['steps'] == 30 and config['model']['name'] == 'convnet'
  logged = [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').open()]
  assert logged == [10, 20, 30]
  timing = json.loads((workdir / 'timing.json').read_text())  # The loop's own stopwatch.
  assert timing['steps'] == 30
  phases = sum(v for k, v in timing.items() if k.endswith('_s') and k not in (
      'loop_s', 'data_wait_s'))
  assert 0 < phases <= timing['loop_s'] * 1.01  # Phases partition the loop, no overlap.
  assert timing.get('data_wait_s', 0.0) <= timing['data_s']  # A share of the reads.
  # The steady step: 28 intervals between the 29 dispatches after the compiling first.
  assert 0 < timing['step_ms_median'] <= timing['step_ms_p90']
  assert timing['step_ms_median'] * 28 / 1e3 < timing['loop_s'] - timing['first_step_s']

  # Same command again: training is finished, so it re-evaluates without training.
  again = run_cli(SHORT + ['--workdir', str(workdir)], data_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'already finished' in again.stderr
  assert json.loads((workdir / 'results.json').read_text()) == results
  assert [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').open()] == logged

  assert not [f for f in os.listdir(workdir) if f.startswith('config.') and f != 'config.json']

  # Asking for more steps resumes from step 30 rather than starting over. The changed
  # config replaces config.json; the one steps 1-30 ran with is kept, and the changes said.
  longer = run_cli(SHORT + ['--workdir', str(workdir), '--config.train.steps=40',
                            '--config.train.batch_size=64'], data_dir)
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert 'Resumed from checkpoint at step 30' in longer.stderr
  assert json.loads((workdir / 'results.json').read_text())['step'] == 40
  assert 'train.batch_size: 128 -> 64; train.steps: 30 -> 40' in longer.stderr
  assert 'Resuming at step 30 with train.batch_size 128 -> 64' in longer.stderr
  kept = [f for f in os.listdir(workdir) if f.startswith('config.') and f != 'config.json']
  assert len(kept) == 1 and json.loads((workdir / kept[0]).read_text()) == config
  assert json.loads((workdir / 'config.json').read_text())['train']['steps'] == 40


@pytest.mark.parametrize('override, expected', [
    ('--config.optim.lr=0.1', "config.optim has no key 'lr'"),
    ('--config.optimm.learning_rate=0.1', "Did you mean 'optim'?"),
    ('--config.model.name=resnet5', 'Unknown model'),
    ('--config.train.batch_size=0', 'config.train.batch_size=0 is out of range'),
    ('--config.train.steps=-3', 'config.train.steps=-3 is out of range'),
    ('--config.model.depth=3', "config.model.depth is not an option of model 'convnet'"),
])
def test_bad_config_is_one_clear_error(tmp_path, data_dir, override, expected):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints').mkdir(parents=True)  # A run's workdir, with a file of ours.
  (workdir / 'keep.txt').write_text('precious')
  proc = run_cli(['--config', 'configs/default.py', '--workdir', str(workdir), override],
                 data_dir)
  assert proc.returncode == 2
  assert expected in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert (workdir / 'keep.txt').read_text() == 'precious'
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'keep.txt']


def test_batch_not_divisible_by_devices(tmp_path, data_dir):
  proc = run_cli(['--config', 'configs/default.py', '--workdir', str(tmp_path / 'w'),
                  '--config.train.batch_size=100'], data_dir,
                 env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert proc.returncode == 2
  assert 'config.train.batch_size=100 is not divisible by the 8 devices' in proc.stderr
  assert 'e.g. 96' in proc.stderr or 'e.g. 104' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_workdir_that_is_a_file(tmp_path, data_dir):
  path = tmp_path / 'a_file'
  path.write_text('not a directory')
  proc = run_cli(['--config', 'configs/default.py', '--workdir', str(path)], data_dir)
  assert proc.returncode == 2
  assert 'is a file, not a directory' in proc.stderr
  assert path.read_text() == 'not a directory'


def test_workdir_not_writable(data_dir):
  # /proc refuses new directories even to root, so this holds in CI too.
  proc = run_cli(['--config', 'configs/default.py', '--workdir', '/proc/vision_jax/run'],
                 data_dir)
  assert proc.returncode == 2
  assert 'cannot be created' in proc.stderr and 'Traceback' not in proc.stderr


def test_missing_config_file(tmp_path, data_dir):
  proc = run_cli(['--config', 'configs/nope.py', '--workdir', str(tmp_path)], data_dir)
  assert proc.returncode == 2
  assert 'configs/nope.py' in proc.stderr and 'Traceback' not in proc.stderr


def test_jaxlib_warnings_and_errors_stay_visible():
  """main.py quiets TensorFlow's INFO lines only: TF_CPP_MIN_LOG_LEVEL is read by jaxlib's
  C++ logging too, and at 3 it hid XLA's errors (here: a dump directory it cannot create;
  on a GPU an out-of-memory report or NCCL's warnings)."""
  code = ('import vision_jax.main\nimport jax, jax.numpy as jnp\n'
          'jax.jit(lambda x: x + 1)(jnp.ones(2)).block_until_ready()\n'
          'import tensorflow_datasets\n')
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_dump_to=/proc/vision_jax_cannot_dump')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'vision_jax_cannot_dump' in proc.stderr  # XLA's own error line.
  assert 'oneDNN custom operations are on' not in proc.stderr  # TF's INFO line.
