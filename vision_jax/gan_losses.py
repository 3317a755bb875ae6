"""GAN losses on discriminator logits, for the discriminator's and the generator's update.

- 'nonsaturating' (Goodfellow et al. 2014, the DCGAN loss): D minimises the binary cross
  entropy of real -> 1, fake -> 0, i.e. softplus(-D(x)) + softplus(D(G(z))); G minimises
  softplus(-D(G(z))) = -log sigmoid(D(G(z))) instead of log(1 - sigmoid(D(G(z)))), whose
  gradient vanishes while D wins.
- 'hinge' (Lim & Ye 2017; Miyato et al. 2018's SN-GAN): D minimises
  relu(1 - D(x)) + relu(1 + D(G(z))); G minimises -D(G(z)).
Each term is a mean over its batch, computed in float32.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vision_jax.errors import ConfigError


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def nonsaturating_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array
                                     ) -> jax.Array:
  """mean softplus(-real) + mean softplus(fake): BCE with real -> 1, fake -> 0."""
  return (jnp.mean(jax.nn.softplus(-_f32(real_logits)))
          + jnp.mean(jax.nn.softplus(_f32(fake_logits))))


def nonsaturating_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """mean softplus(-fake) = -mean log sigmoid(D(G(z)))."""
  return jnp.mean(jax.nn.softplus(-_f32(fake_logits)))


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """mean relu(1 - real) + mean relu(1 + fake)."""
  return (jnp.mean(jax.nn.relu(1.0 - _f32(real_logits)))
          + jnp.mean(jax.nn.relu(1.0 + _f32(fake_logits))))


def hinge_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """-mean fake."""
  return -jnp.mean(_f32(fake_logits))


LOSSES: dict[str, tuple[Callable[[jax.Array, jax.Array], jax.Array],
                        Callable[[jax.Array], jax.Array]]] = {
    'nonsaturating': (nonsaturating_discriminator_loss, nonsaturating_generator_loss),
    'hinge': (hinge_discriminator_loss, hinge_generator_loss),
}


def _losses(kind: str):
  if kind not in LOSSES:
    raise ConfigError(f'GAN loss {kind!r} is unknown; use one of {", ".join(LOSSES)} '
                      "('nonsaturating' for DCGAN, 'hinge' for SN-GAN).")
  return LOSSES[kind]


def discriminator_loss(kind: str, real_logits: jax.Array, fake_logits: jax.Array
                       ) -> jax.Array:
  """The discriminator's loss `kind` ('nonsaturating' or 'hinge'); a float32 scalar."""
  return _losses(kind)[0](real_logits, fake_logits)


def generator_loss(kind: str, fake_logits: jax.Array) -> jax.Array:
  """The generator's loss `kind` ('nonsaturating' or 'hinge'); a float32 scalar."""
  return _losses(kind)[1](fake_logits)
