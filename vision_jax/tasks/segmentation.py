"""The semantic segmentation task: one label per pixel.

Batches hold {'image': uint8 NHWC, 'label': uint8 [B, H, W]} (the label map; pixels equal
to `config.task.ignore_label` are no class). Sources (data/segmentation_sources.py):
tfds oxford_iiit_pet, the offline digits_segmentation canvases, or 'folder:/root' with
images/ and masks/. Training uses the joint random scale + crop (+ flip) transform,
evaluation the fit-and-pad one (data/segmentation_preprocess.JointTransform), both on the
host, in worker processes (config.dataset.num_workers, as for classification) or reader
threads. The classification recipe's dataset keys (preprocess, randaugment, classes, ...)
do not apply and are refused (`unused_dataset_keys`).

Loss: the mean per-pixel cross-entropy over every counted pixel of the micro-batch
(losses.mean_pixel_cross_entropy, with config.optim.label_smoothing); train metric: pixel
accuracy. Evaluation counts a confusion matrix on device per batch (padding rows and
ignored pixels excluded, segmentation_metrics.confusion_matrix), which evaluate.collect sums
over the split in int64; a split's results are mean_iou, per_class_iou, pixel_accuracy,
loss (per counted pixel), num_examples, num_pixels and the confusion matrix (written to
confusion_<split>.json by evaluate.write_results).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from PIL import Image

from vision_jax import losses
from vision_jax import mask_images
from vision_jax import predict
from vision_jax import segmentation_metrics
from vision_jax import tasks
from vision_jax.data import segmentation_preprocess as seg_pre
from vision_jax.errors import ConfigError


class Segmentation(tasks.Task):
  name = 'segmentation'
  eval_metrics = ('mean_iou', 'pixel_accuracy', 'loss')
  # Joint image-and-mask transforms (config.task.scale_range, flip) replace the recipes.
  unused_dataset_keys = {
      'randaugment': '', 'autoaugment': '', 'trivialaugment': False,
      'augment_interpolation': '', 'augment_fill': '', 'color_jitter': 0.0,
      'color_jitter_hue': 0.0, 'random_erasing': 0.0, 'random_erasing_mode': 'pixel',
      'random_erasing_count': 1, 'repeated_aug': 1, 'preprocess': 'resize',
      'min_crop_area': 0.08, 'eval_image_size': 0, 'classes': (), 'eval_preprocess': '',
      'crop_fraction': 0.875, 'eval_interpolation': '', 'cache': 'auto',
      'skip_corrupt': False}

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    t = config.task
    self.ignore_label = int(t.ignore_label)
    self.label_smoothing = config.optim.label_smoothing

  def validate(self) -> None:
    from vision_jax import models  # pylint: disable=g-import-not-at-top
    from vision_jax.data import segmentation_sources  # pylint: disable=g-import-not-at-top
    config = self.config
    models.check_model_task(config.model.name, 'segmentation')
    self.check_dataset_keys()
    t = config.task
    if not isinstance(t.ignore_label, int) or not 0 <= t.ignore_label <= 255:
      raise ConfigError(f'config.task.ignore_label={t.ignore_label!r} must be a label-map '
                        'value 0..255 that is no class (255 by convention).')
    low, high = tuple(t.scale_range) if len(t.scale_range) == 2 else (0, 0)
    if not 0 < low <= high:
      raise ConfigError(f'config.task.scale_range={tuple(t.scale_range)} must be (low, high) '
                        'with 0 < low <= high, e.g. (0.5, 2.0).')
    if t.pets_border not in segmentation_sources.PETS_BORDER:
      raise ConfigError(f'config.task.pets_border={t.pets_border!r}; use one of '
                        f'{", ".join(map(repr, segmentation_sources.PETS_BORDER))}.')
    for key in ('mixup_alpha', 'cutmix_alpha'):
      if config.dataset[key]:
        raise ConfigError(f'config.dataset.{key}={config.dataset[key]} mixes images and '
                          'their labels, which segmentation does not do. Set it to 0.')

  def build_data(self, shard, *, augment_on_device: bool = False):
    del augment_on_device  # The joint transform runs on the host.
    # pylint: disable=g-import-not-at-top
    from vision_jax.data import eval_transform
    from vision_jax.data import input_pipeline
    from vision_jax.data import segmentation_sources
    ds, t = self.config.dataset, self.config.task

    def open_split(split: str):
      return segmentation_sources.open_split(
          ds.name, split, data_dir=ds.data_dir, download=ds.download,
          ignore_label=t.ignore_label, pets_border=t.pets_border, num_classes=t.num_classes,
          channels=ds.channels, folder_test_fraction=ds.folder_test_fraction,
          folder_split_seed=ds.folder_split_seed)

    def make_transforms(layout):
      fill = tuple(int(round(255 * m)) for m in layout.mean)  # Padding normalises to zero.
      common = dict(fill=fill, ignore_label=t.ignore_label, channels=layout.channels)
      return input_pipeline.Transforms(
          train=seg_pre.make_transform(layout.size, train=True,
                                       scale_range=tuple(t.scale_range), flip=t.flip,
                                       **common),
          eval=seg_pre.make_transform(layout.size, train=False, **common),
          eval_transform=eval_transform.EvalTransform('fit_and_pad', layout.size,
                                                      channels=layout.channels, fill=fill),
          train_preprocess='scale_crop_flip')

    return input_pipeline.assemble(self.config, shard, open_split=open_split,
                                   make_transforms=make_transforms)

  def batch_spec(self, data) -> dict:
    b, s = self.config.train.batch_size, data.image_size
    return {'image': jax.ShapeDtypeStruct((b, s, s, data.channels), np.uint8),
            'label': jax.ShapeDtypeStruct((b, s, s), np.uint8)}

  def train_inputs(self, batch: tasks.Batch, normalize: Callable) -> tasks.Batch:
    return {'image': normalize(batch['image']), 'label': batch['label']}

  def loss(self, model: nnx.Module, inputs: tasks.Batch):
    logits = model(inputs['image'], train=True)
    loss = losses.mean_pixel_cross_entropy(logits, inputs['label'],
                                           ignore_label=self.ignore_label,
                                           label_smoothing=self.label_smoothing)
    return loss, logits

  def _counted(self, labels: jax.Array, num_classes: int) -> jax.Array:
    labels = labels.astype(jnp.int32)
    return (labels != self.ignore_label) & (labels < num_classes)

  def train_metrics(self, loss: jax.Array, aux: jax.Array, inputs: tasks.Batch) -> dict:
    counted = self._counted(inputs['label'], aux.shape[-1])
    hits = (jnp.argmax(aux, -1) == inputs['label'].astype(jnp.int32)) & counted
    return {'loss': loss,
            'pixel_accuracy': hits.sum() / jnp.maximum(counted.sum(), 1).astype(jnp.float32)}

  def eval_outputs(self, outputs: jax.Array, batch: tasks.Batch) -> dict:
    mask, labels = batch['mask'], batch['label']
    total, count = losses.pixel_cross_entropy(outputs, labels, ignore_label=self.ignore_label,
                                              example_mask=mask)
    return {'sum_confusion': segmentation_metrics.confusion_matrix(
                outputs, labels, outputs.shape[-1], ignore_label=self.ignore_label,
                example_mask=mask),
            'sum_loss': total.sum(), 'sum_pixels': count.sum(),
            'sum_examples': jnp.sum(mask > 0).astype(jnp.int32)}

  def summarize(self, arrays: dict, *, num_classes: int, class_names, context=None) -> dict:
    confusion = arrays['sum_confusion']
    names = list(class_names) if len(class_names) == num_classes else None
    out = segmentation_metrics.summarize(confusion, names)
    out['loss'] = float(arrays['sum_loss'] / max(float(arrays['sum_pixels']), 1.0))
    out['num_examples'] = int(arrays['sum_examples'])
    out['confusion_matrix'] = confusion.tolist()
    return out

  served_outputs = 'per-pixel logits [N, H, W, num_classes]'

  def predict(self, loaded, inputs, *, output: str | None, top_k: int) -> list[dict]:
    """Masks: one palette PNG per image and predictions.json in `output` (default
    <workdir>/predict/), `write_masks`."""
    del top_k
    return write_masks(loaded, inputs, output=output)


# ------------------------------------------------------------------------------ predict
# OUT (--output, default W/predict/) gets one palette PNG per image, <stem>.png, whose pixel
# values are the predicted classes and whose colours are PASCAL VOC's
# (mask_images.save_mask_png), at the input image's own size, and predictions.json:
# [{"image", "mask", "histogram": {class name: pixels}}, or {"image", "error"}]. Each image
# gets the run's eval transform (fit and pad to the training size,
# segmentation_preprocess.fit_and_pad); the prediction of its unpadded region is resized
# back to the image with nearest neighbour.

def segmentation_masks(loaded, images: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Predicted HW class maps, one per HWC uint8 image of any size, at its own size."""
  size = loaded.image_shape[0]
  fill = tuple(int(round(255 * m)) for m in loaded.mean)
  inputs, regions = [], []
  for image in images:
    empty = np.zeros(image.shape[:2], np.uint8)
    padded, region = seg_pre.fit_and_pad(image, empty, size, fill=fill,
                                                         ignore_label=255)
    inputs.append(padded)
    regions.append((int((region != 255).any(1).sum()), int((region != 255).any(0).sum())))
  if not inputs:
    return []
  logits = predict.batched_logits(loaded, np.stack(inputs))
  out = []
  for image, (h, w), lg in zip(images, regions, logits):
    classes = np.argmax(lg[:h, :w], -1).astype(np.uint8)
    if classes.shape != image.shape[:2]:
      classes = np.asarray(Image.fromarray(classes).resize(
          (image.shape[1], image.shape[0]), Image.NEAREST))
    out.append(classes)
  return out


def write_masks(loaded, inputs: Sequence[str], *, output: str | None = None) -> list[dict]:
  """A segmentation run's --mode=predict (module docstring): the masks and
  predictions.json; raises PredictError if any image failed."""
  from vision_jax import outputs  # pylint: disable=g-import-not-at-top
  out_dir = os.path.abspath(output or os.path.join(loaded.workdir, 'predict'))
  outputs.check_dir(out_dir, '--output')
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise outputs.OutputError(outputs.explain(e, f'creating {out_dir}')) from e
  items = predict.expand(inputs)
  for item in items:
    if item.error is None:
      try:
        item.image = predict.read_image(item.path, loaded.image_shape[2])
      except predict.ImageError as e:
        item.error = str(e)
  good = [item for item in items if item.error is None]
  predicted = iter(segmentation_masks(loaded, [item.image for item in good]))
  results, used = [], set()
  for i, item in enumerate(items):
    if item.error is not None:
      results.append({'image': item.path, 'error': item.error})
      print(f'error: {item.path}: {item.error}', file=sys.stderr)
      continue
    mask = next(predicted)
    stem = os.path.splitext(os.path.basename(item.path))[0]
    name = f'{stem}.png' if stem not in used else f'{stem}_{i}.png'
    used.add(stem)
    path = os.path.join(out_dir, name)
    with outputs.atomic(path) as tmp:  # Never a partial PNG under its name.
      mask_images.save_mask_png(mask, tmp)
    histogram = mask_images.class_histogram(mask, loaded.class_names)
    results.append({'image': item.path, 'mask': path, 'histogram': histogram})
    top = sorted(((n, c) for n, c in histogram.items() if c), key=lambda x: -x[1])[:4]
    print(f'{item.path}: {path} ' + ', '.join(f'{n}: {c} px' for n, c in top))
  sys.stdout.flush()
  with outputs.atomic(os.path.join(out_dir, 'predictions.json')) as tmp:  # Written last.
    with open(tmp, 'w') as f:
      json.dump(results, f, indent=2)
  predict.check_failures(results, f'masks and predictions.json in {out_dir}')
  return results
