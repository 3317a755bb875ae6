"""TrivialAugmentWide (Muller & Hutter 2021) with torchvision's wide magnitude ranges.

One op per image, drawn uniformly from 14, at one of 31 magnitude bins drawn uniformly, with
a random sign for the signed ops (torchvision.transforms.TrivialAugmentWide):

  Identity
  ShearX/Y      linspace(0, 0.99, 31), signed: matrix (1, m, 0, 0, 1, 0) / (1, 0, 0, m, 1, 0)
  TranslateX/Y  linspace(0, 32, 31) pixels, signed, truncated to int: the content moves
                right/down by int(m) (torchvision's matrix (1, 0, -int(m), 0, 1, 0))
  Rotate        linspace(0, 135, 31) degrees, signed
  Brightness, Color, Contrast, Sharpness  factor 1 + linspace(0, 0.99, 31), signed
  Posterize     8 - round(bin / 5) bits (8..2)
  Solarize      threshold linspace(255, 0, 31)
  AutoContrast, Equalize
torchvision's defaults: nearest resampling and fill 0 (black). Given the same magnitude, each
op gives torchvision's pixels. The magnitudes here are the table's exact (float64) values;
torchvision's come from a float32 torch.linspace whose last bit depends on the CPU's vector
code: its TranslateX/Y bin 15 is 15.999999 there, truncated to a 15-pixel shift where this
shifts 16, and a 1-ulp different enhance factor can move a few pixels by one level.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from vision_jax.data import image_ops
from vision_jax.data.image_ops import Step

NUM_BINS = 31
OPS = ('Identity', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Brightness',
       'Color', 'Contrast', 'Sharpness', 'Posterize', 'Solarize', 'AutoContrast', 'Equalize')
_GEOMETRIC = {'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate'}
_SIGNED = {'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Brightness', 'Color',
           'Contrast', 'Sharpness'}
_ENHANCE = {'Brightness': 'brightness', 'Color': 'color', 'Contrast': 'contrast',
            'Sharpness': 'sharpness'}


def magnitude_bins(name: str, num_bins: int = NUM_BINS) -> np.ndarray | None:
  """The magnitudes op `name` draws from (torchvision's table); None for argument-free ops."""
  if name in ('ShearX', 'ShearY') or name in _ENHANCE:
    return np.linspace(0.0, 0.99, num_bins)
  if name in ('TranslateX', 'TranslateY'):
    return np.linspace(0.0, 32.0, num_bins)
  if name == 'Rotate':
    return np.linspace(0.0, 135.0, num_bins)
  if name == 'Posterize':
    return 8 - np.round(np.arange(num_bins) / ((num_bins - 1) / 6)).astype(np.int64)
  if name == 'Solarize':
    return np.linspace(255.0, 0.0, num_bins)
  return None


def op_step(name: str, magnitude: float, resample: int | None = None) -> Step:
  """The step of op `name` at signed `magnitude` (torchvision's `_apply_op`)."""
  if name in ('ShearX', 'ShearY'):
    return Step('shear_' + name[-1].lower(), (magnitude,), resample)
  if name in ('TranslateX', 'TranslateY'):
    return Step('translate_' + name[-1].lower(), (-int(magnitude),), resample)
  if name == 'Rotate':
    return Step('rotate', (magnitude,), resample)
  if name in _ENHANCE:
    return Step(_ENHANCE[name], (1.0 + magnitude,))
  if name == 'Posterize':
    return Step('posterize', (int(magnitude),))
  if name == 'Solarize':
    return Step('solarize', (magnitude,))
  if name in ('AutoContrast', 'Equalize', 'Identity'):
    return Step(name.lower())
  raise ValueError(f'Unknown TrivialAugmentWide op {name!r}; known: {", ".join(OPS)}.')


@dataclasses.dataclass(frozen=True)
class TrivialAugmentWide(image_ops.Policy):
  """One op with one uniformly drawn magnitude bin per image."""
  num_bins: int = NUM_BINS
  fill: tuple[int, ...] = (0,)
  interpolation: str = 'nearest'

  def plan(self, rng: np.random.Generator, size: tuple[int, int]) -> list[Step]:
    name = OPS[int(rng.integers(len(OPS)))]
    bins = magnitude_bins(name, self.num_bins)
    magnitude = 0.0 if bins is None else float(bins[int(rng.integers(len(bins)))])
    if name in _SIGNED and rng.integers(2):
      magnitude = -magnitude
    resample = (image_ops.choose_resample(self.interpolation, rng)
                if name in _GEOMETRIC else None)
    return [op_step(name, magnitude, resample)]
