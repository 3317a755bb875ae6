"""The offline detection dataset: scikit-learn's digits scattered over 64x64 canvases.

Each example is a black 64x64 grey canvas with 2 to 5 handwritten digits (scikit-learn's
bundled 8x8 digits, upscaled bilinearly to a random 12..28 px square) at random positions
where their squares do not overlap. A digit's box is the exact extent of its ink (the
upscaled pixels with grey level >= 64 of 255), (x1, y1, x2, y2) in pixel edges, and its
class is the digit: 10 classes '0'..'9' (detection has no background class).

Canvases of the 'train' split use only digits of the classification digits' training split
and 'test' canvases only its test digits (digits.py's stratified 80/20 split), so a
classifier pretrained on the digits' train split has not seen the test digits either.
Everything is drawn from numpy generators seeded by (SEED, split, canvas index): the
dataset is the same on every machine. The canvases are made in memory on first use (about
a second), not stored.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from vision_jax.data import digits

SEED = 0
CANVAS = 64
DIGIT_SIZES = (12, 28)       # Side of an upscaled digit, inclusive range.
DIGITS_PER_CANVAS = (2, 5)   # Inclusive range.
INK = 64                     # Upscaled grey level from which a pixel is the digit's.
NUM_CANVASES = {'train': 4000, 'test': 500}
CLASS_NAMES = tuple(str(d) for d in range(10))
_SPLIT_IDS = {'train': 0, 'test': 1}
_TRIES = 100


def make_canvas(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(canvas [64, 64, 1] uint8, boxes [n, 4] float32, classes [n] int32) from digits
  [N, 8, 8] uint8 with classes [N], drawn with `rng`."""
  canvas = np.zeros((CANVAS, CANVAS), np.uint8)
  placed, boxes, classes = [], [], []
  count = int(rng.integers(DIGITS_PER_CANVAS[0], DIGITS_PER_CANVAS[1] + 1))
  for _ in range(count):
    i = int(rng.integers(len(images)))
    side = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
    for _ in range(_TRIES):
      top, left = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
      if all(top >= b or top + side <= t or left >= r or left + side <= l
             for t, l, b, r in placed):
        break
    else:
      continue  # No free place for this digit: the canvas keeps fewer.
    digit = np.asarray(Image.fromarray(images[i]).resize((side, side), Image.BILINEAR))
    ink = digit >= INK
    if not ink.any():
      continue
    placed.append((top, left, top + side, left + side))
    canvas[top:top + side, left:left + side] = digit
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    boxes.append([left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1])
    classes.append(int(labels[i]))
  return (canvas[..., None], np.asarray(boxes, np.float32).reshape(-1, 4),
          np.asarray(classes, np.int32))


@functools.lru_cache(maxsize=4)
def make_split(split: str, count: int | None = None) -> tuple:
  """(canvases [n, 64, 64, 1], boxes: n arrays [k, 4], classes: n arrays [k]) of a split
  ('train' or 'test')."""
  images, labels = digits._split_arrays()[split]  # pylint: disable=protected-access
  count = NUM_CANVASES[split] if count is None else count
  made = [make_canvas(images[..., 0], labels,
                      np.random.default_rng((SEED, _SPLIT_IDS[split], k)))
          for k in range(count)]
  return (np.stack([m[0] for m in made]), tuple(m[1] for m in made),
          tuple(m[2] for m in made))


class DigitsDetectionSource:
  """Random access to one split: `src[i] -> {'image', 'boxes', 'classes', 'image_id'}`."""
  in_memory = True

  def __init__(self, split: str):
    if split not in NUM_CANVASES:
      from vision_jax.data.detection_boxes import DetectionDataError  # pylint: disable=g-import-not-at-top
      raise DetectionDataError(f'digits_detection has the splits '
                               f'{", ".join(NUM_CANVASES)}; got {split!r}.')
    self.images, self.boxes, self.classes = make_split(split)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    return {'image': self.images[i], 'boxes': self.boxes[i], 'classes': self.classes[i],
            'image_id': i}
