"""The classification task: one integer label (or a soft label, under mixup) per image.

Batches hold {'image': uint8 NHWC, 'label': int32 [B]}; the loss is `steps.
classification_loss` (softmax cross-entropy with label smoothing), the train metric top-1
accuracy against the larger share of a mixed label; evaluation keeps per-example losses
and top-k predictions and summarises them with `evaluate.summarize` (top-1, top-5, loss,
per-class accuracy, confusion matrix). This is what the loop did before tasks existed,
unchanged op for op.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vision_jax import tasks


class Classification(tasks.Task):
  name = 'classification'
  eval_metrics = ('accuracy', 'top5', 'loss')

  def __init__(self, config: ml_collections.ConfigDict | None = None, *,
               label_smoothing: float | None = None, top_k: int = 5):
    super().__init__(config)
    if label_smoothing is None:
      label_smoothing = config.optim.label_smoothing if config is not None else 0.0
    self.label_smoothing, self.top_k = label_smoothing, top_k

  def validate(self, config: ml_collections.ConfigDict) -> None:
    from vision_jax import models  # pylint: disable=g-import-not-at-top
    models.check_model_task(config.model.name, 'classification')

  def build_data(self, config: ml_collections.ConfigDict, shard, *,
                 augment_on_device: bool = False):
    from vision_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    return input_pipeline.build(config, shard, augment_on_device=augment_on_device)

  def batch_spec(self, config: ml_collections.ConfigDict, data) -> dict:
    batch = config.train.batch_size
    return {'image': jax.ShapeDtypeStruct(
                (batch, data.image_size, data.image_size, data.channels), np.uint8),
            'label': jax.ShapeDtypeStruct((batch,), np.int32)}

  def train_inputs(self, batch: tasks.Batch, normalize: Callable) -> tasks.Batch:
    return {'image': normalize(batch['image']), 'label': batch['label']}

  def loss(self, model: nnx.Module, inputs: tasks.Batch):
    from vision_jax import steps  # pylint: disable=g-import-not-at-top
    logits = model(inputs['image'], train=True)
    return steps.classification_loss(logits, inputs['label'], self.label_smoothing).mean(), logits

  def train_metrics(self, loss: jax.Array, aux: jax.Array, inputs: tasks.Batch) -> dict:
    labels = inputs['label']
    hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
    return {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(aux, -1) == hard)}

  def eval_outputs(self, outputs: jax.Array, batch: tasks.Batch) -> dict:
    from vision_jax import steps  # pylint: disable=g-import-not-at-top
    k = min(self.top_k, outputs.shape[-1])
    return {
        'loss': steps.classification_loss(outputs, batch['label']),
        'top_k': jax.lax.top_k(outputs, k)[1],
        'label': batch['label'],
        'mask': batch['mask'],
    }

  def summarize(self, arrays: dict, *, num_classes: int, class_names, context=None) -> dict:
    from vision_jax import evaluate  # pylint: disable=g-import-not-at-top
    return evaluate.summarize(arrays, num_classes)
