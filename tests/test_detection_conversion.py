"""Converting torchvision's detector state dicts: every tensor mapped once, pre-0.13 names,
and clear errors for another arch, missing / extra tensors and wrong shapes."""
import numpy as np
import pytest

import converted_detectors as cd
import detection_reference as ref
from vision_jax.detection import torchvision_weights as tvw
from vision_jax.pretrained_weights import ConversionError

ARCHS = list(tvw.ARCHS)


@pytest.mark.parametrize('arch', ARCHS)
def test_name_map_covers_every_array_once(arch):
  names = tvw.detector_names(arch)
  assert len(set(names.values())) == len(names)
  assert set(names) == set(tvw.our_shapes(arch, ref.MODEL_NUM_CLASSES))
  theirs = {n for n, _ in cd.names_shapes(arch) if not n.endswith('num_batches_tracked')}
  assert set(names.values()) == theirs


def _legacy(state, arch):
  """Names as torchvision < 0.13 saved them (FPN and RetinaNet-head convs without '.0')."""
  out = {}
  for name, value in state.items():
    name = name.replace('_blocks.0.0.', '_blocks.0.').replace('_blocks.1.0.', '_blocks.1.')
    name = name.replace('_blocks.2.0.', '_blocks.2.')
    if arch == 'retinanet_resnet50_fpn' and '_head.conv.' in name:
      head, rest = name.split('.conv.')
      index, _, param = rest.split('.')
      name = f'{head}.conv.{2 * int(index)}.{param}'
    out[name] = value
  return out


@pytest.mark.parametrize('arch', ['fcos_resnet50_fpn', 'retinanet_resnet50_fpn'])
def test_legacy_names_convert_to_the_same_arrays(arch):
  state = cd.state_dict(arch)
  legacy = _legacy(state, arch)
  assert set(legacy) != set(state)
  new, old = tvw.convert_detector(state, arch), tvw.convert_detector(legacy, arch)
  assert new.keys() == old.keys()
  for key in new:
    np.testing.assert_array_equal(new[key], old[key])


def test_wrong_arch_names_the_right_one():
  state = cd.state_dict('retinanet_resnet50_fpn_v2')
  with pytest.raises(ConversionError, match='pass --arch retinanet_resnet50_fpn_v2'):
    tvw.convert_detector(state, 'retinanet_resnet50_fpn')


def test_missing_and_extra_tensors_are_listed():
  state = cd.state_dict('fcos_resnet50_fpn')
  del state['head.regression_head.bbox_ctrness.bias']
  state['head.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(ConversionError) as err:
    tvw.convert_detector(state, 'fcos_resnet50_fpn', source='fcos.safetensors')
  message = str(err.value)
  assert 'fcos.safetensors' in message and 'bbox_ctrness.bias' in message
  assert 'head.extra.weight' in message


def test_wrong_shape_is_named():
  state = cd.state_dict('fcos_resnet50_fpn')
  state['backbone.fpn.layer_blocks.1.0.weight'] = np.zeros((256, 256, 1, 1), np.float32)
  with pytest.raises(ConversionError, match=r'layer_blocks\.1\.0\.weight \(256, 256, 1, 1\) '
                     r'\(wants \(256, 256, 3, 3\)\)'):
    tvw.convert_detector(state, 'fcos_resnet50_fpn')


def test_unknown_arch():
  with pytest.raises(ConversionError, match='--arch=ssd300_vgg16'):
    tvw.detector_names('ssd300_vgg16')


@pytest.mark.parametrize('arch', ARCHS)
def test_torchvision_frozen_trains_what_torchvision_trains(arch):
  """config.optim.freeze = model.torchvision_frozen() leaves trainable exactly the backbone
  parameters torchvision trains (trainable_backbone_layers=3) and the whole FPN and head."""
  import re  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from vision_jax import optim  # pylint: disable=import-outside-toplevel
  model = nnx.eval_shape(lambda: tvw.build_model(arch, ref.MODEL_NUM_CLASSES))
  params = [optim.param_path(p) for p, _ in
            jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]]
  patterns = [re.compile(p) for p in model.torchvision_frozen()]
  assert all(any(p.fullmatch(path) for path in params) for p in patterns)  # optim insists.
  trainable = [p for p in params if not any(r.fullmatch(p) for r in patterns)]
  names = tvw.detector_names(arch)
  ours = {names[p] for p in trainable if names[p].startswith('backbone.body.')}
  theirs = {str(n) for n in cd.FIXTURE[f'{arch}.trainable_backbone']
            if str(n).startswith('backbone.body.')}
  assert ours == theirs
  assert all(names[p].startswith(('backbone.', 'head.')) for p in trainable)
  assert {p for p in params if p.startswith(('fpn/', 'head/'))} <= set(trainable)
  if arch != 'retinanet_resnet50_fpn_v2':
    assert model.torchvision_frozen(5) == (r'(stem_bn|blocks/\d+/(bn\d|proj_bn))/(scale|bias)',)
  else:
    assert model.torchvision_frozen(5) == ()
  assert len(model.torchvision_frozen(0)[1].split('|')) == 16  # Every ResNet-50 block.
