"""Anchor boxes of the feature pyramid's levels, as torchvision's AnchorGenerator makes them.

Anchors depend only on the input's (padded) height and width, so they are computed once
per input shape with numpy, at trace time, and enter the jitted step as constants.

Level l of an input H x W has ceil(H / s_l) x ceil(W / s_l) cells for the pyramid's
strides s_l (8 ... 128 for P3-P7 on a ResNet: every stride-2 layer rounds up). Like
torchvision, the anchors of a level are `image_size // grid_size` apart along each axis,
which is s_l when H and W are multiples of s_l (and e.g. 320 // 3 = 106 on P7 of a
320-wide input, where torchvision does the same), and cell (i, j) centres its anchors on
(j * stride_w, i * stride_h): the cell's top-left corner, not its centre. The anchors of a
cell are the zero-centred boxes (-w/2, -h/2, w/2, h/2), rounded to integers (half to
even), for every aspect ratio r = h / w (outer) and size s (inner): w = s / sqrt(r),
h = s * sqrt(r). The rows run over levels, then cells in row-major order, then a cell's
anchors: the order in which the heads' outputs are flattened.

  RetinaNet  sizes (x, x 2^(1/3), x 2^(2/3)) truncated to integers for x = 32, 64, ..., 512
             on P3-P7, aspect ratios (0.5, 1, 2): 9 anchors per cell.
  FCOS       one square anchor per cell of size 8, 16, ..., 128 (its point is the centre).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

PYRAMID_STRIDES = (8, 16, 32, 64, 128)  # P3-P7.


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
  """Anchor sizes (one tuple per pyramid level) and aspect ratios (height / width, the same
  for every level)."""
  sizes: tuple[tuple[int, ...], ...]
  aspect_ratios: tuple[float, ...]
  strides: tuple[int, ...] = PYRAMID_STRIDES

  @property
  def num_anchors_per_cell(self) -> int:
    return len(self.sizes[0]) * len(self.aspect_ratios)


RETINANET = AnchorSpec(
    sizes=tuple((x, int(x * 2**(1.0 / 3)), int(x * 2**(2.0 / 3))) for x in (32, 64, 128, 256,
                                                                             512)),
    aspect_ratios=(0.5, 1.0, 2.0))
FCOS = AnchorSpec(sizes=((8,), (16,), (32,), (64,), (128,)), aspect_ratios=(1.0,))


def level_shapes(image_hw: Sequence[int], strides: Sequence[int] = PYRAMID_STRIDES
                 ) -> list[tuple[int, int]]:
  """(rows, columns) of each pyramid level for an input of `image_hw`."""
  height, width = (int(v) for v in image_hw)
  return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


def cell_anchors(sizes: Sequence[int], aspect_ratios: Sequence[float]) -> np.ndarray:
  """Zero-centred anchors [len(aspect_ratios) * len(sizes), 4] of one cell, in float32 as
  torchvision computes them."""
  scales = np.asarray(sizes, np.float32)
  h_ratios = np.sqrt(np.asarray(aspect_ratios, np.float32))
  w_ratios = np.float32(1) / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2))


def anchors(image_hw: Sequence[int], spec: AnchorSpec) -> tuple[np.ndarray, tuple[int, ...]]:
  """(float32 anchors [N, 4] of every level, the number of anchors of each level) for an
  input of `image_hw` (the padded size the network sees)."""
  height, width = (int(v) for v in image_hw)
  if height < 1 or width < 1:
    raise ValueError(f'Anchors need a positive image size, got {tuple(image_hw)}.')
  out, counts = [], []
  for (rows, cols), sizes in zip(level_shapes(image_hw, spec.strides), spec.sizes):
    stride_h, stride_w = height // rows, width // cols
    shift_x = np.arange(cols, dtype=np.int64) * stride_w
    shift_y = np.arange(rows, dtype=np.int64) * stride_h
    sy, sx = np.meshgrid(shift_y, shift_x, indexing='ij')
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    level = shifts[:, None, :].astype(np.float32) + cell_anchors(sizes, spec.aspect_ratios)[None]
    out.append(level.reshape(-1, 4))
    counts.append(out[-1].shape[0])
  return np.concatenate(out).astype(np.float32), tuple(counts)
