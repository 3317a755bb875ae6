"""The object detection task: boxes and classes, FCOS or RetinaNet (models/detection.py).

Batches hold {'image': uint8 NHWC, 'boxes': float32 [B, M, 4] (x1, y1, x2, y2 in pixels
of the padded input), 'classes': int32 [B, M], 'box_mask': float32 [B, M]}, M =
config.task.max_boxes rows of ground truth per image, padded and masked; eval batches add
what COCO evaluation needs ('crowd', 'area', 'image_id', 'scale', 'orig_size'). Sources:
data/detection_sources.py (digits_detection, tfds coco/2017 and voc/2007, a COCO-format
folder); transforms: data/detection_transforms.py (resize by the shorter side with the
longer capped, scale jitter, flip, crop, pad to config.dataset.image_size), on the host, in
worker processes or reader threads as for every task. The classification recipe's dataset
keys do not apply and are refused (`unused_dataset_keys`).

Loss: the detector's own (`model.loss`: target assignment on device inside the jitted
step; FCOS: focal + GIoU + centerness, RetinaNet: focal + L1 / GIoU); its parts are the
step's metrics. `apply` (what evaluation, predict and export run) is the model in eval
mode followed by its fixed-size post-processing on device (score threshold, top-k per
level, class-aware NMS, config.task.max_detections boxes). Evaluation keeps per-image rows
(detections and ground truth; padding rows dropped by evaluate.collect) and summarises a
split with pycocotools (detection/coco_eval.py) in the original images' pixels: AP, AP50,
AP75, APs/m/l, AR1/10/100, ARs/m/l, per-class 'AP/<name>', num_examples; the split's
detections go to detections_<split>.json (COCO results format, the dataset's category
ids) through evaluate.write_results.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from vision_jax import tasks
from vision_jax.errors import ConfigError


class Detection(tasks.Task):
  name = 'detection'
  eval_metrics = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR100')
  served_outputs = ('{boxes [N, D, 4] (x1, y1, x2, y2 in input pixels), scores [N, D], '
                    'classes [N, D] int32, num_detections [N] int32}, D = max_detections, '
                    'by decreasing score; rows past num_detections are zero')
  unused_dataset_keys = {
      'randaugment': '', 'autoaugment': '', 'trivialaugment': False,
      'augment_interpolation': '', 'augment_fill': '', 'color_jitter': 0.0,
      'color_jitter_hue': 0.0, 'random_erasing': 0.0, 'random_erasing_mode': 'pixel',
      'random_erasing_count': 1, 'repeated_aug': 1, 'preprocess': 'resize',
      'min_crop_area': 0.08, 'eval_image_size': 0, 'classes': (), 'eval_preprocess': '',
      'crop_fraction': 0.875, 'eval_interpolation': '', 'cache': 'auto',
      'skip_corrupt': False, 'mixup_alpha': 0.0, 'cutmix_alpha': 0.0}

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.category_ids: tuple[int, ...] | None = None  # Set by build_data.

  def validate(self) -> None:
    from vision_jax import models  # pylint: disable=g-import-not-at-top
    models.check_model_task(self.config.model.name, 'detection')
    self.check_dataset_keys()
    t, size = self.config.task, self.config.dataset.image_size
    if t.class_index not in ('label', 'category_id'):
      raise ConfigError(
          f'config.task.class_index={t.class_index!r}; use \'label\' (class index = the '
          'position in the dataset\'s class list) or \'category_id\' (class index = the '
          'dataset\'s category id, the label space of torchvision\'s COCO detectors).')
    low, high = tuple(t.scale_range) if len(t.scale_range) == 2 else (0, 0)
    if not 0 < low <= high:
      raise ConfigError(f'config.task.scale_range={tuple(t.scale_range)} must be (low, high) '
                        'with 0 < low <= high, e.g. (1.0, 1.0) for no scale jitter.')
    if size and t.max_size > size:
      raise ConfigError(
          f'config.task.max_size={t.max_size} exceeds config.dataset.image_size={size}, the '
          'padded input every resized image must fit in. Set image_size >= max_size (a '
          'multiple of 128 keeps every pyramid level whole).')

  # ----------------------------------------------------------------------------- data

  def transform(self, image_size: int, channels: int, mean, *, train: bool):
    """The joint transform (data/detection_transforms.py) of this config."""
    from vision_jax.data import detection_transforms  # pylint: disable=g-import-not-at-top
    t = self.config.task
    return detection_transforms.make_transform(
        image_size, train=train, max_boxes=t.max_boxes, min_size=t.min_size,
        max_size=t.max_size, scale_range=tuple(t.scale_range), flip=t.flip,
        min_box_size=t.min_box_size, fill=tuple(int(round(255 * m)) for m in mean),
        channels=channels)

  def build_data(self, shard, *, augment_on_device: bool = False):
    del augment_on_device  # The joint transform runs on the host.
    # pylint: disable=g-import-not-at-top
    from vision_jax.data import detection_sources
    from vision_jax.data import eval_transform
    from vision_jax.data import input_pipeline
    ds = self.config.dataset

    def open_split(split: str):
      source, info = detection_sources.open_split(ds.name, split, data_dir=ds.data_dir,
                                                  download=ds.download, channels=ds.channels,
                                                  class_index=self.config.task.class_index)
      if split == ds.train_split:
        self.category_ids = info.category_ids
      return source, info

    def make_transforms(layout):
      eval_fn = self.transform(layout.size, layout.channels, layout.mean, train=False)
      fill = eval_fn.fill if isinstance(eval_fn.fill, tuple) else ()
      return input_pipeline.Transforms(
          train=self.transform(layout.size, layout.channels, layout.mean, train=True),
          eval=eval_fn,
          eval_transform=eval_transform.EvalTransform(
              'resize_and_pad', layout.size, channels=layout.channels, fill=fill,
              min_size=int(self.config.task.min_size),
              max_size=int(self.config.task.max_size)),
          train_preprocess='detection_resize_flip_crop')

    return input_pipeline.assemble(self.config, shard, open_split=open_split,
                                   make_transforms=make_transforms)

  def batch_spec(self, data) -> dict:
    b, s, m = self.config.train.batch_size, data.image_size, self.config.task.max_boxes
    return {'image': jax.ShapeDtypeStruct((b, s, s, data.channels), np.uint8),
            'boxes': jax.ShapeDtypeStruct((b, m, 4), np.float32),
            'classes': jax.ShapeDtypeStruct((b, m), np.int32),
            'box_mask': jax.ShapeDtypeStruct((b, m), np.float32)}

  # ---------------------------------------------------------------------------- train

  def train_inputs(self, batch: tasks.Batch, normalize: Callable) -> tasks.Batch:
    return {'image': normalize(batch['image']), 'boxes': batch['boxes'],
            'classes': batch['classes'], 'box_mask': batch['box_mask']}

  def loss(self, model: nnx.Module, inputs: tasks.Batch):
    images = inputs['image']
    targets = {'boxes': inputs['boxes'], 'labels': inputs['classes'],
               'mask': inputs['box_mask'] > 0}
    return model.loss(model(images, train=True), targets, images.shape[1:3])

  def train_metrics(self, loss: jax.Array, aux: dict, inputs: tasks.Batch) -> dict:
    return {'loss': loss, **aux}

  # ------------------------------------------------------------------------ inference

  def postprocess_config(self, model: nnx.Module):
    from vision_jax.detection import postprocess  # pylint: disable=g-import-not-at-top
    t = self.config.task
    base = postprocess.FCOS if model.KIND == 'fcos' else postprocess.RETINANET
    return dataclasses.replace(
        base, max_detections=int(t.max_detections),
        score_thresh=base.score_thresh if t.score_thresh < 0 else float(t.score_thresh))

  def apply(self, models: dict[str, nnx.Module], images: jax.Array) -> dict:
    model = models['model']
    return model.detect(model(images, train=False), images.shape[1:3],
                        config=self.postprocess_config(model))

  def eval_outputs(self, outputs: dict, batch: tasks.Batch) -> dict:
    return {**outputs, 'gt_boxes': batch['boxes'], 'gt_classes': batch['classes'],
            'gt_mask': batch['box_mask'], 'gt_crowd': batch['crowd'],
            'gt_area': batch['area'], 'image_id': batch['image_id'],
            'scale': batch['scale'], 'orig_size': batch['orig_size'], 'mask': batch['mask']}

  def summarize(self, arrays: dict, *, num_classes: int, class_names, context=None) -> dict:
    return summarize(arrays, class_names=list(class_names)
                     if len(class_names) == num_classes else [str(k) for k in range(num_classes)],
                     category_ids=self.category_ids)

  def predict(self, loaded, inputs, *, output: str | None, top_k: int) -> list[dict]:
    """Boxes drawn on copies of the images (PNG) and predictions.json in `output`
    (default <workdir>/predict/): detection/predictions.write_detections."""
    del top_k
    from vision_jax.detection import predictions  # pylint: disable=g-import-not-at-top
    return predictions.write_detections(loaded, inputs, output=output)


def to_original_pixels(arrays: dict) -> tuple[dict, dict]:
  """(ground truth, detections) of collected eval rows in the original images' pixels:
  boxes divided by each image's resize scale, detections clipped to the image."""
  sy, sx = arrays['scale'][:, 0], arrays['scale'][:, 1]
  per_box = np.stack([sx, sy, sx, sy], -1)[:, None, :].astype(np.float64)
  h, w = arrays['orig_size'][:, 0], arrays['orig_size'][:, 1]
  limit = np.stack([w, h, w, h], -1)[:, None, :].astype(np.float64)
  boxes = np.clip(np.asarray(arrays['boxes'], np.float64) / per_box, 0, limit)
  detections = {'boxes': boxes, 'scores': arrays['scores'], 'classes': arrays['classes'],
                'num_detections': arrays['num_detections']}
  ground_truth = {'boxes': np.asarray(arrays['gt_boxes'], np.float64) / per_box,
                  'labels': arrays['gt_classes'], 'mask': arrays['gt_mask'] > 0,
                  'crowd': arrays['gt_crowd'] > 0, 'area': arrays['gt_area']}
  return ground_truth, detections


def summarize(arrays: dict, *, class_names: list[str],
              category_ids: tuple[int, ...] | None = None) -> dict:
  """One split's COCO summary (module docstring) and its detections as 'json_files'."""
  from vision_jax.detection import coco_eval  # pylint: disable=g-import-not-at-top
  ground_truth, detections = to_original_pixels(arrays)
  ids = [int(i) for i in arrays['image_id']]
  gt = coco_eval.ground_truth_dataset(ground_truth, ids, arrays['orig_size'], class_names,
                                      category_ids)
  results = coco_eval.results(detections, ids, coco_eval._category_ids(  # pylint: disable=protected-access
      category_ids, len(class_names)))
  out = coco_eval.summarize(gt, [dict(r) for r in results])  # loadRes adds keys to its input.
  out['num_examples'] = len(ids)
  out['json_files'] = {'detections': results}
  return out
