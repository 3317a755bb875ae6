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
