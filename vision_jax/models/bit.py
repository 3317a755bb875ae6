"""BiT: ResNet-v2 with GroupNorm and weight-standardised convs (Kolesnikov et al. 2020).

The transfer-learning backbone. Batch-independent normalisation (GroupNorm(32) + weight
standardisation) makes fine-tuning behave the same at any per-device batch size, which is
why BiT uses it instead of BatchNorm. The layout follows the authors' code, so public BiT
checkpoints map tensor by tensor (their head is a 1x1 conv: reshape it): pre-activation
bottlenecks with the stride on the 3x3 conv, the projection reading the pre-activated
input, no bias in any conv, a zero-initialised head. GroupNorm epsilon is Flax's 1e-6,
weight-standardisation epsilon the authors' 1e-10.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import ops
from vision_jax.models import layers
from vision_jax.models import remat as remat_lib
from vision_jax.models.resnet import add_drop_path, dilation_plan, stem_max_pool


def standardize_kernel(kernel: jax.Array, eps: float = 1e-10) -> jax.Array:
  """Zero mean, unit variance per output channel over (kh, kw, cin)."""
  mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
  return (kernel - mean) * jax.lax.rsqrt(var + eps)


class StdConv(nnx.Module):
  """A weight-standardised conv without bias (HWIO `kernel`), padded by dilation *
  (kernel // 2) like the authors': the float32 kernel is standardised, then both operands
  cast to `dtype`."""

  def __init__(self, cin: int, cout: int, kernel: int, *, strides: int = 1, dilation: int = 1,
               dtype, kernels: ops.Kernels, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (kernel, kernel, cin, cout), jnp.float32))
    self.strides, self.dilation, self.dtype = strides, dilation, dtype
    self.pad = dilation * (kernel // 2)
    self.conv = kernels.conv

  def __call__(self, x: jax.Array) -> jax.Array:
    w = standardize_kernel(self.kernel[...]).astype(self.dtype)
    pads = ((self.pad, self.pad), (self.pad, self.pad))
    return self.conv(x.astype(self.dtype), w, (self.strides, self.strides), pads,
                     rhs_dilation=(self.dilation, self.dilation),
                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def std_conv(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, dtype, kernels: ops.Kernels,
             strides: int = 1, dilation: int = 1) -> StdConv:
  return StdConv(cin, cout, kernel, strides=strides, dilation=dilation, dtype=dtype,
                 kernels=kernels, rngs=rngs)


def _gn(features: int, rngs: nnx.Rngs, dtype) -> nnx.GroupNorm:
  return nnx.GroupNorm(features, num_groups=32, epsilon=1e-6, dtype=dtype, rngs=rngs)


class PreActBottleneck(nnx.Module):
  """GN-ReLU-conv1x1, GN-ReLU-conv3x3(stride), GN-ReLU-conv1x1(4x), plus the shortcut.

  `dilation` is the 3x3 conv's (see `resnet.dilation_plan`).
  """

  def __init__(self, cin: int, cout: int, strides: int, *, dtype, kernels: ops.Kernels,
               rngs: nnx.Rngs, dilation: int = 1):
    mid = cout // 4
    self.gn1 = _gn(cin, rngs, dtype)
    self.conv1 = std_conv(cin, mid, 1, rngs, dtype, kernels)
    self.gn2 = _gn(mid, rngs, dtype)
    self.conv2 = std_conv(mid, mid, 3, rngs, dtype, kernels, strides, dilation)
    self.gn3 = _gn(mid, rngs, dtype)
    self.conv3 = std_conv(mid, cout, 1, rngs, dtype, kernels)
    project = strides != 1 or cin != cout
    self.proj = std_conv(cin, cout, 1, rngs, dtype, kernels, strides) if project else None
    self.drop_path = nnx.data(None)  # resnet.add_drop_path.

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = nnx.relu(self.gn1(x))
    shortcut = x if self.proj is None else self.proj(y)
    y = self.conv1(y)
    y = self.conv2(nnx.relu(self.gn2(y)))
    y = self.conv3(nnx.relu(self.gn3(y)))
    if self.drop_path is not None:
      y = self.drop_path(y, train)
    return shortcut + y


class BiTResNet(nnx.Module):
  """BiT-R{depth}x{WIDTH_FACTOR}: stem 7x7/2 conv + zero-padded 3x3/2 max-pool, four stages
  of pre-activation bottlenecks (256, 512, 1024, 2048 channels times WIDTH_FACTOR), then
  GN-ReLU, global average pool and the head. GroupNorm has no train/eval difference, so
  `train` matters only with `drop_path_rate` > 0 (stochastic depth, as for ResNet).
  Variants are subclasses.
  `remat` recomputes each block's activations in the backward pass (models/remat.py).
  `output_stride` 16 or 8 (None: the network's own 32) dilates the last stages instead of
  striding them (`resnet.dilation_plan`), for dense prediction.
  """
  STAGES: tuple[int, ...] = ()
  WIDTH_FACTOR = 1
  DENSE_NORM = 'group'  # The norm of a dense head on it (models/segmentation.py).

  def __init__(self, num_classes: int, *, output_stride: int | None = None,
               in_channels: int = 3, dtype='float32', remat: str = 'none',
               drop_path_rate: float = 0.0, kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    if not self.STAGES:
      raise TypeError('BiTResNet is a family: build a variant (BitR50x1, ...).')
    dtype = layers.as_dtype(dtype)
    self.remat = remat_lib.check(remat)
    self.kernels = kernels
    width = 64 * self.WIDTH_FACTOR
    self.stem_conv = std_conv(in_channels, width, 7, rngs, dtype, kernels, 2)
    plan = dilation_plan(len(self.STAGES), 4, output_stride)
    blocks, cin = [], width
    for i, (num_blocks, (stride, first_dilation, dilation)) in enumerate(zip(self.STAGES, plan)):
      cout = 4 * width * 2**i
      for j in range(num_blocks):
        blocks.append(PreActBottleneck(cin, cout, stride if j == 0 else 1, dtype=dtype,
                                       kernels=kernels, rngs=rngs,
                                       dilation=first_dilation if j == 0 else dilation))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.num_features = cin  # Channels of `features`.
    self.final_gn = _gn(cin, rngs, dtype)
    self.head = nnx.Linear(cin, num_classes, dtype=dtype, kernel_init=nnx.initializers.zeros,
                           rngs=rngs)
    add_drop_path(self.blocks, drop_path_rate, rngs)

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    """The pre-activated last stage's map (after the final GN-ReLU), [B, H /
    output_stride, W / output_stride, num_features]."""
    # BiT pads with zeros before its stem pool (no ReLU precedes it, so this is not -inf).
    x = stem_max_pool(self.stem_conv(x), self.kernels, pad_value=0.0)
    x = remat_lib.run_blocks(self.blocks, x, self.remat, train)
    return nnx.relu(self.final_gn(x))

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = jnp.mean(self.features(x, train), axis=(1, 2))
    return self.head(x).astype(jnp.float32)


class BitR50x1(BiTResNet):
  STAGES, WIDTH_FACTOR = (3, 4, 6, 3), 1


class BitR50x3(BiTResNet):
  STAGES, WIDTH_FACTOR = (3, 4, 6, 3), 3


class BitR101x1(BiTResNet):
  STAGES, WIDTH_FACTOR = (3, 4, 23, 3), 1
