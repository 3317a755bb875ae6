"""The CPU fast path's BatchNorm equals Flax's: values, gradients, running statistics.

"Equal" as in test_ops: max|ours - flax| <= 1e-5 * max|flax| per tensor.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from test_ops import assert_close, train_pass
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


def _train_step(fast: bool):
  """Loss, gradients and BatchNorm statistics after one training-mode pass."""
  with layers.fast_cpu_ops(fast):
    model = _TinyResNet(10, width=8, rngs=nnx.Rngs(0))
  return train_pass(model, (8, 8, 8, 3), fast, seed=3)


def test_resnet_with_it_equals_resnet_with_flax_batch_norm():
  """The same model built with and without the fast path: same loss, gradients, and
  running statistics after the update."""
  loss_ref, grads_ref, stats_ref = _train_step(False)
  loss, grads, stats = _train_step(True)
  assert_close(loss, loss_ref)
  for tree, ref in ((grads, grads_ref), (stats, stats_ref)):
    leaves, leaves_ref = jax.tree.leaves_with_path(tree), jax.tree.leaves_with_path(ref)
    assert [p for p, _ in leaves] == [p for p, _ in leaves_ref]
    for (_, a), (_, b) in zip(leaves, leaves_ref):
      assert_close(a, b)


def _uses_fast_path(bn: layers.BatchNorm, x: jax.Array, train: bool) -> bool:
  graphdef, state = nnx.split(bn)
  run = lambda state, x: nnx.merge(graphdef, state)(x, use_running_average=not train)
  return 'custom_vjp_call' in str(jax.make_jaxpr(run)(state, x))


def test_fast_path_only_where_it_applies():
  """Training mode on float32 under the switch; Flax's own BatchNorm otherwise (running
  averages at eval, bfloat16 models, models built without the switch)."""
  x = jnp.ones((2, 4, 4, 3))
  with layers.fast_cpu_ops(True):
    fast = layers.BatchNorm(3, rngs=nnx.Rngs(0))
    fast_bf16 = layers.BatchNorm(3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  plain = layers.BatchNorm(3, rngs=nnx.Rngs(0))
  assert _uses_fast_path(fast, x, train=True)
  assert not _uses_fast_path(fast, x, train=False)
  assert not _uses_fast_path(fast_bf16, x, train=True)
  assert not _uses_fast_path(fast, x.astype(jnp.bfloat16), train=True)
  assert not _uses_fast_path(plain, x, train=True)
