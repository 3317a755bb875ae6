"""Fixed-size class-aware NMS equals torchvision.ops.batched_nms, and the on-device
postprocessing equals RetinaNet's and FCOS's postprocess_detections
(tests/fixtures/detection_nms.npz)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import detection_reference as ref
from vision_jax.detection import anchors as anchor_lib
from vision_jax.detection import nms
from vision_jax.detection import postprocess

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), 'fixtures', 'detection_nms.npz'))
CASES = ref.nms_cases()


def _nms(case, max_detections, valid=None):
  fn = jax.jit(nms.batched_nms, static_argnums=(3, 4))
  keep, kept = fn(case['boxes'], case['scores'], case['classes'],
                  float(case['iou_threshold']), max_detections, valid)
  return np.asarray(keep)[np.asarray(kept)]


@pytest.mark.parametrize('name', ['clustered', 'many'])
def test_equals_batched_nms(name):
  case, theirs = CASES[name], FIXTURE[f'{name}.keep']
  assert len(theirs) < len(case['scores']) * 0.8  # Overlap suppresses a good share.
  np.testing.assert_array_equal(_nms(case, len(case['scores'])), theirs)


def test_max_detections_truncates():
  case, theirs = CASES['clustered'], FIXTURE['clustered.keep']
  np.testing.assert_array_equal(_nms(case, 100), theirs[:100])


def test_ties_lower_index_first():
  """Equal scores: ours orders by index, which torchvision's unstable sort leaves open, so
  the reference is torchvision on the same scores with that order made explicit."""
  case = CASES['ties']
  assert len(np.unique(case['scores'])) <= 10
  np.testing.assert_array_equal(_nms(case, 500), FIXTURE['ties.keep_tiebreak'])


def test_ties_between_identical_boxes_keep_the_same_values():
  """Copies of one box with one score: torchvision keeps an arbitrary copy, we the first;
  the kept boxes, scores and classes are the same, in the same order."""
  case = CASES['duplicates']
  ours, theirs = _nms(case, 240), FIXTURE['duplicates.keep']
  assert len(ours) == len(theirs)
  for key in ('boxes', 'scores', 'classes'):
    np.testing.assert_array_equal(case[key][ours], case[key][theirs])


def test_invalid_candidates_are_never_kept():
  case = CASES['clustered']
  valid = case['scores'] > 0.5
  ours = _nms(case, 600, valid)
  assert valid[ours].all() and len(ours) > 0
  subset = np.flatnonzero(valid)
  only = {k: (v[subset] if isinstance(v, np.ndarray) and v.ndim else v)
          for k, v in case.items()}
  np.testing.assert_array_equal(ours, subset[_nms(only, 600)])


def test_no_candidates():
  keep, kept = nms.batched_nms(jnp.zeros((5, 4)), jnp.zeros(5), jnp.zeros(5, jnp.int32),
                               0.5, 3, jnp.zeros(5, bool))
  assert not np.asarray(kept).any() and np.asarray(keep).tolist() == [0, 0, 0]


def _post(name):
  k = ref.POSTPROCESS_NUM_CLASSES
  spec = anchor_lib.FCOS if name == 'fcos' else anchor_lib.RETINANET
  anchors, counts = anchor_lib.anchors(ref.POSTPROCESS_IMAGE_HW, spec)
  outputs = ref.postprocess_outputs(anchors.shape[0], 10 if name == 'fcos' else 11,
                                    name == 'fcos')
  assert outputs['cls_logits'].shape[-1] == k
  if name == 'fcos':
    config = postprocess.PostprocessConfig(0.2, 0.6, topk_candidates=300, max_detections=100)
    fn = lambda o: postprocess.fcos_detections(o, anchors, counts,
                                               ref.POSTPROCESS_IMAGE_SIZES, config)
  else:
    config = postprocess.PostprocessConfig(0.05, 0.5, topk_candidates=300,
                                           max_detections=100)
    fn = lambda o: postprocess.retinanet_detections(o, anchors, counts,
                                                    ref.POSTPROCESS_IMAGE_SIZES, config)
  return jax.jit(fn)(outputs)


@pytest.mark.parametrize('name', ['fcos', 'retinanet'])
def test_postprocess_equals_torchvision(name):
  out = _post(name)
  for i in range(2):
    theirs = {f: FIXTURE[f'post.{name}.{i}.{f}'] for f in ('boxes', 'scores', 'labels')}
    n = int(out['num_detections'][i])
    assert n == len(theirs['scores'])
    np.testing.assert_array_equal(np.asarray(out['classes'][i, :n]), theirs['labels'])
    np.testing.assert_allclose(np.asarray(out['scores'][i, :n]), theirs['scores'], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out['boxes'][i, :n]), theirs['boxes'], rtol=1e-5,
                               atol=1e-4)
    assert not np.asarray(out['scores'][i, n:]).any()  # Zero padding.
    height, width = ref.POSTPROCESS_IMAGE_SIZES[i]
    assert np.asarray(out['boxes'][i, :n, 2]).max() <= width
    assert np.asarray(out['boxes'][i, :n, 3]).max() <= height
  assert out['boxes'].shape == (2, 100, 4) and out['classes'].dtype == jnp.int32
  counts = np.asarray(out['num_detections']).tolist()
  assert counts[0] == 100 and 0 < counts[1] < 100  # Capped, and not.


def test_postprocess_rejects_anchors_of_another_size():
  anchors, counts = anchor_lib.anchors((64, 64), anchor_lib.FCOS)
  outputs = ref.postprocess_outputs(10, 0, True)
  with pytest.raises(ValueError, match='another input size'):
    postprocess.fcos_detections(outputs, anchors, counts, ref.POSTPROCESS_IMAGE_SIZES)
