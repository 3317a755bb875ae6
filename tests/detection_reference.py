"""Inputs of the detection equivalence checks, drawn from seeds with numpy.

Both sides use them: tests/fixtures/make_detection_fixtures.py feeds them to torchvision
and records its answers; the tests draw them again and compare ours. Only the answers are
committed, never inputs that a seed can redraw. Needs numpy only.
"""
from __future__ import annotations

import numpy as np

# Ground truth of the assignment checks: (x1, y1, x2, y2) on a 512 x 640 (H x W) input, with
# boxes sized for every pyramid level, two that overlap (the smaller wins in FCOS), one the
# size of a P3 anchor on its grid (IoU 1), one exactly between two anchors (a tie for the
# low-quality match) and one tiny box (below RetinaNet's thresholds everywhere).
ASSIGN_IMAGE_HW = (512, 640)
ASSIGN_NUM_CLASSES = 5
ASSIGN_BOXES = [
    [[10, 20, 60, 70], [100, 50, 400, 300], [300, 200, 620, 500], [0, 0, 32, 32],
     [4, 100, 36, 132], [500, 30, 505.5, 36], [40, 300, 200, 460], [60, 320, 180, 440]],
    [[5, 5, 635, 505], [200, 100, 330, 260], [250, 150, 290, 210]],
    [],  # An image without boxes: every anchor is background.
]
ASSIGN_LABELS = [[1, 4, 2, 0, 3, 1, 2, 2], [3, 0, 4], []]
MAX_BOXES = 10


def padded_targets() -> dict[str, np.ndarray]:
  """ASSIGN_BOXES / ASSIGN_LABELS padded to MAX_BOXES rows with a mask."""
  n = len(ASSIGN_BOXES)
  boxes = np.zeros((n, MAX_BOXES, 4), np.float32)
  labels = np.zeros((n, MAX_BOXES), np.int32)
  mask = np.zeros((n, MAX_BOXES), bool)
  for i, (b, l) in enumerate(zip(ASSIGN_BOXES, ASSIGN_LABELS)):
    boxes[i, :len(b)] = np.asarray(b, np.float32).reshape(-1, 4)
    labels[i, :len(l)] = l
    mask[i, :len(b)] = True
  return {'boxes': boxes, 'labels': labels, 'mask': mask}


def head_outputs(num_anchors: int, num_classes: int, seed: int, fcos: bool
                 ) -> dict[str, np.ndarray]:
  """Random outputs [B, N, ...] of a detector's head for the assignment/loss checks:
  logits N(-2, 1.5^2), RetinaNet deltas N(0, 0.3^2), FCOS ltrb in [0, 3) (after ReLU)."""
  rng = np.random.default_rng(seed)
  b = len(ASSIGN_BOXES)
  out = {'cls_logits': rng.normal(-2.0, 1.5, (b, num_anchors, num_classes)).astype(np.float32)}
  if fcos:
    out['bbox_regression'] = rng.uniform(0.0, 3.0, (b, num_anchors, 4)).astype(np.float32)
    out['bbox_ctrness'] = rng.normal(0.0, 1.0, (b, num_anchors, 1)).astype(np.float32)
  else:
    out['bbox_regression'] = rng.normal(0.0, 0.3, (b, num_anchors, 4)).astype(np.float32)
  return out


def random_boxes(rng: np.random.Generator, n: int, extent: float = 200.0,
                 clusters: int = 0, max_size: float = 60.0) -> np.ndarray:
  """n float32 boxes with positive sizes; with `clusters` > 0 they crowd around that many
  centres (heavy overlap)."""
  if clusters:
    centres = rng.uniform(0, extent, (clusters, 2))[rng.integers(0, clusters, n)]
    centres = centres + rng.normal(0, 4.0, (n, 2))
  else:
    centres = rng.uniform(0, extent, (n, 2))
  sizes = rng.uniform(2.0, max_size, (n, 2))
  return np.concatenate([centres - sizes / 2, centres + sizes / 2], 1).astype(np.float32)


def nms_cases() -> dict[str, dict[str, np.ndarray]]:
  """Inputs of the NMS checks, by case name: boxes [N, 4], scores [N], classes [N],
  iou_threshold, and 'tiebreak' (float64 scores: equal scores ordered by index, lower
  first) where scores tie."""
  rng = np.random.default_rng(7)
  cases = {}
  n = 600  # torchvision's coordinate-offset path (<= 1000 boxes on the CPU).
  cases['clustered'] = {'boxes': random_boxes(rng, n, clusters=8),
                        'scores': rng.uniform(0, 1, n).astype(np.float32),
                        'classes': rng.integers(0, 4, n).astype(np.int64),
                        'iou_threshold': np.float32(0.5)}
  n = 1500  # torchvision's per-class path (> 1000 boxes).
  cases['many'] = {'boxes': random_boxes(rng, n, extent=400, clusters=40),
                   'scores': rng.uniform(0, 1, n).astype(np.float32),
                   'classes': rng.integers(0, 10, n).astype(np.int64),
                   'iou_threshold': np.float32(0.3)}
  n = 500  # Scores on a grid of 0.1: many ties among overlapping boxes.
  scores = (rng.integers(0, 10, n) / 10).astype(np.float32)
  cases['ties'] = {'boxes': random_boxes(rng, n, clusters=5),
                   'scores': scores, 'classes': rng.integers(0, 2, n).astype(np.int64),
                   'iou_threshold': np.float32(0.5),
                   'tiebreak': scores.astype(np.float64) - np.arange(n) * 1e-9}
  groups = 60  # Groups of 4 identical boxes with one score: which copy survives is moot.
  base = random_boxes(rng, groups, extent=150, clusters=6)
  group_scores = rng.permutation(np.linspace(0.05, 0.95, groups)).astype(np.float32)
  order = rng.permutation(groups * 4)
  cases['duplicates'] = {'boxes': np.repeat(base, 4, axis=0)[order],
                         'scores': np.repeat(group_scores, 4)[order],
                         'classes': np.repeat(rng.integers(0, 3, groups), 4)[order],
                         'iou_threshold': np.float32(0.6)}
  return cases


# Postprocessing on random head outputs: a 192 x 256 input in which the two images are
# 192 x 230 and 150 x 256 (the rest padding).
POSTPROCESS_IMAGE_HW = (192, 256)
POSTPROCESS_IMAGE_SIZES = np.array([[192, 230], [150, 256]], np.int32)
POSTPROCESS_NUM_CLASSES = 6


def postprocess_outputs(num_anchors: int, seed: int, fcos: bool) -> dict[str, np.ndarray]:
  """Random head outputs [2, N, ...] for the postprocessing checks: the first image has
  more candidates than max_detections, the second fewer."""
  rng = np.random.default_rng(seed)
  k = POSTPROCESS_NUM_CLASSES
  means = np.array([-4.0, -7.0 if fcos else -9.5], np.float32)[:, None, None]
  logits = rng.normal(0.0, 2.0, (2, num_anchors, k)) + means
  out = {'cls_logits': logits.astype(np.float32)}
  if fcos:
    out['bbox_regression'] = rng.uniform(0.0, 4.0, (2, num_anchors, 4)).astype(np.float32)
    out['bbox_ctrness'] = rng.normal(0.5, 1.0, (2, num_anchors, 1)).astype(np.float32)
  else:
    out['bbox_regression'] = rng.normal(0.0, 0.5, (2, num_anchors, 4)).astype(np.float32)
  return out


# The converted detectors' check: torchvision's models with weights drawn from a seed.
MODEL_IMAGE_HW = (256, 320)
MODEL_NUM_CLASSES = 5
CLS_PRIOR_BIAS = -3.0


def detector_state_dict(names_shapes: list[tuple[str, tuple[int, ...]]], seed: int,
                        head_scale: float) -> dict[str, np.ndarray]:
  """torch_reference.random_state_dict, then shaped so that the network's outputs are in
  a useful range: a random BatchNorm does not normalise, so C3-C5 are ~1e3 and the FPN's
  convs that read them are scaled by 1e-3; the final classification, box and centerness
  convs are scaled by `head_scale` and the classification bias set to CLS_PRIOR_BIAS, so
  that scores spread over (0, 1) instead of saturating."""
  import torch_reference  # pylint: disable=g-import-not-at-top
  state = torch_reference.random_state_dict(names_shapes, seed)
  for name, value in state.items():
    if name.startswith('backbone.fpn.') and value.ndim == 4 and value.shape[1] > 256:
      state[name] = value * np.float32(1e-3)
    elif name.rsplit('.', 2)[-2] in ('cls_logits', 'bbox_reg', 'bbox_ctrness'):
      state[name] = value * np.float32(head_scale)
  for name in state:
    if name.endswith('cls_logits.bias'):
      state[name] = np.full_like(state[name], CLS_PRIOR_BIAS)
  return state


def sample_images() -> np.ndarray:
  """scikit-learn's two sample photos (china.jpg, flower.jpg; 427 x 640) resized to
  MODEL_IMAGE_HW with PIL's bilinear filter: uint8 [2, H, W, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  h, w = MODEL_IMAGE_HW
  return np.stack([np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
                   for image in load_sample_images().images])
