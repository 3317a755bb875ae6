"""Semantic-segmentation metrics from a confusion matrix accumulated over a whole split.

`confusion_matrix` runs on device inside the jitted eval step: counts[true, predicted] over
every pixel of the batch whose label is a class (not `ignore_label`, not out of range) and
whose example is real (`example_mask` > 0; the eval pipeline pads the last batch with
masked copies). It is a sum over pixels, so under `jax.jit` over a batch sharded on a mesh
it is the global matrix, replicated, whatever the number of devices or hosts. Per batch it
is int32 (exact up to 2**31 pixels per batch); the evaluation loop sums the batches'
matrices on the host in int64 (`accumulate`) and summarises the total once (`summarize`).

Conventions (those of `sklearn.metrics.jaccard_score` and of the usual mIoU):
  IoU_c = C[c, c] / (sum_j C[c, j] + sum_i C[i, c] - C[c, c]), over the counted pixels.
  A class that appears neither in the labels nor in the predictions has no IoU (NaN; null
  in JSON) and is left out of the mean: mean_iou = mean of the defined IoUs, which is
  jaccard_score(y_true, y_pred, labels=<classes present in either>, average='macro').
  (jaccard_score with every label scores such a class 0 and warns; the convention here
  does not let classes absent from a split pull its mean down.)
  pixel_accuracy = trace(C) / sum(C).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(logits: jax.Array, labels: jax.Array, num_classes: int, *,
                     ignore_label: int = 255, example_mask: jax.Array | None = None
                     ) -> jax.Array:
  """int32 [K, K] counts[true, predicted] of a batch.

  logits: [B, H, W, K] scores (the prediction is their argmax), or integer predictions
      [B, H, W]. labels: integer label maps [B, H, W]. example_mask: [B], 0 for padding.
  """
  predictions = logits if logits.ndim == labels.ndim else jnp.argmax(logits, axis=-1)
  labels = labels.astype(jnp.int32)
  predictions = predictions.astype(jnp.int32)
  counted = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  counted &= (predictions >= 0) & (predictions < num_classes)
  if example_mask is not None:
    counted &= example_mask.reshape((-1,) + (1,) * (labels.ndim - 1)) > 0
  index = jnp.where(counted, labels * num_classes + predictions, 0)
  counts = jnp.zeros((num_classes * num_classes,), jnp.int32)
  counts = counts.at[index.reshape(-1)].add(counted.reshape(-1).astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def accumulate(total: np.ndarray | None, batch: jax.Array | np.ndarray) -> np.ndarray:
  """total + one batch's matrix, in int64 on the host (None: start from this batch)."""
  batch = np.asarray(batch, np.int64)
  return batch if total is None else total + batch


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
  """float64 [K]: IoU of each class, NaN for a class absent from labels and predictions."""
  confusion = np.asarray(confusion, np.float64)
  hits = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - hits
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, hits / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
  """The mean of the defined per-class IoUs (NaN when no pixel was counted)."""
  iou = per_class_iou(confusion)
  return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float('nan')


def pixel_accuracy(confusion: np.ndarray) -> float:
  """Correct pixels / counted pixels (NaN when none was counted)."""
  confusion = np.asarray(confusion, np.float64)
  total = confusion.sum()
  return float(np.trace(confusion) / total) if total else float('nan')


def _json_float(x: float) -> float | None:
  return None if np.isnan(x) else float(x)


def summarize(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
  """JSON-ready results of a split: mean_iou, per_class_iou ({class name: IoU or None}),
  pixel_accuracy and num_pixels (counted pixels). The caller adds num_examples."""
  confusion = np.asarray(confusion, np.int64)
  names = list(class_names) if class_names is not None else [
      str(c) for c in range(confusion.shape[0])]
  if len(names) != confusion.shape[0]:
    raise ValueError(f'{len(names)} class names for a {confusion.shape[0]}-class matrix.')
  iou = per_class_iou(confusion)
  return {'mean_iou': _json_float(mean_iou(confusion)),
          'per_class_iou': {n: _json_float(v) for n, v in zip(names, iou)},
          'pixel_accuracy': _json_float(pixel_accuracy(confusion)),
          'num_pixels': int(confusion.sum())}
