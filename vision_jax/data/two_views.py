"""Two augmented views of one image for self-supervised pretraining (SimCLR, BYOL).

Host-side, HWC uint8 in (1 or 3 channels), two uint8 views of image_size x image_size with
the image's channels out, drawn from the example's `numpy.random.Generator` (seeded by
(seed, global example position), as every train recipe): view 1 first, then view 2, so the
pair is a pure function of (image, seed). Each view, in SimCLR's order:

  1. random resized crop: `preprocess.inception_box` + `crop_resize`, area `crop_min_scale`..1 of the
     image, aspect 3/4..4/3 (torchvision's RandomResizedCrop; SimCLR and BYOL resize
     bicubic, this bilinear);
  2. horizontal flip with p 0.5;
  3. colour jitter with p `jitter_prob` (0.8): `color_jitter.ColorJitter` (torchvision's
     semantics, random order), strengths scaled by s = `color_jitter_strength`:
       simclr  brightness, contrast, saturation 0.8 s, hue 0.2 s (SimCLR appendix A;
               s = 1 on ImageNet, s = 0.5 on CIFAR, i.e. 0.4, 0.4, 0.4, 0.1)
       byol    brightness 0.4 s, contrast 0.4 s, saturation 0.2 s, hue 0.1 s
  4. grayscale with p 0.2 (RGB -> ITU-R 601 luma, repeated on 3 channels);
  5. Gaussian blur, sigma ~ U(0.1, 2.0), kernel 10% of the side (radius (side // 10) // 2:
     23 taps at 224 px, as SimCLR's code and torchvision's GaussianBlur(23)), reflected
     edges: p 0.5 and 0.5 (simclr), 1.0 and 0.1 (byol), for the two views;
  6. solarisation (invert pixels >= 128) with p 0 and 0.2 (byol), never for simclr.
Blur: `blur='auto'` turns it on only for images of at least 64 px: SimCLR blurs at ImageNet
size and not on CIFAR (32 px), where it hurts; on 8 or 16 px digits a 10% kernel has
radius 0 anyway. A grey (1-channel) image goes through every step; saturation, hue and
grayscale leave it unchanged.

Config keys (config.task, read by the SimCLR and BYOL tasks):
  views                  'simclr' or 'byol'
  crop_min_scale         0.08 (smallest crop area; 0.2-0.3 suits 8 px digits)
  color_jitter_strength  1.0 (SimCLR's s)
  blur                   'auto' | 'on' | 'off' 
"""
from __future__ import annotations

import dataclasses


import numpy as np
from scipy import ndimage

from vision_jax.data import image_ops
from vision_jax.data import preprocess
from vision_jax.data.color_jitter import ColorJitter
from vision_jax.errors import UserError

RECIPES = ('simclr', 'byol')
# Per recipe: jitter strengths at s = 1 (brightness, contrast, saturation, hue) and the
# (view 1, view 2) probabilities of blur and solarisation.
_JITTER = {'simclr': (0.8, 0.8, 0.8, 0.2), 'byol': (0.4, 0.4, 0.2, 0.1)}
_BLUR_PROB = {'simclr': (0.5, 0.5), 'byol': (1.0, 0.1)}
_SOLARIZE_PROB = {'simclr': (0.0, 0.0), 'byol': (0.0, 0.2)}
BLUR_MIN_SIZE = 64


class TwoViewsError(UserError, ValueError):
  """A two-view option that cannot work; the message names the config key."""


@dataclasses.dataclass(frozen=True)
class ViewPlan:
  """Every random choice of one view after its crop (what `View.plan` draws)."""
  flip: bool
  jitter: list[image_ops.Step] | None  # None: not jittered.
  grayscale: bool
  blur_sigma: float | None             # None: not blurred.
  solarize: bool


def blur_radius(side: int) -> int:
  """Half-width of SimCLR's blur kernel for a side of `side` px: 10% of it, made odd."""
  return (side // 10) // 2


def gaussian_blur(image: np.ndarray, sigma: float, radius: int) -> np.ndarray:
  """HWC uint8 blurred by a normalised Gaussian of `sigma` truncated at `radius` px, with
  reflected edges ('dcb|abcd|cba'), rounded: torchvision's GaussianBlur(2 radius + 1)."""
  if radius < 1:
    return image
  out = ndimage.gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0),
                                radius=(radius, radius, 0), mode='mirror')
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class View:
  """The random steps of one view after the crop: flip, jitter, grayscale, blur, solarise."""
  jitter: ColorJitter
  jitter_prob: float = 0.8
  grayscale_prob: float = 0.2
  blur_prob: float = 0.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  solarize_prob: float = 0.0
  flip_prob: float = 0.5

  def plan(self, rng: np.random.Generator) -> ViewPlan:
    """Draws the choices, always in the same order and number for a given outcome."""
    flip = rng.random() < self.flip_prob
    jitter = None
    if rng.random() < self.jitter_prob and self.jitter.enabled:
      jitter = self.jitter.plan(rng, (0, 0))
    grayscale = rng.random() < self.grayscale_prob
    sigma = None
    if rng.random() < self.blur_prob:
      sigma = float(rng.uniform(*self.blur_sigma))
    solarize = rng.random() < self.solarize_prob
    return ViewPlan(flip, jitter, grayscale, sigma, solarize)

  def apply(self, crop: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """The view of an HWC uint8 crop under `plan`."""
    image = crop[:, ::-1] if plan.flip else crop
    if plan.jitter is not None or plan.grayscale:
      img = image_ops.to_pil(np.ascontiguousarray(image))
      if plan.jitter is not None:
        img = image_ops.run(img, plan.jitter, fill=(0,))
      if plan.grayscale and img.mode == 'RGB':
        img = img.convert('L').convert('RGB')
      image = image_ops.to_numpy(img)
    if plan.blur_sigma is not None:
      image = gaussian_blur(image, plan.blur_sigma, blur_radius(image.shape[0]))
    if plan.solarize:
      image = image_ops.to_numpy(image_ops.solarize(image_ops.to_pil(image), 128))
    return np.ascontiguousarray(image)


@dataclasses.dataclass(frozen=True)
class TwoViews:
  """`views(image, rng) -> (view1, view2)`: two crops of one image, each with its View."""
  image_size: int
  view1: View
  view2: View
  crop_min_scale: float = 0.08

  def view(self, image: np.ndarray, rng: np.random.Generator, which: View) -> np.ndarray:
    box = preprocess.inception_box(image.shape[0], image.shape[1], rng, self.crop_min_scale)
    crop = preprocess.crop_resize(image, box, self.image_size)
    return which.apply(crop, which.plan(rng))

  def __call__(self, image: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
      raise ValueError(f'Two views take HWC uint8 images with 1 or 3 channels, got '
                       f'{image.dtype} {image.shape}.')
    return self.view(image, rng, self.view1), self.view(image, rng, self.view2)


def make_two_views(recipe: str, image_size: int, *, crop_min_scale: float = 0.08,
                   color_jitter_strength: float = 1.0,
                   blur: bool | str = 'auto') -> TwoViews:
  """The two-view augmentation of `recipe` ('simclr' or 'byol') at `image_size`.

  Raises TwoViewsError naming the config key of a bad value.
  """
  if recipe not in RECIPES:
    raise TwoViewsError(f'config.task.views={recipe!r} is not a two-view recipe; use '
                        f'one of {", ".join(RECIPES)}.')
  if not isinstance(crop_min_scale, (int, float)) or not 0 < crop_min_scale <= 1:
    raise TwoViewsError(f'config.task.crop_min_scale={crop_min_scale!r}: use the '
                        'smallest crop area as a fraction of the image in (0, 1], e.g. 0.08.')
  hue = _JITTER[recipe][3] * color_jitter_strength if isinstance(
      color_jitter_strength, (int, float)) else -1.0
  if not 0 <= hue <= 0.5:
    raise TwoViewsError(
        f'config.task.color_jitter_strength={color_jitter_strength!r}: use a strength '
        f's >= 0 with a hue strength {_JITTER[recipe][3]} s <= 0.5, i.e. s <= '
        f'{0.5 / _JITTER[recipe][3]:g} (SimCLR: 1.0 on ImageNet, 0.5 on CIFAR).')
  if blur not in ('auto', True, False):
    raise TwoViewsError(f'config.task.blur={blur!r}: use \'auto\' (on from '
                        f'{BLUR_MIN_SIZE} px, as SimCLR at ImageNet size), True or False.')
  if blur == 'auto':
    blur = image_size >= BLUR_MIN_SIZE
  jitter = ColorJitter(*(x * color_jitter_strength for x in _JITTER[recipe]))
  views = [View(jitter, blur_prob=_BLUR_PROB[recipe][i] if blur else 0.0,
                solarize_prob=_SOLARIZE_PROB[recipe][i]) for i in range(2)]
  return TwoViews(image_size, views[0], views[1], float(crop_min_scale))


@dataclasses.dataclass(frozen=True)
class TwoViewPreprocess:
  """A per-example train function (preprocess.make_preprocess's protocol) that turns
  {'image', 'label'} into {'view1', 'view2', 'label'}, channels made explicit first. A
  plain object, so input worker processes can run it."""
  views: TwoViews
  channels: int = 0
  random = True

  def identity_for(self, shape) -> bool:
    del shape
    return False

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    image = preprocess.to_channels(np.asarray(example['image']), self.channels)
    view1, view2 = self.views(image, rng)
    return {'view1': view1, 'view2': view2,
            'label': np.asarray(example['label'], np.int32)}


def make_two_view_preprocess(views: TwoViews, *, channels: int = 0) -> TwoViewPreprocess:
  return TwoViewPreprocess(views, channels)
