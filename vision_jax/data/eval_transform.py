"""The eval transform: one image of any size -> the model's uint8 input, as one object.

Evaluation's datasets, --mode=predict and the export's `Served.prepare` all run the same
`EvalTransform`, built once from the config (`from_config`), written to the workdir's
dataset.json by `input_pipeline.Data.describe` (`to_json`) and read back from there by
predict and export (`from_dataset_json`), so a served image goes through exactly the
function evaluation measured. `transform(uint8 HWC image) -> uint8 image_size x
image_size x C image`; `transform.example_fn()` is the same thing as a per-example
function of the input pipeline (it also takes still-encoded images).

Two kinds (config.dataset.eval_preprocess):

  Our recipes, fast approximations (preprocess.py, OpenCV: bilinear, area averaging where
  the image shrinks 2x or more; the crop box rounded to whole pixels):
    resize          the whole image to image_size x image_size.
    center_crop     the central square of side crop_fraction x the shorter side, resized
                    once; JPEGs are decoded at the scale the crop needs (DCT scaling).
    fit_and_pad     segmentation: shrink (aspect kept) until it fits, pad bottom/right
                    with `fill` (segmentation_preprocess.fit_and_pad).
    resize_and_pad  detection: shorter side to `min_size` with the longer at most
                    `max_size` (min_size 0: shrink to fit max_size), never past image_size,
                    pad bottom/right with `fill` (detection_transforms.resize_and_pad).

  Reference pipelines, reproduced exactly (PIL, as the references run on PIL images; a
  still-encoded image decoded whole by PIL, as their loaders do):
    torchvision_v1  torchvision's IMAGENET1K_V1 weights: Resize(256) + CenterCrop(224).
    torchvision_v2  torchvision's IMAGENET1K_V2 weights: Resize(232) + CenterCrop(224).
    timm            timm's eval transform (transforms_factory.transforms_imagenet_eval,
                    crop_mode 'center'): Resize(floor(image_size / crop_pct)) with the
                    weights' interpolation (config.dataset.eval_interpolation, '' =
                    bicubic, timm's default) + CenterCrop(image_size); crop_pct is
                    config.dataset.crop_fraction.
  Resize(s) is torchvision's: the shorter side becomes s and the longer int(s x long /
  short) (truncated), resampled by PIL's `Image.resize` with the named filter (bilinear
  and bicubic are antialiased: the filter widens with the scale factor when shrinking);
  CenterCrop(c) cuts c x c at (int(round((H - c) / 2)), int(round((W - c) / 2))). At
  another image_size, torchvision's shorter side scales with it: image_size x 256 // 224.

Channels are made explicit last, as the recipes do (`channels`: 3 repeats a grey image,
1 turns RGB into luma, 0 keeps what comes); a grey photo thus matches a reference fed
`Image.open(f).convert('RGB')`, as torchvision's and timm's image loaders do.
Needs numpy and PIL only (our recipes import OpenCV when they first run).
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Callable

import numpy as np
from PIL import Image

from vision_jax.errors import ConfigError

OURS = ('resize', 'center_crop')
EXACT = ('torchvision_v1', 'torchvision_v2', 'timm')
PADDED = ('fit_and_pad', 'resize_and_pad')  # The dense tasks': an image with its labels.
NAMES = OURS + PADDED + EXACT
# The shorter side torchvision's weights are resized to before their 224 crop.
_TORCHVISION_RESIZE = {'torchvision_v1': 256, 'torchvision_v2': 232}
INTERPOLATIONS = {'nearest': Image.Resampling.NEAREST, 'bilinear': Image.Resampling.BILINEAR,
                  'bicubic': Image.Resampling.BICUBIC, 'lanczos': Image.Resampling.LANCZOS,
                  'box': Image.Resampling.BOX, 'hamming': Image.Resampling.HAMMING}


class EvalTransformError(ConfigError):
  """An eval transform that cannot work; the message names the config key and the fix."""


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """The whole eval transform: `transform(uint8 HWC image) -> uint8 model input`.

  name: one of NAMES (module docstring). image_size: the side of the output.
  crop_fraction: center_crop's share of the shorter side; timm's crop_pct.
  interpolation: the PIL filter of the exact pipelines (torchvision's: bilinear); our
  recipes are bilinear (OpenCV). channels: 0 keeps the image's, 1 or 3 converts.
  fill: the padding colour of fit_and_pad / resize_and_pad (0..255 per channel).
  min_size, max_size: resize_and_pad's shorter side and cap on the longer (0: none).
  """
  name: str
  image_size: int
  crop_fraction: float = 0.875
  interpolation: str = 'bilinear'
  channels: int = 0
  fill: tuple[int, ...] = ()
  min_size: int = 0
  max_size: int = 0

  def __post_init__(self):
    problems = []
    if self.name not in NAMES:
      problems.append(f'unknown eval transform {self.name!r}; use one of {", ".join(NAMES)}.')
    if not isinstance(self.image_size, int) or self.image_size < 1:
      problems.append(f'image_size={self.image_size!r}: use a positive number of pixels.')
    if not 0 < self.crop_fraction <= 1:
      problems.append(f'crop_fraction={self.crop_fraction}: use a value in (0, 1].')
    allowed = tuple(INTERPOLATIONS) if self.name == 'timm' else ('bilinear',)
    if self.interpolation not in allowed:
      problems.append(f'interpolation={self.interpolation!r}: {self.name} resamples with '
                      f'{" | ".join(allowed)}.')
    if (self.min_size or self.max_size) and self.name != 'resize_and_pad':
      problems.append(f'min_size / max_size are resize_and_pad\'s, not {self.name}\'s.')
    if not 0 <= self.min_size <= 16384 or not 0 <= self.max_size <= self.image_size:
      problems.append(f'min_size={self.min_size}, max_size={self.max_size}: use 0..16384 '
                      f'and 0..image_size ({self.image_size}).')
    if self.channels not in (0, 1, 3):
      problems.append(f'channels={self.channels!r}: use 0 (as given), 1 or 3.')
    if problems:
      raise EvalTransformError('Eval transform: ' + ' '.join(problems))

  # --------------------------------------------------------------------------- what it is

  @property
  def exact(self) -> bool:
    """Whether this reproduces a reference pipeline pixel for pixel (module docstring)."""
    return self.name in EXACT

  @property
  def resize_size(self) -> int:
    """The exact pipelines' shorter side before the centre crop (0 for our recipes)."""
    if self.name in _TORCHVISION_RESIZE:
      return self.image_size * _TORCHVISION_RESIZE[self.name] // 224
    if self.name == 'timm':
      return math.floor(self.image_size / self.crop_fraction)  # As timm computes it.
    return 0

  def describe(self) -> str:
    """What happens to an image, in words precise enough to reimplement it."""
    s, f, r = self.image_size, self.crop_fraction, self.resize_size
    if self.name == 'resize':
      text = (f'resize to {s}x{s} (OpenCV bilinear, area averaging where it shrinks 2x or '
              'more); a fast approximation')
    elif self.name == 'center_crop':
      text = (f'scale the shorter side to {s / f:g} px ({s} / {f:g}) and take the central '
              f'{s}x{s}: one OpenCV resample (bilinear, area at >= 2x) of that region, its '
              'box rounded to whole pixels; a fast approximation')
    elif self.name == 'fit_and_pad':
      text = (f'an image larger than {s}x{s} is shrunk (aspect kept, bilinear) until its '
              f'longer side is {s}; then it is padded at the bottom and right to {s}x{s} '
              f'with {list(self.fill)} (the per-pixel logits of the padding are not part of '
              'the image)')
    elif self.name == 'resize_and_pad':
      cap = self.max_size or s
      first = (f'resize (aspect kept, PIL bilinear) by min({self.min_size} / shorter side, '
               f'{cap} / longer side)' if self.min_size else
               f'an image larger than {cap} on its longer side is shrunk (aspect kept, PIL '
               f'bilinear) until it is {cap}')
      text = (f'{first}, never past {s} on either side, sides rounded to whole pixels; then '
              f'padded at the bottom and right to {s}x{s} with {list(self.fill)}')
    else:
      source = (f'torchvision {self.name[-2:].upper()} (IMAGENET1K_{self.name[-2:].upper()} '
                'weights)' if self.name != 'timm' else
                f"timm's eval transform (crop_pct {f:g}: floor({s} / {f:g}) = {r})")
      text = (f'exact {source}: resize the shorter side to {r} and the longer to int({r} x '
              f'long / short) with PIL {self.interpolation} (antialiased), then the central '
              f'{s}x{s} at offset (int(round((H - {s}) / 2)), int(round((W - {s}) / 2))); '
              f'= Resize({r}) + CenterCrop({s}) on a PIL image')
    if self.channels:
      text += f'; then {self.channels} channel{"s" * (self.channels > 1)}'
    return text + '; values 0..255'

  def to_json(self) -> dict[str, Any]:
    """The fields, plus `exact`, `resize_size` and `description` for readers of the file."""
    out = dataclasses.asdict(self)
    out['fill'] = list(self.fill)
    out.update(exact=self.exact, resize_size=self.resize_size, description=self.describe())
    return out

  @classmethod
  def from_json(cls, spec: dict[str, Any]) -> 'EvalTransform':
    """The transform `to_json` wrote (the derived fields are recomputed, not read)."""
    return cls(name=spec['name'], image_size=int(spec['image_size']),
               crop_fraction=float(spec['crop_fraction']),
               interpolation=spec['interpolation'], channels=int(spec['channels']),
               fill=tuple(int(v) for v in spec.get('fill', ())),
               min_size=int(spec.get('min_size', 0)), max_size=int(spec.get('max_size', 0)))

  # --------------------------------------------------------------------------- building it

  @classmethod
  def from_config(cls, ds_cfg, image_size: int, channels: int) -> 'EvalTransform':
    """config.dataset's eval transform at `image_size` (the eval size), giving `channels`
    channels: eval_preprocess ('' = the train recipe's eval twin), crop_fraction and
    eval_interpolation."""
    from vision_jax.data import preprocess  # pylint: disable=g-import-not-at-top
    check_config(ds_cfg)
    name = ds_cfg.eval_preprocess or preprocess.EVAL_RECIPE.get(ds_cfg.preprocess, '')
    if not name:
      raise EvalTransformError(
          f'config.dataset.preprocess={ds_cfg.preprocess!r} has no eval twin: set '
          f'config.dataset.eval_preprocess to one of {", ".join(OURS + EXACT)}.')
    interpolation = ds_cfg.eval_interpolation or ('bicubic' if name == 'timm' else
                                                  'bilinear')
    return cls(name, image_size, crop_fraction=float(ds_cfg.crop_fraction),
               interpolation=interpolation, channels=channels)

  @classmethod
  def from_dataset_json(cls, dataset: dict, convert_channels: int = 0) -> 'EvalTransform':
    """The transform a workdir's dataset.json records. Files written before it did
    (eval_preprocess + crop_fraction, at the model's image_size) give our recipe, converting
    to `convert_channels` (the run's config.dataset.channels; 0: as given)."""
    spec = dataset.get('eval_transform')
    if isinstance(spec, dict):
      return cls.from_json(spec)
    name = dataset.get('eval_preprocess', 'resize')
    fill = tuple(int(round(255 * m)) for m in dataset['mean']) if name == 'fit_and_pad' else ()
    return cls(name, int(dataset['image_size']),
               crop_fraction=float(dataset.get('crop_fraction', 0.875)),
               channels=int(convert_channels), fill=fill)

  # --------------------------------------------------------------------------- running it

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """One HWC uint8 image (1 or 3 channels, any size) -> the model's uint8 input."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
      raise ValueError(f'The eval transform takes one uint8 HWC image with 1 or 3 channels; '
                       f'got {image.dtype} {image.shape}.')
    if self.name in OURS:
      return self._recipe()({'image': image, 'label': 0}, None)['image']
    if self.name == 'fit_and_pad':
      from vision_jax.data import segmentation_preprocess  # pylint: disable=g-import-not-at-top
      image = self._to_channels(image)
      return segmentation_preprocess.fit_and_pad(
          image, np.zeros(image.shape[:2], np.uint8), self.image_size,
          fill=self.fill or 0)[0]
    if self.name == 'resize_and_pad':
      from vision_jax.data import detection_transforms  # pylint: disable=g-import-not-at-top
      return detection_transforms.resize_and_pad(
          self._to_channels(image), image_size=self.image_size, min_size=self.min_size,
          max_size=self.max_size, fill=self.fill or 0)[0]
    return self._to_channels(self._resize_center_crop(
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)))

  def _to_channels(self, image: np.ndarray) -> np.ndarray:
    if not self.channels or image.shape[-1] == self.channels:
      return image
    from vision_jax.data import preprocess  # pylint: disable=g-import-not-at-top
    return preprocess.to_channels(image, self.channels)

  def _resize_center_crop(self, pil: Image.Image) -> np.ndarray:
    """torchvision's Resize(resize_size) + CenterCrop(image_size) of an 'L' or 'RGB' PIL
    image, as an HWC array."""
    width, height = pil.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = self.resize_size, int(self.resize_size * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    if size != (width, height):
      pil = pil.resize(size, INTERPOLATIONS[self.interpolation])
    c, (width, height) = self.image_size, pil.size
    top, left = int(round((height - c) / 2.0)), int(round((width - c) / 2.0))
    out = np.asarray(pil.crop((left, top, left + c, top + c)))
    return out[..., None] if out.ndim == 2 else out

  def _recipe(self):
    from vision_jax.data import preprocess  # pylint: disable=g-import-not-at-top
    return preprocess.make_preprocess(self.name, self.image_size, train=False,
                                      channels=self.channels,
                                      crop_fraction=self.crop_fraction)

  def example_fn(self) -> Callable:
    """This transform as the input pipeline's per-example function `fn(example, rng) ->
    {'image', 'label'}` (picklable, for worker processes). Our recipes are preprocess.
    Recipe itself (still-encoded JPEGs decoded at the scale the crop needs; an in-memory
    split already at size is a gather); the exact pipelines decode at full size, as the
    references do, and run `self`."""
    if self.name in OURS:
      return self._recipe()
    if self.name in PADDED:
      raise EvalTransformError(f'{self.name} moves labels (a mask, boxes) with the image: '
                               "the dense task's joint transform is its per-example "
                               'function.')
    return self._example

  def _example(self, example: dict, rng: np.random.Generator | None) -> dict:
    del rng  # Deterministic.
    from vision_jax.data import decode  # pylint: disable=g-import-not-at-top
    image = example['image']
    if isinstance(image, decode.Encoded):  # Decoded whole by PIL, as the references' loaders.
      try:
        with Image.open(io.BytesIO(image.data)) as pil:
          pil.load()
          pil = pil if pil.mode in ('L', 'RGB') else decode.to_8bit(pil)
      except Exception as e:  # pylint: disable=broad-except  # PIL's many failure types.
        raise decode.corrupt(image.name, e) from e
      image = self._to_channels(self._resize_center_crop(pil))
    else:
      image = self(image)
    return {'image': image, 'label': np.asarray(example['label'], np.int32)}


def check_config(ds_cfg) -> None:
  """config.dataset's eval keys, checkable before any data is read."""
  name, interpolation = ds_cfg.eval_preprocess, ds_cfg.eval_interpolation
  if name not in ('',) + OURS + EXACT:
    raise EvalTransformError(
        f'config.dataset.eval_preprocess={name!r}: use "" (the train recipe\'s eval twin), '
        f'{", ".join(OURS)} (ours, fast) or {", ".join(EXACT)} (the reference pipelines, '
        'exact).')
  if interpolation and name != 'timm' and interpolation != 'bilinear':
    raise EvalTransformError(
        f'config.dataset.eval_interpolation={interpolation!r} applies to '
        f'eval_preprocess=\'timm\' only (eval_preprocess={name!r} is bilinear). Set it to '
        "'' or use eval_preprocess='timm'.")
  if interpolation and interpolation not in INTERPOLATIONS:
    raise EvalTransformError(
        f'config.dataset.eval_interpolation={interpolation!r}: use \'\' (bicubic, timm\'s '
        f'default) or the weights\' own: {", ".join(INTERPOLATIONS)}.')
