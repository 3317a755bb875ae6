"""The classification task: one integer label (or a soft label, under mixup) per image.

Batches hold {'image': uint8 NHWC, 'label': int32 [B]}; the training loss is
`losses.classification_loss` of config.optim.loss (softmax cross-entropy or BCE, with label
smoothing: the one place that decides it), the train metric top-1 accuracy against the larger share of a mixed label;
evaluation keeps per-example losses and top-k predictions and `summarize`s them (top-1,
top-5, loss, per-class accuracy, confusion matrix; evaluate.py re-exports it). This is what the loop did before tasks existed,
unchanged op for op.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vision_jax import losses
from vision_jax import tasks
from vision_jax.errors import ConfigError


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true, predicted]."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels, preds), 1)
  return counts


def summarize(arrays: dict[str, np.ndarray], num_classes: int) -> dict:
  """Top-1, top-5, mean loss, per-class accuracy and confusion matrix of one split."""
  labels, top_k = arrays['label'], arrays['top_k']
  confusion = confusion_matrix(labels, top_k[:, 0], num_classes)
  per_class = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
  return {
      'accuracy': float(np.mean(top_k[:, 0] == labels)),
      'top5': float(np.mean(np.any(top_k[:, :5] == labels[:, None], axis=1))),
      'loss': float(np.mean(arrays['loss'])),
      'num_examples': int(labels.shape[0]),
      'per_class_accuracy': [float(a) for a in per_class],
      'confusion_matrix': confusion.tolist(),
  }


class Classification(tasks.Task):
  name = 'classification'
  eval_metrics = ('accuracy', 'top5', 'loss')

  def __init__(self, config: ml_collections.ConfigDict, *, top_k: int = 5):
    super().__init__(config)
    self.top_k = top_k
    # The training loss (config.optim.loss: softmax cross-entropy or BCE); evaluation
    # reports the softmax cross-entropy without smoothing whatever the training loss, as
    # timm's validation does, so losses compare across recipes.
    try:
      self.train_loss = losses.classification_loss(
          config.optim.loss, label_smoothing=config.optim.label_smoothing,
          threshold=config.optim.bce_target_threshold)
    except ValueError as e:
      raise ConfigError(str(e)) from e
    self.eval_loss = losses.classification_loss('softmax_xent')

  def validate(self) -> None:
    from vision_jax import models  # pylint: disable=g-import-not-at-top
    models.check_model_task(self.config.model.name, 'classification')

  def build_data(self, shard, *, augment_on_device: bool = False):
    from vision_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    return input_pipeline.build(self.config, shard, augment_on_device=augment_on_device)

  def batch_spec(self, data) -> dict:
    batch = self.config.train.batch_size
    return {'image': jax.ShapeDtypeStruct(
                (batch, data.image_size, data.image_size, data.channels), np.uint8),
            'label': jax.ShapeDtypeStruct((batch,), np.int32)}

  def train_inputs(self, batch: tasks.Batch, normalize: Callable) -> tasks.Batch:
    return {'image': normalize(batch['image']), 'label': batch['label']}

  def loss(self, model: nnx.Module, inputs: tasks.Batch):
    logits = model(inputs['image'], train=True)
    return self.train_loss(logits, inputs['label']).mean(), logits

  def train_metrics(self, loss: jax.Array, aux: jax.Array, inputs: tasks.Batch) -> dict:
    labels = inputs['label']
    hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
    return {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(aux, -1) == hard)}

  def eval_outputs(self, outputs: jax.Array, batch: tasks.Batch) -> dict:
    k = min(self.top_k, outputs.shape[-1])
    return {
        'loss': self.eval_loss(outputs, batch['label']),
        'top_k': jax.lax.top_k(outputs, k)[1],
        'label': batch['label'],
        'mask': batch['mask'],
    }

  def summarize(self, arrays: dict, *, num_classes: int, class_names, context=None) -> dict:
    return summarize(arrays, num_classes)

  def predict(self, loaded, inputs, *, output: str | None, top_k: int) -> list[dict]:
    """Class probabilities: one line per image printed, `output` (JSON) if given."""
    from vision_jax import outputs  # pylint: disable=g-import-not-at-top
    if output:
      outputs.check_file(output, '--output')  # Before any image is read.
    results = predict_probabilities(loaded, inputs, top_k)
    for r in results:
      if 'error' in r:
        print(f'error: {r["image"]}: {r["error"]}', file=sys.stderr)
      else:
        print(f'{r["image"]}: ' + ', '.join(f'{t["label"]} ({t["probability"]:.3f})'
                                           for t in r['top_k']))
    sys.stdout.flush()
    if output:
      with outputs.atomic(output, f'writing --output={output}') as tmp:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(tmp, 'w') as f:
          json.dump(results, f, indent=2)
    from vision_jax import predict  # pylint: disable=g-import-not-at-top
    predict.check_failures(results, 'see the lines above' + (f' and {output}' if output else ''))
    return results


def top_k_entries(probs: np.ndarray, class_names, k: int) -> list[dict]:
  order = np.argsort(-probs, kind='stable')[:k]
  return [{'index': int(i), 'label': str(class_names[i]), 'probability': float(probs[i])}
          for i in order]


def predict_probabilities(loaded, inputs, top_k: int = 5) -> list[dict]:
  """[{"image", "top_k": [{"index", "label", "probability"}], "preprocessing"} or
  {"image", "error"}] for image files, each through the run's eval transform
  (predict.read_images)."""
  from vision_jax import predict  # pylint: disable=g-import-not-at-top
  items = predict.read_images(inputs, loaded)
  good = [item for item in items if item.error is None]
  probs = predict.softmax(predict.batched_logits(
      loaded, np.stack([g.image for g in good]))) if good else []
  next_probs = iter(probs)  # `good` keeps the order of `items`.
  k = max(1, min(top_k, loaded.num_classes))
  transform = predict.EvalPreprocess.of(loaded).transform.to_json()
  return [{'image': item.path, 'error': item.error} if item.error is not None else
          {'image': item.path, 'top_k': top_k_entries(next(next_probs), loaded.class_names, k),
           'preprocessing': transform}
          for item in items]
