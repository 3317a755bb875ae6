"""--mode=predict for a segmentation run: one colour-coded mask PNG per image, and each
mask's class histogram in predictions.json.

  python -m vision_jax.main --mode=predict --workdir W --images a.png DIR [--output OUT]

writes OUT (default W/predict/) /<image stem>.png, a palette PNG whose pixel values are
the predicted classes and whose colours are PASCAL VOC's (mask_images.save_mask_png), at
the input image's own size, and OUT/predictions.json: [{"image", "mask", "histogram":
{class name: pixels}}, or {"image", "error"}]. Each image gets the run's eval transform
(fit and pad to the training size, segmentation_preprocess.fit_and_pad); the prediction
of its unpadded region is resized back to the image with nearest neighbour. Images are
read and their channels converted exactly as classification's predict does.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

from vision_jax import mask_images
from vision_jax import predict
from vision_jax.data import segmentation_preprocess


def _read(path: str, channels: int) -> np.ndarray:
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      image.load()
  except Exception as e:  # pylint: disable=broad-except  # PIL's many failure types.
    raise predict.ImageError(f'cannot be read as an image ({type(e).__name__}: {e}).') from e
  return predict._channels(image, channels)  # pylint: disable=protected-access


def masks(loaded, images: Sequence[np.ndarray]) -> list[np.ndarray]:
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
  logits = predict.batched_logits(loaded, np.stack(inputs))
  out = []
  for image, (h, w), lg in zip(images, regions, logits):
    classes = np.argmax(lg[:h, :w], -1).astype(np.uint8)
    if classes.shape != image.shape[:2]:
      classes = np.asarray(Image.fromarray(classes).resize(
          (image.shape[1], image.shape[0]), Image.NEAREST))
    out.append(classes)
  return out


def run(loaded, inputs: Sequence[str], *, output: str | None = None) -> list[dict]:
  """Writes the masks and predictions.json; raises PredictError if any image failed."""
  out_dir = os.path.abspath(output or os.path.join(loaded.workdir, 'predict'))
  os.makedirs(out_dir, exist_ok=True)
  items = predict.expand(inputs)
  for item in items:
    if item.error is None:
      try:
        item.image = _read(item.path, loaded.image_shape[2])
      except predict.ImageError as e:
        item.error = str(e)
  good = [item for item in items if item.error is None]
  predicted = iter(masks(loaded, [item.image for item in good]))
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
    raise predict.PredictError(
        f'{len(failed)} of {len(results)} images could not be predicted '
        f'({", ".join(failed[:5])}{", ..." if len(failed) > 5 else ""}); the others were '
        f'(masks and predictions.json in {out_dir}).')
  return results
