"""Per-example image preprocessing on the host (numpy, uint8 in, uint8 out).

Images stay uint8 until they reach the device: a quarter of the bytes to move, and the
normalisation `(x / 255 - mean) / std` is one fused op inside the jitted step
(`normalize`). Augmentations take a `numpy.random.Generator` seeded from (seed, global
example position), so a batch is the same whatever the number of hosts or threads.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

Example = dict[str, np.ndarray]
Preprocess = Callable[[Example, 'np.random.Generator | None'], Example]


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of an HWC uint8 image to size x size (no-op at that size)."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((size, size), Image.BILINEAR))
  return out[..., None] if channels == 1 else out


def random_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int) -> np.ndarray:
  """CIFAR recipe: zero-pad by `pad`, random crop back to size, random horizontal flip."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  image = padded[top:top + h, left:left + w]
  return image[:, ::-1] if rng.random() < 0.5 else image


def make_preprocess(recipe: str, image_size: int, *, train: bool) -> Preprocess:
  """The per-example function for a recipe; eval always resizes only."""
  recipes = ('resize', 'cifar')
  if recipe not in recipes:
    raise ValueError(f'Unknown config.dataset.preprocess={recipe!r}; known: {recipes}.')

  def fn(example: Example, rng: np.random.Generator | None) -> Example:
    image = resize(np.asarray(example['image']), image_size)
    if train and recipe == 'cifar':
      image = random_crop_flip(image, rng, pad=4)
    return {'image': np.ascontiguousarray(image),
            'label': np.asarray(example['label'], np.int32)}

  return fn


def normalize(images: jnp.ndarray, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> jnp.ndarray:
  """uint8 NHWC -> (x / 255 - mean) / std, on device."""
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)
