"""FCOS's and RetinaNet's target assignment and losses equal torchvision's
(tests/fixtures/detection_assign.npz: torchvision's compute_loss on the ground truth and
random head outputs of detection_reference.py)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import detection_reference as ref
from vision_jax.detection import anchors as anchor_lib
from vision_jax.detection import assign
from vision_jax.detection import losses

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), 'fixtures', 'detection_assign.npz'))
TARGETS = ref.padded_targets()
FCOS_ANCHORS = anchor_lib.anchors(ref.ASSIGN_IMAGE_HW, anchor_lib.FCOS)
RETINA_ANCHORS = anchor_lib.anchors(ref.ASSIGN_IMAGE_HW, anchor_lib.RETINANET)


def _fcos_matches():
  anchors, counts = FCOS_ANCHORS
  return jax.vmap(lambda b, m: assign.fcos_match(anchors, counts, b, m))(
      TARGETS['boxes'], TARGETS['mask'])


def test_fcos_matches():
  ours = np.asarray(_fcos_matches())
  theirs = FIXTURE['fcos.matches']
  np.testing.assert_array_equal(ours, theirs)
  counts = FCOS_ANCHORS[1]
  level = np.repeat(np.arange(len(counts)), counts)
  # The check covers four pyramid levels, the smaller of two overlapping boxes, and an
  # image without boxes.
  assert len(set(level[theirs[0] >= 0]) | set(level[theirs[1] >= 0])) >= 4
  assert (theirs[0] == 7).any() and (theirs[2] == -1).all()


def test_fcos_padding_rows_never_match():
  """Moving the real boxes behind garbage rows masked out changes nothing but indices."""
  anchors, counts = FCOS_ANCHORS
  boxes, mask = TARGETS['boxes'][0], TARGETS['mask'][0]
  garbage = np.array([[0, 0, 640, 512]] * 3, np.float32)  # Would match many anchors.
  shifted = assign.fcos_match(anchors, counts, np.concatenate([garbage, boxes]),
                              np.concatenate([np.zeros(3, bool), mask]))
  expected = FIXTURE['fcos.matches'][0].astype(np.int32)
  np.testing.assert_array_equal(np.asarray(shifted), np.where(expected >= 0, expected + 3, -1))


@pytest.mark.parametrize('name', ['retinanet', 'retinanet_v2'])
def test_retinanet_matches(name):
  anchors, _ = RETINA_ANCHORS
  ours = jax.vmap(lambda b, m: assign.iou_match(anchors, b, m))(TARGETS['boxes'],
                                                                TARGETS['mask'])
  theirs = FIXTURE[f'{name}.matches']
  np.testing.assert_array_equal(np.asarray(ours), theirs)
  assert (theirs == assign.IGNORE).any() and (theirs[2] == -1).all()
  assert (theirs[0] == 5).sum() >= 1  # The tiny box: a low-quality match only.


def test_iou_match_without_low_quality_matches_drops_the_tiny_box():
  anchors, _ = RETINA_ANCHORS
  matches = assign.iou_match(anchors, TARGETS['boxes'][0], TARGETS['mask'][0],
                             allow_low_quality_matches=False)
  assert not (np.asarray(matches) == 5).any()


def _outputs(name):
  anchors = (FCOS_ANCHORS if name == 'fcos' else RETINA_ANCHORS)[0]
  seed = ['fcos', 'retinanet', 'retinanet_v2'].index(name)
  return ref.head_outputs(anchors.shape[0], ref.ASSIGN_NUM_CLASSES, seed, name == 'fcos')


def _check_parts(metrics, name):
  for part in ('classification', 'bbox_regression', 'bbox_ctrness'):
    if f'{name}.loss.{part}' in FIXTURE:
      np.testing.assert_allclose(float(metrics[part]), FIXTURE[f'{name}.loss.{part}'],
                                 rtol=2e-5, err_msg=part)


def test_fcos_loss():
  anchors, counts = FCOS_ANCHORS
  total, metrics = jax.jit(lambda o, t: losses.fcos_loss(o, t, anchors, counts))(
      _outputs('fcos'), TARGETS)
  _check_parts(metrics, 'fcos')
  assert int(metrics['num_foreground']) == (FIXTURE['fcos.matches'] >= 0).sum()
  expected = sum(float(FIXTURE[f'fcos.loss.{p}']) for p in
                 ('classification', 'bbox_regression', 'bbox_ctrness'))
  np.testing.assert_allclose(float(total), expected, rtol=2e-5)


@pytest.mark.parametrize('name,box_loss', [('retinanet', 'l1'), ('retinanet_v2', 'giou')])
def test_retinanet_loss(name, box_loss):
  anchors, _ = RETINA_ANCHORS
  _, metrics = jax.jit(lambda o, t: losses.retinanet_loss(o, t, anchors, box_loss=box_loss))(
      _outputs(name), TARGETS)
  _check_parts(metrics, name)


@pytest.mark.parametrize('name', ['fcos', 'retinanet'])
def test_loss_gradients_are_finite(name):
  """Background anchors carry stand-in targets: no NaN reaches the gradient."""
  outputs = {k: jnp.asarray(v) for k, v in _outputs(name).items()}
  if name == 'fcos':
    anchors, counts = FCOS_ANCHORS
    fn = lambda o: losses.fcos_loss(o, TARGETS, anchors, counts)[0]
  else:
    fn = lambda o: losses.retinanet_loss(o, TARGETS, RETINA_ANCHORS[0], box_loss='giou')[0]
  grads = jax.jit(jax.grad(fn))(outputs)
  for key, g in grads.items():
    assert np.isfinite(np.asarray(g)).all(), key
    assert np.abs(np.asarray(g)).sum() > 0, key


def test_retinanet_loss_rejects_unknown_box_loss():
  with pytest.raises(ValueError, match="box_loss='smooth'"):
    losses.retinanet_loss(_outputs('retinanet'), TARGETS, RETINA_ANCHORS[0], box_loss='smooth')
