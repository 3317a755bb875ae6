"""Detection losses: the per-element ones and FCOS's and RetinaNet's objectives built on them.

Per element, as torchvision.ops computes them:
  sigmoid_focal_loss   Lin et al. 2017: BCE(x, t) (1 - p_t)^gamma, weighted alpha for
                       positives and 1 - alpha for negatives.
  giou_loss            1 - GIoU of paired boxes (eps 1e-7 in both denominators).
  bce_with_logits      binary cross-entropy on logits, in the stable form.

Objectives, given a detector's outputs {'cls_logits' [B, N, K], 'bbox_regression' [B, N, 4],
('bbox_ctrness' [B, N, 1] for FCOS)} and padded ground truth {'boxes' [B, M, 4] (x1, y1,
x2, y2 in input pixels), 'labels' [B, M] int in [0, K), 'mask' [B, M]}; both return
(scalar loss, {name: scalar}) with the parts torchvision reports and `num_foreground`:
  fcos_loss       focal + GIoU + centerness BCE, each summed and divided by the number of
                  foreground anchors of the whole batch (torchvision's FCOSHead).
  retinanet_loss  focal (anchors with IoU in [0.4, 0.5) ignored) + box loss (L1 on the
                  encoded deltas, or GIoU for RetinaNet v2), each summed per image,
                  divided by that image's foreground count, then averaged over images.
Every arithmetic step runs on all anchors with masks (fixed shapes); background anchors
are given harmless stand-in targets so that no masked-out element can be NaN.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.detection import assign
from vision_jax.detection import boxes as box_ops

Outputs = Mapping[str, jax.Array]
Targets = Mapping[str, jax.Array]


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Elementwise -t log sigmoid(x) - (1 - t) log(1 - sigmoid(x)) = max(x, 0) - x t +
  log(1 + exp(-|x|))."""
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25,
                       gamma: float = 2.0) -> jax.Array:
  """Elementwise focal loss (torchvision.ops.sigmoid_focal_loss, reduction 'none'); alpha
  -1 turns the class weighting off."""
  if not (0 <= alpha <= 1 or alpha == -1):
    raise ValueError(f'sigmoid_focal_loss: alpha={alpha} must be in [0, 1], or -1 for none.')
  p = jax.nn.sigmoid(logits)
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = bce_with_logits(logits, targets) * (1 - p_t)**gamma
  if alpha >= 0:
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
  return loss


def giou_loss(boxes1: jax.Array, boxes2: jax.Array, eps: float = 1e-7) -> jax.Array:
  """Elementwise 1 - GIoU of paired boxes [..., 4] (torchvision.ops.
  generalized_box_iou_loss, reduction 'none')."""
  x1, y1, x2, y2 = (boxes1[..., i] for i in range(4))
  x1g, y1g, x2g, y2g = (boxes2[..., i] for i in range(4))
  xi1, yi1 = jnp.maximum(x1, x1g), jnp.maximum(y1, y1g)
  xi2, yi2 = jnp.minimum(x2, x2g), jnp.minimum(y2, y2g)
  inter = jnp.where((yi2 > yi1) & (xi2 > xi1), (xi2 - xi1) * (yi2 - yi1), 0.0)
  union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
  iou = inter / (union + eps)
  enclosing = ((jnp.maximum(x2, x2g) - jnp.minimum(x1, x1g))
               * (jnp.maximum(y2, y2g) - jnp.minimum(y1, y1g)))
  return 1 - (iou - (enclosing - union) / (enclosing + eps))


def centerness(ltrb: jax.Array) -> jax.Array:
  """FCOS's centerness sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of distances
  [..., 4] from a point to a box's edges: 1 at the box's centre, 0 on an edge."""
  lr, tb = ltrb[..., 0::2], ltrb[..., 1::2]
  return jnp.sqrt(jnp.min(lr, -1) / jnp.max(lr, -1) * (jnp.min(tb, -1) / jnp.max(tb, -1)))


def _matched(targets: Targets, matches: jax.Array, anchors: jax.Array, num_classes: int
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(foreground [B, N], one-hot class targets [B, N, K], matched boxes [B, N, 4]) for
  per-anchor box indices `matches` [B, N]; background anchors get their own anchor as a
  stand-in box (finite codes, zero-weight)."""
  foreground = matches >= 0
  index = jnp.maximum(matches, 0)
  labels = jnp.take_along_axis(targets['labels'].astype(jnp.int32), index, axis=1)
  gt = jnp.take_along_axis(targets['boxes'].astype(jnp.float32), index[..., None], axis=1)
  gt = jnp.where(foreground[..., None], gt, anchors[None])
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * foreground[..., None]
  return foreground, onehot, gt


def fcos_loss(outputs: Outputs, targets: Targets, anchors: np.ndarray,
              counts: Sequence[int], *, center_sampling_radius: float = 1.5,
              focal_alpha: float = 0.25, focal_gamma: float = 2.0
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """FCOS's loss (module docstring): classification + bbox_regression + bbox_ctrness.

  `anchors`, `counts`: `anchors.anchors(image_hw, anchors.FCOS)` of the padded input.
  """
  cls_logits = outputs['cls_logits'].astype(jnp.float32)
  regression = outputs['bbox_regression'].astype(jnp.float32)
  ctrness = outputs['bbox_ctrness'].astype(jnp.float32)[..., 0]
  anchors_j = jnp.asarray(anchors, jnp.float32)
  matches = jax.vmap(lambda b, m: assign.fcos_match(
      anchors, counts, b, m, center_sampling_radius))(targets['boxes'], targets['mask'])
  foreground, onehot, gt = _matched(targets, matches, anchors_j, cls_logits.shape[-1])
  fg = foreground.astype(jnp.float32)
  norm = jnp.maximum(jnp.sum(fg), 1.0)
  loss_cls = jnp.sum(sigmoid_focal_loss(cls_logits, onehot, focal_alpha, focal_gamma))
  predicted = box_ops.decode_ltrb(regression, anchors_j[None])
  loss_box = jnp.sum(giou_loss(predicted, gt) * fg)
  ctr_target = jax.lax.stop_gradient(centerness(box_ops.encode_ltrb(gt, anchors_j[None])))
  ctr_target = jnp.where(foreground, ctr_target, 0.0)
  loss_ctr = jnp.sum(bce_with_logits(ctrness, ctr_target) * fg)
  parts = {'classification': loss_cls / norm, 'bbox_regression': loss_box / norm,
           'bbox_ctrness': loss_ctr / norm}
  total = parts['classification'] + parts['bbox_regression'] + parts['bbox_ctrness']
  return total, {**parts, 'num_foreground': jnp.sum(fg)}


def retinanet_loss(outputs: Outputs, targets: Targets, anchors: np.ndarray, *,
                   box_loss: str = 'l1', fg_iou_thresh: float = 0.5,
                   bg_iou_thresh: float = 0.4, focal_alpha: float = 0.25,
                   focal_gamma: float = 2.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """RetinaNet's loss (module docstring): classification + bbox_regression, with
  `box_loss` 'l1' (retinanet_resnet50_fpn) or 'giou' (retinanet_resnet50_fpn_v2).

  `anchors`: `anchors.anchors(image_hw, anchors.RETINANET)[0]` of the padded input.
  """
  if box_loss not in ('l1', 'giou'):
    raise ValueError(f"retinanet_loss: box_loss={box_loss!r}; use 'l1' or 'giou'.")
  cls_logits = outputs['cls_logits'].astype(jnp.float32)
  regression = outputs['bbox_regression'].astype(jnp.float32)
  anchors_j = jnp.asarray(anchors, jnp.float32)
  matches = jax.vmap(lambda b, m: assign.iou_match(
      anchors, b, m, fg_iou_thresh, bg_iou_thresh))(targets['boxes'], targets['mask'])
  foreground, onehot, gt = _matched(targets, matches, anchors_j, cls_logits.shape[-1])
  fg = foreground.astype(jnp.float32)
  valid = (matches != assign.IGNORE).astype(jnp.float32)
  per_image_norm = jnp.maximum(jnp.sum(fg, axis=1), 1.0)
  focal = sigmoid_focal_loss(cls_logits, onehot, focal_alpha, focal_gamma)
  loss_cls = jnp.sum(focal * valid[..., None], axis=(1, 2)) / per_image_norm
  if box_loss == 'l1':
    encoded = jax.lax.stop_gradient(box_ops.encode_deltas(gt, anchors_j[None]))
    per_anchor = jnp.sum(jnp.abs(regression - encoded), axis=-1)
  else:
    per_anchor = giou_loss(box_ops.decode_deltas(regression, anchors_j[None]), gt)
  loss_box = jnp.sum(per_anchor * fg, axis=1) / per_image_norm
  batch = cls_logits.shape[0]
  parts = {'classification': jnp.sum(loss_cls) / batch,
           'bbox_regression': jnp.sum(loss_box) / max(1, batch)}
  return (parts['classification'] + parts['bbox_regression'],
          {**parts, 'num_foreground': jnp.sum(fg)})
