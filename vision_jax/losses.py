"""Losses beyond the softmax cross-entropy of `optim.cross_entropy`.

`classification_loss(config.optim.loss, ...)` is the one place a classifier's training
loss is chosen: softmax cross-entropy or binary cross-entropy, both with label smoothing
and soft (mixup / cutmix) targets. Evaluation reports the softmax cross-entropy whichever
loss trained the model (steps.make_eval_step), as timm's validation does, so that the
eval loss of runs with either loss compares.

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

Self-supervised losses (SimCLR's NT-Xent, BYOL's regression) take the embeddings of the
whole global batch: inside a step jitted over a mesh, an array sharded over the batch axes
is still one global array to the program, so `z @ z.T` pairs every view with every other
view of every device and host (XLA inserts the all-gather); no explicit collective.

`pixel_cross_entropy`: softmax cross-entropy of every pixel of a label map, pixels labelled
`ignore_label` (and rows whose `example_mask` is 0: padding) left out, as PyTorch's
`cross_entropy(ignore_index=255)`. It returns per-example sums and counts so that a batch,
a micro-batch or a whole split averages over its counted pixels (`mean_pixel_cross_entropy`
is PyTorch's reduction='mean': total loss / total counted pixels), not over examples with
different numbers of labelled pixels. Label smoothing as `optim.cross_entropy`: targets
(1 - ls) * one_hot + ls / K.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vision_jax import optim

CLASSIFICATION_LOSSES = ('softmax_xent', 'bce')


def classification_loss(name: str, *, label_smoothing: float = 0.0, threshold: float = 0.0
                        ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`loss(logits [B, K], labels [B] or soft [B, K]) -> per-example loss [B]` for
  config.optim.loss: 'softmax_xent' (optim.cross_entropy) or 'bce' (binary_cross_entropy,
  timm's BinaryCrossEntropy; `threshold` > 0 binarises the smoothed / mixed targets at it,
  RSB's 0.2). Both smooth by `label_smoothing`. Raises ValueError naming the config key."""
  if name not in CLASSIFICATION_LOSSES:
    raise ValueError(f'config.optim.loss={name!r} is not a classification loss; use '
                     "'softmax_xent' (softmax cross-entropy) or 'bce' (a sigmoid per class, "
                     'as ResNet strikes back).')
  if not isinstance(label_smoothing, (int, float)) or not 0 <= label_smoothing < 1:
    raise ValueError(f'config.optim.label_smoothing={label_smoothing!r}: use [0, 1).')
  if not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
    raise ValueError(f'config.optim.bce_target_threshold={threshold!r}: use a target value '
                     'in [0, 1) (RSB: 0.2), or 0 for off.')
  if threshold and name != 'bce':
    raise ValueError(f'config.optim.bce_target_threshold={threshold} applies to '
                     f"config.optim.loss='bce' only, but the loss is {name!r}. Set it to 0 or "
                     "the loss to 'bce'.")
  if name == 'softmax_xent':
    return lambda logits, labels: optim.cross_entropy(logits, labels, logits.shape[-1],
                                                      label_smoothing)
  return lambda logits, labels: binary_cross_entropy(
      logits, labels, logits.shape[-1], label_smoothing=label_smoothing,
      target_threshold=threshold or None)


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


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along `axis`, in float32 (F.normalize's convention)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis, keepdims=True), eps * eps))


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float = 0.1) -> jax.Array:
  """SimCLR's NT-Xent (normalised temperature-scaled cross-entropy), a scalar.

  z1[i] and z2[i] [N, D] are the projections of two views of image i. With the 2N views
  u = normalise([z1; z2]) and sim(a, b) = u_a . u_b / temperature, every view a is an
  anchor whose positive is the other view of its image and whose negatives are the other
  2N - 2 views of the batch:
    loss_a = -sim(a, pos(a)) + log sum_{b != a} exp(sim(a, b)),
  averaged over all 2N anchors (SimCLR's TF code reports the sum of the two views' means,
  twice this). Pass the global batch (see the module docstring); computed in float32 with
  the similarity matmul at full precision (bf16 passes would blur 1 / temperature-scaled
  logits on TPU), its cost is negligible next to the backbone's.
  """
  if z1.shape != z2.shape or z1.ndim != 2:
    raise ValueError(f'nt_xent takes two [N, D] arrays of the same shape, got {z1.shape} '
                     f'and {z2.shape}.')
  n = z1.shape[0]
  u = l2_normalize(jnp.concatenate([z1, z2], axis=0))
  logits = jnp.matmul(u, u.T, precision=jax.lax.Precision.HIGHEST) / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)  # No view pairs itself.
  positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  positive_logit = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive_logit)


def cosine_regression(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's 2 - 2 cos(p, stop_gradient(z)) per example [N]: the squared distance of the
  normalised prediction from the normalised target, in 0..4. No gradient reaches z."""
  z = jax.lax.stop_gradient(z)
  return 2.0 - 2.0 * jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1)


def byol_loss(p1: jax.Array, p2: jax.Array, z1: jax.Array, z2: jax.Array) -> jax.Array:
  """BYOL's symmetrised loss, a scalar: the batch mean of
  cosine_regression(p1, z2) + cosine_regression(p2, z1), where p_v is the online
  network's prediction for view v and z_v the target network's projection of view v
  (BYOL's code; 0..8). Gradients flow into the predictions only."""
  return jnp.mean(cosine_regression(p1, z2) + cosine_regression(p2, z1))


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
