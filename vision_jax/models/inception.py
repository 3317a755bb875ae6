"""InceptionV3 as FID computes it: pytorch-fid's `InceptionV3` with `fid_inception_v3()`,
up to the 2048 pool3 features.

This is the network of TensorFlow's 2015-12-05 Inception graph that FID was defined with,
in torchvision's InceptionV3 layout with pytorch-fid's patched blocks (FIDInceptionA, C,
E_1: the 3x3 average pools exclude the padding from their counts; FIDInceptionE_2: a max
pool instead of that average pool). Sub-module names are torchvision's (`Conv2d_1a_3x3`,
`Mixed_5b/branch1x1/conv`, ...), so the weights of pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` map one to one (vision_jax/inception_weights.py).

`FIDInceptionV3(images)` takes NHWC images in [0, 1] (1 or 3 channels: a grey image is
repeated to RGB, as pytorch-fid's `Image.convert('RGB')` does), resizes them to 299x299
exactly as pytorch-fid (`F.interpolate(..., mode='bilinear', align_corners=False)`, no
antialiasing, also when shrinking), maps them to [-1, 1] and returns float32 [B, 2048].
Convolutions run at float32 precision (`Precision.HIGHEST`), so TF32-capable GPUs do not
round the features. BatchNorm always uses its stored statistics (epsilon 0.001).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vision_jax.models import layers

INPUT_SIZE = 299
FEATURES = 2048


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 weights of PyTorch's 1-D linear interpolation with
  align_corners=False and no antialiasing: source x = (i + 0.5) * in / out - 0.5, clamped
  at 0; the two neighbours floor(x) and min(floor(x) + 1, in - 1). The coordinates are
  computed in float32 as PyTorch's kernels do (float64 would move the result of shrinking
  40 -> 13 pixels by up to 1.6e-6 from F.interpolate's)."""
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  src = np.maximum(scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5), f32(0))
  low = np.floor(src).astype(np.int64)
  high = np.minimum(low + 1, in_size - 1)
  frac = (src - low.astype(f32)).astype(f32)
  matrix = np.zeros((out_size, in_size), f32)
  np.add.at(matrix, (np.arange(out_size), low), f32(1) - frac)
  np.add.at(matrix, (np.arange(out_size), high), frac)
  return matrix


def resize_bilinear(images: jax.Array, size: Sequence[int]) -> jax.Array:
  """NHWC images resized to `size` (height, width) as torch.nn.functional.interpolate(
  mode='bilinear', align_corners=False, antialias=False); float32."""
  rows = jnp.asarray(resize_matrix(images.shape[1], size[0]))
  cols = jnp.asarray(resize_matrix(images.shape[2], size[1]))
  return jnp.einsum('oh,bhwc,pw->bopc', rows, images.astype(jnp.float32), cols,
                    precision=jax.lax.Precision.HIGHEST)


def avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool padded by 1, dividing by the number of real pixels in each
  window (count_include_pad=False: TensorFlow's average pool)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  return total / count


def max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """3x3 max pool: stride 2 unpadded (the reductions), or stride 1 padded by 1."""
  if stride == 2:
    return layers.max_pool(x, 3, 2, 'VALID')
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return layers.max_pool(x, 3, 1, 'VALID')


class BasicConv2d(nnx.Module):
  """torchvision's BasicConv2d: bias-free conv, BatchNorm (eps 0.001), ReLU."""

  def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], *,
               stride: int = 1, padding: int | tuple[int, int] = 0, rngs: nnx.Rngs):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    self.conv = layers.conv(cin, cout, (kh, kw), strides=stride,
                            padding=((ph, ph), (pw, pw)), use_bias=False,
                            precision=jax.lax.Precision.HIGHEST, rngs=rngs)
    self.bn = layers.BatchNorm(cout, epsilon=1e-3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(self.bn(self.conv(x), use_running_average=True))


class InceptionA(nnx.Module):
  """Mixed_5b/c/d (FIDInceptionA): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

  def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    pool = self.branch_pool(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([self.branch1x1(x), b5, b3, pool], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nnx.Module):
  """Mixed_6b..e (FIDInceptionC): 1x1 | factorised 7x7 | double factorised 7x7 |
  avgpool-1x1."""

  def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, **row, rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, **col, rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col, rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row, rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col, rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = self.branch7x7dbl_1(x)
    for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                 self.branch7x7dbl_5):
      d = conv(d)
    pool = self.branch_pool(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([self.branch1x1(x), b7, d, pool], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return jnp.concatenate([b3, b7, max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nnx.Module):
  """Mixed_7b (FIDInceptionE_1, average pool without padding counts) and Mixed_7c
  (FIDInceptionE_2, `max_pool=True`): 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) |
  pool-1x1."""

  def __init__(self, cin: int, *, max_pool: bool, rngs: nnx.Rngs):
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    d = jnp.concatenate([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], axis=-1)
    pooled = max_pool_3x3(x, 1) if self.max_pool else avg_pool_3x3_exclude_pad(x)
    return jnp.concatenate([self.branch1x1(x), b3, d, self.branch_pool(pooled)], axis=-1)


class FIDInceptionV3(nnx.Module):
  """images NHWC in [0, 1], 1 or 3 channels, any size -> pool3 features float32 [B, 2048].

  Random weights until converted ones are loaded (`inception_weights.load_inception`).
  """

  def __init__(self, *, rngs: nnx.Rngs | None = None):
    rngs = rngs or nnx.Rngs(0)
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, max_pool=False, rngs=rngs)
    self.Mixed_7c = InceptionE(2048, max_pool=True, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f'FIDInceptionV3 takes NHWC images with 1 or 3 channels in [0, 1]; '
                       f'got shape {images.shape}.')
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
    x = 2.0 * x - 1.0
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = max_pool_3x3(x, 2)
    x = max_pool_3x3(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 2)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                  self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                  self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))
