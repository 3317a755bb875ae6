"""Per-example image preprocessing on the host (numpy, uint8 in, uint8 out).

Images stay uint8 until they reach the device: a quarter of the bytes to move, and the
normalisation `(x / 255 - mean) / std` is one fused op inside the jitted step
(`normalize`). Augmentations take a `numpy.random.Generator` seeded from (seed, global
example position), so a batch is the same whatever the number of hosts or threads.

Recipes (`config.dataset.preprocess`; evaluation uses the recipe's deterministic twin):
  resize       train and eval: bilinear resize to image_size x image_size.
  cifar        train: resize, zero-pad 4, random crop back, random horizontal flip.
               eval: resize.
  inception    train: random resized crop (area `min_crop_area`..100% of the image,
               aspect 3/4..4/3, 10 tries, else the centre), resize, random flip.
               eval: `center_crop`.
  center_crop  resize the shorter side to image_size / crop_fraction (224 / 0.875 = 256)
               and take the central image_size square.
Channels are made explicit first: `channels=3` repeats a grey image, `channels=1` turns
RGB into luma (ITU-R 601), 0 keeps the dataset's own.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

from vision_jax.errors import UserError

Example = dict[str, np.ndarray]
Preprocess = Callable[[Example, 'np.random.Generator | None'], Example]
RECIPES = ('resize', 'cifar', 'inception', 'center_crop')
EVAL_RECIPE = {'resize': 'resize', 'cifar': 'resize', 'inception': 'center_crop',
               'center_crop': 'center_crop'}


class PreprocessError(UserError, ValueError):
  """A preprocessing option that cannot work; the message names the config key."""

# Per-channel (mean, std) in [0, 1] units, from the training images of each dataset.
NORMALIZATION = {
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'mnist': ((0.1307,), (0.3081,)),
}


def mean_std(mean: Sequence[float], std: Sequence[float], preset: str,
             channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """config.dataset.mean/std if set, else the named preset, else 0.5 / 0.5 per channel."""
  if preset and (mean or std):
    raise PreprocessError('Set either config.dataset.normalization or config.dataset.mean/std.')
  if preset:
    if preset not in NORMALIZATION:
      raise PreprocessError(f'Unknown config.dataset.normalization={preset!r}; known: '
                       f'{", ".join(NORMALIZATION)}.')
    mean, std = NORMALIZATION[preset]
  mean, std = tuple(mean) or (0.5,) * channels, tuple(std) or (0.5,) * channels
  if len(mean) != channels or len(std) != channels:
    raise PreprocessError(f'Normalisation has {len(mean)} means and {len(std)} stds for '
                     f'{channels}-channel images; set config.dataset.channels or mean/std.')
  return mean, std


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """HWC image with `channels` channels (0: unchanged): grey -> RGB or RGB -> grey."""
  have = image.shape[-1]
  if not channels or have == channels:
    return image
  if have == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if have in (3, 4) and channels in (1, 3):
    mode = 'L' if channels == 1 else 'RGB'
    out = np.asarray(Image.fromarray(image).convert(mode))
    return out[..., None] if channels == 1 else out
  raise PreprocessError(f'Cannot convert {have}-channel images to {channels} channels.')


def _resize_box(image: np.ndarray, box: tuple[float, float, float, float],
                size: int) -> np.ndarray:
  """Crops `box` (left, top, right, bottom) and resizes it to size x size, bilinear."""
  h, w, channels = image.shape
  if box == (0, 0, w, h) and h == w == size:
    return image
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((size, size), Image.BILINEAR, box=box))
  return out[..., None] if channels == 1 else out


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of an HWC uint8 image to size x size (no-op at that size)."""
  return _resize_box(image, (0, 0, image.shape[1], image.shape[0]), size)


def random_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int) -> np.ndarray:
  """CIFAR recipe: zero-pad by `pad`, random crop back to size, random horizontal flip."""
  h, w, channels = image.shape
  padded = np.zeros((h + 2 * pad, w + 2 * pad, channels), image.dtype)  # np.pad: 3x slower.
  padded[pad:pad + h, pad:pad + w] = image
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  image = padded[top:top + h, left:left + w]
  return image[:, ::-1] if rng.random() < 0.5 else image


def inception_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                   min_area: float = 0.08, ratio: tuple[float, float] = (3 / 4, 4 / 3),
                   tries: int = 10) -> np.ndarray:
  """Random crop of min_area..100% of the image, aspect in `ratio`, resized to size."""
  h, w = image.shape[:2]
  for _ in range(tries):
    area = h * w * rng.uniform(min_area, 1.0)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
      break
  else:  # No luck: the central crop of the whole image, aspect clipped into `ratio`.
    cw, ch = w, h
    if w / h < ratio[0]:
      ch = round(w / ratio[0])
    elif w / h > ratio[1]:
      cw = round(h * ratio[1])
    top, left = (h - ch) // 2, (w - cw) // 2
  return _resize_box(image, (left, top, left + cw, top + ch), size)


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """Shorter side to size / crop_fraction, then the central size x size (one resample)."""
  h, w = image.shape[:2]
  side = crop_fraction * min(h, w)
  top, left = (h - side) / 2, (w - side) / 2
  return _resize_box(image, (left, top, left + side, top + side), size)


def make_preprocess(recipe: str, image_size: int, *, train: bool, channels: int = 0,
                    crop_fraction: float = 0.875, min_crop_area: float = 0.08) -> Preprocess:
  """The per-example function of a recipe; with train=False, its deterministic twin."""
  if recipe not in RECIPES:
    raise PreprocessError(f'Unknown config.dataset.preprocess={recipe!r}; known: {RECIPES}.')
  if not train:
    recipe = EVAL_RECIPE[recipe]

  def fn(example: Example, rng: np.random.Generator | None) -> Example:
    image = to_channels(np.asarray(example['image']), channels)
    if recipe == 'inception':
      image = inception_crop(image, rng, image_size, min_crop_area)
      image = image[:, ::-1] if rng.random() < 0.5 else image
    elif recipe == 'center_crop':
      image = center_crop(image, image_size, crop_fraction)
    else:
      image = resize(image, image_size)
      if recipe == 'cifar':
        image = random_crop_flip(image, rng, pad=4)
    return {'image': np.ascontiguousarray(image),
            'label': np.asarray(example['label'], np.int32)}

  fn.random = train and recipe in ('cifar', 'inception')  # Whether it draws from rng.
  # Whether fn leaves an image of this HWC shape unchanged (bar the label's dtype): then a
  # batch of in-memory images is one numpy gather (input_pipeline.train_dataset).
  fn.identity_for = lambda shape: (
      recipe == 'resize' and tuple(shape[:2]) == (image_size, image_size)
      and channels in (0, shape[-1]))
  return fn


def normalize(images: jnp.ndarray, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> jnp.ndarray:
  """uint8 NHWC -> (x / 255 - mean) / std, on device."""
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)
