"""The SN-GAN "standard CNN" generator and discriminator (Miyato et al. 2018, Table 3),
for any image size divisible by 8.

- Generator: z (128) -> dense to M x M x 512 (M = image_size / 8: 4 at 32x32 as in the
  paper, 6 at 48 as their STL-10 model), BatchNorm, ReLU; three 4x4 stride-2 transposed
  convs to 256, 128, 64, each with BatchNorm and ReLU; a 3x3 conv to `channels`, tanh.
- Discriminator: 3x3 conv 64, 4x4/2 conv 64, 3x3 conv 128, 4x4/2 conv 128, 3x3 conv 256,
  4x4/2 conv 256, 3x3 conv 512, each followed by LeakyReLU(0.1); dense on the flat
  M x M x 512 features -> 1. Every weight spectrally normalised (1 power iteration per
  training step), no BatchNorm.
Widths scale with `base_features` (64: the paper's). Weights N(0, 0.02) as the authors'
Chainer code (sngan_projection). Images are NHWC in [-1, 1].

`num_classes` > 0 conditions both on the class: the class in G's first linear map and
conditional BatchNorm, the projection discriminator in D (Miyato & Koyama 2018;
models/gan_layers.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import ops
from vision_jax.errors import ConfigError
from vision_jax.models import gan_layers, layers

INIT = nnx.initializers.normal(0.02)


def bottom_size(image_size: int, channels: int) -> int:
  """image_size / 8, the side of the generator's first and the discriminator's last
  feature map; ConfigError unless image_size is a positive multiple of 8."""
  if not isinstance(image_size, int) or image_size < 8 or image_size % 8:
    raise ConfigError(f'The SN-GAN standard CNN needs a square image size divisible by 8 '
                      f'(8, 16, 32, 48, 64, ...); the dataset gives {image_size!r}. Resize '
                      'the images (config.dataset.image_size) to such a size.')
  if not isinstance(channels, int) or channels < 1:
    raise ConfigError(f'channels={channels!r}: use the dataset\'s channel count (1 or 3).')
  return image_size // 8


class SNGANGenerator(nnx.Module):
  """z [B, latent_dim] (and labels [B] when conditional) -> images [B, S, S, channels] in
  [-1, 1]."""

  def __init__(self, image_size: int, channels: int, *, latent_dim: int = 128,
               base_features: int = 64, num_classes: int = 0, dtype='float32',
               kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    self.bottom = bottom_size(image_size, channels)
    gan_layers.check_num_classes(num_classes)
    dtype = layers.as_dtype(dtype)
    self.latent_dim, self.num_classes = latent_dim, num_classes
    widths = [8 * base_features, 4 * base_features, 2 * base_features, base_features]
    self.width = widths[0]
    self.project = nnx.Linear(latent_dim, self.bottom ** 2 * widths[0], kernel_init=INIT,
                              dtype=dtype, rngs=rngs)
    self.class_input = gan_layers.class_input(num_classes, self.bottom ** 2 * widths[0],
                                              std=0.02, dtype=dtype, rngs=rngs)
    norm = lambda c: gan_layers.GeneratorNorm(c, num_classes, dtype=dtype, kernels=kernels,
                                              rngs=rngs)
    self.project_bn = norm(widths[0])
    # PyTorch's ConvTranspose2d(4, stride 2, padding 1): dilate by 2, pad by 2, 4x4 conv.
    self.ups = nnx.List([
        nnx.ConvTranspose(a, b, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                          kernel_init=INIT, dtype=dtype, rngs=rngs)
        for a, b in zip(widths[:-1], widths[1:])])
    self.up_bns = nnx.List([norm(b) for b in widths[1:]])
    self.to_image = layers.conv(widths[-1], channels, 3, padding=((1, 1), (1, 1)),
                                kernel_init=INIT, dtype=dtype, kernels=kernels, rngs=rngs)

  def __call__(self, z: jax.Array, train: bool, labels: jax.Array | None = None
               ) -> jax.Array:
    gan_layers.check_labels(labels, self.num_classes, z.shape[0])
    x = self.project(z)
    if self.class_input is not None:
      x = self.class_input(x, labels)
    x = x.reshape(z.shape[0], self.bottom, self.bottom, self.width)
    x = nnx.relu(self.project_bn(x, labels, train))
    for up, bn in zip(self.ups, self.up_bns):
      x = nnx.relu(bn(up(x), labels, train))
    return jnp.tanh(self.to_image(x).astype(jnp.float32))


# (kernel, stride, width multiple of base_features) of the discriminator's convs.
_D_LAYERS = ((3, 1, 1), (4, 2, 1), (3, 1, 2), (4, 2, 2), (3, 1, 4), (4, 2, 4), (3, 1, 8))


class SNGANDiscriminator(nnx.Module):
  """images [B, S, S, channels] in [-1, 1] (and labels [B] when conditional) -> float32
  logits [B] (real: high)."""

  def __init__(self, image_size: int, channels: int, *, base_features: int = 64,
               num_classes: int = 0, spectral_norm: bool = True, dtype='float32',
               kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    bottom = bottom_size(image_size, channels)
    gan_layers.check_num_classes(num_classes)
    dtype = layers.as_dtype(dtype)
    self.num_classes = num_classes
    convs, cin = [], channels
    for kernel, stride, multiple in _D_LAYERS:
      cout = multiple * base_features
      conv = layers.conv(cin, cout, kernel, strides=stride, padding=((1, 1), (1, 1)),
                         kernel_init=INIT, dtype=dtype, kernels=kernels, rngs=rngs)
      convs.append(gan_layers.maybe_spectral_norm(conv, spectral_norm, rngs))
      cin = cout
    self.convs = nnx.List(convs)
    self.output = gan_layers.DiscriminatorOutput(bottom ** 2 * cin, num_classes,
                                                 spectral_norm=spectral_norm,
                                                 kernel_init=INIT, dtype=dtype, rngs=rngs)

  def __call__(self, images: jax.Array, train: bool, labels: jax.Array | None = None
               ) -> jax.Array:
    gan_layers.check_labels(labels, self.num_classes, images.shape[0])
    x = images
    for conv in self.convs:
      x = nnx.leaky_relu(gan_layers.apply(conv, x, train), 0.1)
    return self.output(x.reshape(x.shape[0], -1), labels, train)
