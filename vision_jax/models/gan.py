"""GAN architectures by name: `create_generator` / `create_discriminator` build the pair
of one family (`ARCHITECTURES`) for a dataset's image size, channels and classes.

Both networks are NNX modules called with `train` (BatchNorm batch statistics and the
spectral-norm power iteration are used and stored only when it is true):
  generator(z [B, latent_dim], train, labels [B] | None) -> images [B, S, S, C] in [-1, 1]
  discriminator(images, train, labels | None) -> float32 logits [B]
`labels` is required exactly when the model was built with num_classes > 0.
"""
from __future__ import annotations

import difflib
from typing import Any

from flax import nnx

from vision_jax import ops
from vision_jax.errors import ConfigError
from vision_jax.models import dcgan, sngan

ARCHITECTURES = {
    'dcgan': (dcgan.DCGANGenerator, dcgan.DCGANDiscriminator),
    'sngan': (sngan.SNGANGenerator, sngan.SNGANDiscriminator),
}


def _classes(arch: str) -> tuple[type, type]:
  if arch not in ARCHITECTURES:
    close = difflib.get_close_matches(str(arch), ARCHITECTURES, n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ConfigError(f'GAN architecture {arch!r} is unknown.{hint} Use one of '
                      f'{", ".join(ARCHITECTURES)}.')
  return ARCHITECTURES[arch]


def create_generator(arch: str, image_size: int, channels: int, *, num_classes: int = 0,
                     rngs: nnx.Rngs, kernels: ops.Kernels = ops.XLA, **options: Any
                     ) -> nnx.Module:
  """The generator of `arch`; options: latent_dim, base_features, dtype."""
  return _classes(arch)[0](image_size, channels, num_classes=num_classes, kernels=kernels,
                           rngs=rngs, **options)


def create_discriminator(arch: str, image_size: int, channels: int, *,
                         num_classes: int = 0, rngs: nnx.Rngs,
                         kernels: ops.Kernels = ops.XLA, **options: Any) -> nnx.Module:
  """The discriminator of `arch`; options: base_features, spectral_norm, dtype, and for
  dcgan batch_norm."""
  return _classes(arch)[1](image_size, channels, num_classes=num_classes, kernels=kernels,
                           rngs=rngs, **options)


class GANPair(nnx.Module):
  """A generator and a discriminator of one family, built together from config.model:
  what the model registry holds under 'dcgan' and 'sngan' (TASK 'gan'). The gan task
  (vision_jax/tasks/gan.py) takes them apart into its two state parts, `generator` and
  `discriminator`; the pair itself is never called. `conditional=True` conditions both on
  the dataset's classes (conditional BatchNorm in G, projection in D)."""
  TASK = 'gan'
  ARCH = ''

  def _build(self, num_classes: int, image_size: int, in_channels: int, conditional: bool,
             g_options: dict, d_options: dict, kernels: ops.Kernels, rngs: nnx.Rngs) -> None:
    if not isinstance(conditional, bool):
      raise ConfigError(f'config.model.conditional={conditional!r}: use True (condition on '
                        'the dataset\'s classes) or False.')
    classes = num_classes if conditional else 0
    self.generator = create_generator(self.ARCH, image_size, in_channels,
                                      num_classes=classes, rngs=rngs, kernels=kernels,
                                      **g_options)
    self.discriminator = create_discriminator(self.ARCH, image_size, in_channels,
                                              num_classes=classes, rngs=rngs,
                                              kernels=kernels, **d_options)


class DCGAN(GANPair):
  """DCGAN (models/dcgan.py) for images of side 4 * 2^n; `spectral_norm` normalises D's
  weights (usually with `batch_norm=False`)."""
  ARCH = 'dcgan'

  def __init__(self, num_classes: int, *, image_size: int = 64, in_channels: int = 3,
               latent_dim: int = 100, base_features: int = 64, conditional: bool = False,
               batch_norm: bool = True, spectral_norm: bool = False, dtype='float32',
               kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    self._build(num_classes, image_size, in_channels, conditional,
                dict(latent_dim=latent_dim, base_features=base_features, dtype=dtype),
                dict(base_features=base_features, batch_norm=batch_norm,
                     spectral_norm=spectral_norm, dtype=dtype), kernels, rngs)


class SNGAN(GANPair):
  """The SN-GAN standard CNN (models/sngan.py) for image sides divisible by 8."""
  ARCH = 'sngan'

  def __init__(self, num_classes: int, *, image_size: int = 32, in_channels: int = 3,
               latent_dim: int = 128, base_features: int = 64, conditional: bool = False,
               spectral_norm: bool = True, dtype='float32',
               kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    self._build(num_classes, image_size, in_channels, conditional,
                dict(latent_dim=latent_dim, base_features=base_features, dtype=dtype),
                dict(base_features=base_features, spectral_norm=spectral_norm, dtype=dtype),
                kernels, rngs)


# config.model.name -> the pair (models/__init__.py registers them).
GAN_MODELS = {'dcgan': DCGAN, 'sngan': SNGAN}
