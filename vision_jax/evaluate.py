"""Evaluation over a whole split: every example counted once, metrics computed on the host.

The eval step returns per-example losses and top-k predictions (replicated on every host),
so the masked padding rows of the last batch are dropped here and any metric, top-1, top-5,
per-class accuracy or a confusion matrix, comes from the same arrays.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
from jax.sharding import Mesh

from vision_jax import parallel


def collect(eval_step: Callable, state, batches: Iterable, mesh: Mesh) -> dict[str, np.ndarray]:
  """Runs eval_step over `batches`; returns the unpadded per-example arrays."""
  parts: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    out = parallel.fetch(eval_step(state, parallel.to_global(batch, mesh)))
    keep = out.pop('mask') > 0
    for key, value in out.items():
      parts.setdefault(key, []).append(value[keep])
  return {k: np.concatenate(v) for k, v in parts.items()}


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
