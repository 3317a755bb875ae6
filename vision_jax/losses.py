"""Binary cross-entropy over the classes, as timm's `BinaryCrossEntropy` (ResNet strikes back).

Each class is its own sigmoid problem: for logit x and target t in [0, 1],
  loss = -(pos_weight * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x))).
Targets are integer classes [B] (one-hot) or soft rows [B, K] (mixup / cutmix), made, in this
order, (1) smoothed: (1 - ls) * t + ls / K, timm's off value ls / K and on value
1 - ls + ls / K; on soft rows this is what timm's Mixup(label_smoothing=ls) produces, since
smoothing and mixing commute; (2) binarised when `target_threshold` is set: t > threshold
(RSB A1/A2/A3: 0.2).
Reduction: timm's default takes the mean over every (example, class) entry; `sum_classes`
(timm --bce-sum) sums over the classes and then takes the mean over examples. This returns
the per-example value [B] (the mean, or with sum_classes the sum, over the classes), so the
batch mean the train step takes equals timm's loss. Computed in float32 whatever the logits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def binary_cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, *,
                         label_smoothing: float = 0.0, target_threshold: float | None = None,
                         pos_weight: float | None = None,
                         sum_classes: bool = False) -> jax.Array:
  """Per-example BCE [B] of logits [B, K] against integer labels [B] or soft labels [B, K]."""
  if not 0 <= label_smoothing < 1:
    raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}.')
  logits = logits.astype(jnp.float32)
  targets = labels if labels.ndim == logits.ndim else jax.nn.one_hot(labels, num_classes)
  targets = targets.astype(jnp.float32)
  if label_smoothing:
    targets = (1 - label_smoothing) * targets + label_smoothing / num_classes
  if target_threshold is not None:
    targets = (targets > target_threshold).astype(jnp.float32)
  positive = targets * jax.nn.log_sigmoid(logits)
  if pos_weight is not None:
    positive = pos_weight * positive
  loss = -(positive + (1 - targets) * jax.nn.log_sigmoid(-logits))
  return loss.sum(-1) if sum_classes else loss.mean(-1)
