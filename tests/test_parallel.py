"""The sharded step over 8 simulated devices equals the 1-device step; FSDP equals
replicated; a mesh or batch that cannot work is refused before anything compiles.

XLA_FLAGS must be set before jax is imported, so the 8-device runs happen in a subprocess
that uses the real `train_state.create`, `steps.make_train_step` and `parallel` code.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
import jax

from vision_jax import config as config_lib
from vision_jax import distributed
from vision_jax import parallel
from vision_jax.errors import ConfigError

# Trains a small ResNet (the real ResNet class with BatchNorm, CIFAR stem, one basic block
# per stage, the second with a projection shortcut; width 4, 8x8 images) for a few steps on
# each mesh layout and prints losses, parameters and which leaves are sharded, as JSON.
# (cifar_resnet18 gives the same answers; it only compiles 3x slower on 2 cores.)
_STEPS_SCRIPT = r'''
import json, sys
import jax, numpy as np
from vision_jax import config as config_lib, models, parallel, steps, tasks, train_state
from vision_jax.models import resnet

class TinyResNet(resnet.ResNet):
  STAGES, BLOCK, STEM = (1, 1), 'basic', 'cifar'

models._REGISTRY['tiny_resnet'] = TinyResNet  # pylint: disable=protected-access

def run(num_devices, data, fsdp, num_steps=3, batch=16, fast=False, accum=1):
  config = config_lib.base_config()
  config.optim.accum_steps = accum
  config.model.fast_cpu_ops = 'on' if fast else 'off'
  config.model.name, config.model.width = 'tiny_resnet', 4
  config.optim.name, config.optim.schedule = sys.argv[1], 'constant'
  config.optim.learning_rate = float(sys.argv[2])
  config.mesh.data, config.mesh.fsdp, config.mesh.fsdp_min_mib = data, fsdp, 0.0
  config.train.batch_size = batch
  mesh = parallel.make_mesh(config, jax.devices()[:num_devices])
  task = tasks.build(config)
  structure, state = train_state.create(
      task, mesh, num_classes=10, image_size=8, in_channels=3, steps_per_epoch=10)
  shardings = structure.shardings
  step = jax.jit(steps.make_train_step(task, structure, mean=(0.5,) * 3,
                                       std=(0.5,) * 3, accum_steps=accum),
                 in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)
  rng, losses = np.random.default_rng(0), []
  spec = jax.ShapeDtypeStruct((batch, 8, 8, 3), np.uint8)
  hlo = step.lower(state, {'image': spec, 'label': jax.ShapeDtypeStruct((batch,), np.int32)}
                   ).as_text()
  for _ in range(num_steps):
    host = {'image': rng.integers(0, 256, (batch, 8, 8, 3), dtype=np.uint8),
            'label': rng.integers(0, 10, batch).astype(np.int32)}
    state, metrics = step(state, parallel.to_global(host, mesh))
    losses.append(float(jax.block_until_ready(metrics)['loss']))
  leaves = jax.tree_util.tree_leaves_with_path(state.parts['model'].params)
  mu = jax.tree.leaves(state.parts['model'].opt_state)
  # The eval step as training and --mode=eval jit it: every device gets its rows.
  eval_step = steps.jit_eval_step(task, structure, mean=(0.5,) * 3, std=(0.5,) * 3,
                                  mesh=mesh)
  eval_batch = {'image': spec, 'label': jax.ShapeDtypeStruct((batch,), np.int32),
                'mask': jax.ShapeDtypeStruct((batch,), np.float32)}
  eval_rows = eval_step.lower(state, eval_batch).compile().input_shardings[0][1][
      'image'].shard_shape((batch, 8, 8, 3))[0]
  return {'losses': losses,
          'params': {jax.tree_util.keystr(p): np.asarray(x).ravel().tolist() for p, x in leaves},
          'sharded_params': sum('fsdp' in str(x.sharding.spec) for _, x in leaves),
          'sharded_opt': sum('fsdp' in str(getattr(x.sharding, 'spec', '')) for x in mu),
          'batch_stats_shards': len(
              state.parts['model'].rest['stem_bn']['mean'].addressable_shards),
          'per_device_ops': 'manual_computation' in hlo, 'eval_rows_per_device': eval_rows}

print('RESULT ' + json.dumps({'one': run(1, -1, 1), 'data8': run(8, -1, 1),
                              'fsdp': run(8, 2, -1), 'fast8': run(8, -1, 1, fast=True),
                              'fast_fsdp': run(8, 2, -1, fast=True),
                              'one_accum': run(1, -1, 1, accum=2),
                              'fast8_accum': run(8, -1, 1, fast=True, accum=2)}))
'''


def _max_param_diff(a: dict, b: dict) -> float:
  assert a.keys() == b.keys()
  return max(max(abs(x - y) for x, y in zip(a[k], b[k])) for k in a)


@pytest.fixture(scope='module')
def layouts() -> dict:
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _STEPS_SCRIPT, 'adamw', '1e-3'], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def test_eight_devices_equal_one_device(layouts):
  one, data8 = layouts['one'], layouts['data8']
  assert len(one['losses']) == 3
  for a, b in zip(one['losses'], data8['losses']):
    assert abs(a - b) < 1e-5, (one['losses'], data8['losses'])
  assert _max_param_diff(one['params'], data8['params']) < 1e-5
  assert data8['sharded_params'] == 0  # fsdp=1: everything replicated.
  assert data8['eval_rows_per_device'] == 2 and one['eval_rows_per_device'] == 16
  # BatchNorm saw the global batch: a replicated statistic, one copy per device.
  assert data8['batch_stats_shards'] == 8


def test_fast_cpu_ops_run_per_device_and_equal_one_device(layouts):
  """The CPU fast path on 8 devices runs per batch shard (shard_map), same answer."""
  one = layouts['one']
  assert not layouts['data8']['per_device_ops']
  for name in ('fast8', 'fast_fsdp'):
    run = layouts[name]
    assert run['per_device_ops'], name
    for a, b in zip(one['losses'], run['losses']):
      assert abs(a - b) < 1e-5, (name, one['losses'], run['losses'])
    assert _max_param_diff(one['params'], run['params']) < 1e-5, name


def test_fast_cpu_ops_per_device_with_gradient_accumulation(layouts):
  """Micro-batches (examples j, j+k, ...) stay spread over the devices; same answer."""
  one, fast = layouts['one_accum'], layouts['fast8_accum']
  assert fast['per_device_ops']
  for a, b in zip(one['losses'], fast['losses']):
    assert abs(a - b) < 1e-5, (one['losses'], fast['losses'])
  assert _max_param_diff(one['params'], fast['params']) < 1e-5


def test_fsdp_equals_replicated(layouts):
  data8, fsdp = layouts['data8'], layouts['fsdp']  # A (data=2, fsdp=4) mesh.
  assert fsdp['sharded_params'] > 0 and fsdp['sharded_opt'] > 0  # FSDP really sharded.
  for a, b in zip(data8['losses'], fsdp['losses']):
    assert abs(a - b) < 1e-5, (data8['losses'], fsdp['losses'])
  assert _max_param_diff(data8['params'], fsdp['params']) < 1e-5


# --------------------------------------------------------------- the FSDP rule, no devices

@pytest.mark.parametrize('shape, nbytes, fsdp, expected', [
    ((3, 3, 64, 128), 4 * 73728, 4, (None, None, None, 'fsdp')),  # Largest divisible dim.
    ((3, 3, 64, 64), 4 * 36864, 4, (None, None, None, 'fsdp')),   # Ties: the last one.
    ((512, 10), 4 * 5120, 4, ('fsdp',)),
    ((10, 6), 240, 4, ()),                                        # Nothing divisible.
    ((1024,), 4096, 8, ('fsdp',)),
    ((), 4, 8, ()),                                               # Scalars replicated.
])
def test_fsdp_rule(shape, nbytes, fsdp, expected):
  assert tuple(parallel.fsdp_spec(shape, nbytes, fsdp, min_bytes=0)) == expected


def test_fsdp_rule_keeps_small_arrays_replicated():
  assert tuple(parallel.fsdp_spec((256, 256), 4 * 65536, 8, min_bytes=2**20)) == ()
  assert tuple(parallel.fsdp_spec((1024, 1024), 4 * 2**20, 8, min_bytes=2**20)) == (
      None, 'fsdp')
  assert tuple(parallel.fsdp_spec((1024, 1024), 4 * 2**20, 1, min_bytes=0)) == ()


# ------------------------------------------------------------------------- validation

def _config(**mesh):
  config = config_lib.base_config()
  config.update_from_flattened_dict({f'mesh.{k}': v for k, v in mesh.items()})
  return config


@pytest.mark.parametrize('mesh, devices, shape', [
    ({}, 8, (8, 1)), ({'fsdp': 2}, 8, (4, 2)), ({'data': 2, 'fsdp': -1}, 8, (2, 4)),
    ({'data': 1, 'fsdp': 8}, 8, (1, 8)), ({}, 1, (1, 1)),
])
def test_mesh_shape(mesh, devices, shape):
  assert parallel.mesh_shape(_config(**mesh).mesh, devices) == shape


@pytest.mark.parametrize('mesh, devices, message', [
    ({'data': 4}, 8, r'config.mesh.data=4 x config.mesh.fsdp=1 = 4 devices, but 8 are '
                     r'available.*--config.mesh.data=-1'),
    ({'data': 2, 'fsdp': 2}, 2, r'= 4 devices, but 2 are available'),
    ({'fsdp': 3}, 8, r'config.mesh.fsdp=3 does not divide the 8 devices.*1, 2, 4, 8'),
    ({'data': 3, 'fsdp': -1}, 8, r'config.mesh.data=3 does not divide the 8 devices'),
    ({'data': -1, 'fsdp': -1}, 8, r'both -1'),
    ({'fsdp': 0}, 8, r'config.mesh.fsdp=0 is out of range.*>= 1, or -1'),
])
def test_mesh_that_does_not_fit_the_devices(mesh, devices, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(_config(**mesh), num_devices=devices)


def test_batch_not_divisible_by_data_parallel_size():
  config = _config(fsdp=2)
  config.train.batch_size = 100
  with pytest.raises(ConfigError, match=r'config.train.batch_size=100 is not divisible by '
                     r'the 8 devices. Use a multiple of 8, e.g. 96.*config.mesh.data=4 x '
                     r'config.mesh.fsdp=2'):
    config_lib.validate(config, num_devices=8)


def test_micro_batches_must_split_over_devices():
  config = _config()
  config.train.batch_size, config.optim.accum_steps = 64, 16
  with pytest.raises(ConfigError, match=r'multiple of 128 \(8 devices x 16 micro-batches\)'):
    config_lib.validate(config, num_devices=8)
  config.optim.accum_steps = 8
  config_lib.validate(config, num_devices=8)


def test_partial_distributed_flags_are_refused():
  with pytest.raises(distributed.DistributedError, match='without --num_processes, '
                                                         '--process_id'):
    distributed.initialize_distributed('127.0.0.1:1234')
  with pytest.raises(distributed.DistributedError, match=r'--process_id=2 must be in \[0'):
    distributed.initialize_distributed('127.0.0.1:1234', 2, 2)


@pytest.mark.parametrize('platforms, cpu_only', [('cpu', True), ('cuda', False),
                                                 ('tpu', False), ('cuda,cpu', False)])
def test_cpu_collectives_only_for_cpu_runs(platforms, cpu_only):
  """gloo is JAX's collectives implementation for CPU processes; a GPU or TPU run has its
  own (NCCL, ICI) and must not be switched."""
  assert distributed.cpu_only_run(platforms) == cpu_only
  assert distributed.cpu_only_run() == (jax.default_backend() == 'cpu')  # These tests.


def test_slices_need_devices_with_a_slice_index():
  config = _config(slices=2)
  with pytest.raises(ConfigError, match='have no slice index'):
    parallel.make_mesh(config, jax.devices()[:1])
