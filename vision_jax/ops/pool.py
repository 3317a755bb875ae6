"""Max pooling whose backward pass is fast on XLA:CPU.

XLA's max-pool gradient is a `select_and_scatter`, which XLA:CPU runs as a slow scalar loop
(figures in bench/README.md). Here the forward
is XLA's `reduce_window`; under differentiation it is one fused pass over the kh*kw strided
views of the input that yields the maximum and which tap held it (int8), and the backward
scatters dy to that tap with strided (interior) pads: elementwise loops that XLA fuses,
reading 1 byte per output instead of the whole input.

Ties: like XLA's select_and_scatter (its `ge` select keeps the earlier element on ties), the
whole gradient of a window goes to its first maximal element in row-major window order. Pads
are -inf and never selected unless a window holds nothing else. NaNs are not propagated
specially (a NaN never wins the comparison).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.sharding import Mesh

from vision_jax.ops import per_shard as ps

Pads = tuple[tuple[int, int], tuple[int, int]]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  a, b = v
  return (int(a), int(b))


def max_pool(x: jax.Array, window: int | Sequence[int], strides: int | Sequence[int],
             padding: str | Sequence[tuple[int, int]] = 'VALID', *,
             mesh: Mesh | None = None) -> jax.Array:
  """Max pooling over H and W of an NHWC batch: same values and gradients as nnx.max_pool.

  With `mesh`, forward and backward run per device on its batch shard (`per_shard`).
  """
  window_hw, strides_hw = _pair(window), _pair(strides)
  if x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
    return nnx.max_pool(x, window_hw, strides_hw, padding)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(x.shape[1:3], window_hw, strides_hw, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if len(pads) != 2 or min(min(p) for p in pads) < 0:
    return nnx.max_pool(x, window_hw, strides_hw, padding)
  return _max_pool(x, window_hw, strides_hw, pads, tuple(x.shape), mesh)


def _forward(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             pads: Pads) -> jax.Array:
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, *window, 1),
                           (1, *strides, 1), ((0, 0), *pads, (0, 0)))


def _taps(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], pads: Pads,
          out_hw: tuple[int, int]) -> list[jax.Array]:
  """The kh*kw strided views (N, Ho, Wo, C) of the -inf-padded input, row-major order."""
  (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
  n, _, _, c = x.shape
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype),
               ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  return [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
              pads: Pads, x_shape: tuple[int, ...], mesh: Mesh | None) -> jax.Array:
  del x_shape  # For the backward pass only.
  return ps.per_shard(lambda x: _forward(x, window, strides, pads), mesh, x.shape[0],
                      (ps.BATCH,), ps.BATCH)(x)


def _max_pool_fwd(x, window, strides, pads, x_shape, mesh):
  """Max and the index of the first maximal tap, per batch shard (`per_shard`)."""
  del x_shape  # For the backward pass only.
  forward = ps.per_shard(lambda x: _max_and_index(x, window, strides, pads), mesh,
                         x.shape[0], (ps.BATCH,), (ps.BATCH, ps.BATCH))
  return forward(x)


def _max_and_index(x, window, strides, pads):
  """Max and the index of the first maximal tap: one int8 per output is all bwd needs."""
  out_hw = _forward(x, window, strides, pads).shape[1:3]  # Shape only: traced away.
  taps = _taps(x, window, strides, pads, out_hw)
  index_dtype = jnp.int8 if len(taps) <= 127 else jnp.int32
  y, index = taps[0], jnp.zeros(taps[0].shape, index_dtype)
  for t, tap in enumerate(taps[1:], 1):
    index = jnp.where(tap > y, jnp.array(t, index_dtype), index)  # Strict: first max wins.
    y = jnp.maximum(y, tap)
  return y, index


def max_pool_grad(index: jax.Array, dy: jax.Array, x_shape: tuple[int, ...],
                  window: tuple[int, int], strides: tuple[int, int], pads: Pads) -> jax.Array:
  """dL/dx: each window's dy goes to its tap `index`, scattered back by strided pads."""
  (kh, kw), (sh, sw), ((plo, phi), (qlo, qhi)) = window, strides, pads
  n, h, w, c = x_shape
  _, ho, wo, _ = dy.shape
  hp, wp = h + plo + phi, w + qlo + qhi
  zero = jnp.zeros((), dy.dtype)
  dxp = None
  for i in range(kh):
    for j in range(kw):
      part = lax.pad(jnp.where(index == i * kw + j, dy, zero), zero,
                     ((0, 0, 0), (i, hp - i - (ho - 1) * sh - 1, sh - 1),
                      (j, wp - j - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)))
      dxp = part if dxp is None else dxp + part
  return lax.slice(dxp, (0, plo, qlo, 0), (n, plo + h, qlo + w, c))


def _max_pool_bwd(window, strides, pads, x_shape, mesh, index, dy):
  grad = ps.per_shard(
      lambda index, dy: max_pool_grad(index, dy, (dy.shape[0], *x_shape[1:]), window,
                                      strides, pads),
      mesh, dy.shape[0], (ps.BATCH, ps.BATCH), ps.BATCH)
  return (grad(index, dy),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
