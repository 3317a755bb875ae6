"""The image operations of the augmentation policies, on PIL images (mode 'L' or 'RGB').

The policies (autoaugment.py, trivialaugment.py, color_jitter.py) chain several of these on
one image, so they work on PIL images and the caller converts once per image: `to_pil` an
HWC uint8 array (1 or 3 channels) in, `to_numpy` out. Each op is the PIL function timm and
torchvision call, with their conventions:

  Geometric ops map each output pixel (x, y) to a source point through an affine matrix
  (a, b, c, d, e, f): source = (a x + b y + c, d x + e y + f), as `Image.transform` does.
  Source points outside the image take `fill` (one int per channel); `resample` is a PIL
  filter (NEAREST, BILINEAR or BICUBIC).
    rotate(degrees)       counter-clockwise about the centre (w / 2, h / 2), `Image.rotate`.
    shear_x(factor)       (1, factor, 0, 0, 1, 0): source x = x + factor * y.
    shear_y(factor)       (1, 0, 0, factor, 1, 0): source y = y + factor * x.
    translate_x(pixels)   (1, 0, pixels, 0, 1, 0): the content moves left by `pixels`.
    translate_y(pixels)   (1, 0, 0, 0, 1, pixels): the content moves up by `pixels`.
  Colour ops (factor 1 = unchanged; ImageEnhance blends with a degenerate image):
    color(factor)         saturation: 0 = grey (ITU-R 601 luma), > 1 more saturated.
    contrast(factor)      blend with the mean grey level; brightness(factor): with black.
    sharpness(factor)     blend with PIL's 3x3 smoothed image (borders unchanged).
    posterize(bits)       keep the `bits` most significant bits (0 = black, >= 8 = unchanged).
    solarize(threshold)   invert pixels >= threshold (0 = invert all, 256 = none).
    solarize_add(addition, threshold=128)  pixels < threshold get min(255, x + addition).
    equalize, autocontrast, invert: ImageOps (autocontrast stretches each channel to 0..255).
    gaussian_blur(radius), adjust_hue(hue_factor): ImageFilter, torchvision's hue shift.
A grey ('L') image goes through every op; `color` and `adjust_hue` leave it unchanged.
"""
from __future__ import annotations

import abc
import math
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

NEAREST = Image.Resampling.NEAREST
BILINEAR = Image.Resampling.BILINEAR
BICUBIC = Image.Resampling.BICUBIC
RESAMPLE = {'nearest': NEAREST, 'bilinear': BILINEAR, 'bicubic': BICUBIC}
Fill = Sequence[int]


def to_pil(image: np.ndarray) -> Image.Image:
  """HWC uint8 (1 or 3 channels) -> a PIL image in mode 'L' or 'RGB'."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'Augmentations take HWC uint8 images with 1 or 3 channels, got '
                     f'{image.dtype} {image.shape}.')
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def to_numpy(img: Image.Image) -> np.ndarray:
  """A PIL 'L' or 'RGB' image -> HWC uint8 (a grey image keeps its channel axis)."""
  out = np.asarray(img)
  return out[..., None] if out.ndim == 2 else out


def _fill_color(img: Image.Image, fill: Fill) -> int | tuple[int, ...]:
  """The fill as PIL wants it for this image's mode: an int for 'L', a tuple for 'RGB'."""
  bands = len(img.getbands())
  fill = tuple(int(v) for v in fill)
  if len(fill) == 1:
    return fill[0] if bands == 1 else fill * bands
  if len(fill) != bands:
    raise ValueError(f'fill has {len(fill)} values for a {bands}-channel image.')
  return fill[0] if bands == 1 else fill


def affine(img: Image.Image, matrix: Sequence[float], fill: Fill,
           resample: int) -> Image.Image:
  """Image.transform AFFINE with the output-to-source `matrix`, same size, `fill` outside."""
  return img.transform(img.size, Image.Transform.AFFINE, tuple(matrix), resample=resample,
                       fillcolor=_fill_color(img, fill))


def rotate(img: Image.Image, degrees: float, fill: Fill, resample: int) -> Image.Image:
  """Counter-clockwise by `degrees` about the image centre, same size."""
  return img.rotate(degrees, resample=resample, fillcolor=_fill_color(img, fill))


def shear_x(img: Image.Image, factor: float, fill: Fill, resample: int) -> Image.Image:
  return affine(img, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(img: Image.Image, factor: float, fill: Fill, resample: int) -> Image.Image:
  return affine(img, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x(img: Image.Image, pixels: float, fill: Fill, resample: int) -> Image.Image:
  return affine(img, (1, 0, pixels, 0, 1, 0), fill, resample)


def translate_y(img: Image.Image, pixels: float, fill: Fill, resample: int) -> Image.Image:
  return affine(img, (1, 0, 0, 0, 1, pixels), fill, resample)


def posterize(img: Image.Image, bits: int) -> Image.Image:
  """ImageOps.posterize's lookup table, extended to 0 bits (black), which Pillow refuses."""
  if bits >= 8:
    return img
  mask = ~(2 ** (8 - max(0, int(bits))) - 1) & 0xFF
  return img.point([i & mask for i in range(256)] * len(img.getbands()))


def solarize(img: Image.Image, threshold: float) -> Image.Image:
  return ImageOps.solarize(img, threshold)


def solarize_add(img: Image.Image, addition: int, threshold: int = 128) -> Image.Image:
  lut = [min(255, i + addition) if i < threshold else i for i in range(256)]
  return img.point(lut * len(img.getbands()))


def color(img: Image.Image, factor: float) -> Image.Image:
  return ImageEnhance.Color(img).enhance(factor)


def contrast(img: Image.Image, factor: float) -> Image.Image:
  return ImageEnhance.Contrast(img).enhance(factor)


def brightness(img: Image.Image, factor: float) -> Image.Image:
  return ImageEnhance.Brightness(img).enhance(factor)


def sharpness(img: Image.Image, factor: float) -> Image.Image:
  return ImageEnhance.Sharpness(img).enhance(factor)


def equalize(img: Image.Image) -> Image.Image:
  return ImageOps.equalize(img)


def autocontrast(img: Image.Image) -> Image.Image:
  return ImageOps.autocontrast(img)


def invert(img: Image.Image) -> Image.Image:
  return ImageOps.invert(img)


def identity(img: Image.Image) -> Image.Image:
  return img


def gaussian_blur(img: Image.Image, radius: float) -> Image.Image:
  return img.filter(ImageFilter.GaussianBlur(radius=radius))


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
  """Shifts the hue by hue_factor (-0.5..0.5) of a turn, in PIL's 8-bit HSV (torchvision).

  The shift is int(hue_factor * 255) hue steps, wrapping around (torchvision computes
  np.uint8(hue_factor * 255), the same for hue_factor >= 0 and, on the usual platforms, for
  negative ones).
  """
  if not -0.5 <= hue_factor <= 0.5:
    raise ValueError(f'hue_factor must be in [-0.5, 0.5], got {hue_factor}.')
  if img.mode != 'RGB':
    return img
  hue, sat, val = img.convert('HSV').split()
  shift = math.trunc(hue_factor * 255) % 256
  hue = Image.fromarray((np.asarray(hue).astype(np.int32) + shift).astype(np.uint8), 'L')
  return Image.merge('HSV', (hue, sat, val)).convert('RGB')


GEOMETRIC = {'rotate': rotate, 'shear_x': shear_x, 'shear_y': shear_y,
             'translate_x': translate_x, 'translate_y': translate_y}
PIXEL = {'posterize': posterize, 'solarize': solarize, 'solarize_add': solarize_add,
         'color': color, 'contrast': contrast, 'brightness': brightness,
         'sharpness': sharpness, 'equalize': equalize, 'autocontrast': autocontrast,
         'invert': invert, 'identity': identity, 'gaussian_blur': gaussian_blur,
         'adjust_hue': adjust_hue}


class Step(NamedTuple):
  """One op with all its random choices made: what a policy draws for one image."""
  op: str                    # A name in GEOMETRIC or PIXEL.
  args: tuple = ()           # Its positional arguments (degrees, factor, bits, ...).
  resample: int | None = None  # Geometric ops: the PIL filter.


def run(img: Image.Image, steps: Sequence[Step], fill: Fill) -> Image.Image:
  """Applies `steps` in order; geometric ops fill with `fill` (one int per channel)."""
  for step in steps:
    if step.op in GEOMETRIC:
      img = GEOMETRIC[step.op](img, *step.args, fill=fill, resample=step.resample)
    else:
      img = PIXEL[step.op](img, *step.args)
  return img


def choose_resample(interpolation: str, rng: np.random.Generator) -> int:
  """The PIL filter for one geometric op: 'random' draws bilinear or bicubic (timm)."""
  if interpolation == 'random':
    return (BILINEAR, BICUBIC)[int(rng.integers(2))]
  return RESAMPLE[interpolation]


class Policy(abc.ABC):
  """Base of the augmentation policies: `plan` draws the steps for one image, `apply` runs
  them on a PIL image, and calling it maps an HWC uint8 array to one (one conversion)."""
  fill: tuple[int, ...] = (0,)

  @abc.abstractmethod
  def plan(self, rng: np.random.Generator, size: tuple[int, int]) -> list[Step]:
    """The steps for one image of PIL size (width, height), drawn from rng."""

  def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return run(img, self.plan(rng, img.size), self.fill)

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return to_numpy(self.apply(to_pil(image), rng))
