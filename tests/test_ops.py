"""The CPU fast path equals XLA: forward values and gradients w.r.t. inputs and weights.

"Equal" is max|ours - xla| <= 1e-5 * max|xla| per tensor: the paths sum the same products
in a different order, so float32 rounding differs in the last bits.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax

from vision_jax import ops
from vision_jax.models import create_model
from vision_jax.ops import conv as fast_conv
from vision_jax.ops import onednn
from vision_jax.ops import pool as fast_pool

RTOL = 1e-5
DN = ('NHWC', 'HWIO', 'NHWC')


def assert_close(actual, expected, rtol: float = RTOL) -> None:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  scale = max(np.abs(expected).max(), 1e-30)
  err = np.abs(actual - expected).max() / scale
  assert err <= rtol, f'relative error {err:.2e} > {rtol:.0e}'


def _rand(rng, shape, dtype=jnp.float32):
  return jnp.asarray(rng.standard_normal(shape), dtype)


def _conv_vjps(x, w, strides, padding, dtype=jnp.float32, use_onednn=False):
  """(y, dx, dw) for XLA's conv and ours, with the same random cotangent."""
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)  # As nnx.Conv passes it.
  ref = lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
  ours = lambda x, w: fast_conv.conv_general_dilated(x, w, strides, padding,
                                                     dimension_numbers=dn,
                                                     use_onednn=use_onednn)
  y_ref, vjp_ref = jax.vjp(jax.jit(ref), x, w)
  y, vjp = jax.vjp(jax.jit(ours), x, w)
  g = _rand(np.random.default_rng(1), y_ref.shape, dtype)
  return (y_ref, *vjp_ref(g)), (y, *vjp(g))


@pytest.fixture(params=[False, True], ids=['xla_conv', 'onednn'])
def use_onednn(request):
  """The fast path with XLA's convolutions, and with oneDNN's where it is built (these
  toy shapes stay below the size the plan gives oneDNN: test_onednn covers its kernels)."""
  if request.param and not onednn.available():
    pytest.skip('oneDNN is not built here (see the warning logged by vision_jax.ops.onednn)')
  return request.param


@pytest.mark.parametrize('kernel,strides,padding', list(itertools.product(
    (1, 3, 7), (1, 2), ('SAME', 'VALID'))))
def test_conv_matches_xla(kernel, strides, padding, use_onednn):
  rng = np.random.default_rng(kernel * 10 + strides)
  x = _rand(rng, (3, 11, 9, 5))  # Odd sizes: SAME pads asymmetrically at stride 2.
  w = _rand(rng, (kernel, kernel, 5, 4))
  for r, o in zip(*_conv_vjps(x, w, (strides, strides), padding, use_onednn=use_onednn)):
    assert_close(o, r)


@pytest.mark.parametrize('padding', [((1, 2), (0, 1)), ((3, 3), (3, 3)), ((0, 0), (2, 0))])
def test_conv_explicit_padding(padding, use_onednn):
  rng = np.random.default_rng(2)
  x, w = _rand(rng, (2, 10, 7, 3)), _rand(rng, (3, 3, 3, 6))
  for r, o in zip(*_conv_vjps(x, w, (2, 2), padding, use_onednn=use_onednn)):
    assert_close(o, r)


@pytest.mark.parametrize('kernel,strides,padding', [
    (1, 1, ((0, 0), (0, 0))), (1, 2, ((0, 0), (0, 0))), (3, 1, ((1, 1), (1, 1))),
    (3, 2, ((1, 1), (1, 1))), (7, 2, ((3, 3), (3, 3))), (3, 2, ((0, 1), (1, 0)))])
def test_each_gradient_method_matches_xla(kernel, strides, padding):
  """The im2col weight gradient and the matmul input gradient, whichever layer the plan
  would give them, against lax's transpose rules."""
  rng = np.random.default_rng(kernel + strides)
  x, w = _rand(rng, (3, 11, 9, 5)), _rand(rng, (kernel, kernel, 5, 4))
  s = (strides, strides)
  dy = _rand(rng, lax.conv_general_dilated(x, w, s, padding, dimension_numbers=DN).shape)
  assert_close(fast_conv.weight_grad(x, dy, w.shape[:2], s, padding),
               fast_conv.weight_grad_xla(x, dy, w.shape, s, padding))
  assert_close(fast_conv.input_grad_matmul(dy, w, x.shape, s, padding),
               fast_conv.input_grad_xla(dy, w, x.shape, s, padding))


def test_conv_weight_grad_chunks_with_tail(monkeypatch):
  """Batch split into scanned chunks plus a remainder chunk still sums every image."""
  monkeypatch.setattr(fast_conv, '_MAX_CHUNK_ROWS', 2 * 9 * 9)  # 2 images a chunk, batch 7.
  rng = np.random.default_rng(3)
  x, w = _rand(rng, (7, 9, 9, 4)), _rand(rng, (3, 3, 4, 5))
  pads = ((1, 1), (1, 1))
  dy = _rand(rng, (7, 9, 9, 5))
  assert_close(fast_conv.weight_grad(x, dy, (3, 3), (1, 1), pads),
               fast_conv.weight_grad_xla(x, dy, w.shape, (1, 1), pads))


def test_conv_bfloat16():
  rng = np.random.default_rng(4)
  x = _rand(rng, (2, 9, 9, 8), jnp.bfloat16)
  w = _rand(rng, (3, 3, 8, 8), jnp.bfloat16)
  ref, ours = _conv_vjps(x, w, (2, 2), 'SAME', jnp.bfloat16)
  assert_close(ours[0], ref[0], 0)  # Same XLA forward.
  for r, o in zip(ref[1:], ours[1:]):
    assert o.dtype == jnp.bfloat16
    assert_close(o, r, 2e-2)  # bf16 keeps ~3 significant digits.


@pytest.mark.parametrize('kwargs', [{'rhs_dilation': (2, 2)}, {'lhs_dilation': (2, 1)},
                                    {'feature_group_count': 2}])
def test_conv_unhandled_cases_fall_back_to_lax(kwargs):
  rng = np.random.default_rng(5)
  groups = kwargs.get('feature_group_count', 1)
  x, w = _rand(rng, (2, 9, 9, 4)), _rand(rng, (3, 3, 4 // groups, 6))
  pads = ((1, 1), (1, 1))  # lax rejects string padding with lhs_dilation.
  f = lambda c: (lambda x, w: c(x, w, (1, 1), pads, dimension_numbers=DN, **kwargs))
  ref = jax.grad(lambda x, w: jnp.sum(f(lax.conv_general_dilated)(x, w)**2), (0, 1))(x, w)
  ours = jax.grad(lambda x, w: jnp.sum(f(fast_conv.conv_general_dilated)(x, w)**2),
                  (0, 1))(x, w)
  for r, o in zip(ref, ours):
    np.testing.assert_array_equal(o, r)


def test_nnx_conv_uses_it_as_drop_in():
  rngs = nnx.Rngs(0)
  ref = nnx.Conv(3, 5, (3, 3), strides=2, rngs=rngs)
  ours = nnx.Conv(3, 5, (3, 3), strides=2, rngs=nnx.Rngs(0),
                  conv_general_dilated=fast_conv.conv_general_dilated)
  x = _rand(np.random.default_rng(6), (2, 7, 7, 3))
  np.testing.assert_array_equal(ours(x), ref(x))


POOLS = [(2, 2, 'VALID'), (2, 2, 'SAME'), (3, 2, 'SAME'), (3, 2, 'VALID'),
         (3, 2, ((1, 1), (1, 1))), (3, 1, 'SAME'), (2, 1, ((1, 0), (0, 1)))]


@pytest.mark.parametrize('window,strides,padding', POOLS)
@pytest.mark.parametrize('ties', [False, True])
def test_max_pool_matches_xla(window, strides, padding, ties):
  """Values and gradients equal; with ties both send a window's gradient to its first max."""
  rng = np.random.default_rng(window * 10 + strides)
  x = rng.standard_normal((2, 9, 11, 3)).astype(np.float32)
  if ties:
    x = np.maximum(np.round(x), 0)  # Like ReLU outputs: many equal values per window.
  x = jnp.asarray(x)
  pw = (window, window)
  ref = jax.jit(lambda x: nnx.max_pool(x, pw, (strides, strides), padding))
  ours = jax.jit(lambda x: fast_pool.max_pool(x, window, strides, padding))
  y_ref, vjp_ref = jax.vjp(ref, x)
  y, vjp = jax.vjp(ours, x)
  np.testing.assert_array_equal(y, y_ref)
  g = _rand(np.random.default_rng(0), y.shape)
  assert_close(vjp(g)[0], vjp_ref(g)[0])


FAST = ops.choose('on', platform='cpu')


def train_pass(model: nnx.Module, image_shape: tuple[int, ...], seed: int = 7):
  """(loss, gradients, BatchNorm statistics after it) of one jitted training-mode pass on
  random images and labels; the model's kernels were chosen when it was built."""
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.random(image_shape, np.float32))
  labels = jnp.asarray(rng.integers(0, 10, image_shape[0]))

  def loss_fn(model):
    logits = model(images, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @nnx.jit
  def run(model):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    return loss, grads, nnx.state(model, nnx.BatchStat)

  return run(model)


def test_convnet_fast_path_equals_xla():
  """Same loss and gradients for the model built on the fast path and on XLA's ops."""
  def loss_and_grads(kernels):
    model = create_model('convnet', 10, image_size=32, kernels=kernels, rngs=nnx.Rngs(0))
    return train_pass(model, (4, 32, 32, 3))[:2]
  loss_ref, grads_ref = loss_and_grads(ops.XLA)
  loss, grads = loss_and_grads(FAST)
  np.testing.assert_allclose(loss, loss_ref, rtol=RTOL)
  leaves_ref = jax.tree.leaves_with_path(grads_ref)
  leaves = jax.tree.leaves_with_path(grads)
  assert [p for p, _ in leaves] == [p for p, _ in leaves_ref]
  for (_, r), (_, o) in zip(leaves_ref, leaves):
    assert_close(o, r)


def test_wants_fast_path():
  assert ops.wants_fast_path('auto', 'cpu') and not ops.wants_fast_path('auto', 'cuda')
  assert ops.wants_fast_path(True, 'cpu') and ops.wants_fast_path('on', 'cpu')
  assert not ops.wants_fast_path(False, 'tpu') and not ops.wants_fast_path('False', 'cpu')
  with pytest.raises(ValueError, match='fast_cpu_ops'):
    ops.wants_fast_path('sometimes', 'cpu')
  with pytest.raises(ValueError, match="this run is on 'cuda'"):
    ops.wants_fast_path(True, 'cuda')
  assert ops.choose('auto', platform='tpu') is ops.XLA


@pytest.mark.parametrize('fast', [True, False])
def test_train_step_uses_the_fast_pool_gradient_when_built_with_it(fast):
  """The real train step (steps.make_train_step) of a model built on the fast path."""
  from vision_jax import config as config_lib, steps, tasks, train_state
  model = create_model('convnet', 10, image_size=8, in_channels=1,
                       kernels=FAST if fast else ops.XLA)
  structure, state = train_state.from_model(model, optax.sgd(0.1))
  step = steps.make_train_step(tasks.build(config_lib.base_config()), structure,
                               mean=(0.5,), std=(0.5,))
  batch = {'image': jnp.zeros((4, 8, 8, 1), jnp.uint8), 'label': jnp.zeros((4,), jnp.int32)}
  jaxpr = str(jax.make_jaxpr(step)(state, batch))
  assert ('select_and_scatter_add' in jaxpr) != fast  # XLA's max-pool gradient.


def test_compiler_options_keep_the_values():
  """The CPU compiler options change how XLA:CPU runs convolutions, not what they compute."""
  def f(x, w, m):
    y = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN)
    return y.reshape(-1, 64) @ m
  rng = np.random.default_rng(0)
  args = (_rand(rng, (8, 16, 16, 64)), _rand(rng, (3, 3, 64, 64)), _rand(rng, (64, 32)))
  options = ops.compiler_options()
  assert options is not None  # Accepted by this jaxlib on the CPU backend.
  assert_close(jax.jit(f, compiler_options=options)(*args), jax.jit(f)(*args))


def test_compiler_options_defer_to_xla_flags(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=-reduce')
  assert ops.compiler_options() is None


# Conv + max-pool gradients on a 4-device mesh (each device its batch shard, dw summed)
# against XLA's ops on one device. Runs in a subprocess: the device count is fixed before
# jax starts. With oneDNN the layer is big enough (per device) for the plan to use it.
_PER_SHARD_SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import sys
from vision_jax.ops import conv, pool
use_onednn = sys.argv[1] == 'onednn'

def loss(conv_fn, pool_fn, x, w):
  y = conv_fn(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y = pool_fn(jax.nn.relu(y))
  return jnp.sum(jnp.sin(y))

rng = np.random.default_rng(0)
cin, cout = (64, 64) if use_onednn else (3, 5)
x = rng.standard_normal((8, 32, 32, cin)).astype(np.float32)
w = (rng.standard_normal((3, 3, cin, cout)) * 0.05).astype(np.float32)
ref = jax.jit(jax.grad(lambda x, w: loss(
    lax.conv_general_dilated, lambda y: lax.reduce_window(
        y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID'), x, w), (0, 1)))(x, w)
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ('data', 'fsdp'))
xs = jax.device_put(x, NamedSharding(mesh, P(('data', 'fsdp'))))
fast_conv = lambda *a, **k: conv.conv_general_dilated(*a, mesh=mesh, use_onednn=use_onednn,
                                                      **k)
fast = lambda x, w: loss(fast_conv, lambda y: pool.max_pool(y, 2, 2, mesh=mesh), x, w)
step = jax.jit(jax.grad(fast, (0, 1)))
text = step.lower(xs, w).as_text()
got = step(xs, w)
for a, b in zip(got, ref):
  err = float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())
  assert err < 1e-5, err
assert text.count('manual_computation') >= 3, 'conv fwd/bwd and pool fwd/bwd run per shard'
assert (sys.argv[1] == 'onednn') == ('vision_jax_onednn_weight_grad' in text)
print('OK', got[0].sharding.spec)
'''


@pytest.mark.parametrize('impl', ['onednn', 'xla'])
def test_fast_ops_run_per_batch_shard_on_a_mesh(impl):
  """Also: oneDNN's kernels run concurrently, one device per thread (its library-managed
  scratchpad made this hang or go wrong)."""
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  if impl == 'onednn' and not onednn.available():
    pytest.skip('oneDNN is not built here')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _PER_SHARD_SCRIPT, impl], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK P(('data', 'fsdp'),)" in proc.stdout, proc.stdout  # dx stays split.


def test_per_shard_is_the_identity_without_a_mesh():
  from vision_jax.ops import per_shard  # pylint: disable=g-import-not-at-top
  f = lambda x: x * 2
  assert per_shard.per_shard(f, None, 8, (per_shard.BATCH,), per_shard.BATCH) is f
  from vision_jax import parallel  # pylint: disable=g-import-not-at-top
  assert per_shard.BATCH_AXES == parallel.AXES  # The ops split the batch as the loop does.
