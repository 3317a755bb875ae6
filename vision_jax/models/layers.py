"""Building blocks shared by every model family.

Models build their convolutions and poolings through `conv` and `max_pool` so that one
switch (`use_fast_cpu_ops`) chooses the implementation for a whole model: XLA's own ops, or
the CPU fast path of `vision_jax.ops` whose gradients are quicker on XLA:CPU.
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


def as_dtype(name) -> jnp.dtype:
  """'float32' / 'bfloat16' / a dtype -> a jnp dtype."""
  return jnp.dtype(name)
