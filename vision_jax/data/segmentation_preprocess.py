"""Joint preprocessing of an image and its label map, on the host (numpy uint8 in and out).

Every geometric change is applied to both with the same numbers: images are resampled
bilinearly, label maps with nearest neighbour (a label is never interpolated). Both use
PIL's half-pixel-centre mapping, so output pixel (y, x) of either comes from the same
source position. A source example is `{'image': HWC uint8, 'mask': HW uint8}`; the
transforms return `{'image': HWC uint8, 'label': HW uint8}`, the label map under the key
a classification label has, so that a batch's `mask` key keeps meaning "real example, not
padding" (the eval pipeline's per-example mask).

Train (`random_scale_crop_flip`, torchvision's segmentation reference / DeepLab's recipe):
  1. scale: the shorter side becomes base_size * s, s ~ U(scale_range) (default 0.5..2.0;
     base_size defaults to the crop size);
  2. crop: a size x size window at a uniformly random offset; where the scaled image is
     smaller than the window it lands at a random place inside it and the rest is padding
     (image `fill`, label `ignore_label`, so padding costs nothing in the loss);
  3. flip: horizontal, with probability 1/2 (`flip=False` for data whose classes are not
     mirror-symmetric, such as digits).
  The draws come from the numpy Generator passed in (seeded per example by the pipeline,
  as preprocess.py's recipes), in a fixed order: s, top, left, flip.
Eval (`fit_and_pad`): an image no larger than size x size keeps its own resolution and
labels: it is padded at the bottom and right to size x size (image `fill`, label
`ignore_label`), so every pixel of its label map is counted exactly once and the padding
never. A larger image is first shrunk (aspect kept) until its longer side is `size`, its
label map with nearest neighbour: its labels are then counted at that resolution. This is
DeepLab's evaluation (pad to 513 x 513 with the mean pixel and the ignore label); choose
`size` at least the largest image of the split to evaluate every split at full resolution.
`fill` is a grey level or one per channel; with round(255 * mean) the padding normalises
to zero.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image

from vision_jax.errors import UserError

Example = dict[str, np.ndarray]


class SegmentationPreprocessError(UserError, ValueError):
  """An image and label map that cannot be transformed together, or a bad option."""


def _resize(array: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
  """HWC (C = 1 or 3) or HW uint8 array resized to height x width with PIL."""
  if array.shape[:2] == (height, width):
    return array
  grey = array.ndim == 3 and array.shape[-1] == 1
  out = np.asarray(Image.fromarray(array[..., 0] if grey else array).resize(
      (width, height), resample))
  return out[..., None] if grey else out


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
  if image.ndim != 3 or mask.ndim != 2 or image.shape[:2] != mask.shape:
    raise SegmentationPreprocessError(
        f'An image of shape {image.shape} and a label map of shape {mask.shape}: a label '
        'map must be H x W with the H x W of its HWC image.')


def _canvas(shape: tuple[int, ...], fill: int | Sequence[int], dtype) -> np.ndarray:
  out = np.empty(shape, dtype)
  out[...] = np.asarray(fill, dtype)
  return out


def random_scale_crop_flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                           *, size: int, base_size: int = 0,
                           scale_range: tuple[float, float] = (0.5, 2.0),
                           fill: int | Sequence[int] = 0, ignore_label: int = 255,
                           flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """The training transform (module docstring): (size x size x C image, size x size map)."""
  _check_pair(image, mask)
  h, w = mask.shape
  factor = (base_size or size) * rng.uniform(*scale_range) / min(h, w)
  nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
  image = _resize(image, nw, nh, Image.BILINEAR)
  mask = _resize(mask, nw, nh, Image.NEAREST)
  # Window offset in the scaled image; negative: the image sits inside the window.
  top = int(rng.integers(min(0, nh - size), max(0, nh - size) + 1))
  left = int(rng.integers(min(0, nw - size), max(0, nw - size) + 1))
  out_image = _canvas((size, size, image.shape[-1]), fill, image.dtype)
  out_mask = _canvas((size, size), ignore_label, mask.dtype)
  y0, y1, x0, x1 = max(top, 0), min(top + size, nh), max(left, 0), min(left + size, nw)
  out_image[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
  out_mask[y0 - top:y1 - top, x0 - left:x1 - left] = mask[y0:y1, x0:x1]
  if flip and rng.random() < 0.5:
    out_image, out_mask = out_image[:, ::-1], out_mask[:, ::-1]
  return np.ascontiguousarray(out_image), np.ascontiguousarray(out_mask)


def fit_and_pad(image: np.ndarray, mask: np.ndarray, size: int, *,
                fill: int | Sequence[int] = 0, ignore_label: int = 255
                ) -> tuple[np.ndarray, np.ndarray]:
  """The eval transform (module docstring): shrink only if larger, pad bottom/right."""
  _check_pair(image, mask)
  h, w = mask.shape
  if max(h, w) > size:
    factor = size / max(h, w)
    nh, nw = min(size, max(1, round(h * factor))), min(size, max(1, round(w * factor)))
    image = _resize(image, nw, nh, Image.BILINEAR)
    mask = _resize(mask, nw, nh, Image.NEAREST)
    h, w = nh, nw
  out_image = _canvas((size, size, image.shape[-1]), fill, image.dtype)
  out_mask = _canvas((size, size), ignore_label, mask.dtype)
  out_image[:h, :w], out_mask[:h, :w] = image, mask
  return out_image, out_mask


@dataclasses.dataclass(frozen=True)
class JointTransform:
  """`fn(example, rng) -> {'image', 'label'}`: the training transform, or (train=False) the
  deterministic eval transform, of an {'image', 'mask'} example; the image first given
  `channels` channels (0: as stored). A plain object, so worker processes can run it."""
  image_size: int
  train: bool
  base_size: int = 0
  scale_range: tuple[float, float] = (0.5, 2.0)
  fill: int | tuple[int, ...] = 0
  ignore_label: int = 255
  flip: bool = True
  channels: int = 0

  @property
  def random(self) -> bool:
    return self.train

  def identity_for(self, shape) -> bool:
    del shape
    return False

  def __call__(self, example: Example, rng: np.random.Generator | None) -> Example:
    from vision_jax.data import preprocess  # pylint: disable=g-import-not-at-top
    image, mask = np.asarray(example['image']), np.asarray(example['mask'])
    if self.channels:
      image = preprocess.to_channels(image, self.channels)
    if self.train:
      image, mask = random_scale_crop_flip(
          image, mask, rng, size=self.image_size, base_size=self.base_size,
          scale_range=self.scale_range, fill=self.fill, ignore_label=self.ignore_label,
          flip=self.flip)
    else:
      image, mask = fit_and_pad(image, mask, self.image_size, fill=self.fill,
                                ignore_label=self.ignore_label)
    return {'image': image, 'label': mask}


def make_transform(image_size: int, *, train: bool, base_size: int = 0,
                   scale_range: tuple[float, float] = (0.5, 2.0),
                   fill: int | Sequence[int] = 0, ignore_label: int = 255,
                   flip: bool = True, channels: int = 0) -> JointTransform:
  """The JointTransform, its arguments checked."""
  if image_size < 1:
    raise SegmentationPreprocessError(
        f'A segmentation run needs a crop / eval size: config.dataset.image_size='
        f'{image_size}. Set it (e.g. 512 for Oxford-IIIT Pet, 32 for the digits canvases).')
  low, high = scale_range
  if not 0 < low <= high:
    raise SegmentationPreprocessError(
        f'scale_range={tuple(scale_range)} must be 0 < low <= high (e.g. (0.5, 2.0)).')
  if not 0 <= ignore_label <= 255:
    raise SegmentationPreprocessError(f'ignore_label={ignore_label} must fit a uint8 label '
                                      'map (0..255; 255 is the convention).')
  return JointTransform(image_size, train, base_size, tuple(scale_range),
                        tuple(fill) if isinstance(fill, (list, tuple)) else fill,
                        ignore_label, flip, channels)
