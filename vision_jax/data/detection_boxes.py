"""Checking ground-truth boxes as a source reads them: one error naming the example.

A box must have an area (x2 > x1, y2 > y1), lie within its image (BOX_TOLERANCE pixels of
slack for the rounding of labelling tools, then clipped) and have a class among the
dataset's. Shared by every detection source (detection_sources.py, coco_folder.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vision_jax.errors import UserError

BOX_TOLERANCE = 1.0  # Pixels a box may reach past its image (rounding in tools); clipped.


class DetectionDataError(UserError):
  """A detection example or dataset option that cannot work; names the example."""


def check_boxes(boxes: np.ndarray, classes: np.ndarray, height: int, width: int,
                num_classes: int, where: str, *, names: Sequence[str] = ()
                ) -> np.ndarray:
  """The boxes clipped to the image, after checking them; raises DetectionDataError for a
  box outside its image (by more than BOX_TOLERANCE), a degenerate box or a class id
  outside 0..num_classes-1. `names[j]`: what to call box j (default 'box j')."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  classes = np.asarray(classes).reshape(-1)
  label = lambda j: names[j] if names else f'box {j}'
  for j, (x1, y1, x2, y2) in enumerate(boxes):
    if not (x2 > x1 and y2 > y1):
      raise DetectionDataError(
          f'{where}: {label(j)} (x1, y1, x2, y2) = ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has no '
          'area (a width or height <= 0). Fix or delete this annotation (COCO bboxes are '
          '[x, y, width, height] with width, height > 0).')
    if (x1 < -BOX_TOLERANCE or y1 < -BOX_TOLERANCE or x2 > width + BOX_TOLERANCE
        or y2 > height + BOX_TOLERANCE):
      raise DetectionDataError(
          f'{where}: {label(j)} (x1, y1, x2, y2) = ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies '
          f'outside its {width}x{height} (WxH) image. Fix this annotation (boxes are in the '
          'pixels of the image file, as stored: EXIF rotation is not applied).')
    if not 0 <= int(classes[j]) < num_classes:
      raise DetectionDataError(
          f'{where}: {label(j)} has class {int(classes[j])}, outside the {num_classes} '
          'classes 0..{}. Fix the annotation or the class list.'.format(num_classes - 1))
  return np.clip(boxes, 0, np.array([width, height, width, height], np.float32))


