"""The real training step lowers for GPUs and TPUs from this CPU, with nothing CPU-only in
it: no oneDNN custom call, no host callback. (The CPU fast path exists for the CPU
backend only; on any other platform the model is built on XLA's own ops.)"""
import re

import jax
import numpy as np
import pytest

from conftest import loop_train_step
from vision_jax import config as config_lib
from vision_jax.ops import onednn

# Custom calls that only the CPU can run: our oneDNN bridge and JAX's host callbacks.
CPU_ONLY = re.compile(r'vision_jax_onednn|python_cpu_callback|ffi_python_cpu_callback|'
                      r'xla_python_gpu_callback|xla_ffi_python_gpu_callback')


def _custom_call_targets(mlir_text: str) -> set[str]:
  return set(re.findall(r'stablehlo\.custom_call @([\w.]+)', mlir_text) +
             re.findall(r'call_target_name = "([^"]+)"', mlir_text))


def _step_and_specs(model: str, image_size: int, dtype: str, platform: str, batch: int):
  config = config_lib.base_config()
  config.model.name, config.model.dtype = model, dtype
  config.optim.update(name='sgd', momentum=0.9, nesterov=True, learning_rate=0.1)
  step, state = loop_train_step(config, image_size=image_size, channels=3,
                                num_classes=1000, platform=platform)
  batch_spec = {'image': jax.ShapeDtypeStruct((batch, image_size, image_size, 3), np.uint8),
                'label': jax.ShapeDtypeStruct((batch,), np.int32)}
  state_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  return step, state_spec, batch_spec


def _exported_targets(model: str, image_size: int, dtype: str, batch: int = 8):
  """Custom-call targets of the step exported for CUDA and TPU (jax.export itself also
  refuses custom calls it cannot serialise)."""
  step, state_spec, batch_spec = _step_and_specs(model, image_size, dtype, 'cuda', batch)
  exported = jax.export.export(step, platforms=('cuda', 'tpu'))(state_spec, batch_spec)
  return _custom_call_targets(exported.mlir_module())


@pytest.mark.parametrize('model,image_size,dtype', [('resnet50', 224, 'bfloat16'),
                                                    ('cifar_resnet18', 32, 'float32'),
                                                    ('bit_r50x1', 224, 'float32')])
def test_train_step_lowers_for_cuda_and_tpu_without_cpu_only_calls(model, image_size, dtype):
  targets = _exported_targets(model, image_size, dtype)
  assert not [t for t in targets if CPU_ONLY.search(t)], targets


@pytest.mark.skipif(not onednn.available(), reason='oneDNN is not built here')
def test_the_check_sees_the_cpu_fast_path():
  """The same check on the step built for the CPU finds oneDNN's calls: it can fail."""
  step, state_spec, batch_spec = _step_and_specs('cifar_resnet18', 32, 'float32', 'cpu', 64)
  targets = _custom_call_targets(step.lower(state_spec, batch_spec).as_text())
  assert [t for t in targets if CPU_ONLY.search(t)], targets
