"""Building blocks shared by every model family.

Models build their convolutions, poolings and BatchNorms through `conv`, `max_pool` and
`BatchNorm` so that one switch (`fast_cpu_ops`) chooses the implementation for a whole
model: XLA's own ops, or the CPU fast path of `vision_jax.ops` whose gradients are quicker
on XLA:CPU.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_FAST_CPU_OPS = False


@contextlib.contextmanager
def fast_cpu_ops(enabled: bool) -> Iterator[None]:
  """Convs built, and max-pools traced, inside this context use the CPU fast path.

  A conv's choice is fixed when it is built (it is a module attribute); `max_pool` is a
  function and follows the switch active when the step is traced (or its `fast` argument).
  """
  global _FAST_CPU_OPS
  previous, _FAST_CPU_OPS = _FAST_CPU_OPS, enabled
  try:
    yield
  finally:
    _FAST_CPU_OPS = previous


def _conv_impl():
  if _FAST_CPU_OPS:
    from vision_jax.ops import conv as fast_conv  # pylint: disable=g-import-not-at-top
    return fast_conv.conv_general_dilated
  return jax.lax.conv_general_dilated


def conv(in_features: int, out_features: int, kernel_size: int | Sequence[int], *,
         rngs: nnx.Rngs, strides: int = 1, padding='SAME', use_bias: bool = True,
         dtype=None, kernel_init=nnx.initializers.lecun_normal(), **kwargs) -> nnx.Conv:
  """An `nnx.Conv` (NHWC) whose implementation follows the active `fast_cpu_ops` switch."""
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size, kernel_size)
  return nnx.Conv(in_features, out_features, tuple(kernel_size), strides=strides,
                  padding=padding, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
                  conv_general_dilated=_conv_impl(), rngs=rngs, **kwargs)


def fast_cpu_ops_enabled() -> bool:
  """The switch now: a model may record it in __init__ and pass it to `max_pool`."""
  return _FAST_CPU_OPS


def max_pool(x: jax.Array, window: int, strides: int, padding: str = 'VALID', *,
             fast: bool | None = None) -> jax.Array:
  """Max pooling over H and W of an NHWC batch; `fast=None` follows the active switch."""
  if _FAST_CPU_OPS if fast is None else fast:
    from vision_jax.ops import pool as fast_pool  # pylint: disable=g-import-not-at-top
    return fast_pool.max_pool(x, window, strides, padding)
  return nnx.max_pool(x, (window, window), (strides, strides), padding)


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` (same parameters, statistics and values); built under `fast_cpu_ops`,
  its training-mode pass over float32 NHWC batches is `ops.batch_norm`'s, whose gradient
  reads the activations fewer times."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.fast = _FAST_CPU_OPS  # Fixed at build time, like a conv's implementation.

  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    if use_running_average is None:
      use_running_average = self.use_running_average
    if (not self.fast or use_running_average is not False or mask is not None
        or self.axis_name is not None or self.axis not in (-1, x.ndim - 1)
        or x.dtype != jnp.float32 or self.dtype not in (None, jnp.float32)
        or self.scale is None or self.bias is None or not self.use_fast_variance):
      return super().__call__(x, use_running_average, mask=mask)
    from vision_jax.ops import batch_norm  # pylint: disable=g-import-not-at-top
    y, mean, var = batch_norm.batch_norm_train(x, self.scale[...], self.bias[...],
                                               self.epsilon)
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
    return y


def as_dtype(name) -> jnp.dtype:
  """'float32' / 'bfloat16' / a dtype -> a jnp dtype."""
  return jnp.dtype(name)
