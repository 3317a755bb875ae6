"""Random erasing (Zhong et al. 2020) as timm does it (timm/data/random_erasing.py), on uint8.

With probability `probability` an image gets k boxes, k ~ U{min_count..max_count} (timm's
`recount` is max_count, min_count 1). Each box tries up to 10 times: area ~ U(min_area,
max_area) * H * W / k, aspect (height / width) log-uniform in [min_aspect, max_aspect]
(0.3..1/0.3), h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)); it is kept when
h < H and w < W, at a uniform top-left corner, and otherwise the box is skipped.

timm erases the normalised float image, x = (pixel / 255 - mean) / std; here the image is
still uint8, so a value v in normalised units is written as the pixel round(255 * (mean +
std * v)) clipped to 0..255:
  'const'  v = 0: the mean pixel round(255 * mean) (timm's zeros), per channel.
  'rand'   v ~ N(0, 1) per channel, one colour per box.
  'pixel'  v ~ N(0, 1) per pixel and channel (timm's default mode).
Where this differs from timm: the values are quantised to 1/255 and a v outside the
normalised pixel range [-mean / std, (1 - mean) / std] is clipped to it (with ImageNet's
mean/std, 1.7 / 2.1 / 3.6% of the N(0, 1) draws fall below it and 1.2 / 0.8 / 0.4% above it
in R / G / B), so 'pixel' and 'rand' values have a std a little under 1. Erasing comes last,
after every other host-side augmentation, as in timm (where it follows the normalisation).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

MODES = ('pixel', 'rand', 'const')
Box = tuple[int, int, int, int]  # (top, left, height, width)


def to_pixels(values: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Normalised values [..., C] -> uint8 pixels round(255 * (mean + std * v)), clipped."""
  pixels = 255.0 * (np.asarray(mean) + np.asarray(std) * values)
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class RandomErasing:
  """Erases random boxes of an HWC uint8 image; `mean`/`std` (0..1 units, one per channel)
  say what the normalised values are in pixels."""
  probability: float = 0.5
  mode: str = 'pixel'
  min_count: int = 1
  max_count: int = 1
  min_area: float = 0.02
  max_area: float = 1 / 3
  min_aspect: float = 0.3
  max_aspect: float = 1 / 0.3
  mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  std: tuple[float, ...] = (0.5, 0.5, 0.5)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'Random erasing mode {self.mode!r} is not one of {MODES}.')
    if not 0 <= self.probability <= 1 or not 1 <= self.min_count <= self.max_count:
      raise ValueError(f'Need 0 <= probability <= 1 ({self.probability}) and '
                       f'1 <= min_count <= max_count ({self.min_count}, {self.max_count}).')
    if not 0 < self.min_area <= self.max_area or not 0 < self.min_aspect <= self.max_aspect:
      raise ValueError('Need 0 < min_area <= max_area and 0 < min_aspect <= max_aspect.')
    if len(self.mean) != len(self.std):
      raise ValueError(f'mean {self.mean} and std {self.std} differ in length.')

  def boxes(self, height: int, width: int, rng: np.random.Generator) -> list[Box]:
    """The boxes for one height x width image (empty when the coin says no erasing)."""
    if rng.random() > self.probability:
      return []
    count = self.min_count if self.min_count == self.max_count else int(
        rng.integers(self.min_count, self.max_count + 1))
    log_aspect = (math.log(self.min_aspect), math.log(self.max_aspect))
    boxes = []
    for _ in range(count):
      for _ in range(10):
        area = rng.uniform(self.min_area, self.max_area) * height * width / count
        aspect = math.exp(rng.uniform(*log_aspect))
        h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if h < height and w < width:
          boxes.append((int(rng.integers(0, height - h + 1)),
                        int(rng.integers(0, width - w + 1)), h, w))
          break
    return boxes

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image with its boxes erased (a copy when any; the input is never written)."""
    height, width, channels = image.shape
    if channels != len(self.mean):
      raise ValueError(f'Random erasing got a {channels}-channel image for a '
                       f'{len(self.mean)}-channel mean/std.')
    out = image
    for top, left, h, w in self.boxes(height, width, rng):
      if out is image:
        out = image.copy()
      if self.mode == 'const':
        values = np.zeros((1, 1, channels))
      elif self.mode == 'rand':
        values = rng.standard_normal((1, 1, channels))
      else:
        values = rng.standard_normal((h, w, channels))
      out[top:top + h, left:left + w] = to_pixels(values, self.mean, self.std)
    return out
