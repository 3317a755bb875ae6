"""Boxes, box codings, anchors and the per-element detection losses equal torchvision's
(tests/fixtures/detection_ops.npz, written by make_detection_fixtures.py)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax.detection import anchors as anchor_lib
from vision_jax.detection import boxes as box_ops
from vision_jax.detection import losses

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), 'fixtures', 'detection_ops.npz'))


def _close(ours, theirs, rtol=1e-6, atol=1e-5):
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=rtol, atol=atol)


def test_box_iou_and_generalized_iou():
  b1, b2 = FIXTURE['iou.boxes1'], FIXTURE['iou.boxes2']
  iou = box_ops.box_iou(b1, b2)
  _close(iou, FIXTURE['iou.iou'])
  _close(box_ops.generalized_box_iou(b1, b2), FIXTURE['iou.giou'])
  assert np.allclose(np.diag(np.asarray(iou)[:, :5]), 1.0)  # Shared boxes.
  assert (np.asarray(iou) == 0).sum() > 50  # Disjoint pairs are part of the check.


def test_box_iou_batched():
  b1, b2 = FIXTURE['iou.boxes1'], FIXTURE['iou.boxes2']
  batched = box_ops.box_iou(np.stack([b1, b1[::-1]]), np.stack([b2, b2]))
  _close(batched[0], FIXTURE['iou.iou'])
  _close(batched[1], FIXTURE['iou.iou'][::-1])


def test_giou_loss():
  loss = losses.giou_loss(FIXTURE['giou_loss.boxes1'], FIXTURE['giou_loss.boxes2'])
  _close(loss, FIXTURE['giou_loss.loss'])
  assert np.allclose(np.asarray(loss)[:10], 0, atol=1e-6)  # Identical boxes.
  assert (np.asarray(loss)[10:20] > 1).all()  # Disjoint: beyond 1.


@pytest.mark.parametrize('alpha,gamma', [(0.25, 2.0), (0.5, 1.5), (-1, 2.0)])
def test_sigmoid_focal_loss(alpha, gamma):
  loss = losses.sigmoid_focal_loss(FIXTURE['focal.logits'], FIXTURE['focal.targets'],
                                   alpha, gamma)
  _close(loss, FIXTURE[f'focal.loss_{alpha}_{gamma}'], rtol=1e-5, atol=1e-6)


def test_focal_loss_rejects_bad_alpha():
  with pytest.raises(ValueError, match='alpha=1.5'):
    losses.sigmoid_focal_loss(jnp.zeros(3), jnp.zeros(3), alpha=1.5)


def test_focal_loss_gradient_is_finite_at_large_logits():
  grad = jax.grad(lambda x: losses.sigmoid_focal_loss(x, jnp.array([1.0, 0.0, 1.0])).sum())(
      jnp.array([80.0, -80.0, -80.0]))
  assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize('weights', [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder(weights):
  name = '_'.join(str(int(w)) for w in weights)
  anchors, boxes, codes = (FIXTURE[f'coder.{k}'] for k in ('anchors', 'boxes', 'codes'))
  _close(box_ops.encode_deltas(boxes, anchors, weights), FIXTURE[f'coder.encode_{name}'],
         rtol=1e-5)
  decoded = box_ops.decode_deltas(codes, anchors, weights)
  _close(decoded, FIXTURE[f'coder.decode_{name}'], rtol=1e-5, atol=1e-3)
  round_trip = box_ops.decode_deltas(box_ops.encode_deltas(boxes, anchors, weights), anchors,
                                     weights)
  _close(round_trip, boxes, rtol=1e-5, atol=1e-3)


def test_ltrb_coder():
  anchors, boxes, codes = (FIXTURE[f'coder.{k}'] for k in ('anchors', 'boxes', 'codes'))
  _close(box_ops.encode_ltrb(boxes, anchors), FIXTURE['coder.encode_ltrb'], rtol=1e-5)
  _close(box_ops.decode_ltrb(np.abs(codes), anchors), FIXTURE['coder.decode_ltrb'],
         rtol=1e-5, atol=1e-3)
  _close(box_ops.decode_ltrb(box_ops.encode_ltrb(boxes, anchors), anchors), boxes,
         rtol=1e-5, atol=1e-3)


def test_clip_to_image_per_image_sizes():
  boxes = jnp.array([[[-5.0, -5.0, 50.0, 70.0]], [[-5.0, -5.0, 50.0, 70.0]]])
  clipped = box_ops.clip_to_image(boxes, jnp.array([[60.0], [30.0]]), jnp.array([[40.0],
                                                                                  [80.0]]))
  np.testing.assert_array_equal(clipped, [[[0, 0, 40, 60]], [[0, 0, 50, 30]]])


SIZES = sorted({k.split('.')[1] for k in FIXTURE.files if k.startswith('anchors.')})


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('name', ['retinanet', 'fcos'])
def test_anchors(size, name):
  hw = tuple(int(v) for v in size.split('x'))
  assert anchor_lib.level_shapes(hw) == [tuple(s) for s in
                                         FIXTURE[f'anchors.{size}.level_shapes']]
  spec = anchor_lib.RETINANET if name == 'retinanet' else anchor_lib.FCOS
  ours, counts = anchor_lib.anchors(hw, spec)
  theirs = FIXTURE[f'anchors.{size}.{name}'].astype(np.float32)
  np.testing.assert_array_equal(ours, theirs)
  shapes = anchor_lib.level_shapes(hw)
  assert counts == tuple(r * c * spec.num_anchors_per_cell for r, c in shapes)


def test_anchor_spec_is_retinanets():
  assert anchor_lib.RETINANET.sizes[0] == (32, 40, 50)
  assert anchor_lib.RETINANET.num_anchors_per_cell == 9
  assert anchor_lib.FCOS.num_anchors_per_cell == 1
