"""--mode=predict: class probabilities for image files, with the run's own eval preprocessing.

  python -m vision_jax.main --mode=predict --workdir W --images a.png b.jpg DIR [--top_k 3]
      [--output preds.json]

Each image is read with PIL, given the model's channel count, preprocessed by the very
function evaluation used (the run's `eval_transform.EvalTransform`, read from dataset.json:
e.g. a bilinear resize to the training size, or torchvision's exact Resize(256) +
CenterCrop(224)) and normalised on device with the run's mean and std. Folders are searched
recursively for image files, in sorted order. Each prediction states the transform
(`"preprocessing"`: its `to_json()`).

Channels are converted only where no information is lost: greyscale -> RGB by repeating
it, a palette image to its colours, RGB whose three channels are equal -> greyscale, and a
fully opaque alpha channel is dropped; a 16-bit image keeps its high byte, as in training
(`decode.to_8bit`). A colour image for a greyscale model, real transparency, or CMYK
images are a per-file error naming what to do: converting
them means choosing weights or a background, which is the user's decision, not ours. The
one exception is a run that converted channels itself (config.dataset.channels set): its
eval preprocessing converts colour to grey, and predict applies it like evaluation did.

A file that cannot be read or converted is reported on stderr and in the JSON (as
{"image": path, "error": message}, in its place); every other image is still predicted.
If any failed, the command ends with exit code 2 after writing everything else.

A segmentation run writes masks instead (`write_masks`): OUT (--output, default
W/predict/) gets one palette PNG per image, <stem>.png, whose pixel values are the
predicted classes and whose colours are PASCAL VOC's (mask_images.save_mask_png), at the
input image's own size, and predictions.json: [{"image", "mask", "histogram": {class name:
pixels}}, or {"image", "error"}]. Each image gets the run's eval transform (fit and pad to
the training size, segmentation_preprocess.fit_and_pad); the prediction of its unpadded
region is resized back to the image with nearest neighbour.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from vision_jax import mask_images
from vision_jax.data import decode
from vision_jax.data import segmentation_preprocess
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
    convert = loaded.config.dataset.get('channels', 0)  # The run converted channels itself.
    return cls(EvalTransform.from_dataset_json(loaded.dataset, convert),
               loaded.image_shape[2], bool(convert))

  def __call__(self, image: Image.Image) -> np.ndarray:
    array = _channels(image, self.channels, self.run_converts)
    return np.ascontiguousarray(self.transform(array))


def load_image(path: str, prepare: EvalPreprocess) -> np.ndarray:
  """An image file -> the eval preprocessing's HWC uint8 array, or ImageError."""
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
  return prepare(image)


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


def top_k_entries(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[dict]:
  order = np.argsort(-probs, kind='stable')[:k]
  return [{'index': int(i), 'label': str(class_names[i]), 'probability': float(probs[i])}
          for i in order]


def predict(loaded, inputs: Sequence[str], top_k: int = 5) -> list[dict]:
  """[{"image", "top_k": [{"index", "label", "probability"}], "preprocessing"} or
  {"image", "error"}]."""
  items = read_images(inputs, loaded)
  good = [item for item in items if item.error is None]
  probs = softmax(batched_logits(loaded, np.stack([g.image for g in good]))) if good else []
  next_probs = iter(probs)  # `good` keeps the order of `items`.
  k = max(1, min(top_k, loaded.num_classes))
  transform = EvalPreprocess.of(loaded).transform.to_json()
  return [{'image': item.path, 'error': item.error} if item.error is not None else
          {'image': item.path, 'top_k': top_k_entries(next(next_probs), loaded.class_names, k),
           'preprocessing': transform}
          for item in items]


def run(config: ml_collections.ConfigDict, workdir: str, inputs: Sequence[str], *,
        output: str | None = None, top_k: int = 5) -> list[dict]:
  """--mode=predict: prints one line per image, writes `output`, fails if any image did."""
  from vision_jax import inference  # pylint: disable=g-import-not-at-top
  if not inputs:
    raise UserError('--mode=predict needs images: pass --images a.png b.jpg DIR ...')
  from vision_jax import tasks  # pylint: disable=g-import-not-at-top
  loaded = inference.load(workdir, config)
  task = tasks.get(loaded.config)
  if task.name == 'segmentation':
    return write_masks(loaded, inputs, output=output)
  if task.name != 'classification':
    raise UserError(f'--mode=predict writes class probabilities or masks; the run in '
                    f'{workdir} is a {task.name} run (its model gives features). Train a '
                    'linear probe or fine-tune it (init_from) and predict with that run.')
  results = predict(loaded, inputs, top_k)
  for r in results:
    if 'error' in r:
      print(f'error: {r["image"]}: {r["error"]}', file=sys.stderr)
    else:
      print(f'{r["image"]}: ' + ', '.join(f'{t["label"]} ({t["probability"]:.3f})'
                                         for t in r['top_k']))
  sys.stdout.flush()
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
      json.dump(results, f, indent=2)
  failed = [r['image'] for r in results if 'error' in r]
  if failed:
    raise PredictError(f'{len(failed)} of {len(results)} images could not be predicted '
                       f'({", ".join(failed[:5])}{", ..." if len(failed) > 5 else ""}); '
                       'the others were (see the lines above'
                       f'{" and " + output if output else ""}).')
  return results


# ----------------------------------------------------------------------------- segmentation

def _read_any_size(path: str, channels: int) -> np.ndarray:
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      image.load()
  except Exception as e:  # pylint: disable=broad-except  # PIL's many failure types.
    raise ImageError(f'cannot be read as an image ({type(e).__name__}: {e}).') from e
  return _channels(image, channels)


def segmentation_masks(loaded, images: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Predicted HW class maps, one per HWC uint8 image of any size, at its own size."""
  size = loaded.image_shape[0]
  fill = tuple(int(round(255 * m)) for m in loaded.mean)
  inputs, regions = [], []
  for image in images:
    empty = np.zeros(image.shape[:2], np.uint8)
    padded, region = segmentation_preprocess.fit_and_pad(image, empty, size, fill=fill,
                                                         ignore_label=255)
    inputs.append(padded)
    regions.append((int((region != 255).any(1).sum()), int((region != 255).any(0).sum())))
  if not inputs:
    return []
  logits = batched_logits(loaded, np.stack(inputs))
  out = []
  for image, (h, w), lg in zip(images, regions, logits):
    classes = np.argmax(lg[:h, :w], -1).astype(np.uint8)
    if classes.shape != image.shape[:2]:
      classes = np.asarray(Image.fromarray(classes).resize(
          (image.shape[1], image.shape[0]), Image.NEAREST))
    out.append(classes)
  return out


def write_masks(loaded, inputs: Sequence[str], *, output: str | None = None) -> list[dict]:
  """A segmentation run's --mode=predict (module docstring): the masks and
  predictions.json; raises PredictError if any image failed."""
  out_dir = os.path.abspath(output or os.path.join(loaded.workdir, 'predict'))
  os.makedirs(out_dir, exist_ok=True)
  items = expand(inputs)
  for item in items:
    if item.error is None:
      try:
        item.image = _read_any_size(item.path, loaded.image_shape[2])
      except ImageError as e:
        item.error = str(e)
  good = [item for item in items if item.error is None]
  predicted = iter(segmentation_masks(loaded, [item.image for item in good]))
  results, used = [], set()
  for i, item in enumerate(items):
    if item.error is not None:
      results.append({'image': item.path, 'error': item.error})
      print(f'error: {item.path}: {item.error}', file=sys.stderr)
      continue
    mask = next(predicted)
    stem = os.path.splitext(os.path.basename(item.path))[0]
    name = f'{stem}.png' if stem not in used else f'{stem}_{i}.png'
    used.add(stem)
    path = os.path.join(out_dir, name)
    mask_images.save_mask_png(mask, path)
    histogram = mask_images.class_histogram(mask, loaded.class_names)
    results.append({'image': item.path, 'mask': path, 'histogram': histogram})
    top = sorted(((n, c) for n, c in histogram.items() if c), key=lambda x: -x[1])[:4]
    print(f'{item.path}: {path} ' + ', '.join(f'{n}: {c} px' for n, c in top))
  sys.stdout.flush()
  with open(os.path.join(out_dir, 'predictions.json'), 'w') as f:
    json.dump(results, f, indent=2)
  failed = [r['image'] for r in results if 'error' in r]
  if failed:
    raise PredictError(
        f'{len(failed)} of {len(results)} images could not be predicted '
        f'({", ".join(failed[:5])}{", ..." if len(failed) > 5 else ""}); the others were '
        f'(masks and predictions.json in {out_dir}).')
  return results
