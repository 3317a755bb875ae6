"""Fine-tuning from another run's checkpoint: what is loaded, re-initialised and frozen is
exactly what init_report.json says, and a checkpoint that does not fit is refused."""
import json

import numpy as np
import pytest

from conftest import run_cli
from vision_jax import checkpoint
from vision_jax import finetune

BASE = ['--config', 'configs/default.py', '--config.train.eval_every=0',
        '--config.optim.warmup_steps=5', '--config.train.log_every=10']


def _params(workdir) -> dict:
  _, state = checkpoint.read_state(str(workdir))
  return finetune.flat(state['parts']['model']['params'])


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('pretrain')
  proc = run_cli(BASE + ['--workdir', str(workdir), '--config.train.steps=40',
                         '--config.checkpoint.every_steps=40'], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_head_is_reinitialised_frozen_layers_do_not_move(tmp_path, data_dir, pretrained):
  workdir = tmp_path / 'finetune'
  proc = run_cli(BASE + ['--workdir', str(workdir), '--config.train.steps=20',
                         '--config.checkpoint.every_steps=20',
                         f'--config.init_from.checkpoint={pretrained}',
                         "--config.optim.freeze=('conv1/.*', 'conv2/.*')"], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((workdir / 'init_report.json').read_text())
  assert report['checkpoint_step'] == 40
  assert sorted(report['reinitialized']) == ['head/bias', 'head/kernel']
  assert sorted(report['loaded']) == ['conv1/bias', 'conv1/kernel', 'conv2/bias',
                                      'conv2/kernel', 'fc1/bias', 'fc1/kernel']
  assert sorted(report['frozen']) == ['conv1/bias', 'conv1/kernel', 'conv2/bias',
                                      'conv2/kernel']
  assert report['counts'] == {'loaded': 6, 'reinitialized': 2, 'frozen': 4,
                              'unused_from_checkpoint': 2}
  before, after = _params(pretrained), _params(workdir)
  for name in report['frozen']:
    np.testing.assert_array_equal(after[name], before[name], err_msg=name)  # Bit-identical.
  assert not np.array_equal(after['fc1/kernel'], before['fc1/kernel'])  # Trained on.
  # The head started from zeros and learned: it is neither zero nor the pretrained head.
  assert np.abs(after['head/kernel']).max() > 0
  assert not np.allclose(after['head/kernel'], before['head/kernel'])
  assert json.loads((workdir / 'results.json').read_text())['eval']['test']['accuracy'] > 0.8


def test_shape_mismatch_names_every_path_and_both_shapes(tmp_path, data_dir, pretrained):
  workdir = tmp_path / 'wider'
  proc = run_cli(BASE + ['--workdir', str(workdir), '--config.train.steps=5',
                         f'--config.init_from.checkpoint={pretrained}',
                         '--config.init_from.skip=()',
                         '--config.model.name=convnet'], data_dir,
                 env={})
  # The same architecture loads fully when nothing is skipped ...
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((workdir / 'init_report.json').read_text())
  assert report['counts']['loaded'] == 8 and report['reinitialized'] == []
  # ... while a different one is refused, listing each misfit with both shapes.
  wider = tmp_path / 'mismatch'
  proc = run_cli(BASE + ['--workdir', str(wider), '--config.train.steps=5',
                         f'--config.init_from.checkpoint={pretrained}',
                         '--config.init_from.skip=()', '--config.dataset.image_size=16'],
                 data_dir)
  assert proc.returncode == 2
  assert 'fc1/kernel: (2048, 1024) in the model, (512, 1024) in the checkpoint' in proc.stderr
  assert 'config.init_from.skip' in proc.stderr and 'Traceback' not in proc.stderr
  assert not (wider / 'checkpoints').exists() or not any((wider / 'checkpoints').iterdir())


def test_missing_checkpoint_is_a_clear_error(tmp_path, data_dir):
  proc = run_cli(BASE + ['--workdir', str(tmp_path / 'w'), '--config.train.steps=5',
                         f'--config.init_from.checkpoint={tmp_path / "nothing"}'], data_dir)
  assert proc.returncode == 2
  assert 'does not exist' in proc.stderr and 'Traceback' not in proc.stderr


def test_fine_tune_on_one_device_from_an_fsdp_checkpoint_of_eight(tmp_path, data_dir):
  """A checkpoint saved FSDP-sharded over 8 devices is read whole (from its own metadata)
  into a 1-device run: same weights, whatever sharding it was saved with."""
  sharded = tmp_path / 'fsdp8'
  proc = run_cli(BASE + ['--workdir', str(sharded), '--config.train.steps=10',
                         '--config.checkpoint.every_steps=10', '--config.mesh.fsdp=8',
                         '--config.mesh.fsdp_min_mib=0'], data_dir,
                 env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'FSDP over 8 devices' in proc.stderr
  tuned = tmp_path / 'one'
  proc = run_cli(BASE + ['--workdir', str(tuned), '--config.train.steps=6',
                         f'--config.init_from.checkpoint={sharded}'], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tuned / 'init_report.json').read_text())
  assert report['counts']['loaded'] == 6
  np.testing.assert_array_equal(_params(tuned)['fc1/kernel'].shape, (512, 1024))
