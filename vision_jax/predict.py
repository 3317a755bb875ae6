"""--mode=predict: what the run's task predicts for image files, with its own eval
preprocessing.

  python -m vision_jax.main --mode=predict --workdir W --images a.png b.jpg DIR [--top_k 3]
      [--output OUT]

The task decides what is written (vision_jax/tasks: `Task.predict`): class probabilities
(one line per image, OUT a JSON file), masks (OUT a folder of PNGs and predictions.json),
and so on. This module holds what they share: finding the image files (folders are searched
recursively, in sorted order), reading them with PIL, giving them the model's channel
count, preprocessing them by the very function evaluation used (the run's
`eval_transform.EvalTransform`, read from dataset.json: e.g. a bilinear resize to the
training size, or torchvision's exact Resize(256) + CenterCrop(224)), batching them, and
failing at the end if any failed. Each prediction states the transform (`"preprocessing"`:
its `to_json()`).

Channels are converted only where no information is lost: greyscale -> RGB by repeating
it, a palette image to its colours, RGB whose three channels are equal -> greyscale, and a
fully opaque alpha channel is dropped; a 16-bit image keeps its high byte, as in training
(`decode.to_8bit`). A colour image for a greyscale model, real transparency, or CMYK
images are a per-file error naming what to do: converting
them means choosing weights or a background, which is the user's decision, not ours. The
one exception is a run that converted channels itself (config.dataset.channels set): its
eval preprocessing converts colour to grey, and predict applies it like evaluation did.

A file that cannot be read or converted is reported on stderr and in the output (as
{"image": path, "error": message}, in its place); every other image is still predicted.
If any failed, the command ends with exit code 2 after writing everything else.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from vision_jax.data import decode
from vision_jax.data.eval_transform import EvalTransform
from vision_jax.errors import UserError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp',
                    '.ppm', '.pgm', '.pbm')
_CHANNEL_NAMES = {1: 'greyscale', 3: 'RGB colour'}
_MAX_BATCH = 64


class ImageError(UserError):
  """One image that cannot be used as it is; the message says why and what to do."""


class PredictError(UserError):
  """Some of the given images could not be predicted (the others were)."""


@dataclasses.dataclass
class Item:
  """One input: its path and either its preprocessed HWC uint8 image or an error."""
  path: str
  image: np.ndarray | None = None
  error: str | None = None


def expand(inputs: Sequence[str]) -> list[Item]:
  """Files as given; folders -> their image files (recursive, sorted); missing -> errors."""
  items = []
  for given in inputs:
    if os.path.isdir(given):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(given)
                     for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
      items += [Item(p) for p in found] or [Item(given, error=(
          f'folder has no image files ({", ".join(IMAGE_EXTENSIONS)})'))]
    elif not os.path.exists(given):
      items.append(Item(given, error='no such file or folder'))
    else:
      items.append(Item(given))
  return items


def _channels(image: Image.Image, channels: int, run_converts: bool = False) -> np.ndarray:
  """HWC uint8 with `channels` channels, converted only where nothing is lost (or, if
  `run_converts`, left to the run's own preprocessing, which converts like training did)."""
  if image.mode in ('P', 'PA'):
    image = image.convert('RGBA')
  elif image.mode == '1':
    image = image.convert('L')
  elif image.mode.startswith('I;16'):
    image = decode.to_8bit(image)  # The mapping training used.
  if image.mode not in ('L', 'LA', 'RGB', 'RGBA'):
    raise ImageError(f'pixel format {image.mode!r} is not 8-bit greyscale or RGB (CMYK, '
                     '32-bit and other formats need a conversion only you can choose). Save '
                     'it as an 8-bit greyscale or RGB PNG.')
  array = np.asarray(image)
  array = array[..., None] if array.ndim == 2 else array
  if array.shape[-1] in (2, 4):
    if np.any(array[..., -1] != 255):
      raise ImageError('has transparent pixels; flatten it onto the background you mean '
                       '(e.g. white) and save it without an alpha channel.')
    array = array[..., :-1]
  have = array.shape[-1]
  if have == channels or run_converts:
    return array
  if have == 1 and channels == 3:
    return np.repeat(array, 3, axis=-1)
  if have == 3 and channels == 1 and np.all(array == array[..., :1]):
    return array[..., :1]
  raise ImageError(
      f'has {have} channels ({_CHANNEL_NAMES.get(have, "?")}) but the model was trained on '
      f'{channels}-channel ({_CHANNEL_NAMES.get(channels, "?")}) images. It is not '
      'converted silently; convert it yourself if that is what you mean, e.g. '
      f"PIL.Image.open(path).convert('{'L' if channels == 1 else 'RGB'}').")


@dataclasses.dataclass(frozen=True)
class EvalPreprocess:
  """The run's eval transform (from dataset.json), after the lossless channel checks."""
  transform: EvalTransform
  channels: int
  run_converts: bool

  @classmethod
  def of(cls, loaded) -> 'EvalPreprocess':
    convert = loaded.config.dataset.channels  # The run converted channels itself.
    return cls(EvalTransform.from_dataset_json(loaded.dataset, convert),
               loaded.image_shape[2], bool(convert))

  def __call__(self, image: Image.Image) -> np.ndarray:
    array = _channels(image, self.channels, self.run_converts)
    return np.ascontiguousarray(self.transform(array))


def load_image(path: str, prepare: EvalPreprocess) -> np.ndarray:
  """An image file -> the eval preprocessing's HWC uint8 array, or ImageError."""
  return prepare(open_image(path))


def read_image(path: str, channels: int) -> np.ndarray:
  """An image file -> HWC uint8 at its own size with `channels`, or ImageError (for tasks
  that map their outputs back to the image: masks, boxes)."""
  return _channels(open_image(path), channels)


def open_image(path: str) -> Image.Image:
  """An image file, loaded and EXIF-transposed, or ImageError."""
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)  # Photos: pixels as the camera meant them.
      image.load()
  except UnidentifiedImageError as e:
    raise ImageError('is not an image file PIL can read (is it truncated, or another '
                     'format?).') from e
  except Exception as e:  # pylint: disable=broad-except
    # PIL reports a damaged or oversized file as OSError, SyntaxError, ValueError, ...
    raise ImageError(f'cannot be read ({type(e).__name__}: {e}).') from e
  return image


def read_images(inputs: Sequence[str], loaded) -> list[Item]:
  """Every input, in order; unreadable ones carry their error instead of an image."""
  prepare = EvalPreprocess.of(loaded)
  items = expand(inputs)
  for item in items:
    if item.error is None:
      try:
        item.image = load_image(item.path, prepare)
      except ImageError as e:
        item.error = str(e)
  return items


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def batched_logits(loaded, images: np.ndarray) -> np.ndarray:
  """Logits in chunks padded to a power of two, so a few shapes cover any image count."""
  out = []
  for start in range(0, len(images), _MAX_BATCH):
    chunk = images[start:start + _MAX_BATCH]
    size = 1 << (len(chunk) - 1).bit_length()
    padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:],
                                             chunk.dtype)])
    out.append(loaded.logits(padded)[:len(chunk)])
  return np.concatenate(out)


def check_failures(results: list[dict], where: str) -> None:
  """Raises PredictError if any image failed ({"image", "error"} rows); `where` names the
  files the other images' results went to."""
  failed = [r['image'] for r in results if 'error' in r]
  if failed:
    raise PredictError(f'{len(failed)} of {len(results)} images could not be predicted '
                       f'({", ".join(failed[:5])}{", ..." if len(failed) > 5 else ""}); '
                       f'the others were ({where}).')


def run(config: ml_collections.ConfigDict, workdir: str, inputs: Sequence[str], *,
        output: str | None = None, top_k: int = 5, task=None) -> list[dict]:
  """--mode=predict: the run's task writes what it predicts for `inputs` (class
  probabilities, masks, ...), and fails if any image did. `task`: the run's task (main
  builds it once)."""
  from vision_jax import inference  # pylint: disable=g-import-not-at-top
  from vision_jax import tasks  # pylint: disable=g-import-not-at-top
  task = task or tasks.build(config)
  if not inputs and task.takes_images:
    raise UserError('--mode=predict needs images: pass --images a.png b.jpg DIR ...')
  loaded = inference.load(workdir, config, task=task)
  return loaded.task.predict(loaded, inputs, output=output, top_k=top_k)
