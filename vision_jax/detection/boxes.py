"""Axis-aligned boxes: IoU, generalised IoU, clipping and the two box codings detectors use.

Boxes are (x1, y1, x2, y2) in pixels of the network's input, as torchvision's detectors
take and return them; every function works on any leading batch shape and in float32.
The arithmetic follows torchvision's own order of operations (`torchvision.ops.boxes`,
`torchvision.models.detection._utils`), so results agree with it to float32 rounding.

Codings of a box relative to a reference box (an anchor):
  RetinaNet  `encode_deltas` / `decode_deltas`: (dx, dy, dw, dh), centre offsets in units of
             the anchor's size and log size ratios, divided by `weights` (torchvision's
             BoxCoder; RetinaNet uses weights (1, 1, 1, 1)); decoding clips dw, dh at
             log(1000 / 16) so that exp cannot overflow.
  FCOS       `encode_ltrb` / `decode_ltrb`: distances from the anchor's centre to the box's
             left, top, right and bottom edges, divided by the anchor's width or height
             (torchvision's BoxLinearCoder(normalize_by_size=True)).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

# torchvision's BoxCoder.bbox_xform_clip: no predicted box grows beyond 1000/16 x its anchor.
DELTA_CLIP = math.log(1000.0 / 16)


def area(boxes: jax.Array) -> jax.Array:
  """(x2 - x1) * (y2 - y1) of boxes [..., 4]."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _intersection_union(boxes1: jax.Array, boxes2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pairwise intersection and union areas [..., N, M] of boxes1 [..., N, 4], boxes2 [..., M, 4]."""
  lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area(boxes1)[..., :, None] + area(boxes2)[..., None, :] - inter
  return inter, union


def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """Pairwise IoU [..., N, M] (torchvision.ops.box_iou): intersection / union. Two boxes of
  zero area and no overlap give 0 / 0 = NaN, as there."""
  inter, union = _intersection_union(boxes1, boxes2)
  return inter / union


def generalized_box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """Pairwise generalised IoU [..., N, M] (Rezatofighi et al. 2019; torchvision.ops.
  generalized_box_iou): IoU minus the share of the smallest enclosing box that the union
  leaves empty, in [-1, 1]."""
  inter, union = _intersection_union(boxes1, boxes2)
  iou = inter / union
  lt = jnp.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rb = jnp.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  enclosing = wh[..., 0] * wh[..., 1]
  return iou - (enclosing - union) / enclosing


def clip_to_image(boxes: jax.Array, height: jax.Array | float, width: jax.Array | float
                  ) -> jax.Array:
  """Boxes [..., 4] clipped to [0, width] x [0, height] (torchvision's clip_boxes_to_image);
  `height`, `width` may be arrays broadcasting against boxes[..., 0] (one size per image)."""
  height = jnp.asarray(height, boxes.dtype)[..., None]
  width = jnp.asarray(width, boxes.dtype)[..., None]
  x = jnp.clip(boxes[..., 0::2], 0.0, width)
  y = jnp.clip(boxes[..., 1::2], 0.0, height)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def encode_deltas(boxes: jax.Array, anchors: jax.Array,
                  weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """RetinaNet's regression targets [..., 4] of `boxes` relative to `anchors` (same shape):
  (wx (cx - acx) / aw, wy (cy - acy) / ah, ww log(w / aw), wh log(h / ah))."""
  wx, wy, ww, wh = weights
  aw = anchors[..., 2] - anchors[..., 0]
  ah = anchors[..., 3] - anchors[..., 1]
  acx = anchors[..., 0] + 0.5 * aw
  acy = anchors[..., 1] + 0.5 * ah
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  cx = boxes[..., 0] + 0.5 * w
  cy = boxes[..., 1] + 0.5 * h
  return jnp.stack([wx * (cx - acx) / aw, wy * (cy - acy) / ah,
                    ww * jnp.log(w / aw), wh * jnp.log(h / ah)], axis=-1)


def decode_deltas(deltas: jax.Array, anchors: jax.Array,
                  weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """Boxes [..., 4] from RetinaNet's regression outputs `deltas` relative to `anchors`, the
  inverse of `encode_deltas` (dw, dh clipped at DELTA_CLIP first)."""
  wx, wy, ww, wh = weights
  aw = anchors[..., 2] - anchors[..., 0]
  ah = anchors[..., 3] - anchors[..., 1]
  acx = anchors[..., 0] + 0.5 * aw
  acy = anchors[..., 1] + 0.5 * ah
  dw = jnp.minimum(deltas[..., 2] / ww, DELTA_CLIP)
  dh = jnp.minimum(deltas[..., 3] / wh, DELTA_CLIP)
  cx = deltas[..., 0] / wx * aw + acx
  cy = deltas[..., 1] / wy * ah + acy
  half_w = 0.5 * (jnp.exp(dw) * aw)
  half_h = 0.5 * (jnp.exp(dh) * ah)
  return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def _centres_and_sizes(anchors: jax.Array) -> tuple[jax.Array, ...]:
  cx = 0.5 * (anchors[..., 0] + anchors[..., 2])
  cy = 0.5 * (anchors[..., 1] + anchors[..., 3])
  w = anchors[..., 2] - anchors[..., 0]
  h = anchors[..., 3] - anchors[..., 1]
  return cx, cy, w, h


def encode_ltrb(boxes: jax.Array, anchors: jax.Array) -> jax.Array:
  """FCOS's regression targets [..., 4]: (cx - x1, cy - y1, x2 - cx, y2 - cy) from the
  anchor's centre to the box's edges, divided by the anchor's (w, h, w, h). Negative
  where the centre lies outside the box."""
  cx, cy, w, h = _centres_and_sizes(anchors)
  ltrb = jnp.stack([cx - boxes[..., 0], cy - boxes[..., 1], boxes[..., 2] - cx,
                    boxes[..., 3] - cy], axis=-1)
  return ltrb / jnp.stack([w, h, w, h], axis=-1)


def decode_ltrb(ltrb: jax.Array, anchors: jax.Array) -> jax.Array:
  """Boxes [..., 4] from FCOS's regression outputs relative to `anchors`, the inverse of
  `encode_ltrb`."""
  cx, cy, w, h = _centres_and_sizes(anchors)
  ltrb = ltrb * jnp.stack([w, h, w, h], axis=-1)
  return jnp.stack([cx - ltrb[..., 0], cy - ltrb[..., 1], cx + ltrb[..., 2],
                    cy + ltrb[..., 3]], axis=-1)
