"""The converted retinanet_resnet50_fpn (BatchNorm eps 0, as torchvision's COCO weights)
and retinanet_resnet50_fpn_v2 compute torchvision's function: the same head outputs on
every pyramid level and the same detections, on scikit-learn's sample photos with weights
drawn from a seed (tests/converted_detectors.py)."""
import pytest

import converted_detectors as cd


@pytest.fixture(scope='module', params=['retinanet_resnet50_fpn', 'retinanet_resnet50_fpn_v2'])
def results(request):
  return request.param, cd.run_converted(request.param)


def test_head_outputs_equal_torchvision(results):
  arch, (outputs, _) = results
  cd.assert_outputs_equal(arch, outputs)


def test_detections_equal_torchvision(results):
  arch, (_, detections) = results
  cd.assert_detections_equal(arch, detections)
