"""`python -m vision_jax.convert torchvision --arch fcos_resnet50_fpn` writes a detection
workdir whose served function (inference.load -> the task's apply: normalisation, the
model in eval mode, on-device post-processing) gives torchvision's detections on the
fixture's photos (tests/converted_detectors.py: weights redrawn from the fixture's seed)."""
import json

import jax
import numpy as np

import converted_detectors as cd
from vision_jax import convert
from vision_jax import inference

ARCH = 'fcos_resnet50_fpn'


def test_converted_fcos_workdir_detects_as_torchvision(tmp_path, capsys):
  weights = tmp_path / 'fcos.npz'
  np.savez(weights, **cd.state_dict(ARCH))
  out = tmp_path / 'workdir'
  assert convert.main(['torchvision', '--arch', ARCH, '--weights', str(weights),
                       '--output', str(out)]) == 0
  assert 'Converted' in capsys.readouterr().out
  dataset = json.loads((out / 'dataset.json').read_text())
  assert dataset['num_classes'] == cd.ref.MODEL_NUM_CLASSES
  loaded = inference.load(str(out), inference.read_config(str(out)))
  assert loaded.task.name == 'detection'
  detections = jax.device_get(jax.jit(loaded.apply)(loaded.serving_state,
                                                   cd.FIXTURE['images']))
  cd.assert_detections_equal(ARCH, detections)
  assert convert.main(['torchvision', '--arch', ARCH, '--weights', str(weights),
                       '--output', str(out)]) == 2  # Never over a workdir.



def test_converted_workdir_reads_coco_by_category_id_when_it_has_coco_classes():
  from vision_jax.detection import torchvision_workdir
  assert torchvision_workdir.make_config(ARCH, 91).task.class_index == 'category_id'
  assert torchvision_workdir.make_config(ARCH, cd.ref.MODEL_NUM_CLASSES).task.class_index == (
      'label')
