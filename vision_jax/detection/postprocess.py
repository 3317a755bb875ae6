"""Detector outputs -> a fixed number of boxes per image, on device (eval, predict, export).

Per image, as torchvision's RetinaNet/FCOS.postprocess_detections: on each pyramid level,
the (anchor, class) pairs scoring above `score_thresh` (RetinaNet: sigmoid(logit); FCOS:
sqrt(sigmoid(logit) sigmoid(centerness))), at most the `topk_candidates` best of them, are
decoded against their anchors and clipped to the image; class-aware NMS over all levels
keeps at most `max_detections`. Shapes never depend on the data: a level contributes
exactly min(topk_candidates, its anchors x classes) candidates, those under the threshold
marked invalid, and the result is padded.

Returns {'boxes' [B, D, 4] float32 (x1, y1, x2, y2 in input pixels), 'scores' [B, D],
'classes' [B, D] int32, 'num_detections' [B] int32}, D = max_detections, in decreasing
score; rows past num_detections are zero.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.detection import boxes as box_ops
from vision_jax.detection import nms


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
  """Thresholds of one detector; the defaults of `RETINANET` and `FCOS` are torchvision's,
  except max_detections (RetinaNet's is 300 there; COCO evaluation reads 100)."""
  score_thresh: float
  nms_thresh: float
  topk_candidates: int = 1000
  max_detections: int = 100


RETINANET = PostprocessConfig(score_thresh=0.05, nms_thresh=0.5)
FCOS = PostprocessConfig(score_thresh=0.2, nms_thresh=0.6)


def _candidates(scores: jax.Array, regression: jax.Array, anchors: jax.Array, k: int,
                score_thresh: float) -> tuple[jax.Array, ...]:
  """One level of one image: (scores [k], valid [k], classes [k], regression [k, 4],
  anchors [k, 4]) of its k best (anchor, class) pairs."""
  num_classes = scores.shape[-1]
  flat = scores.reshape(-1)
  top, index = jax.lax.top_k(jnp.where(flat > score_thresh, flat, -jnp.inf), k)
  anchor_index = index // num_classes
  return (jnp.where(jnp.isfinite(top), top, 0.0), jnp.isfinite(top),
          (index % num_classes).astype(jnp.int32), regression[anchor_index],
          anchors[anchor_index])


def detect(scores: jax.Array, regression: jax.Array, anchors: np.ndarray,
           counts: Sequence[int], decode: Callable[[jax.Array, jax.Array], jax.Array],
           config: PostprocessConfig, image_sizes: jax.Array) -> dict[str, jax.Array]:
  """Detections (module docstring) from per-(anchor, class) scores [B, N, K], box
  regression [B, N, 4], the input's anchors [N, 4] with their per-level `counts`, and
  `decode(regression, anchors) -> boxes`. `image_sizes` [B, 2]: the (height, width) of
  each image inside the padded input, which its boxes are clipped to.
  """
  if sum(counts) != scores.shape[1]:
    raise ValueError(f'detect: the outputs have {scores.shape[1]} anchors, the levels '
                     f'{tuple(counts)} add up to {sum(counts)}: the anchors belong to '
                     'another input size or detector.')
  anchors = jnp.asarray(anchors, jnp.float32)
  starts = np.cumsum((0,) + tuple(counts))

  def one_image(scores, regression, size):
    parts = []
    for lo, hi in zip(starts[:-1], starts[1:]):
      k = min(config.topk_candidates, int(hi - lo) * scores.shape[-1])
      parts.append(_candidates(scores[lo:hi], regression[lo:hi], anchors[lo:hi], k,
                               config.score_thresh))
    s, valid, classes, reg, anc = (jnp.concatenate(p) for p in zip(*parts))
    boxes = box_ops.clip_to_image(decode(reg, anc), size[0], size[1])
    keep, kept = nms.batched_nms(boxes, s, classes, config.nms_thresh,
                                 config.max_detections, valid)
    return {'boxes': jnp.where(kept[:, None], boxes[keep], 0.0),
            'scores': jnp.where(kept, s[keep], 0.0),
            'classes': jnp.where(kept, classes[keep], 0),
            'num_detections': jnp.sum(kept).astype(jnp.int32)}

  return jax.vmap(one_image)(scores, regression, image_sizes.astype(jnp.float32))


def retinanet_detections(outputs: Mapping[str, jax.Array], anchors: np.ndarray,
                         counts: Sequence[int], image_sizes: jax.Array,
                         config: PostprocessConfig = RETINANET) -> dict[str, jax.Array]:
  """RetinaNet's detections: scores sigmoid(cls_logits), boxes from `decode_deltas`."""
  scores = jax.nn.sigmoid(outputs['cls_logits'].astype(jnp.float32))
  return detect(scores, outputs['bbox_regression'].astype(jnp.float32), anchors, counts,
                box_ops.decode_deltas, config, image_sizes)


def fcos_detections(outputs: Mapping[str, jax.Array], anchors: np.ndarray,
                    counts: Sequence[int], image_sizes: jax.Array,
                    config: PostprocessConfig = FCOS) -> dict[str, jax.Array]:
  """FCOS's detections: scores sqrt(sigmoid(cls) sigmoid(centerness)), boxes from
  `decode_ltrb`."""
  scores = jnp.sqrt(jax.nn.sigmoid(outputs['cls_logits'].astype(jnp.float32))
                    * jax.nn.sigmoid(outputs['bbox_ctrness'].astype(jnp.float32)))
  return detect(scores, outputs['bbox_regression'].astype(jnp.float32), anchors, counts,
                box_ops.decode_ltrb, config, image_sizes)
