"""Joint preprocessing of an image and its boxes, on the host (numpy in and out).

A source example is {'image': HWC uint8, 'boxes': [n, 4] float32 (x1, y1, x2, y2 in the
image's pixels), 'classes': [n] int, 'crowd': [n] bool, 'area': [n] float32, 'image_id':
int} (data/detection_sources.py). Every geometric change moves the boxes with the pixels:
PIL's resize maps pixel edges to pixel edges (a box edge at x lands at x * new_w / w), a
horizontal flip of an image w wide maps x to w - x (x1 and x2 swap), a crop shifts by its
offset and clips.

Train (`DetectionTransform(train=True)`, torchvision's detection reference plus scale
jitter):
  1. resize: by f = min(min_size / shorter side, max_size / longer side) * s, s ~
     U(scale_range) (torchvision's 1x recipe: min_size 800, max_size 1333, s = 1); with
     min_size 0, f = min(1, max_size / longer side) * s (images are only shrunk to fit);
  2. flip: horizontal, with probability 1/2 (`flip=False` for digits);
  3. crop: where the resized image exceeds image_size x image_size, a window at a
     uniformly random offset; boxes are clipped to it and those left narrower or shorter
     than `min_box_size` pixels are dropped (as are crowd boxes: torchvision's reference
     trains without them);
  4. pad: bottom and right to image_size x image_size with `fill` (round(255 * mean):
     zero after normalisation, as torchvision's batching pads).
  The draws come from the numpy Generator the pipeline seeds per example, in the order s,
  flip, top, left. Output {'image', 'boxes' [M, 4], 'classes' [M] int32, 'box_mask' [M]
  float32}, M = max_boxes, padding rows zero.
Eval (train=False): step 1 with s = 1 and f also capped so that the image fits the canvas,
then step 4: nothing is cropped, every box kept. It adds what COCO evaluation needs to map
the detections back to the original image: 'crowd' [M], 'area' [M] (of the original image),
'image_id', 'scale' [2] (new / original height and width) and 'orig_size' [2] (H, W).
An example with more than M boxes is an error (raise config.task.max_boxes), never a
silent truncation.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image

from vision_jax.errors import UserError

Example = dict[str, np.ndarray]


class DetectionTransformError(UserError, ValueError):
  """An example the transform cannot take (too many boxes), or a bad option."""


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  if image.shape[:2] == (height, width):
    return image
  grey = image.shape[-1] == 1
  out = np.asarray(Image.fromarray(image[..., 0] if grey else image).resize(
      (width, height), Image.BILINEAR))
  return out[..., None] if grey else out


def resize_factor(height: int, width: int, *, min_size: int, max_size: int) -> float:
  """f = min(min_size / shorter side, max_size / longer side); with min_size 0, f = min(1,
  max_size / longer side): an image is only ever shrunk to fit."""
  if not min_size:
    return min(1.0, max_size / max(height, width))
  return min(max_size / max(height, width), min_size / min(height, width))


def eval_size(height: int, width: int, *, image_size: int, min_size: int, max_size: int
              ) -> tuple[int, int]:
  """(height, width) an image of (height, width) is resized to for evaluation: by
  resize_factor (max_size 0 = image_size), never past image_size on either side."""
  factor = resize_factor(height, width, min_size=min_size, max_size=max_size or image_size)
  factor = min(factor, image_size / height, image_size / width)
  return (min(image_size, max(1, round(height * factor))),
          min(image_size, max(1, round(width * factor))))


def resize_and_pad(image: np.ndarray, *, image_size: int, min_size: int, max_size: int,
                   fill: Sequence[int] | int) -> tuple[np.ndarray, tuple[int, int]]:
  """The eval transform of an HWC uint8 image: resized to eval_size (PIL bilinear), padded
  at the bottom and right with `fill` to image_size x image_size; also (height, width) of
  the image inside. What evaluation, predict and export (eval_transform's
  'resize_and_pad') all run."""
  h, w = image.shape[:2]
  nh, nw = eval_size(h, w, image_size=image_size, min_size=min_size, max_size=max_size)
  canvas = np.empty((image_size, image_size, image.shape[-1]), np.uint8)
  canvas[...] = np.asarray(fill, np.uint8)
  canvas[:nh, :nw] = _resize(image, nh, nw)
  return canvas, (nh, nw)


@dataclasses.dataclass(frozen=True)
class DetectionTransform:
  """`fn(example, rng) -> batch row` (module docstring). A plain object, so worker
  processes can run it."""
  image_size: int
  train: bool
  max_boxes: int
  min_size: int = 0
  max_size: int = 0
  scale_range: tuple[float, float] = (1.0, 1.0)
  flip: bool = True
  min_box_size: float = 2.0
  fill: int | tuple[int, ...] = 0
  channels: int = 0

  @property
  def random(self) -> bool:
    return self.train

  def identity_for(self, shape) -> bool:
    del shape
    return False

  def _padded(self, boxes: np.ndarray, values: Sequence[np.ndarray], where: str) -> list:
    n, m = len(boxes), self.max_boxes
    if n > m:
      raise DetectionTransformError(
          f'{where} has {n} boxes, more than config.task.max_boxes={m} (the fixed number '
          'of ground-truth rows per image). Raise config.task.max_boxes to at least '
          f'{n}.')
    out = []
    for v in (boxes,) + tuple(values):
      pad = np.zeros((m,) + v.shape[1:], v.dtype)
      pad[:n] = v
      out.append(pad)
    return out

  def __call__(self, example: Example, rng: np.random.Generator | None) -> Example:
    from vision_jax.data import preprocess  # pylint: disable=g-import-not-at-top
    image = np.asarray(example['image'])
    if self.channels:
      image = preprocess.to_channels(image, self.channels)
    boxes = np.asarray(example['boxes'], np.float32).reshape(-1, 4)
    classes = np.asarray(example['classes'], np.int32).reshape(-1)
    crowd = np.asarray(example.get('crowd', np.zeros(len(boxes), bool)), bool).reshape(-1)
    h, w = image.shape[:2]
    size = self.image_size
    if not self.train:
      canvas, (nh, nw) = resize_and_pad(image, image_size=size, min_size=self.min_size,
                                        max_size=self.max_size, fill=self.fill)
      boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
      area = np.asarray(example.get('area', (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[
          :, 1]) * (h * w) / (nh * nw)), np.float32).reshape(-1)
      where = f'Image {int(example.get("image_id", -1))}'
      boxes, classes, crowd, area, box_mask = self._padded(
          boxes, (classes, crowd.astype(np.float32), area, np.ones(len(boxes), np.float32)),
          where)
      return {'image': canvas, 'boxes': boxes, 'classes': classes, 'box_mask': box_mask,
              'crowd': crowd, 'area': area,
              'image_id': np.asarray(example.get('image_id', 0), np.int32),
              'scale': np.array([nh / h, nw / w], np.float32),
              'orig_size': np.array([h, w], np.int32)}
    factor = resize_factor(h, w, min_size=self.min_size, max_size=self.max_size or size)
    factor *= rng.uniform(*self.scale_range)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    image = _resize(image, nh, nw)
    boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
    canvas = np.empty((size, size, image.shape[-1]), np.uint8)
    canvas[...] = np.asarray(self.fill, np.uint8)
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
      boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], 1)
    top = int(rng.integers(0, max(0, nh - size) + 1))
    left = int(rng.integers(0, max(0, nw - size) + 1))
    window = image[top:top + size, left:left + size]
    canvas[:window.shape[0], :window.shape[1]] = window
    boxes = boxes - np.array([left, top, left, top], np.float32)
    limit = np.array([window.shape[1], window.shape[0]] * 2, np.float32)
    boxes = np.clip(boxes, 0, limit)
    keep = (~crowd & (boxes[:, 2] - boxes[:, 0] >= max(self.min_box_size, 1e-3))
            & (boxes[:, 3] - boxes[:, 1] >= max(self.min_box_size, 1e-3)))
    boxes, classes = boxes[keep], classes[keep]
    boxes, classes, box_mask = self._padded(
        boxes, (classes, np.ones(len(boxes), np.float32)),
        f'Image {int(example.get("image_id", -1))}')
    return {'image': canvas, 'boxes': boxes.astype(np.float32), 'classes': classes,
            'box_mask': box_mask}


def make_transform(image_size: int, *, train: bool, max_boxes: int, min_size: int = 0,
                   max_size: int = 0, scale_range: tuple[float, float] = (1.0, 1.0),
                   flip: bool = True, min_box_size: float = 2.0,
                   fill: int | Sequence[int] = 0, channels: int = 0) -> DetectionTransform:
  """The DetectionTransform, its arguments checked."""
  if image_size < 1:
    raise DetectionTransformError(
        f'A detection run needs a fixed input size: config.dataset.image_size={image_size}. '
        'Set it (e.g. 1344 for COCO at min_size 800 / max_size 1333, 64 for the digits '
        'canvases).')
  if max_size > image_size:
    raise DetectionTransformError(
        f'config.task.max_size={max_size} exceeds config.dataset.image_size={image_size}, '
        'the padded input every image must fit in. Set image_size >= max_size (a multiple '
        'of 128 keeps every pyramid level whole).')
  low, high = scale_range
  if not 0 < low <= high:
    raise DetectionTransformError(
        f'config.task.scale_range={tuple(scale_range)} must be 0 < low <= high (e.g. '
        '(1.0, 1.0) for no jitter).')
  return DetectionTransform(image_size, train, max_boxes, min_size, max_size,
                            (float(low), float(high)), flip, float(min_box_size),
                            tuple(fill) if isinstance(fill, (list, tuple)) else fill, channels)
