"""Per-example image preprocessing on the host (numpy, uint8 in, uint8 out).

Images stay uint8 until they reach the device: a quarter of the bytes to move, and the
normalisation `(x / 255 - mean) / std` is one fused op inside the jitted step
(normalize.py). Augmentations take a `numpy.random.Generator` seeded from (seed, global
example position), so a batch is the same whatever the number of hosts, threads or
worker processes.

Recipes (`config.dataset.preprocess`; evaluation uses the recipe's deterministic twin):
  resize       train and eval: resize to image_size x image_size.
  cifar        train: resize, zero-pad 4, random crop back, random horizontal flip (for a
               split held in memory the pad-crop-flip runs on the device instead:
               device_augment.py, same distribution). eval: resize.
  inception    train: random crop (area `min_crop_area`..100% of the image, aspect
               3/4..4/3, 10 tries, else the centre), resized, random flip.
               eval: `center_crop`.
  center_crop  the central square of side crop_fraction x the shorter side (224 / 0.875 =
               256: "resize to 256, crop 224"), resized to image_size.
Train recipes may end with `augment` (augment.py: RandAugment / AutoAugment /
TrivialAugment, colour jitter, random erasing), run on the recipe's output with the same
generator, so it too is a function of (seed, example position).
An example's image is an array or still encoded (decode.Encoded): the crop is chosen from
the header's size, and the image decoded only at the scale the crop needs (JPEG DCT
scaling by 2, 4 or 8 while the crop keeps >= image_size pixels per side).

Resampling is OpenCV's: bilinear (half-pixel centres, like PIL and tf.image.resize), and
area averaging where the crop shrinks by 2x or more (bilinear alone would alias there).
Channels are made explicit last: `channels=3` repeats a grey image, `channels=1` turns
RGB into luma (ITU-R 601, PIL's formula), 0 keeps the dataset's own.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import cv2
import numpy as np
from PIL import Image

from vision_jax.data import decode
from vision_jax.data.normalize import normalize  # pylint: disable=unused-import
from vision_jax.errors import UserError

cv2.setNumThreads(1)  # Examples run in parallel already (threads, worker processes).

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


Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels.


def resample(image: np.ndarray, box: Box, size: int) -> np.ndarray:
  """The region `box` of an HWC uint8 image resized to size x size (a no-op for the whole
  image at that size); the box is rounded to whole pixels."""
  h, w = image.shape[:2]
  left, top = min(int(round(box[0])), w - 1), min(int(round(box[1])), h - 1)
  right, bottom = max(int(round(box[2])), left + 1), max(int(round(box[3])), top + 1)
  crop = image[top:bottom, left:right]
  if crop.shape[:2] == (size, size):
    return crop
  shrink = max((right - left) / size, (bottom - top) / size)
  out = cv2.resize(crop, (size, size),
                   interpolation=cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR)
  return out[..., None] if out.ndim == 2 else out


def crop_resize(image: decode.Encoded | np.ndarray, box: Box, size: int) -> np.ndarray:
  """`resample` of an array, or of an encoded image decoded at the scale the box needs."""
  reduction = 1
  if isinstance(image, decode.Encoded):
    reduction = decode.reduction_for(box[3] - box[1], box[2] - box[0], size)
  pixels, reduction = decode.decode(image, reduction)
  return resample(pixels, tuple(v / reduction for v in box), size)


def flip(image: np.ndarray) -> np.ndarray:
  """The mirror image, contiguous (a reversed view would make batching 5x slower)."""
  out = cv2.flip(image, 1)
  return out[..., None] if out.ndim == 2 else out


def crop_flip(image: np.ndarray, top: int, left: int, mirror: bool, pad: int) -> np.ndarray:
  """Zero-pad by `pad`, crop back to the image's size at (top, left), maybe mirror."""
  h, w, channels = image.shape
  padded = np.zeros((h + 2 * pad, w + 2 * pad, channels), image.dtype)  # np.pad: 3x slower.
  padded[pad:pad + h, pad:pad + w] = image
  image = padded[top:top + h, left:left + w]
  return image[:, ::-1] if mirror else image


def random_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int) -> np.ndarray:
  """CIFAR recipe: zero-pad by `pad`, random crop back to size, random horizontal flip."""
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  return crop_flip(image, int(top), int(left), rng.random() < 0.5, pad)


def inception_box(height: int, width: int, rng: np.random.Generator, min_area: float = 0.08,
                  ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10) -> Box:
  """A random crop of min_area..100% of the image, aspect in `ratio`."""
  h, w = height, width
  for _ in range(tries):
    area = h * w * rng.uniform(min_area, 1.0)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
      return left, top, left + cw, top + ch
  cw, ch = w, h  # No luck: the central crop of the whole image, aspect clipped into `ratio`.
  if w / h < ratio[0]:
    ch = round(w / ratio[0])
  elif w / h > ratio[1]:
    cw = round(h * ratio[1])
  top, left = (h - ch) // 2, (w - cw) // 2
  return left, top, left + cw, top + ch


def center_box(height: int, width: int, crop_fraction: float = 0.875) -> Box:
  """The central square of side crop_fraction x the shorter side."""
  side = crop_fraction * min(height, width)
  top, left = (height - side) / 2, (width - side) / 2
  return left, top, left + side, top + side


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The per-example function of a recipe: `recipe(example, rng) -> example`.

  `rng` is used only when `random` (train-time cifar and inception, or any train recipe
  with an `augment`); picklable, so worker processes get it whole.
  """
  name: str
  image_size: int
  channels: int = 0
  crop_fraction: float = 0.875
  min_crop_area: float = 0.08
  random: bool = False
  augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None

  def __call__(self, example: Example, rng: np.random.Generator | None) -> Example:
    image, size = example['image'], self.image_size
    height, width = decode.size(image)
    if self.name == 'inception':
      image = crop_resize(image, inception_box(height, width, rng, self.min_crop_area), size)
      image = flip(image) if rng.random() < 0.5 else image
    elif self.name == 'center_crop':
      image = crop_resize(image, center_box(height, width, self.crop_fraction), size)
    else:
      image = crop_resize(image, (0, 0, width, height), size)
      if self.name == 'cifar' and self.random:
        image = random_crop_flip(image, rng, pad=4)
    image = to_channels(image, self.channels)
    if self.augment is not None:
      image = self.augment(image, rng)
    return {'image': image, 'label': np.asarray(example['label'], np.int32)}

  def identity_for(self, shape: Sequence[int]) -> bool:
    """Whether an in-memory image of this HWC shape comes out unchanged (bar the label's
    dtype): then a batch of them is one numpy gather (input_pipeline.train_dataset)."""
    return (self.name == 'resize' and self.augment is None
            and tuple(shape[:2]) == (self.image_size,) * 2 and self.channels in (0, shape[-1]))


def make_preprocess(recipe: str, image_size: int, *, train: bool, channels: int = 0,
                    crop_fraction: float = 0.875, min_crop_area: float = 0.08,
                    augment: Callable | None = None) -> Recipe:
  """The per-example function of a recipe; with train=False, its deterministic twin (which
  drops `augment`)."""
  if recipe not in RECIPES:
    raise PreprocessError(f'Unknown config.dataset.preprocess={recipe!r}; known: {RECIPES}.')
  name = recipe if train else EVAL_RECIPE[recipe]
  augment = augment if train else None
  return Recipe(name, image_size, channels=channels, crop_fraction=crop_fraction,
                min_crop_area=min_crop_area, augment=augment,
                random=train and (name in ('cifar', 'inception') or augment is not None))
