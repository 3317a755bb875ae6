"""torchvision's FCOS / RetinaNet state dicts -> a finished detection workdir.

  python -m vision_jax.convert torchvision --arch fcos_resnet50_fpn \
      --weights fcos_resnet50_fpn_coco.safetensors --output /tmp/vision_jax/tv_fcos
  python -m vision_jax.main --mode=predict --workdir /tmp/vision_jax/tv_fcos --images a.jpg

As convert.py's classifiers: config.json, dataset.json, conversion.json and checkpoints/0
(convert.write_workdir writes what `prepare` returns), the arrays mapped by
torchvision_weights.convert_detector. The
config is the detection task with torchvision's inference settings: ImageNet
normalisation, images resized to shorter side 800 with the longer at most 1333 (padded to
1344 x 1344), the detector's own score and NMS thresholds, 100 detections; the classes are
the file's (91 for torchvision's COCO weights: index = COCO category id, the unused ids
'N/A', as torchvision's weights.meta['categories']), so the config reads its data with
`task.class_index='category_id'`: `--mode=eval` on tfds coco/2017 or a COCO-format folder
scores the weights as torchvision's reference does. configs/voc_fcos_from_coco.py
fine-tunes such a workdir to new classes.
"""
from __future__ import annotations

import os

import numpy as np

from vision_jax.detection import torchvision_weights

# torchvision.models._meta._COCO_CATEGORIES: index = COCO category id.
COCO_CATEGORY_NAMES = (
    '__background__', 'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus',
    'train', 'truck', 'boat', 'traffic light', 'fire hydrant', 'N/A', 'stop sign',
    'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant',
    'bear', 'zebra', 'giraffe', 'N/A', 'backpack', 'umbrella', 'N/A', 'N/A', 'handbag',
    'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket',
    'bottle', 'N/A', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana',
    'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut',
    'cake', 'chair', 'couch', 'potted plant', 'bed', 'N/A', 'dining table', 'N/A',
    'N/A', 'toilet', 'N/A', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'N/A', 'book', 'clock',
    'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush',
)
IMAGE_SIZE, MIN_SIZE, MAX_SIZE = 1344, 800, 1333
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_config(arch: str, classes: int):
  """The detection run config of the converted weights with `classes` outputs (module
  docstring)."""
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  info = torchvision_weights.ARCHS[arch]
  config = config_lib.base_config()
  config.task.name = 'detection'
  config.task.min_size, config.task.max_size = MIN_SIZE, MAX_SIZE
  config.task.scale_range = (1.0, 1.0)
  if classes == len(COCO_CATEGORY_NAMES):
    config.task.class_index = 'category_id'
  config.model.name = info.model
  for key, value in info.options.items():
    config.model[key] = value
  ds = config.dataset
  ds.name, ds.train_split, ds.eval_splits = 'coco/2017', 'train', ('validation',)
  ds.image_size, ds.channels, ds.normalization = IMAGE_SIZE, 3, 'imagenet'
  config.optim.name, config.optim.momentum, config.optim.learning_rate = 'sgd', 0.9, 0.01
  config.train.batch_size, config.eval.batch_size = 16, 8
  return config


def prepare(arch: str, weights_path: str) -> tuple[dict, object, dict, dict]:
  """(arrays by parameter path, config, dataset.json, conversion.json) of a torchvision
  detector's weights; convert.py writes them as a workdir (convert.write_workdir)."""
  from vision_jax.data import eval_transform  # pylint: disable=g-import-not-at-top
  from vision_jax.pretrained_weights import read_weights  # pylint: disable=g-import-not-at-top
  weights = read_weights(weights_path)
  arrays = torchvision_weights.convert_detector(weights, arch, weights_path)
  classes = torchvision_weights.num_classes(weights, arch)
  names = (list(COCO_CATEGORY_NAMES) if classes == len(COCO_CATEGORY_NAMES)
           else [str(k) for k in range(classes)])
  fill = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)
  dataset = {'num_classes': classes, 'image_size': IMAGE_SIZE, 'channels': 3,
             'class_names': names, 'mean': list(IMAGENET_MEAN), 'std': list(IMAGENET_STD),
             'num_train': 0, 'eval_sizes': {}, 'train_image_size': IMAGE_SIZE,
             'eval_transform': eval_transform.EvalTransform(
                 'resize_and_pad', IMAGE_SIZE, channels=3, fill=fill, min_size=MIN_SIZE,
                 max_size=MAX_SIZE).to_json()}
  provenance = {'source': 'torchvision', 'weights': os.path.abspath(weights_path),
                'arch': arch, 'tensors_read': len(weights), 'arrays_written': len(arrays),
                'ignored': sorted(n for n in weights if n.endswith('.num_batches_tracked')),
                'eval_transform_note': f'resize to shorter side {MIN_SIZE}, longer at most '
                f'{MAX_SIZE}, pad to {IMAGE_SIZE}', 'class_names':
                'torchvision COCO categories' if classes == 91 else 'indices'}
  return ({k: np.asarray(v) for k, v in arrays.items()}, make_config(arch, classes), dataset,
          provenance)
