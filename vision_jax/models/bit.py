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
from flax.nnx.nn import dtypes

from vision_jax.models import layers
from vision_jax.models.resnet import stem_max_pool


def standardize_kernel(kernel: jax.Array, eps: float = 1e-10) -> jax.Array:
  """Zero mean, unit variance per output channel over (kh, kw, cin)."""
  mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
  return (kernel - mean) * jax.lax.rsqrt(var + eps)


def _standardize_then_promote(args, /, *, dtype=None, inexact=True):
  """`nnx.Conv`'s promote_dtype hook: standardise the float32 kernel, then cast.

  Going through the hook keeps `layers.conv` (and its CPU fast path) as the convolution.
  A module-level function, so that every conv shares one static graph attribute.
  """
  inputs, kernel, bias = args
  return dtypes.promote_dtype((inputs, standardize_kernel(kernel), bias), dtype=dtype,
                              inexact=inexact)


def std_conv(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, dtype,
             strides: int = 1) -> nnx.Conv:
  """A weight-standardised conv without bias, padded by kernel // 2 like the authors'."""
  pad = (kernel // 2, kernel // 2)
  return layers.conv(cin, cout, kernel, strides=strides, padding=(pad, pad), use_bias=False,
                     dtype=dtype, promote_dtype=_standardize_then_promote, rngs=rngs)


def _gn(features: int, rngs: nnx.Rngs, dtype) -> nnx.GroupNorm:
  return nnx.GroupNorm(features, num_groups=32, epsilon=1e-6, dtype=dtype, rngs=rngs)


class PreActBottleneck(nnx.Module):
  """GN-ReLU-conv1x1, GN-ReLU-conv3x3(stride), GN-ReLU-conv1x1(4x), plus the shortcut."""

  def __init__(self, cin: int, cout: int, strides: int, *, dtype, rngs: nnx.Rngs):
    mid = cout // 4
    self.gn1 = _gn(cin, rngs, dtype)
    self.conv1 = std_conv(cin, mid, 1, rngs, dtype)
    self.gn2 = _gn(mid, rngs, dtype)
    self.conv2 = std_conv(mid, mid, 3, rngs, dtype, strides)
    self.gn3 = _gn(mid, rngs, dtype)
    self.conv3 = std_conv(mid, cout, 1, rngs, dtype)
    project = strides != 1 or cin != cout
    self.proj = std_conv(cin, cout, 1, rngs, dtype, strides) if project else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.gn1(x))
    shortcut = x if self.proj is None else self.proj(y)
    y = self.conv1(y)
    y = self.conv2(nnx.relu(self.gn2(y)))
    y = self.conv3(nnx.relu(self.gn3(y)))
    return shortcut + y


class BiTResNet(nnx.Module):
  """BiT-R{depth}x{WIDTH_FACTOR}: stem 7x7/2 conv + zero-padded 3x3/2 max-pool, four stages
  of pre-activation bottlenecks (256, 512, 1024, 2048 channels times WIDTH_FACTOR), then
  GN-ReLU, global average pool and the head. GroupNorm has no train/eval difference, so
  `train` is accepted for the common interface and ignored. Variants are subclasses.
  """
  STAGES: tuple[int, ...] = ()
  WIDTH_FACTOR = 1

  def __init__(self, num_classes: int, *, in_channels: int = 3, dtype='float32',
               rngs: nnx.Rngs):
    if not self.STAGES:
      raise TypeError('BiTResNet is a family: build a variant (BitR50x1, ...).')
    dtype = layers.as_dtype(dtype)
    width = 64 * self.WIDTH_FACTOR
    self.stem_conv = std_conv(in_channels, width, 7, rngs, dtype, 2)
    blocks, cin = [], width
    for i, num_blocks in enumerate(self.STAGES):
      cout = 4 * width * 2**i
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        blocks.append(PreActBottleneck(cin, cout, strides, dtype=dtype, rngs=rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.final_gn = _gn(cin, rngs, dtype)
    self.head = nnx.Linear(cin, num_classes, dtype=dtype, kernel_init=nnx.initializers.zeros,
                           rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # GroupNorm and no dropout: the same computation in both modes.
    # BiT pads with zeros before its stem pool (no ReLU precedes it, so this is not -inf).
    x = stem_max_pool(self.stem_conv(x), pad_value=0.0)
    for block in self.blocks:
      x = block(x)
    x = nnx.relu(self.final_gn(x))
    x = jnp.mean(x, axis=(1, 2))
    return self.head(x).astype(jnp.float32)


class BitR50x1(BiTResNet):
  STAGES, WIDTH_FACTOR = (3, 4, 6, 3), 1


class BitR50x3(BiTResNet):
  STAGES, WIDTH_FACTOR = (3, 4, 6, 3), 3


class BitR101x1(BiTResNet):
  STAGES, WIDTH_FACTOR = (3, 4, 23, 3), 1
