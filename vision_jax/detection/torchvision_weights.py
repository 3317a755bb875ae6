"""torchvision's FCOS and RetinaNet state dicts -> arrays named by our parameter paths.

`detector_names(arch)` maps each parameter path of our detector (models/detection.py) to
its torchvision tensor name: the ResNet-50 body as pretrained_weights.torchvision_names
maps a classifier's (under 'backbone.body.'), the FPN ('backbone.fpn.inner_blocks.i.0',
'layer_blocks.i.0', 'extra_blocks.p6/p7') and the head ('head.classification_head.conv.*',
'cls_logits', 'head.regression_head.conv.*', 'bbox_reg', 'bbox_ctrness'). State dicts
saved before torchvision 0.13 (among them the published COCO weights of
retinanet_resnet50_fpn and fcos_resnet50_fpn) name FPN and RetinaNet-head convs without
the '.0' of Conv2dNormActivation; `upgrade_legacy_names` renames them as torchvision's
own loader does. `convert_detector` applies the map with the layout changes (conv OIHW ->
HWIO; BatchNorm and FrozenBatchNorm2d running_mean / running_var -> mean / var) and
refuses anything missing, left over or of another shape, listing each one.

`ARCHS` says which of our models each torchvision builder is and the constructor options
that make it compute the same function (retinanet_resnet50_fpn's COCO weights were trained
with FrozenBatchNorm2d eps 0: torchvision sets it to 0 when it loads them).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import numpy as np

from vision_jax.pretrained_weights import ConversionError, torchvision_names


@dataclasses.dataclass(frozen=True)
class Arch:
  """Our registered model name, its kind and constructor options for a torchvision arch."""
  model: str
  kind: str
  options: Mapping[str, Any]


ARCHS = {
    'fcos_resnet50_fpn': Arch('fcos_resnet50_fpn', 'fcos', {'frozen_batch_norm': True}),
    'retinanet_resnet50_fpn': Arch('retinanet_resnet50_fpn', 'retinanet',
                                   {'frozen_batch_norm': True, 'bn_epsilon': 0.0}),
    'retinanet_resnet50_fpn_v2': Arch('retinanet_resnet50_fpn_v2', 'retinanet_v2', {}),
}
_HEAD_DEPTH = 4
_NORM = {'scale': 'weight', 'bias': 'bias'}


def _check_arch(arch: str) -> Arch:
  if arch not in ARCHS:
    raise ConversionError(f'--arch={arch} is not a torchvision detector this converts; use '
                          f'one of {", ".join(ARCHS)}.')
  return ARCHS[arch]


def detector_names(arch: str) -> dict[str, str]:
  """{our parameter path: torchvision state-dict name} for detector `arch` (ARCHS)."""
  kind = _check_arch(arch).kind
  names = {o: f'backbone.body.{t}' for o, t in torchvision_names('resnet50').items()
           if not o.startswith('head/')}
  for i in range(3):
    for block, theirs in (('inner', 'inner_blocks'), ('layer', 'layer_blocks')):
      names[f'fpn/{block}/{i}/kernel'] = f'backbone.fpn.{theirs}.{i}.0.weight'
      names[f'fpn/{block}/{i}/bias'] = f'backbone.fpn.{theirs}.{i}.0.bias'
  for p in ('p6', 'p7'):
    names[f'fpn/{p}/kernel'] = f'backbone.fpn.extra_blocks.{p}.weight'
    names[f'fpn/{p}/bias'] = f'backbone.fpn.extra_blocks.{p}.bias'
  for ours, theirs in (('cls', 'classification_head'), ('reg', 'regression_head')):
    for i in range(_HEAD_DEPTH):
      prefix, tv = f'head/{ours}_convs/{i}/', f'head.{theirs}.conv.'
      if kind == 'fcos':  # nn.Sequential of conv, GroupNorm, ReLU.
        conv, norm, bias = f'{tv}{3 * i}', f'{tv}{3 * i + 1}', True
      else:  # Conv2dNormActivation blocks: conv, [GroupNorm].
        conv, norm, bias = f'{tv}{i}.0', f'{tv}{i}.1', kind == 'retinanet'
      names[f'{prefix}conv/kernel'] = f'{conv}.weight'
      if bias:
        names[f'{prefix}conv/bias'] = f'{conv}.bias'
      if kind != 'retinanet':
        names |= {f'{prefix}norm/{o}': f'{norm}.{t}' for o, t in _NORM.items()}
  outputs = {'cls_logits': 'classification_head.cls_logits',
             'bbox_reg': 'regression_head.bbox_reg'}
  if kind == 'fcos':
    outputs['bbox_ctrness'] = 'regression_head.bbox_ctrness'
  for ours, theirs in outputs.items():
    names[f'head/{ours}/kernel'] = f'head.{theirs}.weight'
    names[f'head/{ours}/bias'] = f'head.{theirs}.bias'
  return names


_LEGACY_FPN = re.compile(r'^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$')
_LEGACY_HEAD = re.compile(r'^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.'
                          r'(weight|bias)$')


def upgrade_legacy_names(weights: Mapping[str, np.ndarray], arch: str
                         ) -> dict[str, np.ndarray]:
  """Pre-0.13 names -> current ones, as torchvision's _load_from_state_dict renames them:
  'backbone.fpn.inner_blocks.0.weight' -> '...inner_blocks.0.0.weight' always, and for
  RetinaNet's head 'conv.2.weight' (conv 1 of an nn.Sequential with ReLUs) -> 'conv.1.0.
  weight'. FCOS heads never changed their names."""
  kind = _check_arch(arch).kind
  out = {}
  for name, value in weights.items():
    m = _LEGACY_FPN.match(name)
    if m:
      name = f'{m.group(1)}.0.{m.group(2)}'
    m = _LEGACY_HEAD.match(name)
    if m and kind == 'retinanet' and int(m.group(2)) % 2 == 0:
      name = f'{m.group(1)}.{int(m.group(2)) // 2}.0.{m.group(3)}'
    out[name] = value
  return out


def convert_detector(weights: Mapping[str, np.ndarray], arch: str,
                     source: str = 'the file') -> dict[str, np.ndarray]:
  """torchvision-named arrays of detector `arch` -> {our parameter path: array}, every
  tensor accounted for (`num_batches_tracked` counters are dropped). The number of classes
  is the file's (its cls_logits' outputs, 91 for torchvision's COCO weights)."""
  names = detector_names(arch)
  weights = upgrade_legacy_names(weights, arch)
  ignored = {n for n in weights if n.endswith('.num_batches_tracked')}
  missing = [t for t in names.values() if t not in weights]
  unused = sorted(set(weights) - set(names.values()) - ignored)
  wrong = []
  if not missing:
    shapes = our_shapes(arch, num_classes(weights, arch))
    wrong = [f'{t} {tuple(np.shape(weights[t]))} (wants {_torch_layout(shapes[o])})'
             for o, t in names.items() if tuple(np.shape(weights[t])) != _torch_layout(shapes[o])]
  if missing or unused or wrong:
    others = [a for a in ARCHS if a != arch and set(detector_names(a).values()) == (
        set(upgrade_legacy_names(weights, a)) - ignored)]
    hint = (f'its tensors are those of {others[0]}: pass --arch {others[0]}' if others else
            f'it is not a torchvision {arch} state dict')
    parts = [f'{len(missing)} tensors {arch} needs are missing: {", ".join(missing[:20])}',
             f'{len(unused)} tensors have no place in {arch}: {", ".join(unused[:20])}',
             f'{len(wrong)} tensors have another shape: {", ".join(wrong[:20])}']
    raise ConversionError(f'{source}: {hint}. ' + '; '.join(
        p for p, found in zip(parts, (missing, unused, wrong)) if found) + '.')
  out = {}
  for ours, theirs in names.items():
    value = np.asarray(weights[theirs], np.float32)
    out[ours] = np.ascontiguousarray(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value)
  return out


def _torch_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape torchvision stores our array of `shape` in (conv HWIO -> OIHW)."""
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape


def our_shapes(arch: str, classes: int) -> dict[str, tuple[int, ...]]:
  """{parameter path: shape} of every array (parameters and statistics) of our model."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vision_jax import optim  # pylint: disable=g-import-not-at-top
  abstract = nnx.eval_shape(lambda: build_model(arch, classes))
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(abstract))[0]
  return {optim.param_path(p): tuple(x.shape) for p, x in leaves}


def build_model(arch: str, classes: int, **kwargs: Any):
  """Our detector for torchvision arch `arch` with ARCHS' options (kwargs override or add:
  rngs, dtype, ...)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vision_jax.models import detection  # pylint: disable=g-import-not-at-top
  info = _check_arch(arch)
  kwargs = {**info.options, **kwargs}
  kwargs.setdefault('rngs', nnx.Rngs(0))
  return detection.DETECTORS[info.model](classes, **kwargs)


def num_classes(weights: Mapping[str, np.ndarray], arch: str) -> int:
  """The number of classes of a torchvision detector state dict (cls_logits' outputs)."""
  bias = weights.get('head.classification_head.cls_logits.bias')
  if bias is None:
    raise ConversionError('The file has no head.classification_head.cls_logits.bias: it is '
                          f'not a torchvision {arch} state dict.')
  anchors = 1 if _check_arch(arch).kind == 'fcos' else 9
  return int(np.shape(bias)[0]) // anchors
