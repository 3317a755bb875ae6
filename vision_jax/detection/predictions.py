"""--mode=predict of a detection run: boxes drawn on copies of the images, and
predictions.json.

OUT (--output, default W/predict/) gets, for each input image, <stem>.png: a copy of the
image (EXIF orientation applied, at its own size) with every detection drawn as a
rectangle labelled '<class name> <score>' (one colour per class), and predictions.json, in
COCO's layout: {"images": [{"id", "file_name", "width", "height", "drawn"}],
"annotations": [{"id", "image_id", "category_id", "category_name", "bbox": [x, y, w, h],
"score"}], "categories": [{"id", "name"}], "errors": [{"image", "error"}]}, boxes in the
image's pixels, category ids the class indices. Each image gets the run's eval transform
(detection_transforms, train=False: resized and padded as in evaluation); its detections
(the same on-device post-processing as evaluation and export) are divided by the resize
scale back to the image.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw

# A few well-separated colours, cycled by class.
_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128))
_MAX_BATCH = 16


def detect_images(loaded, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
  """Per HWC uint8 image of any size: {'boxes' [n, 4] (its pixels), 'scores', 'classes'}."""
  task = loaded.task
  size, channels = loaded.image_shape[0], loaded.image_shape[2]
  transform = task.transform(size, channels, loaded.mean, train=False)
  rows = [transform({'image': image, 'boxes': np.zeros((0, 4), np.float32),
                     'classes': np.zeros(0, np.int32)}, None) for image in images]
  apply = jax.jit(loaded.apply)
  out = []
  for start in range(0, len(rows), _MAX_BATCH):
    chunk = np.stack([r['image'] for r in rows[start:start + _MAX_BATCH]])
    padded = 1 << (len(chunk) - 1).bit_length()
    batch = np.concatenate([chunk, np.zeros((padded - len(chunk),) + chunk.shape[1:],
                                            np.uint8)])
    result = jax.tree.map(np.asarray, apply(loaded.serving_state, batch))
    for k in range(len(chunk)):
      row = rows[start + k]
      n = int(result['num_detections'][k])
      sy, sx = row['scale']
      h, w = row['orig_size']
      boxes = result['boxes'][k, :n] / np.array([sx, sy, sx, sy], np.float32)
      out.append({'boxes': np.clip(boxes, 0, np.array([w, h, w, h], np.float32)),
                  'scores': result['scores'][k, :n],
                  'classes': result['classes'][k, :n]})
  return out


def draw(image: np.ndarray, detections: dict, class_names: Sequence[str]) -> Image.Image:
  """A copy of `image` (HWC uint8) with the detections' boxes and labels drawn on it."""
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert('RGB')
  canvas = ImageDraw.Draw(pil)
  width = max(1, round(max(pil.size) / 300))
  for box, score, k in zip(detections['boxes'], detections['scores'], detections['classes']):
    colour = _COLOURS[int(k) % len(_COLOURS)]
    x1, y1, x2, y2 = (float(v) for v in box)
    canvas.rectangle((x1, y1, x2, y2), outline=colour, width=width)
    text = f'{class_names[int(k)]} {float(score):.2f}'
    left, top, right, bottom = canvas.textbbox((x1, y1), text)
    y = max(0.0, y1 - (bottom - top) - 2)
    canvas.rectangle((x1, y, x1 + right - left + 2, y + bottom - top + 2), fill=colour)
    canvas.text((x1 + 1, y), text, fill=(0, 0, 0))
  return pil


def write_detections(loaded, inputs: Sequence[str], *, output: str | None = None
                     ) -> list[dict]:
  """The detection run's --mode=predict (module docstring); raises PredictError if any
  image failed. Returns per image {'image', 'drawn', 'detections': [{'class', 'score',
  'bbox'}]} or {'image', 'error'}."""
  from vision_jax import predict  # pylint: disable=g-import-not-at-top
  out_dir = os.path.abspath(output or os.path.join(loaded.workdir, 'predict'))
  os.makedirs(out_dir, exist_ok=True)
  items = predict.expand(inputs)
  for item in items:
    if item.error is None:
      try:
        item.image = predict.read_image(item.path, loaded.image_shape[2])
      except predict.ImageError as e:
        item.error = str(e)
  good = [item for item in items if item.error is None]
  found = iter(detect_images(loaded, [item.image for item in good]))
  names = list(loaded.class_names)
  results, used = [], set()
  coco = {'images': [], 'annotations': [], 'errors': [],
          'categories': [{'id': k, 'name': n} for k, n in enumerate(names)]}
  for i, item in enumerate(items):
    if item.error is not None:
      results.append({'image': item.path, 'error': item.error})
      coco['errors'].append({'image': item.path, 'error': item.error})
      print(f'error: {item.path}: {item.error}', file=sys.stderr)
      continue
    dets = next(found)
    stem = os.path.splitext(os.path.basename(item.path))[0]
    name = f'{stem}.png' if stem not in used else f'{stem}_{i}.png'
    used.add(stem)
    path = os.path.join(out_dir, name)
    draw(item.image, dets, names).save(path)
    h, w = item.image.shape[:2]
    coco['images'].append({'id': i, 'file_name': item.path, 'width': w, 'height': h,
                           'drawn': path})
    rows = []
    for box, score, k in zip(dets['boxes'], dets['scores'], dets['classes']):
      x1, y1, x2, y2 = (float(v) for v in box)
      bbox = [x1, y1, x2 - x1, y2 - y1]
      coco['annotations'].append({'id': len(coco['annotations']) + 1, 'image_id': i,
                                  'category_id': int(k), 'category_name': names[int(k)],
                                  'bbox': bbox, 'score': float(score)})
      rows.append({'class': names[int(k)], 'score': float(score), 'bbox': bbox})
    results.append({'image': item.path, 'drawn': path, 'detections': rows})
    print(f'{item.path}: {path} ' + ', '.join(f'{r["class"]} {r["score"]:.2f}'
                                              for r in rows[:5]))
  sys.stdout.flush()
  with open(os.path.join(out_dir, 'predictions.json'), 'w') as f:
    json.dump(coco, f, indent=2)
  predict.check_failures(results, f'drawn boxes and predictions.json in {out_dir}')
  return results
