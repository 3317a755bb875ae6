"""Building blocks shared by every model family, built with explicit kernels.

A model passes its `ops.Kernels` (XLA's own ops by default, or the CPU fast path chosen by
`ops.choose`) to `conv`, `max_pool` and `BatchNorm`, so that one argument of the model's
constructor decides the implementation of the whole model.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import ops


def conv(in_features: int, out_features: int, kernel_size: int | Sequence[int], *,
         rngs: nnx.Rngs, kernels: ops.Kernels = ops.XLA, strides: int = 1, padding='SAME',
         use_bias: bool = True, dtype=None, kernel_init=nnx.initializers.lecun_normal(),
         **kwargs) -> nnx.Conv:
  """An `nnx.Conv` (NHWC) that convolves with `kernels.conv`."""
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size, kernel_size)
  return nnx.Conv(in_features, out_features, tuple(kernel_size), strides=strides,
                  padding=padding, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
                  conv_general_dilated=kernels.conv, rngs=rngs, **kwargs)


def max_pool(x: jax.Array, window: int, strides: int, padding='VALID', *,
             kernels: ops.Kernels = ops.XLA) -> jax.Array:
  """Max pooling over H and W of an NHWC batch."""
  return kernels.max_pool(x, window, strides, padding)


class BatchNorm(nnx.Module):
  """BatchNorm over every axis but the last, with `nnx.BatchNorm`'s variables and values.

  Parameters `scale`, `bias` and statistics `mean`, `var` (the names of `nnx.BatchNorm`,
  so checkpoints and parameter rules read alike); `momentum` is the weight of the old
  statistics. Statistics are computed in float32 whatever the compute dtype, the variance
  in one pass (E[x^2] - E[x]^2, clipped at 0) as Flax's default. In training mode on
  float32 inputs the batch statistics and normalisation come from
  `kernels.batch_norm_train` when the kernels have one.
  """

  def __init__(self, num_features: int, *, momentum: float = 0.99, epsilon: float = 1e-5,
               dtype=None, scale_init=nnx.initializers.ones, kernels: ops.Kernels = ops.XLA,
               rngs: nnx.Rngs):
    self.momentum, self.epsilon, self.dtype = momentum, epsilon, dtype
    self.scale = nnx.Param(scale_init(rngs.params(), (num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.batch_norm_train = kernels.batch_norm_train

  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    out_dtype = self.dtype or jnp.result_type(x, self.scale[...])
    scale, bias = self.scale[...], self.bias[...]
    if use_running_average:
      mean, var = self.mean[...], self.var[...]
    elif self.batch_norm_train is not None and x.dtype == jnp.float32 == out_dtype:
      y, mean, var = self.batch_norm_train(x, scale, bias, self.epsilon)
      self._update_statistics(mean, var)
      return y
    else:
      x32 = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      var = jnp.maximum(jnp.mean(x32 * x32, axes) - mean * mean, 0.0)
      self._update_statistics(mean, var)
    y = (x.astype(jnp.float32) - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(out_dtype)

  def _update_statistics(self, mean: jax.Array, var: jax.Array) -> None:
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)


DTYPES = {'float32': 'float32', 'fp32': 'float32', 'f32': 'float32',
          'bfloat16': 'bfloat16', 'bf16': 'bfloat16',
          'float16': 'float16', 'fp16': 'float16', 'f16': 'float16', 'half': 'float16'}


def as_dtype(name) -> jnp.dtype:
  """A compute dtype from its name ('float32', 'bfloat16', 'bf16', ...) or a dtype.

  Raises ValueError naming the accepted names.
  """
  if isinstance(name, str):
    if name.strip().lower() not in DTYPES:
      raise ValueError(f'config.model.dtype={name!r} is not a compute dtype; use one of '
                       f'{", ".join(DTYPES)} (parameters always stay float32).')
    name = DTYPES[name.strip().lower()]
  return jnp.dtype(name)
