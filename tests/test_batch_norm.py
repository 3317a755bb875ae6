"""Our BatchNorm equals Flax's, and its CPU fast path equals it: values, gradients, running
statistics.

"Equal" as in test_ops: max|ours - flax| <= 1e-5 * max|flax| per tensor.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from test_ops import FAST, assert_close, train_pass
from vision_jax import ops
from vision_jax.models import layers, resnet
from vision_jax.ops import batch_norm


def _flax_formula(x, scale, bias, epsilon):
  """nnx.BatchNorm's training-mode arithmetic (use_fast_variance), differentiated by JAX."""
  mean = x.mean((0, 1, 2))
  var = jnp.maximum((x * x).mean((0, 1, 2)) - mean * mean, 0.0)
  return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias, mean, var


@pytest.mark.parametrize('shape,offset', [((8, 5, 5, 6), 0.0), ((4, 8, 8, 16), 3.0),
                                          ((16, 1, 1, 4), -1.0)])
def test_values_and_gradients_equal_autodiff(shape, offset):
  """Through a ReLU as in a ResNet, with cotangents on the statistics as well (a loss that
  reads them must get their gradient too); inputs off zero mean, as conv outputs are."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape, np.float32) * 2 + offset)
  scale, bias = (jnp.asarray(rng.standard_normal(shape[-1:], np.float32)) for _ in range(2))
  g, g_mean, g_var = (jnp.asarray(rng.standard_normal(s, np.float32))
                      for s in (shape, shape[-1:], shape[-1:]))

  def loss(bn):
    def f(x, scale, bias):
      y, mean, var = bn(x, scale, bias, 1e-5)
      return jnp.sum(jax.nn.relu(y) * g) + jnp.sum(mean * g_mean) + jnp.sum(var * g_var)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

  want, got = loss(_flax_formula)(x, scale, bias), loss(batch_norm.batch_norm_train)(x, scale, bias)
  assert_close(got[0], want[0])
  for a, b in zip(got[1], want[1]):
    assert_close(a, b)
  for a, b in zip(batch_norm.batch_norm_train(x, scale, bias, 1e-5),
                  _flax_formula(x, scale, bias, 1e-5)):
    assert_close(a, b)


class _TinyResNet(resnet.ResNet):
  STAGES, BLOCK, STEM = (1, 1), 'basic', 'cifar'


def _train_step(kernels: ops.Kernels):
  """Loss, gradients and BatchNorm statistics after one training-mode pass."""
  return train_pass(_TinyResNet(10, width=8, kernels=kernels, rngs=nnx.Rngs(0)), (8, 8, 8, 3),
                    seed=3)


def test_resnet_with_it_equals_resnet_with_xla_batch_norm():
  """The same model built with and without the fast path: same loss, gradients, and
  running statistics after the update."""
  loss_ref, grads_ref, stats_ref = _train_step(ops.XLA)
  loss, grads, stats = _train_step(FAST)
  assert_close(loss, loss_ref)
  for tree, ref in ((grads, grads_ref), (stats, stats_ref)):
    leaves, leaves_ref = jax.tree.leaves_with_path(tree), jax.tree.leaves_with_path(ref)
    assert [p for p, _ in leaves] == [p for p, _ in leaves_ref]
    for (_, a), (_, b) in zip(leaves, leaves_ref):
      assert_close(a, b)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('train', [True, False])
def test_batch_norm_equals_flax(dtype, train):
  """layers.BatchNorm (XLA kernels) against nnx.BatchNorm with the same settings: output,
  dtype, and the running statistics after the pass."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((4, 5, 5, 6), np.float32) * 3 + 1, dtype)
  ours = layers.BatchNorm(6, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
  ref = nnx.BatchNorm(6, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
  for bn in (ours, ref):
    bn.scale[...] = jnp.asarray(rng.standard_normal(6), jnp.float32)
    bn.mean[...] = jnp.full((6,), 0.5)
    bn.var[...] = jnp.full((6,), 2.0)
  rng = np.random.default_rng(1)  # The same affine parameters in both.
  _ = rng.standard_normal((4, 5, 5, 6))
  scale = jnp.asarray(rng.standard_normal(6), jnp.float32)
  ours.scale[...], ref.scale[...] = scale, scale
  y, y_ref = ours(x, use_running_average=not train), ref(x, use_running_average=not train)
  assert y.dtype == y_ref.dtype == dtype
  assert_close(y.astype(jnp.float32), y_ref.astype(jnp.float32),
               1e-5 if dtype == jnp.float32 else 1e-2)
  for stat in ('mean', 'var'):
    assert_close(getattr(ours, stat)[...], getattr(ref, stat)[...])


def _uses_fast_path(bn: layers.BatchNorm, x: jax.Array, train: bool) -> bool:
  graphdef, state = nnx.split(bn)
  run = lambda state, x: nnx.merge(graphdef, state)(x, use_running_average=not train)
  return 'custom_vjp_call' in str(jax.make_jaxpr(run)(state, x))


def test_fast_path_only_where_it_applies():
  """Training mode on float32 when built with the fast kernels; the plain formula
  otherwise (running averages at eval, bfloat16 models, models built on XLA's ops)."""
  x = jnp.ones((2, 4, 4, 3))
  fast = layers.BatchNorm(3, kernels=FAST, rngs=nnx.Rngs(0))
  fast_bf16 = layers.BatchNorm(3, dtype=jnp.bfloat16, kernels=FAST, rngs=nnx.Rngs(0))
  plain = layers.BatchNorm(3, rngs=nnx.Rngs(0))
  assert _uses_fast_path(fast, x, train=True)
  assert not _uses_fast_path(fast, x, train=False)
  assert not _uses_fast_path(fast_bf16, x, train=True)
  assert not _uses_fast_path(fast, x.astype(jnp.bfloat16), train=True)
  assert not _uses_fast_path(plain, x, train=True)
