"""The converted fcos_resnet50_fpn computes torchvision's function: the same head outputs
on every pyramid level and the same detections, on scikit-learn's sample photos with
weights drawn from a seed (tests/converted_detectors.py)."""
import pytest

import converted_detectors as cd

ARCH = 'fcos_resnet50_fpn'


@pytest.fixture(scope='module')
def results():
  return cd.run_converted(ARCH)


def test_head_outputs_equal_torchvision(results):
  cd.assert_outputs_equal(ARCH, results[0])


def test_detections_equal_torchvision(results):
  cd.assert_detections_equal(ARCH, results[1])
