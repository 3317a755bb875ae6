"""oneDNN's convolutions (vision_jax/ops/onednn.py): built here, exact, and optional.

Gradients of the fast path against XLA's for every kernel size, stride and padding are in
test_ops.py; these check what only this path has: the build, the shapes where oneDNN picks
its fast (blocked, multi-threaded) kernels, where the plan uses it, and the fallback.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vision_jax.ops import conv as fast_conv
from vision_jax.ops import onednn

X86_LINUX = platform.system() == 'Linux' and platform.machine() == 'x86_64'
SWITCHED_OFF = os.environ.get('VISION_JAX_ONEDNN', '1').lower() in ('0', 'off', 'false', 'no')
needs_onednn = pytest.mark.skipif(not X86_LINUX or SWITCHED_OFF,
                                  reason='oneDNN wheels: x86-64 Linux only; or switched off')
DN = ('NHWC', 'HWIO', 'NHWC')


@needs_onednn
def test_it_builds_from_the_requirements_here():
  """requirements.txt installs the wheels; g++ builds the bridge (else: see the warning)."""
  path = onednn._load()  # pylint: disable=protected-access
  assert path and os.path.exists(path), 'oneDNN bridge not built: see the logged warning'


@needs_onednn
@pytest.mark.parametrize('channels,size,stride', [(64, 16, 1), (64, 16, 2), (128, 8, 1),
                                                  (3, 16, 1)])
def test_resnet_layer_shapes_match_xla(channels, size, stride):
  """Shapes where oneDNN uses its blocked brgemm kernels (the toy shapes of test_ops do
  not): its forward, input and weight gradients against XLA's in float32, within 1e-5 of
  the largest entry."""
  assert onednn.available()
  rng = np.random.default_rng(channels + size + stride)
  x = jnp.asarray(rng.standard_normal((4, size, size, channels)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, channels, 64)) * 0.05, jnp.float32)
  s = (stride, stride)
  pads = tuple(lax.padtype_to_pads(x.shape[1:3], w.shape[:2], s, 'SAME'))
  f = lambda x, w: lax.conv_general_dilated(x, w, s, pads, dimension_numbers=DN)
  y_ref, vjp = jax.vjp(f, x, w)
  g = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
  ref = (y_ref, *vjp(g))
  got = (onednn.forward(x, w, s, pads), onednn.input_grad(g, w, x.shape, s, pads),
         onednn.weight_grad(x, g, w.shape, s, pads))
  for r, o in zip(ref, got):
    r, o = np.asarray(r, np.float64), np.asarray(o, np.float64)
    assert np.abs(o - r).max() <= 1e-5 * np.abs(r).max()


@needs_onednn
def test_the_plan_uses_it_for_resnet_layers_not_for_tiny_ones():
  """By forward FLOPs: the digits ConvNet's first conv (9 MFLOP) made its step ~15% slower
  on oneDNN; its second (302 MFLOP) and CIFAR ResNet layers (>= 500 MFLOP) take it."""
  def custom_calls(x_shape, w_shape, strides):
    x, w = jnp.zeros(x_shape), jnp.zeros(w_shape)
    f = lambda x, w: jnp.sin(fast_conv.conv_general_dilated(
        x, w, strides, 'SAME', dimension_numbers=DN, use_onednn=True)).sum()
    return jax.jit(jax.grad(f, (0, 1))).lower(x, w).as_text().count('vision_jax_onednn_')
  assert custom_calls((128, 8, 8, 1), (3, 3, 1, 64), (1, 1)) == 0  # digits conv1
  assert custom_calls((128, 4, 4, 64), (3, 3, 64, 128), (1, 1)) == 3  # digits conv2
  assert custom_calls((128, 8, 8, 256), (1, 1, 256, 512), (2, 2)) == 2  # fwd, dw; dx: matmul
  assert custom_calls((128, 32, 32, 64), (3, 3, 64, 64), (1, 1)) == 3


_FALLBACK_SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from vision_jax.ops import conv, onednn
# A layer big enough for the plan to give it to oneDNN, were it available.
x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32, 32, 64)), jnp.float32)
w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 64, 64)) * 0.05, jnp.float32)
loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, (1, 1), 'SAME',
                                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))
ours = lambda *a, **k: conv.conv_general_dilated(*a, use_onednn=True, **k)
hlo = jax.jit(jax.grad(loss(ours), (0, 1))).lower(x, w).as_text()
got = jax.grad(loss(ours), (0, 1))(x, w)
ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
for a, b in zip(got, ref):
  assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5 * np.abs(np.asarray(b)).max()
print('AVAILABLE' if onednn.available() else 'FALLBACK', 'onednn' in hlo)
'''


@pytest.mark.parametrize('env,warned', [({'CXX': '/nonexistent/c++'}, True),
                                        ({'VISION_JAX_ONEDNN': '0'}, False)])
def test_without_it_xla_convolutions_give_the_same_gradients(env, warned, tmp_path):
  """No compiler (a fresh cache, so nothing prebuilt): one warning that says why, then
  XLA's convolutions. Switched off: no warning, same."""
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  inherited = {k: v for k, v in os.environ.items() if k != 'VISION_JAX_ONEDNN'}
  env = dict(inherited, JAX_PLATFORMS='cpu', VISION_JAX_CACHE=str(tmp_path), **env)
  proc = subprocess.run([sys.executable, '-c', _FALLBACK_SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'FALLBACK False' in proc.stdout, proc.stdout
  assert ('oneDNN convolutions unavailable' in proc.stderr) == warned, proc.stderr[-2000:]
  if warned and X86_LINUX:
    assert 'C++ compiler' in proc.stderr  # Names what is missing.
  assert not list(tmp_path.glob('*.so'))


@needs_onednn
def test_the_training_loops_own_step_calls_it():
  """steps.jit_train_step, as the CLI builds it for the digits default (batch 128): the
  second conv (302 MFLOP) runs forward, input and weight gradient on oneDNN, the first
  (9 MFLOP) on XLA."""
  from conftest import lower_digits_train_step  # pylint: disable=g-import-not-at-top
  text = lower_digits_train_step(128).as_text()
  calls = sorted(t for t in ('forward', 'input_grad', 'weight_grad')
                 for _ in range(text.count(f'@vision_jax_onednn_{t}(')))
  assert calls == ['forward', 'input_grad', 'weight_grad'], calls
