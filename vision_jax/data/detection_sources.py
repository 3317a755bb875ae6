"""Random-access detection sources: `len(src)`, `src[i] -> {'image': HWC uint8, 'boxes':
[n, 4] float32 (x1, y1, x2, y2, pixels), 'classes': [n] int32 in 0..K-1, 'crowd': [n] bool,
'area': [n] float32, 'image_id': int}`.

  digits_detection   the offline canvases (digits_detection.py), made in memory.
  coco/2017          tfds; 80 classes, crowd flags and COCO's object areas and image ids;
                     detections are written with COCO's category ids.
  voc/2007           tfds; 20 classes; 'difficult' objects count as crowd (ignored by the
                     evaluation, left out of training), as VOC's own metric ignores them.
  coco_folder:/root  a COCO-format folder (coco_folder.py): what labelling tools export.
With class_index='category_id' (config.task.class_index) a class index is the dataset's
category id instead of its position in the dataset's class list: COCO's 80 classes become
indices 1..90 of 91 (the unused ids 'N/A'), the label space of torchvision's COCO weights,
so a converted COCO detector evaluates on coco/2017 or a COCO folder as it was trained.
tfds boxes are normalised (ymin, xmin, ymax, xmax); they become pixels here. Boxes of zero
width or height, which COCO holds a few of, are dropped there, as torchvision's reference
does; in a COCO folder (the user's own labels) they are an error naming the annotation.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from vision_jax.data.detection_boxes import DetectionDataError  # pylint: disable=unused-import
from vision_jax.data.detection_boxes import check_boxes

COCO_PREFIX = 'coco_folder:'
TFDS = ('coco/2017', 'voc/2007')
# COCO's category id of each of the 80 classes, in tfds coco's label order.
COCO_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                     22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42,
                     43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
                     62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
                     85, 86, 87, 88, 89, 90)


@dataclasses.dataclass(frozen=True)
class DetectionInfo:
  num_classes: int
  class_names: list[str]
  channels: int
  image_size: int                      # 0 when the images' sizes vary.
  category_ids: tuple[int, ...] | None  # Class index -> the id results JSON uses.
  size_note: str = ('vary in size (a detector resizes them by task.min_size / max_size and '
                    'pads them to config.dataset.image_size, e.g. 1344 for COCO at 800 / 1333)')


class TfdsDetectionSource:
  """A tfds data source (coco/2017, voc/2007) as detection examples."""

  def __init__(self, source: Sequence, *, name: str, split: str, num_classes: int):
    self.source, self.name, self.split, self.num_classes = source, name, split, num_classes

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    example = self.source[i]
    image = np.asarray(example['image'])
    h, w = image.shape[:2]
    objects = example['objects']
    box = np.asarray(objects['bbox'], np.float32).reshape(-1, 4)
    boxes = box[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)
    classes = np.asarray(objects['label'], np.int32).reshape(-1)
    crowd_key = 'is_crowd' if 'is_crowd' in objects else 'is_difficult'
    crowd = np.asarray(objects.get(crowd_key, np.zeros(len(boxes))), bool).reshape(-1)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, classes, crowd = boxes[keep], classes[keep], crowd[keep]
    image_id = int(example['image/id']) if 'image/id' in example else i
    boxes = check_boxes(boxes, classes, h, w, self.num_classes,
                        f'{self.name}[{self.split}] example {i} (image id {image_id})')
    out = {'image': image, 'boxes': boxes, 'classes': classes, 'crowd': crowd,
           'image_id': image_id}
    if 'area' in objects:
      out['area'] = np.asarray(objects['area'], np.float32).reshape(-1)[keep]
    return out


class CategoryIndexed:
  """A detection source whose classes are the dataset's category ids (module docstring)."""

  def __init__(self, source: Sequence, category_ids: Sequence[int]):
    self.source = source
    self.ids = np.asarray(category_ids, np.int32)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    example = dict(self.source[i])
    example['classes'] = self.ids[np.asarray(example['classes'], np.int64)]
    return example


def index_by_category_id(source: Sequence, info: DetectionInfo, name: str
                         ) -> tuple[Sequence, DetectionInfo]:
  """(source, info) with class index = category id: max id + 1 classes, the ids the
  dataset does not use named 'N/A'."""
  if info.category_ids is None:
    raise DetectionDataError(
        f'config.task.class_index=\'category_id\' needs a dataset with category ids '
        f'(coco/2017 or a COCO-format folder); {name!r} has none. Use class_index=\'label\'.')
  ids = [int(c) for c in info.category_ids]
  if min(ids) < 0 or max(ids) > 65535:
    raise DetectionDataError(
        f'{name!r} has category ids from {min(ids)} to {max(ids)}; class_index='
        '\'category_id\' needs ids in 0..65535 (they become class indices). Use '
        'class_index=\'label\'.')
  names = ['N/A'] * (max(ids) + 1)
  for category, class_name in zip(ids, info.class_names):
    names[category] = class_name
  return (CategoryIndexed(source, ids),
          dataclasses.replace(info, num_classes=len(names), class_names=names,
                              category_ids=None))


def _tfds_split(name: str, split: str, data_dir: str, download: bool):
  from vision_jax.data import sources  # pylint: disable=g-import-not-at-top
  builder = sources.prepared_tfds_builder(name, data_dir, download)
  try:
    source = builder.as_data_source(split=split)
  except (ValueError, KeyError) as e:
    raise DetectionDataError(f'Split {split!r} of {name!r}: {e} Its splits: '
                             f'{", ".join(builder.info.splits.keys())}.') from e
  names = list(builder.info.features['objects']['label'].names)
  return source, names


def open_split(name: str, split: str, *, data_dir: str = '', download: bool = False,
               channels: int = 0, class_index: str = 'label'
               ) -> tuple[Sequence, DetectionInfo]:
  """(random-access source, DetectionInfo) of one split of dataset `name` (module
  docstring), e.g. 'validation' or 'train[:90%]'; a COCO folder's split names its
  annotation file (coco_folder.py). class_index: 'label' (0..K-1 in the dataset's class
  order) or 'category_id' (module docstring)."""
  source, info = _open_split(name, split, data_dir=data_dir, download=download,
                             channels=channels)
  if class_index == 'category_id':
    return index_by_category_id(source, info, name)
  return source, info


def _open_split(name: str, split: str, *, data_dir: str, download: bool, channels: int
                ) -> tuple[Sequence, DetectionInfo]:
  if name.startswith(COCO_PREFIX):
    from vision_jax.data import coco_folder  # pylint: disable=g-import-not-at-top
    root = os.path.expanduser(name[len(COCO_PREFIX):])
    source = coco_folder.CocoFolder(root, split, channels=channels)
    return source, DetectionInfo(len(source.class_names), list(source.class_names),
                                 channels or 3, 0, tuple(source.category_ids))
  if name == 'digits_detection':
    from vision_jax.data import digits_detection  # pylint: disable=g-import-not-at-top
    return (digits_detection.DigitsDetectionSource(split),
            DetectionInfo(10, list(digits_detection.CLASS_NAMES), 1,
                          digits_detection.CANVAS, None))
  if name not in TFDS:
    raise DetectionDataError(
        f'config.dataset.name={name!r} has no known boxes: use digits_detection, '
        f'{", ".join(TFDS)}, or "{COCO_PREFIX}/root" (a COCO-format folder: '
        'annotations/instances_<split>.json and the images in <split>/; docs/tasks.md).')
  source, names = _tfds_split(name, split, data_dir, download)
  ids = COCO_CATEGORY_IDS if name.startswith('coco') and len(names) == 80 else None
  return (TfdsDetectionSource(source, name=name, split=split, num_classes=len(names)),
          DetectionInfo(len(names), names, 3, 0, ids))
