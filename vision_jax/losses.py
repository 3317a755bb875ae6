"""Losses beyond the softmax cross-entropy of `optim.cross_entropy`.

`binary_cross_entropy`: over the classes, as timm's `BinaryCrossEntropy` (ResNet strikes
back). Each class is its own sigmoid problem: for logit x and target t in [0, 1],
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

`pixel_cross_entropy`: softmax cross-entropy of every pixel of a label map, pixels labelled
`ignore_label` (and rows whose `example_mask` is 0: padding) left out, as PyTorch's
`cross_entropy(ignore_index=255)`. It returns per-example sums and counts so that a batch,
a micro-batch or a whole split averages over its counted pixels (`mean_pixel_cross_entropy`
is PyTorch's reduction='mean': total loss / total counted pixels), not over examples with
different numbers of labelled pixels. Label smoothing as `optim.cross_entropy`: targets
(1 - ls) * one_hot + ls / K.
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


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, *, ignore_label: int = 255,
                        label_smoothing: float = 0.0, example_mask: jax.Array | None = None
                        ) -> tuple[jax.Array, jax.Array]:
  """(sum of per-pixel losses [B], number of counted pixels [B]) of logits [B, H, W, K]
  against integer label maps [B, H, W]; ignored pixels and masked rows count 0.

  A label outside 0..K-1 that is not `ignore_label` is counted as ignored too: the data
  sources reject such masks, and a loss cannot index it.
  """
  if not 0 <= label_smoothing < 1:
    raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}.')
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  labels = labels.astype(jnp.int32)
  counted = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  if example_mask is not None:
    counted &= example_mask.reshape((-1,) + (1,) * (labels.ndim - 1)) > 0
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, jnp.where(counted, labels, 0)[..., None], -1)[..., 0]
  loss = log_z - (1 - label_smoothing) * target
  if label_smoothing:
    loss -= label_smoothing * jnp.mean(logits, axis=-1)
  loss = jnp.where(counted, loss, 0.0)
  axes = tuple(range(1, labels.ndim))
  return loss.sum(axes), counted.sum(axes).astype(jnp.float32)


def mean_pixel_cross_entropy(logits: jax.Array, labels: jax.Array, *, ignore_label: int = 255,
                             label_smoothing: float = 0.0,
                             example_mask: jax.Array | None = None) -> jax.Array:
  """The mean over every counted pixel of the batch (0 when none is counted)."""
  total, count = pixel_cross_entropy(logits, labels, ignore_label=ignore_label,
                                     label_smoothing=label_smoothing,
                                     example_mask=example_mask)
  return total.sum() / jnp.maximum(count.sum(), 1.0)
