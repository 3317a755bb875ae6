"""The converted detectors of tests/fixtures/detection_models.npz (make_detection_models.py):
torchvision's weights redrawn from their seed, converted, loaded into our models, run on the
fixture's photos, and compared with what torchvision computed. Used by
test_detection_fcos.py, test_detection_retinanet.py and test_detection_conversion.py."""
import functools
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

import detection_reference as ref
import torch_reference
from vision_jax import convert
from vision_jax.detection import postprocess
from vision_jax.detection import torchvision_weights as tvw

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), 'fixtures', 'detection_models.npz'))


def names_shapes(arch):
  shapes = json.loads(str(FIXTURE[f'{arch}.shapes']))
  return [(str(n), tuple(s)) for n, s in zip(FIXTURE[f'{arch}.names'], shapes)]


@functools.lru_cache(maxsize=1)
def _cached_state_dict(arch):
  state = ref.detector_state_dict(names_shapes(arch), 0, float(FIXTURE[f'{arch}.head_scale']))
  assert torch_reference.checksum(state) == pytest.approx(float(FIXTURE[f'{arch}.checksum']),
                                                          rel=1e-12)
  return state


def state_dict(arch):
  """torchvision's state dict of `arch` as the fixture was made with (a fresh dict)."""
  return dict(_cached_state_dict(arch))


def converted_model(arch):
  arrays = tvw.convert_detector(state_dict(arch), arch)
  model = tvw.build_model(arch, ref.MODEL_NUM_CLASSES)
  params, rest = convert.place_arrays(arrays, nnx.state(model, nnx.Param),
                                      nnx.state(model, nnx.Not(nnx.Param)))
  nnx.update(model, params, rest)
  return model


def run_converted(arch):
  """(head outputs, detections) of the converted `arch` on the fixture's photos, numpy."""
  model = converted_model(arch)
  images = torch_reference.torch_input(FIXTURE['images']).transpose(0, 2, 3, 1)
  score, nms, topk, max_det = FIXTURE[f'{arch}.postprocess']
  config = postprocess.PostprocessConfig(float(score), float(nms), int(topk), int(max_det))

  @nnx.jit
  def run(model, x):
    outputs = model(x, train=False)
    return outputs, model.detect(outputs, x.shape[1:3], config=config)
  return jax.device_get(run(model, images))


def assert_outputs_equal(arch, outputs):
  """Every ROW_STEP-th anchor's outputs within 3e-5 x their scale (float32 on the CPU:
  ~3e-6 seen; BatchNorm eps 1e-5 instead of retinanet_resnet50_fpn's 0 moves them by
  1.3e-4); per-level sums of |x| within 1e-5 relative."""
  step = int(FIXTURE['row_step'])
  bounds = np.cumsum(np.concatenate([[0], FIXTURE[f'{arch}.counts']]))
  keys = [k.split('.')[1] for k in FIXTURE.files if k.startswith(arch + '.') and
          k.endswith('.rows')]
  assert set(keys) == set(outputs)
  for key in keys:
    theirs = FIXTURE[f'{arch}.{key}.rows']
    ours = outputs[key][:, ::step]
    scale = float(np.abs(theirs).max())
    assert ours.shape == theirs.shape and scale > 0.5
    diff = float(np.abs(ours - theirs).max())
    assert diff <= 3e-5 * scale, f'{key}: max |diff| {diff:.3g} at scale {scale:.3g}'
    sums = [np.abs(outputs[key][:, a:b].astype(np.float64)).sum()
            for a, b in zip(bounds[:-1], bounds[1:])]
    np.testing.assert_allclose(sums, FIXTURE[f'{arch}.{key}.level_abs_sums'], rtol=1e-5,
                               err_msg=f'{key}: per-level sums of |x|')


def assert_detections_equal(arch, ours):
  """For each image: as many detections as torchvision's, and each of torchvision's has one
  of ours with the same class, score within 2e-5 and box within 0.02 px (matched in
  score order: scores 1e-5 apart may swap places)."""
  assert ours['boxes'].shape == (2, 100, 4)
  for image in range(2):
    theirs = {f: FIXTURE[f'{arch}.detections.{image}.{f}']
              for f in ('boxes', 'scores', 'labels')}
    n = int(ours['num_detections'][image])
    assert n == len(theirs['scores']) > 0
    boxes, scores = ours['boxes'][image, :n], ours['scores'][image, :n]
    classes = ours['classes'][image, :n]
    unused = np.ones(n, bool)
    for box, score, label in zip(theirs['boxes'], theirs['scores'], theirs['labels']):
      fits = (unused & (classes == label) & (np.abs(scores - score) <= 2e-5)
              & (np.abs(boxes - box).max(axis=1) <= 0.02))
      assert fits.any(), f'{arch} image {image}: no match for {label} {score} {box}'
      unused[np.flatnonzero(fits)[0]] = False
