"""DCGAN (Radford et al. 2015) generator and discriminator for any image size 4 * 2^n.

The layout of PyTorch's DCGAN example, generalised from 64x64 to `image_size`:
- Generator: z -> linear to 4x4 x (base * 2^(n-1)) (the example's 4x4 transposed conv on
  a 1x1 input is this linear map), then n transposed convs 4x4 stride 2 (padding 1 in
  PyTorch's terms) that double the side and halve the width down to `base`, the last one
  to `channels`; BatchNorm + ReLU after every layer but the last, tanh at the end.
- Discriminator: n convs 4x4 stride 2 padding 1 from `base` doubling the width down to
  4x4, LeakyReLU(0.2), BatchNorm after all but the first; the logit is a linear map of the
  flat 4x4 features (the example's final 4x4 valid conv).
No biases in G, nor in D unless `batch_norm=False` (as the example: its parameter counts
at 64x64 are PyTorch's, 3,576,704 and 2,765,568); weights N(0, 0.02), BatchNorm scales
N(1, 0.02). Images are NHWC in [-1, 1].

Options beyond the paper: `num_classes` > 0 conditions both networks on the class
(the class in G's first linear map and conditional BatchNorm, projection in D:
models/gan_layers.py);
`spectral_norm=True` normalises every weight of D (models/spectral_norm.py), usually with
`batch_norm=False`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import ops
from vision_jax.errors import ConfigError
from vision_jax.models import gan_layers, layers

INIT = nnx.initializers.normal(0.02)


def _bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def num_resolutions(image_size: int, channels: int) -> int:
  """n with image_size = 4 * 2^n (n >= 1); ConfigError for other sizes or channels."""
  n = round(math.log2(image_size / 4)) if isinstance(image_size, int) and image_size > 4 else 0
  if n < 1 or 4 * 2 ** n != image_size:
    raise ConfigError(f'DCGAN needs a square image size of 4 * 2^n pixels (8, 16, 32, 64, '
                      f'128, ...); the dataset gives {image_size!r}. Resize the images '
                      '(config.dataset.image_size) to one of these sizes.')
  if not isinstance(channels, int) or channels < 1:
    raise ConfigError(f'channels={channels!r}: use the dataset\'s channel count (1 or 3).')
  return n


def _transposed_conv(cin: int, cout: int, dtype, rngs: nnx.Rngs) -> nnx.ConvTranspose:
  """4x4 stride 2 transposed conv that doubles the side: PyTorch's ConvTranspose2d(4, 2, 1)
  is a stride-2 dilated input padded by 4 - 1 - 1 = 2 on each side, then a 4x4 conv."""
  return nnx.ConvTranspose(cin, cout, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                           use_bias=False, kernel_init=INIT, dtype=dtype, rngs=rngs)


class DCGANGenerator(nnx.Module):
  """z [B, latent_dim] (and labels [B] when conditional) -> images [B, S, S, channels] in
  [-1, 1]."""

  def __init__(self, image_size: int, channels: int, *, latent_dim: int = 100,
               base_features: int = 64, num_classes: int = 0, dtype='float32',
               kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    n = num_resolutions(image_size, channels)
    gan_layers.check_num_classes(num_classes)
    dtype = layers.as_dtype(dtype)
    self.latent_dim, self.num_classes = latent_dim, num_classes
    widths = [base_features * 2 ** i for i in reversed(range(n))]  # 4x4 ... S/2.
    self.bottom = widths[0]
    self.project = nnx.Linear(latent_dim, 16 * widths[0], use_bias=False, kernel_init=INIT,
                              dtype=dtype, rngs=rngs)
    self.class_input = gan_layers.class_input(num_classes, 16 * widths[0], std=0.02,
                                              dtype=dtype, rngs=rngs)
    norm = lambda c: gan_layers.GeneratorNorm(c, num_classes, dtype=dtype, kernels=kernels,
                                              scale_init=_bn_scale_init, rngs=rngs)
    self.project_bn = norm(widths[0])
    self.ups = nnx.List([_transposed_conv(a, b, dtype, rngs)
                         for a, b in zip(widths[:-1], widths[1:])])
    self.up_bns = nnx.List([norm(b) for b in widths[1:]])
    self.to_image = _transposed_conv(widths[-1], channels, dtype, rngs)

  def __call__(self, z: jax.Array, train: bool, labels: jax.Array | None = None
               ) -> jax.Array:
    gan_layers.check_labels(labels, self.num_classes, z.shape[0])
    x = self.project(z)
    if self.class_input is not None:
      x = self.class_input(x, labels)
    x = x.reshape(z.shape[0], 4, 4, self.bottom)
    x = nnx.relu(self.project_bn(x, labels, train))
    for up, bn in zip(self.ups, self.up_bns):
      x = nnx.relu(bn(up(x), labels, train))
    return jnp.tanh(self.to_image(x).astype(jnp.float32))


class DCGANDiscriminator(nnx.Module):
  """images [B, S, S, channels] in [-1, 1] (and labels [B] when conditional) -> float32
  logits [B] (real: high)."""

  def __init__(self, image_size: int, channels: int, *, base_features: int = 64,
               num_classes: int = 0, batch_norm: bool = True, spectral_norm: bool = False,
               dtype='float32', kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    n = num_resolutions(image_size, channels)
    gan_layers.check_num_classes(num_classes)
    dtype = layers.as_dtype(dtype)
    self.num_classes, self.batch_norm = num_classes, batch_norm
    widths = [base_features * 2 ** i for i in range(n)]  # S/2 ... 4x4.
    convs, bns = [], []
    for i, (cin, cout) in enumerate(zip([channels] + widths[:-1], widths)):
      normed = batch_norm and i > 0
      conv = layers.conv(cin, cout, 4, strides=2, padding=((1, 1), (1, 1)),
                         use_bias=not batch_norm, kernel_init=INIT, dtype=dtype,
                         kernels=kernels, rngs=rngs)
      convs.append(gan_layers.maybe_spectral_norm(conv, spectral_norm, rngs))
      bns.append(layers.BatchNorm(cout, momentum=0.9, epsilon=1e-5, dtype=dtype,
                                  scale_init=_bn_scale_init, kernels=kernels, rngs=rngs)
                 if normed else None)
    self.convs, self.bns = nnx.List(convs), nnx.List(bns)
    self.output = gan_layers.DiscriminatorOutput(16 * widths[-1], num_classes,
                                                 spectral_norm=spectral_norm,
                                                 use_bias=not batch_norm, kernel_init=INIT,
                                                 dtype=dtype, rngs=rngs)

  def __call__(self, images: jax.Array, train: bool, labels: jax.Array | None = None
               ) -> jax.Array:
    gan_layers.check_labels(labels, self.num_classes, images.shape[0])
    x = images
    for conv, bn in zip(self.convs, self.bns):
      x = gan_layers.apply(conv, x, train)
      if bn is not None:
        x = bn(x, use_running_average=not train)
      x = nnx.leaky_relu(x, 0.2)
    return self.output(x.reshape(x.shape[0], -1), labels, train)
