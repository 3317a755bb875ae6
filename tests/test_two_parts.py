"""Tasks of several state parts: the adversarial pair of tests/two_part_task.py (two
networks, two optimisers, alternating updates) and BYOL (an online network and its EMA
target) train, checkpoint, resume bit-identically and shard over 8 devices like one."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import two_part_task  # pylint: disable=unused-import  # Registers 'adversarial_pair'.
from conftest import REPO, run_cli
from vision_jax import checkpoint
from vision_jax import config as config_lib
from vision_jax import config_files
from vision_jax import parallel
from vision_jax import steps
from vision_jax import tasks
from vision_jax import train
from vision_jax import train_state


def _pair_config():
  config = config_lib.base_config()
  config.task.name = 'adversarial_pair'
  config.train.batch_size, config.train.steps, config.train.log_every = 32, 4, 2
  config.train.eval_every, config.checkpoint.every_steps = 0, 2
  config.optim.warmup_steps = 0
  return config


def test_pair_trains_both_parts_and_resumes_bit_identically(tmp_path, data_dir):
  del data_dir
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  results = train.train_and_evaluate(_pair_config(), a)
  assert 0 < results['eval']['test']['real_probability'] < 1
  shutil.copytree(a, b)
  shutil.rmtree(os.path.join(b, 'checkpoints', '4'))  # As if killed after step 2's save.
  train.train_and_evaluate(_pair_config(), b)
  (step_a, state_a), (step_b, state_b) = checkpoint.read_state(a), checkpoint.read_state(b)
  assert step_a == step_b == 4
  assert set(state_a['parts']) == {'generator', 'discriminator'}
  for part in ('generator', 'discriminator'):
    assert jax.tree.leaves(state_a['parts'][part]['opt_state'])  # Each its own optimiser.
  leaves_a, leaves_b = jax.tree.leaves(state_a['parts']), jax.tree.leaves(state_b['parts'])
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  # Both networks moved: the step updated each part with its own optimiser.
  task = tasks.build(_pair_config())
  _, fresh = train_state.create(task, parallel.make_mesh(_pair_config(), jax.devices()[:1]),
                                num_classes=10, image_size=8, in_channels=1,
                                steps_per_epoch=1)
  for part in ('generator', 'discriminator'):
    before = jax.tree.leaves(fresh.parts[part].params)
    after = jax.tree.leaves(state_a['parts'][part]['params'])
    assert any(not np.array_equal(np.asarray(x), y) for x, y in zip(before, after)), part


_DEVICES_SCRIPT = r'''
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
import two_part_task
from vision_jax import config as config_lib, parallel, steps, tasks, train_state
config = config_lib.base_config()
config.task.name = 'adversarial_pair'
config.optim.warmup_steps = 0
rng = np.random.default_rng(0)
batch = {'image': rng.integers(0, 256, (16, 8, 8, 1), np.uint8),
         'label': np.zeros(16, np.int32)}
out = {}
for n in (1, 8):
  config.mesh.data = n
  mesh = parallel.make_mesh(config, jax.devices()[:n])
  task = tasks.build(config)
  structure, state = train_state.create(task, mesh, num_classes=10, image_size=8,
                                        in_channels=1, steps_per_epoch=10)
  step = steps.jit_train_step(task, structure, mean=(0.5,), std=(0.5,), num_classes=10,
                              mesh=mesh)
  for _ in range(2):
    state, metrics = step(state, parallel.to_global(batch, mesh))
    jax.block_until_ready(metrics)
  out[n] = {'loss': float(metrics['loss']), 'd_loss': float(metrics['d_loss']),
            'params': [np.asarray(x).ravel()[:64].tolist()
                       for x in jax.tree.leaves({k: p.params for k, p in state.parts.items()})]}
print(json.dumps(out))
'''


def test_pair_on_8_devices_equals_1():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _DEVICES_SCRIPT,
                         os.path.join(REPO, 'tests')], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in ('loss', 'd_loss'):
    assert out['8'][key] == pytest.approx(out['1'][key], rel=1e-5)
  for x, y in zip(out['8']['params'], out['1']['params']):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _byol_config(**overrides):
  config = config_files.load_config_file(os.path.join(REPO, 'configs', 'digits_byol.py'))
  config.model.width, config.model.hidden = 4, 16
  config.task.projector_hidden_dim = 16
  config.task.projector_output_dim = config.task.predictor_hidden_dim = 8
  config.train.batch_size = 16
  for dotted, value in overrides.items():
    section, key = dotted.split('.')
    config[section][key] = value
  return config


def test_byol_step_moves_the_target_towards_the_online_network_by_the_cosine_decay():
  config = _byol_config(**{'train.steps': 10, 'optim.warmup_steps': 0})
  task = tasks.build(config)
  config_lib.validate(config, num_devices=1, task=task)
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  structure, state = train_state.create(task, mesh, num_classes=10, image_size=16,
                                        in_channels=1, steps_per_epoch=1)
  assert state.parts['target'].opt_state is None and 'target' not in structure.txs
  online0 = jax.tree.map(np.asarray, state.parts['online'].params)
  target0 = jax.tree.map(np.asarray, state.parts['target'].params)
  assert 'predictor' not in target0
  for key in target0:  # The target starts as a copy of the online network.
    jax.tree.map(np.testing.assert_array_equal, target0[key], online0[key])
  step = jax.jit(steps.make_train_step(task, structure, mean=(0.5,), std=(0.5,)))
  rng = np.random.default_rng(0)
  batch = {'view1': rng.integers(0, 256, (16, 16, 16, 1), np.uint8),
           'view2': rng.integers(0, 256, (16, 16, 16, 1), np.uint8),
           'label': np.zeros(16, np.int32)}
  for k in range(2):
    old_target = jax.tree.map(np.asarray, state.parts['target'].params)
    state, metrics = step(state, batch)
    tau = 1 - (1 - 0.99) * (math.cos(math.pi * k / 10) + 1) / 2  # BYOL eq. 5, base 0.99.
    assert float(metrics['target_decay']) == pytest.approx(tau, abs=1e-7)
    online = state.parts['online'].params
    want = jax.tree.map(lambda t, o: tau * t + (1 - tau) * np.asarray(o), old_target,
                        {key: online[key] for key in old_target})
    jax.tree.map(lambda w, got: np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-7),
                 want, state.parts['target'].params)
  assert 0 <= float(metrics['loss']) <= 8  # 2 - 2 cos, both directions.


def test_byol_sigkill_then_resume_is_bit_identical(tmp_path, data_dir):
  args = ['--config', 'configs/digits_byol.py', '--config.train.steps=30',
          '--config.train.batch_size=16', '--config.train.eval_every=0',
          '--config.train.log_every=10', '--config.checkpoint.every_steps=10',
          '--config.checkpoint.keep=5', '--config.model.width=4', '--config.model.hidden=16',
          '--config.task.projector_hidden_dim=16', '--config.task.projector_output_dim=8',
          '--config.task.predictor_hidden_dim=8']
  straight = tmp_path / 'straight'
  proc = run_cli(args + ['--workdir', str(straight)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  killed = tmp_path / 'killed'
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu')
  with open(tmp_path / 'log', 'w') as log:
    victim = subprocess.Popen([sys.executable, '-m', 'vision_jax.main', *args, '--workdir',
                               str(killed)], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
      deadline = time.time() + 240
      while not (killed / 'checkpoints' / '10').is_dir():
        assert victim.poll() is None, (tmp_path / 'log').read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    finally:
      victim.send_signal(signal.SIGKILL)
      victim.wait()
  resumed = run_cli(args + ['--workdir', str(killed)], data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from checkpoint at step' in resumed.stderr
  (step_a, a), (step_b, b) = checkpoint.read_state(str(straight)), checkpoint.read_state(
      str(killed))
  assert step_a == step_b == 30
  leaves_a = jax.tree_util.tree_flatten_with_path(a)[0]
  leaves_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  assert (json.loads((killed / 'results.json').read_text()) ==
          json.loads((straight / 'results.json').read_text()))
