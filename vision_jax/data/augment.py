"""The host-side training augmentations of config.dataset, validated and composed into one
`augment(image, rng) -> image` over HWC uint8 images (1 or 3 channels).

It belongs in the per-example train recipe after the crop / resize / flip and before the
example joins the uint8 batch, drawing from the same Generator, seeded by (seed, global example
position): the batch stays a pure function of (seed, step) whatever the number of workers.
Order, as timm's train transforms: the policy (one of RandAugment, AutoAugment,
TrivialAugmentWide), then colour jitter, then random erasing (timm erases after normalising;
see erasing.py for the uint8 equivalent). The policy and the jitter share one PIL image.

Keys (config.dataset.*; base_config() holds the defaults, all off):
  randaugment            '' = off, or a timm string, e.g. 'rand-m9-mstd0.5-inc1' (autoaugment.py)
  autoaugment            '' = off, or an ImageNet policy: original | originalr | v0 | v0r | 3a,
                         optionally '-mstd<float>'
  trivialaugment         True: TrivialAugmentWide (torchvision's ranges)
  augment_interpolation  geometric ops' filter: '' = the policy's reference default (timm:
                         'random' = bilinear or bicubic per op; TrivialAugmentWide: 'nearest'),
                         or random | nearest | bilinear | bicubic
  augment_fill           outside pixels of geometric ops: '' = the reference default (timm:
                         'mean' = round(255 * mean) per channel; TrivialAugmentWide: 'black'),
                         or mean | black
  color_jitter           0 = off; x = brightness, contrast and saturation x (timm's
                         --color-jitter); make_augment also takes (b, c, s) or (b, c, s, hue)
  color_jitter_hue       0 = off; h = a hue shift in [-h, h] turns (h <= 0.5)
  random_erasing         probability (timm --reprob), 0 = off
  random_erasing_mode    pixel | rand | const (timm --remode; default 'pixel' as timm's train.py)
  random_erasing_count   up to this many boxes per erased image (timm --recount)
  repeated_aug           k >= 1 copies of each example in the stream, augmented apart (not
                         part of the Augment: stream.RepeatedOrder; checked here)
Unlike timm's train.py, colour jitter is not dropped when a policy is on: both run if set.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from vision_jax.data import autoaugment as autoaugment_lib
from vision_jax.data import color_jitter as color_jitter_lib
from vision_jax.data import erasing as erasing_lib
from vision_jax.data import image_ops
from vision_jax.data import trivialaugment as trivialaugment_lib
from vision_jax.errors import UserError

INTERPOLATIONS = ('random', 'nearest', 'bilinear', 'bicubic')
FILLS = ('mean', 'black')


class AugmentError(UserError, ValueError):
  """An augmentation key that cannot work; the message names it and the allowed form."""


@dataclasses.dataclass(frozen=True)
class Augment:
  """policy -> colour jitter -> random erasing, each optional, on one HWC uint8 image."""
  policy: image_ops.Policy | None = None
  jitter: color_jitter_lib.ColorJitter | None = None
  erasing: erasing_lib.RandomErasing | None = None

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if self.policy is not None or self.jitter is not None:
      img = image_ops.to_pil(image)
      if self.policy is not None:
        img = self.policy.apply(img, rng)
      if self.jitter is not None:
        img = self.jitter.apply(img, rng)
      image = image_ops.to_numpy(img)
    if self.erasing is not None:
      image = self.erasing(image, rng)
    return np.ascontiguousarray(image)


def _fail(key: str, value: Any, problem: str) -> AugmentError:
  return AugmentError(f'config.dataset.{key}={value!r}: {problem}')


def _jitter_strengths(value: Any, hue: float) -> tuple[float, float, float, float]:
  form = ('use 0 (off), one strength x >= 0 for brightness, contrast and saturation (timm\'s '
          '--color-jitter, e.g. 0.4), or a tuple (brightness, contrast, saturation) or '
          '(brightness, contrast, saturation, hue) with hue <= 0.5; the hue alone goes in '
          'config.dataset.color_jitter_hue.')
  if not isinstance(hue, (int, float)) or not 0 <= hue <= 0.5:
    raise _fail('color_jitter_hue', hue, 'use a hue shift strength in [0, 0.5] (a fraction '
                'of a turn), 0 = off.')
  try:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      strengths = (float(value),) * 3 + (float(hue),)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (3, 4):
      strengths = tuple(float(v) for v in value) + (float(hue),) * (4 - len(value))
      if len(value) == 4 and hue:
        raise _fail('color_jitter', value, f'has a hue and color_jitter_hue={hue} is set '
                    'too; use one of them for the hue.')
    else:
      raise ValueError
  except (TypeError, ValueError) as e:
    if isinstance(e, AugmentError):
      raise
    raise _fail('color_jitter', value, f'not a jitter strength; {form}') from None
  if min(strengths) < 0 or strengths[3] > 0.5:
    raise _fail('color_jitter', value, f'strengths must be >= 0; {form}')
  return strengths


def make_augment(*, mean: Sequence[float], std: Sequence[float], randaugment: str = '',
                 autoaugment: str = '', trivialaugment: bool = False,
                 interpolation: str = '', fill: str = '',
                 color_jitter: float | Sequence[float] = 0.0, color_jitter_hue: float = 0.0,
                 random_erasing: float = 0.0,
                 random_erasing_mode: str = 'pixel',
                 random_erasing_count: int = 1) -> Augment | None:
  """The composed augmentation, or None when every part is off. `mean`/`std` are the
  normalisation's (0..1 units, one per channel of the images it will see): they give the
  'mean' fill and random erasing's pixel values. Raises AugmentError on a bad value."""
  chosen = {k: v for k, v in (('randaugment', randaugment), ('autoaugment', autoaugment),
                              ('trivialaugment', trivialaugment)) if v}
  if len(chosen) > 1:
    raise AugmentError(
        'config.dataset.randaugment, config.dataset.autoaugment and '
        'config.dataset.trivialaugment are alternatives (timm takes one --aa policy) but '
        f"several are set: {chosen}. Keep one and set the others to '' / False.")
  if not isinstance(randaugment, str) or not isinstance(autoaugment, str):
    raise AugmentError(f'config.dataset.randaugment ({randaugment!r}) and autoaugment '
                       f'({autoaugment!r}) are strings; use \'\' for off.')
  if not isinstance(trivialaugment, (bool, np.bool_)):
    raise _fail('trivialaugment', trivialaugment, 'use True or False.')
  if interpolation not in ('',) + INTERPOLATIONS:
    raise _fail('augment_interpolation', interpolation,
                f'use \'\' (the policy\'s default) or one of {", ".join(INTERPOLATIONS)}.')
  if fill not in ('',) + FILLS:
    raise _fail('augment_fill', fill,
                f'use \'\' (the policy\'s default) or one of {", ".join(FILLS)}.')
  if len(mean) != len(std) or not mean:
    raise ValueError(f'make_augment needs one mean and std per channel, got {mean}, {std}.')
  fills = {'mean': tuple(min(255, round(255 * m)) for m in mean), 'black': (0,) * len(mean)}

  policy = None
  if randaugment or autoaugment:
    key, spec = ('randaugment', randaugment) if randaugment else ('autoaugment', autoaugment)
    parse = (autoaugment_lib.parse_randaugment if randaugment
             else autoaugment_lib.parse_autoaugment)
    try:
      policy = parse(spec, fill=fills[fill or 'mean'], interpolation=interpolation or 'random')
    except ValueError as e:
      raise _fail(key, spec, f'{e}') from None
  elif trivialaugment:
    policy = trivialaugment_lib.TrivialAugmentWide(fill=fills[fill or 'black'],
                                                   interpolation=interpolation or 'nearest')

  strengths = _jitter_strengths(color_jitter, color_jitter_hue)
  jitter = color_jitter_lib.ColorJitter(*strengths) if any(strengths) else None

  eraser = None
  if not isinstance(random_erasing, (int, float)) or not 0 <= random_erasing <= 1:
    raise _fail('random_erasing', random_erasing, 'use a probability in [0, 1] (timm '
                '--reprob), 0 = off.')
  if random_erasing_mode not in erasing_lib.MODES:
    raise _fail('random_erasing_mode', random_erasing_mode,
                f'use one of {", ".join(erasing_lib.MODES)} (timm --remode).')
  if not isinstance(random_erasing_count, int) or random_erasing_count < 1:
    raise _fail('random_erasing_count', random_erasing_count,
                'use the most boxes per erased image, an int >= 1 (timm --recount).')
  if random_erasing > 0:
    eraser = erasing_lib.RandomErasing(
        probability=float(random_erasing), mode=random_erasing_mode,
        max_count=random_erasing_count, mean=tuple(map(float, mean)),
        std=tuple(map(float, std)))

  if policy is None and jitter is None and eraser is None:
    return None
  return Augment(policy, jitter, eraser)


def from_config(ds_cfg, mean: Sequence[float], std: Sequence[float]) -> Augment | None:
  """make_augment from config.dataset (every key of base_config's; their defaults are
  off); also checks config.dataset.repeated_aug."""
  get = lambda key: ds_cfg[key]
  k = get('repeated_aug')
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    raise _fail('repeated_aug', k, 'use a whole number k >= 1, the copies of each example '
                'in the stream, each augmented apart (1 = off; RSB uses 3).')
  return make_augment(
      mean=mean, std=std, randaugment=get('randaugment'), autoaugment=get('autoaugment'),
      trivialaugment=get('trivialaugment'), interpolation=get('augment_interpolation'),
      fill=get('augment_fill'), color_jitter=get('color_jitter'),
      color_jitter_hue=get('color_jitter_hue'),
      random_erasing=get('random_erasing'), random_erasing_mode=get('random_erasing_mode'),
      random_erasing_count=get('random_erasing_count'))
