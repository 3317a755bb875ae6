"""RandAugment and AutoAugment with timm's semantics (timm/data/auto_augment.py).

Ops are named as in timm ('Rotate', 'PosterizeIncreasing', ...). An op has a magnitude
level 0..10 (more with `mmax`) that maps to its argument as timm maps it:

  Rotate              30 * m / 10 degrees, random sign       (m = 10: +-30)
  ShearX/Y            0.3 * m / 10, random sign              (m = 10: +-0.3)
  TranslateX/YRel     0.45 * m / 10 of the width/height, random sign (m = 10: +-45%)
  Posterize           int(m / 10 * 4) bits kept              (m = 10: 4; m = 0: 0 = black)
  PosterizeIncreasing 4 - int(m / 10 * 4)                    (m = 10: 0 bits)
  PosterizeOriginal   int(m / 10 * 4) + 4                    (the AutoAugment paper: 4..8)
  Solarize            threshold min(256, int(m / 10 * 256))  (m = 10: 256 = unchanged)
  SolarizeIncreasing  threshold 256 - that                   (m = 10: 0 = all inverted)
  SolarizeAdd         add min(128, int(m / 10 * 110)) below 128
  Color/Contrast/Brightness/Sharpness  factor m / 10 * 1.8 + 0.1   (0.1..1.9, no sign)
  ...Increasing       factor max(0.1, 1 +- 0.9 * m / 10), random sign  (m = 0: 1 = unchanged)
  AutoContrast, Equalize, Invert: no argument.
  Desaturate (color 1 - clip(0.5 + m / 20, 0.5, 1)), GaussianBlur (radius 0.1 + 0.19 m),
  GaussianBlurRand (radius ~ U(0.1, 0.2 m)): the '3a' sets (DeiT III).

Each op of a policy runs with its probability; its magnitude gets noise when `mstd` > 0
(m ~ N(m, mstd), or U(0, m) for mstd > 100) and is clipped to [0, mmax] (mmax = 10 unless
set). Geometric ops fill with `fill` (timm: the dataset's mean pixel) and resample with
`interpolation` ('random' = bilinear or bicubic per op, timm's default). All draws come from
a numpy Generator, in timm's order: apply?, magnitude, sign, filter.

RandAugment strings (timm's `rand_augment_transform`): 'rand' then '-'-separated sections
  m<int> magnitude (10), n<int> ops per image (2), p<float> probability of each op (0.5),
  mstd<float> magnitude std (0; > 100: uniform), mmax<int> upper bound (10),
  inc<int> increasing-severity op set (0), t<name> op set: weights | 3a | 3aw.
The ops are drawn with replacement, or without it for the weighted sets ('weights', '3aw').
Where timm differs: 'inc0' means off here (timm's bool('0') turns it on), and a section
with no number is an error here (timm skips it).
AutoAugment (ImageNet): 'original' (the paper's policy), 'originalr' (with
PosterizeIncreasing), 'v0' (TPU EfficientNet's), 'v0r', '3a'; optional '-mstd<float>'.
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from vision_jax.data import image_ops
from vision_jax.data.image_ops import Step

LEVEL_DENOM = 10.0
_TRANSLATE_PCT = 0.45

RAND_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
            'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
            'TranslateXRel', 'TranslateYRel')
RAND_INCREASING_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                       'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
                       'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
                       'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
# The 't' op sets: a tuple is drawn uniformly, a dict by weight (without replacement).
RAND_OP_SETS = {
    '3a': ('SolarizeIncreasing', 'Desaturate', 'GaussianBlur'),
    '3aw': {'SolarizeIncreasing': 6, 'Desaturate': 6, 'GaussianBlur': 6, 'Rotate': 3,
            'ShearX': 2, 'ShearY': 2, 'PosterizeIncreasing': 1, 'AutoContrast': 1,
            'ColorIncreasing': 1, 'SharpnessIncreasing': 1, 'ContrastIncreasing': 1,
            'BrightnessIncreasing': 1, 'Equalize': 1, 'Invert': 1},
    'weights': {'Rotate': 3, 'ShearX': 2, 'ShearY': 2, 'TranslateXRel': 1,
                'TranslateYRel': 1, 'ColorIncreasing': .25, 'SharpnessIncreasing': .25,
                'AutoContrast': .25, 'SolarizeIncreasing': .05, 'SolarizeAdd': .05,
                'ContrastIncreasing': .05, 'BrightnessIncreasing': .05, 'Equalize': .05,
                'PosterizeIncreasing': .05, 'Invert': .05},
}

# AutoAugment's ImageNet sub-policies: ((op, probability, magnitude), (op, p, m)).
_ORIGINAL = (
    (('PosterizeOriginal', .4, 8), ('Rotate', .6, 9)),
    (('Solarize', .6, 5), ('AutoContrast', .6, 5)), (('Equalize', .8, 8), ('Equalize', .6, 3)),
    (('PosterizeOriginal', .6, 7), ('PosterizeOriginal', .6, 6)),
    (('Equalize', .4, 7), ('Solarize', .2, 4)), (('Equalize', .4, 4), ('Rotate', .8, 8)),
    (('Solarize', .6, 3), ('Equalize', .6, 7)),
    (('PosterizeOriginal', .8, 5), ('Equalize', 1., 2)),
    (('Rotate', .2, 3), ('Solarize', .6, 8)),
    (('Equalize', .6, 8), ('PosterizeOriginal', .4, 6)), (('Rotate', .8, 8), ('Color', .4, 0)),
    (('Rotate', .4, 9), ('Equalize', .6, 2)), (('Equalize', 0., 7), ('Equalize', .8, 8)),
    (('Invert', .6, 4), ('Equalize', 1., 8)), (('Color', .6, 4), ('Contrast', 1., 8)),
    (('Rotate', .8, 8), ('Color', 1., 2)), (('Color', .8, 8), ('Solarize', .8, 7)),
    (('Sharpness', .4, 7), ('Invert', .6, 8)), (('ShearX', .6, 5), ('Equalize', 1., 9)),
    (('Color', .4, 0), ('Equalize', .6, 3)), (('Equalize', .4, 7), ('Solarize', .2, 4)),
    (('Solarize', .6, 5), ('AutoContrast', .6, 5)), (('Invert', .6, 4), ('Equalize', 1., 8)),
    (('Color', .6, 4), ('Contrast', 1., 8)), (('Equalize', .8, 8), ('Equalize', .6, 3)),
)
_V0 = (
    (('Equalize', .8, 1), ('ShearY', .8, 4)), (('Color', .4, 9), ('Equalize', .6, 3)),
    (('Color', .4, 1), ('Rotate', .6, 8)), (('Solarize', .8, 3), ('Equalize', .4, 7)),
    (('Solarize', .4, 2), ('Solarize', .6, 2)), (('Color', .2, 0), ('Equalize', .8, 8)),
    (('Equalize', .4, 8), ('SolarizeAdd', .8, 3)), (('ShearX', .2, 9), ('Rotate', .6, 8)),
    (('Color', .6, 1), ('Equalize', 1., 2)), (('Invert', .4, 9), ('Rotate', .6, 0)),
    (('Equalize', 1., 9), ('ShearY', .6, 3)), (('Color', .4, 7), ('Equalize', .6, 0)),
    (('Posterize', .4, 6), ('AutoContrast', .4, 7)), (('Solarize', .6, 8), ('Color', .6, 9)),
    (('Solarize', .2, 4), ('Rotate', .8, 9)), (('Rotate', 1., 7), ('TranslateYRel', .8, 9)),
    (('ShearX', 0., 0), ('Solarize', .8, 4)), (('ShearY', .8, 0), ('Color', .6, 4)),
    (('Color', 1., 0), ('Rotate', .6, 2)), (('Equalize', .8, 4), ('Equalize', 0., 8)),
    (('Equalize', 1., 4), ('AutoContrast', .6, 2)), (('ShearY', .4, 7), ('SolarizeAdd', .6, 7)),
    (('Posterize', .8, 2), ('Solarize', .6, 10)), (('Solarize', .6, 8), ('Equalize', .6, 1)),
    (('Color', .8, 6), ('Rotate', .4, 5)),
)


def _with_posterize(policy, name: str):
  return tuple(tuple((name if op.startswith('Posterize') else op, p, m) for op, p, m in sub)
               for sub in policy)


AUTOAUGMENT_POLICIES = {
    'original': _ORIGINAL, 'originalr': _with_posterize(_ORIGINAL, 'PosterizeIncreasing'),
    'v0': _V0, 'v0r': _with_posterize(_V0, 'PosterizeIncreasing'),
    '3a': ((('Solarize', 1., 5),), (('Desaturate', 1., 10),), (('GaussianBlurRand', 1., 10),)),
}

_SIGNED = {'Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel', 'ColorIncreasing',
           'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing'}
_ENHANCE = {'Color': 'color', 'Contrast': 'contrast', 'Brightness': 'brightness',
            'Sharpness': 'sharpness'}
_NO_ARGUMENT = {'AutoContrast': 'autocontrast', 'Equalize': 'equalize', 'Invert': 'invert'}
OP_NAMES = frozenset(
    set(_SIGNED) | set(_ENHANCE) | set(_NO_ARGUMENT)
    | {'Posterize', 'PosterizeIncreasing', 'PosterizeOriginal', 'Solarize',
       'SolarizeIncreasing', 'SolarizeAdd', 'Desaturate', 'GaussianBlur', 'GaussianBlurRand'})


def op_arguments(name: str, level: float, negate: bool = False,
                 size: tuple[int, int] = (224, 224)) -> tuple[str, tuple]:
  """(image_ops name, args) of timm op `name` at magnitude `level` on a (width, height)
  image; `negate` is the drawn sign of the signed ops. GaussianBlurRand returns its
  blur factor in 0..1 (the radius is drawn from it by `plan_op`)."""
  sign = -1.0 if negate else 1.0
  frac = level / LEVEL_DENOM
  if name in _NO_ARGUMENT:
    return _NO_ARGUMENT[name], ()
  if name == 'Rotate':
    return 'rotate', (sign * frac * 30.0,)
  if name in ('ShearX', 'ShearY'):
    return 'shear_' + name[-1].lower(), (sign * frac * 0.3,)
  if name in ('TranslateXRel', 'TranslateYRel'):
    axis = name[len('Translate')].lower()
    extent = size[0] if axis == 'x' else size[1]
    return 'translate_' + axis, (sign * frac * _TRANSLATE_PCT * extent,)
  if name.startswith('Posterize'):
    bits = int(frac * 4)
    return 'posterize', ({'Posterize': bits, 'PosterizeIncreasing': 4 - bits,
                          'PosterizeOriginal': bits + 4}[name],)
  if name in ('Solarize', 'SolarizeIncreasing'):
    threshold = min(256, int(frac * 256))
    return 'solarize', (threshold if name == 'Solarize' else 256 - threshold,)
  if name == 'SolarizeAdd':
    return 'solarize_add', (min(128, int(frac * 110)),)
  if name in _ENHANCE:
    return _ENHANCE[name], (frac * 1.8 + 0.1,)
  if name.endswith('Increasing') and name[:-len('Increasing')] in _ENHANCE:
    return _ENHANCE[name[:-len('Increasing')]], (max(0.1, 1.0 + sign * frac * 0.9),)
  if name == 'Desaturate':
    amount = max(0.5, min(1.0, 0.5 + 0.5 * frac))
    return 'color', (min(1.0, max(0.0, 1.0 - amount)),)
  if name == 'GaussianBlur':
    return 'gaussian_blur', (max(0.1, min(2.0, 0.1 + 1.9 * frac)),)
  if name == 'GaussianBlurRand':
    return 'gaussian_blur', (max(0.0, min(1.0, frac)),)
  raise ValueError(f'Unknown op {name!r}; known: {", ".join(sorted(OP_NAMES))}.')


def sample_magnitude(magnitude: float, std: float, upper: float,
                     rng: np.random.Generator) -> float:
  """timm's magnitude noise: N(magnitude, std) (U(0, magnitude) if std is inf), in [0, upper]."""
  if std == math.inf:
    magnitude = rng.uniform(0.0, magnitude)
  elif std > 0:
    magnitude = rng.normal(magnitude, std)
  return max(0.0, min(float(magnitude), upper))


def plan_op(name: str, prob: float, magnitude: float, rng: np.random.Generator,
            size: tuple[int, int], *, magnitude_std: float = 0.0, magnitude_max: float = 10.0,
            interpolation: str = 'random') -> Step | None:
  """The step of one policy op on one image, or None when its probability skips it."""
  if prob < 1.0 and rng.random() > prob:
    return None
  level = sample_magnitude(magnitude, magnitude_std, magnitude_max, rng)
  negate = name in _SIGNED and rng.random() < 0.5
  op, args = op_arguments(name, level, negate, size)
  if name == 'GaussianBlurRand':
    args = (0.1 + (2.0 * args[0] - 0.1) * rng.random(),)
  resample = (image_ops.choose_resample(interpolation, rng)
              if op in image_ops.GEOMETRIC else None)
  return Step(op, args, resample)


@dataclasses.dataclass(frozen=True)
class RandAugment(image_ops.Policy):
  """N ops per image drawn from `ops` (uniformly with replacement, or by `weights` without),
  each applied with probability `prob` at magnitude `magnitude` (+ noise)."""
  ops: tuple[str, ...] = RAND_OPS
  num_ops: int = 2
  magnitude: float = 10.0
  prob: float = 0.5
  magnitude_std: float = 0.0
  magnitude_max: float = 10.0
  weights: tuple[float, ...] | None = None
  fill: tuple[int, ...] = (128, 128, 128)
  interpolation: str = 'random'

  def plan(self, rng: np.random.Generator, size: tuple[int, int]) -> list[Step]:
    if self.weights is None:
      chosen = rng.integers(0, len(self.ops), self.num_ops)
    else:
      p = np.asarray(self.weights, np.float64)
      chosen = rng.choice(len(self.ops), self.num_ops, replace=False, p=p / p.sum())
    steps = (plan_op(self.ops[i], self.prob, self.magnitude, rng, size,
                     magnitude_std=self.magnitude_std, magnitude_max=self.magnitude_max,
                     interpolation=self.interpolation) for i in chosen)
    return [step for step in steps if step is not None]


@dataclasses.dataclass(frozen=True)
class AutoAugment(image_ops.Policy):
  """One sub-policy per image, drawn uniformly; each of its ops runs with its probability."""
  policy: tuple = _ORIGINAL
  magnitude_std: float = 0.0
  fill: tuple[int, ...] = (128, 128, 128)
  interpolation: str = 'random'

  def plan(self, rng: np.random.Generator, size: tuple[int, int]) -> list[Step]:
    sub_policy = self.policy[int(rng.integers(len(self.policy)))]
    steps = (plan_op(name, prob, magnitude, rng, size, magnitude_std=self.magnitude_std,
                     interpolation=self.interpolation) for name, prob, magnitude in sub_policy)
    return [step for step in steps if step is not None]


_RAND_FORM = ("the form is 'rand' then '-'-separated sections: m<int> magnitude (10), n<int> "
              'ops per image (2), p<float> probability of each op (0.5), mstd<float> '
              'magnitude noise std (0; > 100 = uniform in [0, m]), mmax<int> magnitude upper '
              "bound (10), inc<0|1> increasing-severity ops (0), t<weights|3a|3aw> op set; "
              "e.g. 'rand-m9-mstd0.5-inc1'")


def _split_section(section: str) -> tuple[str, str]:
  """'mstd0.5' -> ('mstd', '0.5'): the key is what precedes the first digit (timm)."""
  parts = re.split(r'(\d.*)', section, maxsplit=1)
  if len(parts) < 2 or not parts[0]:
    raise ValueError(f'section {section!r} is not a key followed by a number')
  return parts[0], parts[1]


def _number(section: str, value: str, kind: type) -> int | float:
  try:
    return kind(value)
  except ValueError:
    raise ValueError(f'section {section!r}: {value!r} is not '
                     f'{"an int" if kind is int else "a number"}') from None


def parse_randaugment(spec: str, *, fill: tuple[int, ...] = (128, 128, 128),
                      interpolation: str = 'random') -> RandAugment:
  """A RandAugment from a timm string such as 'rand-m9-mstd0.5-inc1'; ValueError if bad."""
  sections = spec.split('-')
  if sections[0] != 'rand':
    raise ValueError(f'it must start with "rand"; {_RAND_FORM}.')
  kw = {'magnitude': 10.0, 'num_ops': 2, 'prob': 0.5, 'magnitude_std': 0.0,
        'magnitude_max': 10.0}
  increasing, op_set = False, None
  numeric = {'m': ('magnitude', int), 'n': ('num_ops', int), 'p': ('prob', float),
             'mstd': ('magnitude_std', float), 'mmax': ('magnitude_max', int)}
  for section in sections[1:]:
    try:
      if section.startswith('t'):
        op_set = section[1:]
        if op_set not in RAND_OP_SETS:
          raise ValueError(f'op set {op_set!r} is not one of {", ".join(RAND_OP_SETS)}')
        continue
      key, value = _split_section(section)
      if key == 'inc':
        increasing = _number(section, value, int) != 0
      elif key in numeric:
        field, kind = numeric[key]
        kw[field] = _number(section, value, kind)
      else:
        raise ValueError(f'unknown section {section!r}')
    except ValueError as e:
      raise ValueError(f'{e}; {_RAND_FORM}.') from None
  if kw['magnitude_std'] > 100:
    kw['magnitude_std'] = math.inf
  kw['magnitude_max'] = kw['magnitude_max'] or LEVEL_DENOM  # timm: mmax0 = the default.
  if kw['num_ops'] < 1 or not 0 <= kw['prob'] <= 1 or kw['magnitude'] < 0 \
     or kw['magnitude_std'] < 0:
    raise ValueError(f'need n >= 1, 0 <= p <= 1, m >= 0 and mstd >= 0; {_RAND_FORM}.')
  if kw['magnitude'] > kw['magnitude_max'] or kw['magnitude_max'] < 0:
    raise ValueError(f"m{kw['magnitude']:g} is above the largest magnitude mmax"
                     f"{kw['magnitude_max']:g}, so it would be clipped to that; lower m, or "
                     f'raise the bound with an mmax section; {_RAND_FORM}.')
  ops = RAND_OP_SETS.get(op_set) or (RAND_INCREASING_OPS if increasing else RAND_OPS)
  weights = None
  if isinstance(ops, dict):
    ops, weights = tuple(ops), tuple(float(w) for w in ops.values())
    if kw['num_ops'] > len(ops):
      raise ValueError(f"n{kw['num_ops']} exceeds the {len(ops)} ops of the weighted set "
                       f'{op_set!r} (drawn without replacement); {_RAND_FORM}.')
  return RandAugment(ops=ops, weights=weights, fill=fill, interpolation=interpolation, **kw)


def parse_autoaugment(spec: str, *, fill: tuple[int, ...] = (128, 128, 128),
                      interpolation: str = 'random') -> AutoAugment:
  """An AutoAugment from 'original', 'v0', ... with an optional '-mstd<float>'."""
  form = (f'the form is a policy name ({", ".join(AUTOAUGMENT_POLICIES)}) with an optional '
          "'-mstd<float>' magnitude noise, e.g. 'original' or 'v0-mstd0.5'")
  name, *sections = spec.split('-')
  if name not in AUTOAUGMENT_POLICIES:
    raise ValueError(f'unknown policy {name!r}; {form}.')
  magnitude_std = 0.0
  for section in sections:
    try:
      key, value = _split_section(section)
      if key != 'mstd':
        raise ValueError(f'unknown section {section!r}')
      magnitude_std = _number(section, value, float)
    except ValueError as e:
      raise ValueError(f'{e}; {form}.') from None
  return AutoAugment(policy=AUTOAUGMENT_POLICIES[name], magnitude_std=magnitude_std,
                     fill=fill, interpolation=interpolation)
