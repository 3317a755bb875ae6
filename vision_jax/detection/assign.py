"""Which ground-truth box each anchor learns from: FCOS's and RetinaNet's assignments.

Both run inside the jitted step with fixed shapes: one image's ground truth is padded to
`max_boxes` rows, with `gt_mask` saying which are real; padded rows never match. The
result is, per anchor, the index of its ground-truth box, or a negative code (vmap over the
batch). Ties between boxes go to the lowest index, as torch's `max(dim)` returns the first
maximum.

FCOS (torchvision's FCOS.compute_loss): an anchor point matches a box when it lies inside
the box, within `center_sampling_radius` x its level's stride of the box's centre (both
along x and y), and the largest of its four distances to the box's edges lies in its
level's range (4 s, 8 s) for stride s, the lowest level open below and the highest open
above. Among the boxes it matches, it takes the smallest by area (computed as torchvision
does, max over 1e8 - area in float32). Unmatched anchors get -1.

RetinaNet (torchvision's Matcher(0.5, 0.4, allow_low_quality_matches=True) on
box_iou(gt, anchors)): an anchor takes the box it overlaps most; below `low` IoU it is
background (-1), between `low` and `high` it is ignored (-2). With low-quality matches,
every anchor that has the highest IoU any anchor has with some box (ties included) keeps
its best box whatever the IoU, so that each box has at least one anchor.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.detection import boxes as box_ops

BACKGROUND = -1
IGNORE = -2  # RetinaNet: IoU between the thresholds; no classification loss.


def fcos_size_bounds(anchors: np.ndarray, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Per-anchor (lower, upper) bounds on the largest distance to a box's edges: 4 and 8
  times the anchor's size, the first level's lower bound 0 and the last level's upper
  bound infinite."""
  anchors = np.asarray(anchors, np.float32)
  sizes = anchors[:, 2] - anchors[:, 0]
  lower, upper = sizes * np.float32(4), sizes * np.float32(8)
  lower[:counts[0]] = 0
  upper[len(sizes) - counts[-1]:] = np.inf
  return lower, upper


def fcos_match(anchors: np.ndarray, counts: Sequence[int], gt_boxes: jax.Array,
               gt_mask: jax.Array, center_sampling_radius: float = 1.5) -> jax.Array:
  """int32 [N]: the index into gt_boxes [M, 4] of each anchor's box, or -1 (BACKGROUND).

  `anchors` [N, 4] (numpy: the size bounds are computed at trace time) and `counts`
  (anchors per level) are those of `anchors.anchors(..., anchors.FCOS)`; `gt_mask` [M]
  marks the real boxes.
  """
  lower, upper = fcos_size_bounds(np.asarray(anchors), counts)
  anchors = jnp.asarray(anchors, jnp.float32)
  gt_boxes = gt_boxes.astype(jnp.float32)
  gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
  centres = (anchors[:, :2] + anchors[:, 2:]) / 2
  sizes = anchors[:, 2] - anchors[:, 0]
  offset = jnp.max(jnp.abs(centres[:, None, :] - gt_centres[None, :, :]), axis=2)
  match = offset < center_sampling_radius * sizes[:, None]
  x, y = centres[:, 0:1], centres[:, 1:2]
  dist = jnp.stack([x - gt_boxes[None, :, 0], y - gt_boxes[None, :, 1],
                    gt_boxes[None, :, 2] - x, gt_boxes[None, :, 3] - y], axis=2)
  match &= jnp.min(dist, axis=2) > 0
  largest = jnp.max(dist, axis=2)
  match &= (largest > jnp.asarray(lower)[:, None]) & (largest < jnp.asarray(upper)[:, None])
  match &= gt_mask.astype(bool)[None, :]
  preference = match.astype(jnp.float32) * (jnp.float32(1e8) - box_ops.area(gt_boxes))[None]
  best = jnp.max(preference, axis=1)
  index = jnp.argmax(preference, axis=1).astype(jnp.int32)
  return jnp.where(best < 1e-5, BACKGROUND, index)


def iou_match(anchors: jax.Array | np.ndarray, gt_boxes: jax.Array, gt_mask: jax.Array,
              high: float = 0.5, low: float = 0.4, allow_low_quality_matches: bool = True
              ) -> jax.Array:
  """int32 [N]: each anchor's box index into gt_boxes [M, 4], -1 (BACKGROUND: best IoU
  below `low`) or -2 (IGNORE: in [low, high)). With no real box every anchor is -1."""
  if low > high:
    raise ValueError(f'iou_match: low={low} must not exceed high={high}.')
  valid = gt_mask.astype(bool)
  iou = box_ops.box_iou(gt_boxes.astype(jnp.float32), jnp.asarray(anchors, jnp.float32))
  iou = jnp.where(valid[:, None], iou, -1.0)  # [M, N]; padded rows lose to any real box.
  best = jnp.max(iou, axis=0)
  best_box = jnp.argmax(iou, axis=0).astype(jnp.int32)
  matches = jnp.where(best < low, BACKGROUND, jnp.where(best < high, IGNORE, best_box))
  if allow_low_quality_matches:
    best_per_box = jnp.max(iou, axis=1, keepdims=True)
    is_best = jnp.any((iou == best_per_box) & valid[:, None], axis=0)
    matches = jnp.where(is_best, best_box, matches)
  return matches
