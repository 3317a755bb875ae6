"""Predicted label maps as images: colour-coded PNGs, overlays and class histograms.

`save_mask_png` writes a palette PNG whose pixel values are the class indices and whose
palette is fixed (PASCAL VOC's colour map: class 0 black, 1 dark red, 2 dark green, ...,
255 cream for the ignore label), so the file shows the classes in colour and reads back
with `mask_folder.read_mask` as the same class indices. The palette depends on nothing but
the class index, so the same class has the same colour in every run.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def palette() -> np.ndarray:
  """uint8 [256, 3]: PASCAL VOC's colour map (the bits of the index spread over R, G, B)."""
  colours = np.zeros((256, 3), np.uint8)
  for index in range(256):
    c, r, g, b = index, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (c & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    colours[index] = (r, g, b)
  return colours


def colorize(mask: np.ndarray) -> np.ndarray:
  """HW class indices (0..255) -> HW3 uint8 RGB with the fixed palette."""
  return palette()[np.asarray(mask, np.uint8)]


def save_mask_png(mask: np.ndarray, path: str) -> None:
  """Writes HW class indices as a palette PNG (values = classes, colours = `palette`)."""
  mask = np.asarray(mask)
  if mask.ndim != 2 or mask.size == 0 or mask.min() < 0 or mask.max() > 255:
    raise ValueError(f'A mask PNG holds HW class indices in 0..255, got shape {mask.shape}.')
  image = Image.fromarray(mask.astype(np.uint8), mode='P')
  image.putpalette(palette().reshape(-1).tolist())
  image.save(path)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """HWC uint8 image blended with the colour-coded mask (alpha: the mask's weight)."""
  image = np.asarray(image)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(mask)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def class_histogram(mask: np.ndarray, class_names: Sequence[str],
                    ignore_label: int | None = 255) -> dict[str, int]:
  """{class name: pixel count} over the K classes (every class listed, zeros included);
  pixels equal to `ignore_label` (or any other value >= K) are counted under 'ignored'
  when there are any."""
  mask = np.asarray(mask).reshape(-1).astype(np.int64)
  k = len(class_names)
  counts = np.bincount(mask[mask < k], minlength=k)
  out = {name: int(n) for name, n in zip(class_names, counts)}
  other = int((mask >= k).sum())
  if other:
    out['ignored' if ignore_label is not None else 'other'] = other
  return out
