"""The offline segmentation dataset: scikit-learn's digits placed on 32x32 canvases.

Each example is a black 32x32 grey canvas with 2 to 4 handwritten digits (scikit-learn's
bundled 8x8 digits, upscaled bilinearly to a random 12..16 px square), one in each of 2 to 4
randomly chosen 16x16 quadrants at a random offset inside it (so they never overlap); its
label map marks each digit's ink pixels (upscaled grey level >= 64 of 255) with the digit's
class + 1 and everything else 0 (background): 11 classes, 'background', '0', ..., '9'.

Canvases of the 'train' split use only digits of the classification digits' training split
and 'test' canvases only its test digits (digits.py's stratified 80/20 split), so no test
digit image is ever seen in training, and a classifier pretrained on the digits' train
split has not seen them either. Everything is drawn from numpy generators seeded by
(SEED, split, canvas index): the dataset is the same on every machine. Built through tfds
like the classification digits, in ArrayRecord format (random access).
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vision_jax.data import digits

SEED = 0
CANVAS = 32
DIGIT_SIZES = (12, 16)       # Side of an upscaled digit, inclusive range.
DIGITS_PER_CANVAS = (2, 4)   # Inclusive range.
INK = 64                     # Upscaled grey level from which a pixel is the digit's.
NUM_CANVASES = {'train': 2000, 'test': 500}
CLASS_NAMES = ('background',) + tuple(str(d) for d in range(10))
_SPLIT_IDS = {'train': 0, 'test': 1}


def _upscale(digit: np.ndarray, side: int) -> np.ndarray:
  return np.asarray(Image.fromarray(digit).resize((side, side), Image.BILINEAR))


def make_canvas(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
  """One (canvas [32, 32, 1] uint8, label map [32, 32] uint8) from digits [N, 8, 8] uint8
  with classes [N], drawn with `rng`."""
  canvas = np.zeros((CANVAS, CANVAS), np.uint8)
  mask = np.zeros((CANVAS, CANVAS), np.uint8)
  cell = CANVAS // 2
  count = int(rng.integers(DIGITS_PER_CANVAS[0], DIGITS_PER_CANVAS[1] + 1))
  for quadrant in rng.permutation(4)[:count]:
    i = int(rng.integers(len(images)))
    side = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
    dy, dx = (int(v) for v in rng.integers(0, cell - side + 1, size=2))
    top, left = cell * int(quadrant // 2) + dy, cell * int(quadrant % 2) + dx
    digit = _upscale(images[i], side)
    canvas[top:top + side, left:left + side] = digit
    mask[top:top + side, left:left + side] = np.where(digit >= INK, labels[i] + 1, 0)
  return canvas[..., None], mask


def make_split(split: str, count: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """(canvases [n, 32, 32, 1], label maps [n, 32, 32]) of a split ('train' or 'test')."""
  images, labels = digits._split_arrays()[split]  # pylint: disable=protected-access
  count = NUM_CANVASES[split] if count is None else count
  pairs = [make_canvas(images[..., 0], labels,
                       np.random.default_rng((SEED, _SPLIT_IDS[split], k)))
           for k in range(count)]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class DigitsSegmentation(tfds.core.GeneratorBasedBuilder):
  """2-4 scikit-learn digits per 32x32 canvas, their ink labelled by class (11 classes)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '2000 train / 500 test canvases from the stratified digit split.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(CANVAS, CANVAS, 1)),
            'segmentation_mask': tfds.features.Image(shape=(CANVAS, CANVAS, 1)),
        }),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
        metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES)),
        disable_shuffling=True,  # Stored in generation order: example k is make_split()[k].
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is on disk already.
    return {split: self._generate_examples(split) for split in NUM_CANVASES}

  def _generate_examples(self, split: str):
    canvases, masks = make_split(split)
    for k, (canvas, mask) in enumerate(zip(canvases, masks)):
      yield k, {'image': canvas, 'segmentation_mask': mask[..., None]}


def prepare(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds the canvases into `data_dir` (offline, seconds) unless already there."""
  builder = DigitsSegmentation(data_dir=data_dir or None)
  if not builder.is_prepared():
    builder.download_and_prepare(file_format='array_record')
  return builder
