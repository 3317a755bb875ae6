"""Colour jitter with torchvision's semantics (transforms.ColorJitter on PIL images).

For strengths (brightness b, contrast c, saturation s, hue h) each image draws a random order
of the four adjustments and one factor per enabled one: brightness, contrast and saturation
factors ~ U(max(0, 1 - x), 1 + x) (ImageEnhance Brightness / Contrast / Color), the hue shift
~ U(-h, h) turns (0 <= h <= 0.5; `image_ops.adjust_hue`). A strength of 0 disables its
adjustment. Grey images: saturation and hue leave them unchanged. timm's `--color-jitter x`
is (x, x, x) with no hue.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from vision_jax.data import image_ops
from vision_jax.data.image_ops import Step

_OPS = ('brightness', 'contrast', 'color', 'adjust_hue')  # torchvision's order of fn_idx.


@dataclasses.dataclass(frozen=True)
class ColorJitter(image_ops.Policy):
  """Random brightness, contrast, saturation and hue, in a random order per image."""
  brightness: float = 0.0
  contrast: float = 0.0
  saturation: float = 0.0
  hue: float = 0.0

  def __post_init__(self):
    strengths = (self.brightness, self.contrast, self.saturation, self.hue)
    if min(strengths) < 0 or self.hue > 0.5:
      raise ValueError('Colour jitter strengths must be >= 0 and hue <= 0.5, got '
                       f'{strengths}.')

  @property
  def enabled(self) -> bool:
    return any((self.brightness, self.contrast, self.saturation, self.hue))

  def plan(self, rng: np.random.Generator, size: tuple[int, int]) -> list[Step]:
    order = rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1.0 - x), 1.0 + x) if x > 0 else None
               for x in (self.brightness, self.contrast, self.saturation)]
    factors.append(rng.uniform(-self.hue, self.hue) if self.hue > 0 else None)
    return [Step(_OPS[i], (float(factors[i]),)) for i in order if factors[i] is not None]
