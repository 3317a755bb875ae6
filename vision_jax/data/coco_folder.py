"""A COCO-format folder: the layout COCO itself and labelling tools (CVAT, Label Studio,
Roboflow, ...) export, for a user's own detection data.

  ROOT/annotations/instances_<split>.json   COCO instances JSON: images (id, file_name,
                                            width, height), annotations (image_id,
                                            category_id, bbox [x, y, w, h] in pixels,
                                            optional iscrowd, area), categories (id, name)
  ROOT/<split>/<file_name>                  the images (or ROOT/images/<file_name>)

`config.dataset.name='coco_folder:ROOT'` with `train_split='train'` and
`eval_splits=('val',)` reads instances_train.json and instances_val.json. Classes are the
JSON's categories sorted by id, as indices 0..K-1 (the results JSON writes the original
category ids back). An image without annotations is kept as a background image: it
trains the detector on what is no object, and its detections count as false positives.

Everything is checked when the split is opened, before any training: the JSON exists and
parses, every annotation names an image and a category of the file, every image file
exists, every box has an area and lies within its image (1 px tolerance) - each problem is
one message naming the file, the image or annotation and the fix.
"""
from __future__ import annotations

import json
import os

import numpy as np

from vision_jax.data.detection_boxes import DetectionDataError
from vision_jax.data.detection_boxes import check_boxes


def annotation_path(root: str, split: str) -> str:
  return os.path.join(root, 'annotations', f'instances_{split}.json')


def _load(path: str) -> dict:
  if not os.path.exists(path):
    raise DetectionDataError(
        f'No annotation file {path}. A COCO folder holds annotations/instances_<split>.json '
        'for each split (config.dataset.train_split / eval_splits name them) and the '
        'images in <split>/ or images/; see docs/tasks.md.')
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DetectionDataError(f'{path} cannot be read as JSON ({type(e).__name__}: {e}). '
                             'Export it again from your labelling tool.') from e
  missing = [k for k in ('images', 'annotations', 'categories')
             if not isinstance(data, dict) or not isinstance(data.get(k), list)]
  if missing:
    raise DetectionDataError(
        f'{path} is not a COCO instances file: it lacks the list(s) {", ".join(missing)}. '
        'A COCO instances JSON has "images", "annotations" and "categories".')
  return data


class CocoFolder:
  """One split of a COCO folder (module docstring): `src[i]` reads image i."""
  in_memory = False

  def __init__(self, root: str, split: str, *, channels: int = 0):
    self.root, self.split, self.channels = root, split, channels
    path = annotation_path(root, split)
    data = _load(path)
    try:
      categories = sorted((int(c['id']), str(c['name'])) for c in data['categories'])
      images = [(int(im['id']), str(im['file_name'])) for im in data['images']]
    except (KeyError, TypeError, ValueError) as e:
      raise DetectionDataError(f'{path}: a category lacks "id"/"name" or an image lacks '
                               f'"id"/"file_name" ({type(e).__name__}: {e}).') from e
    if not categories:
      raise DetectionDataError(f'{path} has no categories: name at least one class.')
    self.category_ids = [c for c, _ in categories]
    self.class_names = [n for _, n in categories]
    index = {c: k for k, c in enumerate(self.category_ids)}
    self.image_ids = [i for i, _ in images]
    directories = [os.path.join(root, split), os.path.join(root, 'images')]
    self.files = []
    for image_id, name in images:
      found = [os.path.join(d, name) for d in directories if os.path.isfile(os.path.join(d, name))]
      if not found:
        raise DetectionDataError(
            f'{path}: image {image_id} names the file {name!r}, which is in neither '
            f'{directories[0]} nor {directories[1]}. Copy the images there, or remove the '
            'image and its annotations from the JSON.')
      self.files.append(found[0])
    row = {image_id: k for k, image_id in enumerate(self.image_ids)}
    self.boxes = [[] for _ in images]
    self.classes = [[] for _ in images]
    self.crowd = [[] for _ in images]
    self.area = [[] for _ in images]
    self.names = [[] for _ in images]
    for a in data['annotations']:
      aid = a.get('id', '?') if isinstance(a, dict) else '?'
      try:
        image_id, category = int(a['image_id']), int(a['category_id'])
        x, y, w, h = (float(v) for v in a['bbox'])
      except (KeyError, TypeError, ValueError) as e:
        raise DetectionDataError(
            f'{path}: annotation {aid} lacks a valid "image_id", "category_id" or "bbox" '
            f'[x, y, width, height] ({type(e).__name__}: {e}).') from e
      if image_id not in row:
        raise DetectionDataError(
            f'{path}: annotation {aid} names image {image_id}, which is not among the '
            'file\'s images. Remove the annotation or add its image.')
      if category not in index:
        raise DetectionDataError(
            f'{path}: annotation {aid} has category_id {category}, which is not among the '
            f'file\'s categories ({", ".join(map(str, self.category_ids))}).')
      k = row[image_id]
      self.boxes[k].append([x, y, x + w, y + h])
      self.classes[k].append(index[category])
      self.crowd[k].append(bool(a.get('iscrowd', 0)))
      self.area[k].append(float(a.get('area', w * h)))
      self.names[k].append(f'annotation {aid}')
    sizes = {int(im['id']): (im.get('height'), im.get('width')) for im in data['images']}
    for k, image_id in enumerate(self.image_ids):
      height, width = sizes[image_id]
      if height and width:  # The image's own size is checked again when it is read.
        self._checked(k, int(height), int(width))

  def _checked(self, k: int, height: int, width: int) -> np.ndarray:
    return check_boxes(np.asarray(self.boxes[k], np.float32).reshape(-1, 4),
                       np.asarray(self.classes[k], np.int32), height, width,
                       len(self.class_names),
                       f'{annotation_path(self.root, self.split)}, image '
                       f'{self.image_ids[k]} ({self.files[k]})', names=self.names[k])

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> dict:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from vision_jax.data import decode  # pylint: disable=g-import-not-at-top
    i = int(i)
    try:  # As stored: COCO boxes are in the file's pixels, EXIF orientation not applied.
      with Image.open(self.files[i]) as pil:
        image = np.asarray(pil.convert('L' if self.channels == 1 else 'RGB'))
    except Exception as e:  # pylint: disable=broad-except  # PIL's many failure types.
      raise decode.corrupt(self.files[i], e) from e
    image = image[..., None] if image.ndim == 2 else image
    boxes = self._checked(i, image.shape[0], image.shape[1])
    return {'image': image, 'boxes': boxes,
            'classes': np.asarray(self.classes[i], np.int32).reshape(-1),
            'crowd': np.asarray(self.crowd[i], bool).reshape(-1),
            'area': np.asarray(self.area[i], np.float32).reshape(-1),
            'image_id': self.image_ids[i]}
