"""A 2-D convolution whose gradients are fast on XLA:CPU.

XLA:CPU's weight gradient of a 3x3 convolution over CIFAR-sized maps, and both gradients
of a 1x1 convolution, cost several times its forward pass; PyTorch's (oneDNN's) cost about
as much as the forward. `conv_general_dilated` defines its own VJP (figures in
bench/README.md):

* with `use_onednn` (`onednn.available()`: x86-64 Linux with the requirements and g++),
  the float32 forward, input and weight gradients of convolutions big enough to gain are
  oneDNN's kernels as XLA custom calls, except the input gradient of a 1x1 conv (one
  matmul, below);
* otherwise XLA's convolution does the forward pass and the gradients are chosen per layer
  shape (`plan`): the weight gradient as im2col matmuls over cache-sized chunks of the
  batch (a `lax.scan`), or XLA's own while the activations fit in cache; the input
  gradient of a 1x1 kernel as one matmul, else XLA's transposed convolution;
* with `mesh`, the forward and both gradients run per device on its share of the batch
  (`per_shard`).

It is a drop-in for `jax.lax.conv_general_dilated` as `flax.nnx.Conv` calls it. Calls it does
not handle (dilation, groups, other layouts, `preferred_element_type`, sharding) go to lax
unchanged, so it is always correct.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from vision_jax.ops import onednn
from vision_jax.ops import per_shard as ps

Pads = tuple[tuple[int, int], tuple[int, int]]

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))
_DN = ('NHWC', 'HWIO', 'NHWC')
# Below this activation size (x or dy) XLA's own weight gradient is as fast (in cache).
_XLA_DW_MAX_BYTES = 4 << 20
# Weight-gradient chunks: patch matrices of ~4.5 MiB (cache-resident), 256..8192 rows.
_CHUNK_BYTES = 9 << 19
_MIN_CHUNK_ROWS, _MAX_CHUNK_ROWS = 256, 8192
# oneDNN for convolutions of at least this many forward FLOPs (per device). Below, its
# calls inside a step cost more than they save (the digits ConvNet's first conv).
_ONEDNN_MIN_FLOPS = 100e6


def _is_nhwc(dimension_numbers: Any, ndim: int) -> bool:
  if ndim != 4 or dimension_numbers is None:
    return False
  try:
    dn = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers)
  except (TypeError, ValueError):
    return False
  return dn == _NHWC


def _all_ones(v: Sequence[int] | None) -> bool:
  return v is None or all(d == 1 for d in v)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None,
                         out_sharding: Any = None, *, mesh: Mesh | None = None,
                         use_onednn: bool = False) -> jax.Array:
  """`lax.conv_general_dilated` with a CPU-friendly VJP for plain NHWC/HWIO 2-D convs."""
  handled = (_is_nhwc(dimension_numbers, lhs.ndim) and rhs.ndim == 4
             and _all_ones(lhs_dilation) and _all_ones(rhs_dilation)
             and feature_group_count == 1 and batch_group_count == 1
             and preferred_element_type is None and out_sharding is None
             and lhs.dtype == rhs.dtype
             and jnp.issubdtype(lhs.dtype, jnp.floating)
             # Symbolic (export-polymorphic) dimensions: chunk sizes need concrete shapes.
             and all(isinstance(d, int) for d in (*lhs.shape, *rhs.shape)))
  if handled:
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
      pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    else:
      pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    handled = len(strides) == 2 and len(pads) == 2 and min(min(p) for p in pads) >= 0
  if not handled:
    kwargs = {} if out_sharding is None else {'out_sharding': out_sharding}
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type, **kwargs)
  return _conv(lhs, rhs, strides, pads, precision, mesh, use_onednn)


def _forward(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads,
             precision: Any) -> jax.Array:
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DN,
                                  precision=precision)


def _onednn_here(use_onednn: bool, x: jax.Array, w_shape: Sequence[int],
                 y_shape: Sequence[int]) -> bool:
  """oneDNN's kernels for float32 convolutions of >= _ONEDNN_MIN_FLOPS (per device), when
  asked for and built."""
  flops = 2 * math.prod(y_shape) * math.prod(w_shape[:3])
  return (use_onednn and x.dtype == jnp.float32 and flops >= _ONEDNN_MIN_FLOPS
          and onednn.available())


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads,
          precision: Any, mesh: Mesh | None, use_onednn: bool) -> jax.Array:
  return _conv_fwd(x, w, strides, pads, precision, mesh, use_onednn)[0]


def _local_forward(x, w, strides, pads, precision, use_onednn):
  y_shape = (x.shape[0], *onednn.output_hw(x.shape, w.shape[:2], strides, pads), w.shape[3])
  if _onednn_here(use_onednn, x, w.shape, y_shape):
    return onednn.forward(x, w, strides, pads)
  return _forward(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision, mesh, use_onednn):
  forward = ps.per_shard(
      lambda x, w: _local_forward(x, w, strides, pads, precision, use_onednn), mesh,
      x.shape[0], (ps.BATCH, ps.REPLICATED), ps.BATCH)
  return forward(x, w), (x, w)


def _tap_slice(xp: jax.Array, i: int, j: int, out_hw: tuple[int, int],
               strides: tuple[int, int]) -> jax.Array:
  """The (N, Ho, Wo, C) input pixels that kernel tap (i, j) multiplies."""
  (ho, wo), (sh, sw) = out_hw, strides
  n, _, _, c = xp.shape
  return lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                   (1, sh, sw, 1))


def _pad_input(x: jax.Array, pads: Pads) -> jax.Array:
  zero = jnp.zeros((), x.dtype)
  return lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


def _im2col_grad(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                 strides: tuple[int, int], pads: Pads, precision: Any) -> jax.Array:
  """dw of one chunk, (kh*kw*Cin, Cout): patches^T (kh*kw*Cin, rows) @ dy (rows, Cout).

  Padding here, per chunk, lets XLA fuse it into the patch gather. The patch matrix is
  transposed explicitly, behind an optimisation barrier so that XLA does not fold the
  transpose back into the dot: its GEMM is faster on (K, rows) x (rows, N) operands than
  on the transposed-LHS form.
  """
  (kh, kw), (n, ho, wo, cout) = kernel_hw, dy.shape
  xp = _pad_input(x, pads)
  taps = [_tap_slice(xp, i, j, (ho, wo), strides) for i in range(kh) for j in range(kw)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  patches_t = lax.optimization_barrier(patches.reshape(n * ho * wo, -1).T)
  return lax.dot_general(patches_t, dy.reshape(n * ho * wo, cout), (((1,), (0,)), ((), ())),
                         precision=precision, preferred_element_type=jnp.float32)


def _chunk_images(n: int, rows_per_image: int, patch_row_bytes: int) -> int:
  """Images per chunk: a patch matrix of ~_CHUNK_BYTES (whole images, 1..n)."""
  rows = min(max(_CHUNK_BYTES // patch_row_bytes, _MIN_CHUNK_ROWS), _MAX_CHUNK_ROWS)
  return max(1, min(n, round(rows / max(rows_per_image, 1))))


def weight_grad(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                strides: tuple[int, int], pads: Pads, precision: Any = None) -> jax.Array:
  """dL/dw (HWIO) as im2col matmuls over chunks of the batch, float32 accumulation.

  Chunks keep the patch matrix in cache: one big im2col, or kh*kw unchunked per-tap
  matmuls, are memory-bound on CPU. Chunks are dynamic slices of x and dy, not a reshape
  (a reshaped x made XLA recompute the BatchNorm + ReLU that produced it).
  """
  kh, kw = kernel_hw
  n, ho, wo, cout = dy.shape
  cin = x.shape[-1]
  nb = _chunk_images(n, ho * wo, kh * kw * cin * x.dtype.itemsize)
  steps, tail = divmod(n, nb)

  def body(acc, chunk):
    xc, gc = chunk
    return acc + _im2col_grad(xc, gc, kernel_hw, strides, pads, precision), None

  acc = jnp.zeros((kh * kw * cin, cout), jnp.float32)
  if steps == 1:
    acc, _ = body(acc, (x[:nb], dy[:nb]))
  else:
    def chunk(acc, i):
      return body(acc, (lax.dynamic_slice_in_dim(x, i * nb, nb),
                        lax.dynamic_slice_in_dim(dy, i * nb, nb)))
    acc, _ = lax.scan(chunk, acc, jnp.arange(steps))
  if tail:
    acc, _ = body(acc, (x[steps * nb:], dy[steps * nb:]))
  return acc.reshape(kh, kw, cin, cout).astype(x.dtype)


def input_grad_matmul(dy: jax.Array, w: jax.Array, x_shape: Sequence[int],
                      strides: tuple[int, int], pads: Pads,
                      precision: Any = None) -> jax.Array:
  """dL/dx as one (N*Ho*Wo, Cout) @ (Cout, Cin) matmul per tap, scattered by strided pads."""
  kh, kw, cin, cout = w.shape
  n, ho, wo, _ = dy.shape
  (sh, sw), ((plo, phi), (qlo, qhi)) = strides, pads
  hp, wp = x_shape[1] + plo + phi, x_shape[2] + qlo + qhi
  g2 = dy.reshape(n * ho * wo, cout)
  zero = jnp.zeros((), dy.dtype)
  dxp = None
  for i in range(kh):
    for j in range(kw):
      part = lax.dot_general(g2, w[i, j], (((1,), (1,)), ((), ())), precision=precision)
      part = lax.pad(part.reshape(n, ho, wo, cin), zero,
                     ((0, 0, 0), (i, hp - i - (ho - 1) * sh - 1, sh - 1),
                      (j, wp - j - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)))
      dxp = part if dxp is None else dxp + part
  return lax.slice(dxp, (0, plo, qlo, 0), (n, plo + x_shape[1], qlo + x_shape[2], cin))


def input_grad_xla(dy: jax.Array, w: jax.Array, x_shape: Sequence[int],
                   strides: tuple[int, int], pads: Pads, precision: Any = None) -> jax.Array:
  """dL/dx exactly as XLA computes it (lax's transpose rule: a dilated conv)."""
  x_aval = jax.ShapeDtypeStruct(tuple(x_shape), dy.dtype)
  transpose = jax.linear_transpose(lambda x: _forward(x, w, strides, pads, precision), x_aval)
  return transpose(dy)[0]


def weight_grad_xla(x: jax.Array, dy: jax.Array, w_shape: Sequence[int],
                    strides: tuple[int, int], pads: Pads, precision: Any = None) -> jax.Array:
  """dL/dw exactly as XLA computes it (lax's transpose rule)."""
  w_aval = jax.ShapeDtypeStruct(tuple(w_shape), dy.dtype)
  transpose = jax.linear_transpose(lambda w: _forward(x, w, strides, pads, precision), w_aval)
  return transpose(dy)[0]


def plan(x_shape: Sequence[int], w_shape: Sequence[int], y_shape: Sequence[int],
         itemsize: int = 4, onednn_here: bool = False) -> tuple[str, str]:
  """(weight-grad method, input-grad method) for one layer.

  On oneDNN (`onednn_here`): its kernels for both, except the input gradient of a 1x1
  conv ('matmul': one matmul is faster). Without, dw: 'ours' (chunked im2col) once the
  activations no longer fit in cache (_XLA_DW_MAX_BYTES), unless one image's patches alone
  overflow a chunk (ImageNet-sized early layers), else 'xla'; dx: 'matmul' for 1x1
  kernels, else 'xla'.
  """
  kh, kw, cin, _ = w_shape
  one_by_one = kh * kw == 1
  if onednn_here:
    return 'onednn', 'matmul' if one_by_one else 'onednn'
  big = max(math.prod(x_shape), math.prod(y_shape)) * itemsize >= _XLA_DW_MAX_BYTES
  image_patches = y_shape[1] * y_shape[2] * kh * kw * cin * itemsize
  dw = 'ours' if one_by_one or (big and image_patches <= _CHUNK_BYTES) else 'xla'
  return dw, 'matmul' if one_by_one else 'xla'


def _local_grads(x, w, dy, strides, pads, precision, use_onednn):
  """(dx, dw) of one batch shard; dw in float32 so that shards sum without rounding."""
  dw_method, dx_method = plan(x.shape, w.shape, dy.shape, x.dtype.itemsize,
                              _onednn_here(use_onednn, x, w.shape, dy.shape))
  if dw_method == 'onednn':
    dw = onednn.weight_grad(x, dy, w.shape, strides, pads)
  elif dw_method == 'ours':
    dw = weight_grad(x, dy, w.shape[:2], strides, pads, precision)
  else:
    dw = weight_grad_xla(x, dy, w.shape, strides, pads, precision)
  if dx_method == 'onednn':
    dx = onednn.input_grad(dy, w, x.shape, strides, pads)
  elif dx_method == 'matmul':
    dx = input_grad_matmul(dy, w, x.shape, strides, pads, precision)
  else:
    dx = input_grad_xla(dy, w, x.shape, strides, pads, precision)
  return dx.astype(x.dtype), dw.astype(jnp.float32)


def _conv_bwd(strides, pads, precision, mesh, use_onednn, res, dy):
  x, w = res
  grads = ps.per_shard(
      lambda x, w, dy: _local_grads(x, w, dy, strides, pads, precision, use_onednn), mesh,
      x.shape[0], (ps.BATCH, ps.REPLICATED, ps.BATCH), (ps.BATCH, ps.SUM))
  dx, dw = grads(x, w, dy)
  return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)
