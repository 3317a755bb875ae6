"""One-stage detectors on a ResNet v1.5 + FPN (P3-P7): FCOS and RetinaNet, as torchvision's.

A detector is its backbone class (models/resnet.py) with the classifier `head` replaced by
a detection head and an `fpn` added, so the backbone keeps its parameter paths
('stem_conv/kernel', 'blocks/3/conv1/kernel', ...): an ImageNet classifier's checkpoint
loads by path with `init_from.skip=('head/.*', 'fpn/.*')`, and fine-tuning to new classes
re-initialises `head` alone, keeping backbone and FPN.

`model(images [B, H, W, 3], train) -> outputs`, float32 arrays over every anchor of every
level (level by level, cells row-major, a cell's anchors last: the rows of
`model.anchors((H, W))`):
  'cls_logits'       [B, N, num_classes]  one sigmoid logit per class (no background class;
                                          torchvision's COCO models have 91 outputs, the
                                          category ids, 0 and the unused ids never trained)
  'bbox_regression'  [B, N, 4]            RetinaNet: deltas; FCOS: ltrb / anchor size (>= 0)
  'bbox_ctrness'     [B, N, 1]            FCOS only: centerness logit
`model.loss(outputs, targets, image_hw)` and `model.detect(outputs, image_hw, image_sizes)`
apply the detector's own loss and postprocessing (vision_jax/detection);
`model.torchvision_frozen(trainable_layers)` lists what torchvision's recipe keeps fixed.

Heads are shared across levels, four 3x3 convs (256 channels) and ReLU per branch:
  fcos            conv (bias) + GroupNorm(32) in each conv; classification, box and
                  centerness convs; box outputs through ReLU. (torchvision's FCOS has no
                  per-level learnable scale, unlike the paper's; neither has this one.)
  retinanet       convs with bias, no norm; 9 anchors per cell.
  retinanet_v2    convs without bias + GroupNorm(32); P6 from C5; GIoU box loss.
Final convs start as torchvision's: weights N(0, 0.01^2), biases 0, the classification
bias -log((1 - 0.01) / 0.01) so that every class starts at probability 0.01.

The backbone's BatchNorm is frozen by default for fcos and retinanet (always its running
statistics, torchvision's FrozenBatchNorm2d for pretrained backbones) and trains for
retinanet_v2 (torchvision builds it with BatchNorm2d); `bn_epsilon` is 0 in torchvision's
COCO retinanet_resnet50_fpn weights and 1e-5 elsewhere.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vision_jax import ops
from vision_jax.detection import anchors as anchor_lib
from vision_jax.detection import losses as loss_lib
from vision_jax.detection import postprocess as post_lib
from vision_jax.errors import ConfigError
from vision_jax.models import fpn as fpn_lib
from vision_jax.models import layers
from vision_jax.models import resnet

KINDS = ('fcos', 'retinanet', 'retinanet_v2')
_HEAD_INIT = nnx.initializers.normal(0.01)


def _head_conv(cin: int, cout: int, *, use_bias: bool = True, bias_value: float = 0.0, dtype,
               kernels: ops.Kernels, rngs: nnx.Rngs) -> nnx.Conv:
  return layers.conv(cin, cout, 3, padding=((1, 1), (1, 1)), use_bias=use_bias, dtype=dtype,
                     kernel_init=_HEAD_INIT, bias_init=nnx.initializers.constant(bias_value),
                     kernels=kernels, rngs=rngs)


class ConvGNReLU(nnx.Module):
  """3x3 conv, optional GroupNorm(32), ReLU: one layer of a head's tower."""

  def __init__(self, channels: int, *, norm: bool, conv_bias: bool, dtype,
               kernels: ops.Kernels, rngs: nnx.Rngs):
    self.conv = _head_conv(channels, channels, use_bias=conv_bias, dtype=dtype,
                           kernels=kernels, rngs=rngs)
    self.norm = (nnx.GroupNorm(channels, num_groups=32, epsilon=1e-5, dtype=dtype,
                               use_fast_variance=False, rngs=rngs) if norm else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(x)
    return nnx.relu(x if self.norm is None else self.norm(x))


def _tower(channels: int, depth: int, **kwargs) -> nnx.List:
  return nnx.List([ConvGNReLU(channels, **kwargs) for _ in range(depth)])


def _run(tower: nnx.List, x: jax.Array) -> jax.Array:
  for layer in tower:
    x = layer(x)
  return x


def _flatten(x: jax.Array, per_anchor: int) -> jax.Array:
  """[B, H, W, A * C] -> [B, H * W * A, C] (torchvision's permute + reshape)."""
  return x.reshape(x.shape[0], -1, per_anchor).astype(jnp.float32)


class DetectionHead(nnx.Module):
  """Classification and box branches shared over the levels (module docstring)."""

  def __init__(self, kind: str, channels: int, num_anchors: int, num_classes: int, *,
               depth: int, prior_probability: float, dtype, kernels: ops.Kernels,
               rngs: nnx.Rngs):
    norm, conv_bias = kind != 'retinanet', kind != 'retinanet_v2'
    common = dict(dtype=dtype, kernels=kernels, rngs=rngs)
    tower = dict(norm=norm, conv_bias=conv_bias, **common)
    self.num_classes = num_classes
    self.cls_convs = _tower(channels, depth, **tower)
    prior = -math.log((1 - prior_probability) / prior_probability)
    self.cls_logits = _head_conv(channels, num_anchors * num_classes, bias_value=prior,
                                 **common)
    self.reg_convs = _tower(channels, depth, **tower)
    self.bbox_reg = _head_conv(channels, num_anchors * 4, **common)
    self.fcos = kind == 'fcos'
    self.bbox_ctrness = _head_conv(channels, num_anchors, **common) if self.fcos else None

  def __call__(self, levels: Sequence[jax.Array]) -> dict[str, jax.Array]:
    cls, reg, ctr = [], [], []
    for x in levels:
      cls.append(_flatten(self.cls_logits(_run(self.cls_convs, x)), self.num_classes))
      features = _run(self.reg_convs, x)
      box = self.bbox_reg(features)
      reg.append(_flatten(nnx.relu(box) if self.fcos else box, 4))
      if self.fcos:
        ctr.append(_flatten(self.bbox_ctrness(features), 1))
    out = {'cls_logits': jnp.concatenate(cls, 1), 'bbox_regression': jnp.concatenate(reg, 1)}
    if self.fcos:
      out['bbox_ctrness'] = jnp.concatenate(ctr, 1)
    return out


class DetectorResNet(resnet.ResNet):
  """A ResNet v1.5 backbone, an FPN on its last three stages and a detection head.

  Variants combine KIND with a registered ImageNet-stem ResNet, e.g.
  `class FCOSResNet50FPN(DetectorResNet, resnet.ResNet50)`.
  """
  TASK = 'detection'
  KIND = 'fcos'

  def __init__(self, num_classes: int, *, width: int = 64, fpn_channels: int = 256,
               head_depth: int = 4,
               prior_probability: float = 0.01, frozen_batch_norm: bool | None = None,
               bn_epsilon: float = 1e-5, center_sampling_radius: float = 1.5,
               in_channels: int = 3, dtype='float32', remat: str = 'none',
               kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    if self.KIND not in KINDS:
      raise ConfigError(f'Unknown detector kind {self.KIND!r}; known: {", ".join(KINDS)}.')
    if self.STEM != 'imagenet' or len(self.STAGES) != 4:
      raise ConfigError('A detector needs an ImageNet-stem ResNet with four stages (strides '
                        '4 to 32), whose last three stages feed the FPN.')
    if fpn_channels % 32 and self.KIND != 'retinanet':
      raise ConfigError(f'config.model.fpn_channels={fpn_channels} must be a multiple of 32 '
                        '(the heads\' GroupNorm has 32 groups).')
    if not 0 < prior_probability < 1:
      raise ConfigError(f'config.model.prior_probability={prior_probability} must be in '
                        '(0, 1): the initial probability of every class.')
    super().__init__(num_classes, width=width, in_channels=in_channels, dtype=dtype,
                     remat=remat, kernels=kernels, rngs=rngs)
    compute = layers.as_dtype(dtype)
    self.frozen_batch_norm = (self.KIND != 'retinanet_v2' if frozen_batch_norm is None
                              else bool(frozen_batch_norm))
    for _, module in nnx.iter_modules(self):
      if isinstance(module, layers.BatchNorm):
        module.epsilon = float(bn_epsilon)
    expansion = 4 if self.BLOCK == 'bottleneck' else 1
    stage_channels = [width * 2**i * expansion for i in range(1, 4)]
    self.fpn = fpn_lib.FPN(stage_channels, fpn_channels,
                           p6_input='c5' if self.KIND == 'retinanet_v2' else 'p5',
                           dtype=compute, kernels=kernels, rngs=rngs)
    self.anchor_spec = anchor_lib.FCOS if self.KIND == 'fcos' else anchor_lib.RETINANET
    self.center_sampling_radius = center_sampling_radius
    self.head = DetectionHead(self.KIND, fpn_channels, self.anchor_spec.num_anchors_per_cell,
                              num_classes, depth=head_depth,
                              prior_probability=prior_probability, dtype=compute,
                              kernels=kernels, rngs=rngs)

  def pyramid(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    """[P3, P4, P5, P6, P7] of images x [B, H, W, 3]."""
    stages = self.stage_features(x, train and not self.frozen_batch_norm)
    return self.fpn(stages[1:])

  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    return self.head(self.pyramid(x, train))

  def torchvision_frozen(self, trainable_layers: int = 3) -> tuple[str, ...]:
    """Regexes for config.optim.freeze that train what torchvision's detection builders
    train: the last `trainable_layers` of (layer4, layer3, layer2, layer1, stem) and
    everything outside the backbone (torchvision's default 3: the stem and the first stage
    stay fixed). With frozen BatchNorm every BatchNorm scale and bias is fixed as well
    (FrozenBatchNorm2d holds them as buffers)."""
    if not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= 5:
      raise ConfigError(f'trainable_layers={trainable_layers!r}: use 0 to 5, the number of '
                        'backbone stages trained counting from the last (5: all and the stem).')
    patterns = []
    if trainable_layers < 5:
      patterns.append('stem_(conv|bn)/.*')
    frozen_blocks = sum(self.STAGES[:max(0, 4 - trainable_layers)])
    if frozen_blocks:
      patterns.append(f'blocks/({"|".join(str(i) for i in range(frozen_blocks))})/.*')
    if self.frozen_batch_norm:
      patterns.append(r'(stem_bn|blocks/\d+/(bn\d|proj_bn))/(scale|bias)')
    return tuple(patterns)

  def anchors(self, image_hw: Sequence[int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """(anchors [N, 4], anchors per level) of a padded input of `image_hw` (numpy)."""
    return anchor_lib.anchors(image_hw, self.anchor_spec)

  def loss(self, outputs: Mapping[str, jax.Array], targets: Mapping[str, jax.Array],
           image_hw: Sequence[int]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss, metrics) of `outputs` for padded ground truth {'boxes' [B, M, 4] in
    input pixels, 'labels' [B, M], 'mask' [B, M]} on inputs of `image_hw`."""
    anchors, counts = self.anchors(image_hw)
    if self.KIND == 'fcos':
      return loss_lib.fcos_loss(outputs, targets, anchors, counts,
                                center_sampling_radius=self.center_sampling_radius)
    return loss_lib.retinanet_loss(outputs, targets, anchors,
                                   box_loss='giou' if self.KIND == 'retinanet_v2' else 'l1')

  def detect(self, outputs: Mapping[str, jax.Array], image_hw: Sequence[int],
             image_sizes: jax.Array | None = None,
             config: post_lib.PostprocessConfig | None = None) -> dict[str, jax.Array]:
    """Fixed-size detections (detection/postprocess.py); `image_sizes` [B, 2] the valid
    (height, width) of each padded image (default: all of `image_hw`); `config` default:
    torchvision's thresholds for this detector, 100 detections."""
    anchors, counts = self.anchors(image_hw)
    batch = outputs['cls_logits'].shape[0]
    if image_sizes is None:
      image_sizes = jnp.broadcast_to(jnp.asarray(image_hw, jnp.float32), (batch, 2))
    if self.KIND == 'fcos':
      return post_lib.fcos_detections(outputs, anchors, counts, image_sizes,
                                      config or post_lib.FCOS)
    return post_lib.retinanet_detections(outputs, anchors, counts, image_sizes,
                                         config or post_lib.RETINANET)


class FCOSResNet50FPN(DetectorResNet, resnet.ResNet50):
  KIND = 'fcos'


class RetinaNetResNet50FPN(DetectorResNet, resnet.ResNet50):
  KIND = 'retinanet'


class RetinaNetResNet50FPNv2(DetectorResNet, resnet.ResNet50):
  KIND = 'retinanet_v2'


class FCOSResNet18FPN(DetectorResNet, resnet.ResNet18):
  KIND = 'fcos'


class RetinaNetResNet18FPN(DetectorResNet, resnet.ResNet18):
  KIND = 'retinanet'


# Names for the model registry (models/__init__.py), torchvision's where it has one.
DETECTORS = {
    'fcos_resnet50_fpn': FCOSResNet50FPN,
    'retinanet_resnet50_fpn': RetinaNetResNet50FPN,
    'retinanet_resnet50_fpn_v2': RetinaNetResNet50FPNv2,
    'fcos_resnet18_fpn': FCOSResNet18FPN,
    'retinanet_resnet18_fpn': RetinaNetResNet18FPN,
}
