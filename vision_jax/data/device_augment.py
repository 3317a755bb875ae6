"""The CIFAR recipe's pad-crop-flip on device, inside the jitted train step.

For a split held in host memory the host's share of the recipe is one numpy gather per
batch; the per-example work (zero-pad 4, random crop back to size, random horizontal flip)
runs here, on the uint8 batch, before normalisation (the padding is black, as on the host)
and before mixup. Each example's draw comes from a key folded from (seed, step, row), the
row counted in the global batch: the same step augments the same way on any number of
hosts and devices, and a resumed run exactly as the uninterrupted one. The distribution is
the host recipe's (`preprocess.random_crop_flip`): offsets uniform in 0..2 pad, flip with
probability 1/2; `crop_flip` with given offsets equals the host function exactly.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
RECIPES = ('cifar',)
PAD = 4
_TAG = 0x617567  # 'aug': keeps these keys apart from mixing.py's and the model's.


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The augmentation key of one step: a pure function of (seed, step)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _TAG), step)


def crop_flip(images: jax.Array, tops: jax.Array, lefts: jax.Array, flips: jax.Array,
              pad: int = PAD) -> jax.Array:
  """[B,H,W,C] images zero-padded by `pad`, cropped back at (tops, lefts) [B], and mirrored
  where `flips` [B] is true."""
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(image, top, left, flip):
    crop = jax.lax.dynamic_slice(image, (top, left, 0), (height, width, channels))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, tops, lefts, flips)


def draws(key: jax.Array, batch: int, pad: int = PAD) -> tuple[jax.Array, ...]:
  """(tops, lefts, flips) [B] of one step: row r's from fold_in(key, r)."""
  def one(row):
    k_offset, k_flip = jax.random.split(jax.random.fold_in(key, row))
    top, left = jax.random.randint(k_offset, (2,), 0, 2 * pad + 1)
    return top, left, jax.random.bernoulli(k_flip)

  return jax.vmap(one)(jnp.arange(batch))


def make_device_augment(recipe: str, seed: int, image_size: int) -> AugmentFn | None:
  """augment(images_uint8 [B,H,W,C], step) -> images for the train step; None when the
  host did all of `recipe` (`input_pipeline.Data.device_augment` is '')."""
  if not recipe:
    return None
  if recipe not in RECIPES:
    raise ValueError(f'No device augmentation for recipe {recipe!r}; known: {RECIPES}.')

  def augment(images: jax.Array, step: jax.Array) -> jax.Array:
    if images.shape[1:3] != (image_size, image_size):
      raise ValueError(f'Device augmentation for {image_size}x{image_size} images got a '
                       f'batch of shape {images.shape}.')
    tops, lefts, flips = draws(step_key(seed, step), images.shape[0])
    return crop_flip(images, tops, lefts, flips)

  return augment
