"""Random-access segmentation sources: `len(src)`, `src[i] -> {'image': HWC uint8,
'mask': HW uint8}`, with class indices 0..K-1 and the ignore label in the mask.

  oxford_iiit_pet      tfds; its `segmentation_mask` is the trimap 1 = pet, 2 = background,
                       3 = border (the unsure band around the outline). Mapped to
                       0 = background, 1 = pet, and the border to the ignore label
                       (`pets_border='ignore'`, the default: neither rewarded nor punished,
                       as the trimap's "unclassified" region is meant) or to a third class
                       2 = border (`pets_border='class'`, the 3-class set-up of the
                       TensorFlow segmentation tutorial).
  digits_segmentation  the offline canvases (digits_segmentation.py), built on first use.
  folder:/root         a folder of images and masks (mask_folder.py).
Every mask is checked when read: its size must be its image's, and every value a class or
the ignore label (a trimap value outside 1..3, say, is an error naming the example).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from vision_jax.data import mask_folder
from vision_jax.errors import UserError

PETS_BORDER = ('ignore', 'class')


class SegmentationDataError(UserError):
  """A segmentation example or dataset option that cannot work; names the example."""


@dataclasses.dataclass(frozen=True)
class SegmentationInfo:
  num_classes: int
  class_names: list[str]
  channels: int
  image_size: int      # 0 when the images' sizes vary.
  ignore_label: int


def _lookup(mapping: dict[int, int]) -> np.ndarray:
  """int16 [256] table: stored mask value -> class or ignore label; -1 for no such value."""
  table = np.full(256, -1, np.int16)
  for stored, value in mapping.items():
    table[stored] = value
  return table


def pets_classes(border: str, ignore_label: int) -> tuple[list[str], np.ndarray]:
  """(class names, stored value -> label table) of oxford_iiit_pet's trimap."""
  if border not in PETS_BORDER:
    raise SegmentationDataError(f'pets_border={border!r}; use one of {", ".join(PETS_BORDER)}.')
  if border == 'class':
    return ['background', 'pet', 'border'], _lookup({1: 1, 2: 0, 3: 2})
  return ['background', 'pet'], _lookup({1: 1, 2: 0, 3: ignore_label})


class TfdsSegmentationSource:
  """A tfds data source whose `segmentation_mask` [H, W, 1] goes through a lookup table."""

  def __init__(self, source: Sequence, lookup: np.ndarray, *, name: str, split: str):
    self.source, self.lookup, self.name, self.split = source, lookup, name, split

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    example = self.source[i]
    image, stored = np.asarray(example['image']), np.asarray(example['segmentation_mask'])
    where = f'{self.name}[{self.split}] example {i}'
    if 'file_name' in example:
      file_name = example['file_name']
      where += f' ({file_name.decode() if isinstance(file_name, bytes) else file_name})'
    stored = stored[..., 0] if stored.ndim == 3 else stored
    if stored.shape != image.shape[:2]:
      raise SegmentationDataError(
          f'{where}: its segmentation mask is {stored.shape[1]}x{stored.shape[0]} (WxH) but '
          f'its image {image.shape[1]}x{image.shape[0]}; a mask must label every pixel of '
          'its image. Rebuild the dataset, or drop this example with a split slice.')
    mask = self.lookup[stored]
    if np.any(mask < 0):
      bad = sorted(set(np.unique(stored[mask < 0]).tolist()))
      known = np.flatnonzero(self.lookup >= 0).tolist()
      raise SegmentationDataError(
          f'{where}: its segmentation mask has values {bad}, which are not among the values '
          f'this dataset defines ({known}). The data is not what this reader expects; '
          'rebuild it with tfds.')
    return {'image': image, 'mask': mask.astype(np.uint8)}


def _tfds_builder(name: str, data_dir: str, download: bool) -> tfds.core.DatasetBuilder:
  if name == 'digits_segmentation':
    from vision_jax.data import digits_segmentation  # pylint: disable=g-import-not-at-top
    return digits_segmentation.prepare(data_dir or None)
  from vision_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.prepared_tfds_builder(name, data_dir, download)


SEGMENTATION_TFDS = ('oxford_iiit_pet', 'digits_segmentation')


def open_split(name: str, split: str, *, data_dir: str = '', download: bool = False,
               ignore_label: int = 255, pets_border: str = 'ignore', num_classes: int = 0,
               channels: int = 0, folder_test_fraction: float = 0.2,
               folder_split_seed: int = 0) -> tuple[Sequence, SegmentationInfo]:
  """(random-access source, SegmentationInfo) for one split, e.g. 'train[:90%]'.

  `name`: a tfds name of SEGMENTATION_TFDS, or 'folder:/root'. `num_classes`, `channels`
  and the folder_* options are for folders (mask_folder.py); `pets_border` for
  oxford_iiit_pet.
  """
  if name.startswith(mask_folder.PREFIX):
    root = os.path.expanduser(name[len(mask_folder.PREFIX):])
    source = mask_folder.open_split(root, split, num_classes=num_classes,
                                    ignore_label=ignore_label, channels=channels,
                                    test_fraction=folder_test_fraction, seed=folder_split_seed)
    return source, SegmentationInfo(source.num_classes, source.class_names, source.channels,
                                    0, ignore_label)
  if name not in SEGMENTATION_TFDS:
    raise SegmentationDataError(
        f'config.dataset.name={name!r} has no known segmentation masks: use one of '
        f'{", ".join(SEGMENTATION_TFDS)}, or "folder:/root" with images/ and masks/ folders.')
  builder = _tfds_builder(name, data_dir, download)
  if name == 'oxford_iiit_pet':
    class_names, lookup = pets_classes(pets_border, ignore_label)
  else:
    from vision_jax.data import digits_segmentation  # pylint: disable=g-import-not-at-top
    class_names = list(digits_segmentation.CLASS_NAMES)
    lookup = _lookup({c: c for c in range(len(class_names))})
  if ignore_label < len(class_names):
    raise SegmentationDataError(
        f'config.task.ignore_label={ignore_label} is a class of {name!r} (its classes: '
        f'{", ".join(class_names)}); use 255.')
  try:
    source = builder.as_data_source(split=split)
  except (ValueError, KeyError) as e:
    raise SegmentationDataError(f'Split {split!r} of {name!r}: {e} Its splits: '
                                f'{", ".join(builder.info.splits.keys())}.') from e
  shape = builder.info.features['image'].shape
  info = SegmentationInfo(num_classes=len(class_names), class_names=class_names,
                          channels=shape[-1] or 3, image_size=shape[0] or 0,
                          ignore_label=ignore_label)
  return TfdsSegmentationSource(source, lookup, name=name, split=split), info
