"""Class-aware non-maximum suppression with a fixed output size, for jit.

Greedy NMS keeps the highest-scoring box, removes every box of the same class that
overlaps it by IoU > `iou_threshold`, and repeats on what is left. Its k-th kept box is
therefore the highest-scoring box that no earlier kept box removed, so the loop below runs
`max_detections` steps, each picking the best remaining candidate (an argmax) and removing
its overlaps (one row of IoUs against all N candidates): O(max_detections x N) work, no
N x N matrix, no data-dependent shapes and no host round trip. Its output equals
`torchvision.ops.batched_nms(boxes, scores, classes, iou_threshold)[:max_detections]`
(same IoU formula, same strict `>`), with one rule where torchvision leaves the order
open: among equal scores the lower index counts as higher (torchvision's CPU kernel sorts
with an unstable sort, so its choice between tied overlapping boxes is arbitrary).

Candidates with `valid` False (below a score threshold, padding) are never kept.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vision_jax.detection import boxes as box_ops


def _iou_row(box: jax.Array, box_area: jax.Array, boxes: jax.Array, areas: jax.Array
             ) -> jax.Array:
  """IoU of one box with every box, in torchvision's NMS kernel's order of operations."""
  w = jnp.maximum(0.0, jnp.minimum(box[2], boxes[:, 2]) - jnp.maximum(box[0], boxes[:, 0]))
  h = jnp.maximum(0.0, jnp.minimum(box[3], boxes[:, 3]) - jnp.maximum(box[1], boxes[:, 1]))
  inter = w * h
  return inter / (box_area + areas - inter)


def batched_nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array,
                iou_threshold: float, max_detections: int, valid: jax.Array | None = None
                ) -> tuple[jax.Array, jax.Array]:
  """(indices int32 [max_detections], kept bool [max_detections]) of one image's kept boxes
  in decreasing score; rows past the number kept have kept False and index 0.

  boxes [N, 4] (x1, y1, x2, y2), scores [N], classes [N] int; NMS runs within each class.
  vmap it for a batch.
  """
  n = boxes.shape[0]
  if max_detections < 1:
    raise ValueError(f'batched_nms: max_detections={max_detections} must be at least 1.')
  boxes = boxes.astype(jnp.float32)
  scores = scores.astype(jnp.float32)
  areas = box_ops.area(boxes)
  alive = jnp.ones((n,), bool) if valid is None else valid.astype(bool)
  if n == 0:
    return jnp.zeros((max_detections,), jnp.int32), jnp.zeros((max_detections,), bool)

  def step(k, carry):
    alive, indices, kept = carry
    best = jnp.argmax(jnp.where(alive, scores, -jnp.inf)).astype(jnp.int32)
    found = alive[best]
    iou = _iou_row(boxes[best], areas[best], boxes, areas)
    removed = (iou > iou_threshold) & (classes == classes[best])
    alive = alive & ~(removed & found)
    alive = alive.at[best].set(False)
    indices = indices.at[k].set(jnp.where(found, best, 0))
    kept = kept.at[k].set(found)
    return alive, indices, kept

  init = (alive, jnp.zeros((max_detections,), jnp.int32), jnp.zeros((max_detections,), bool))
  _, indices, kept = jax.lax.fori_loop(0, max_detections, step, init)
  return indices, kept
