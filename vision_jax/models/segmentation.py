"""Semantic segmentation: a ResNet or BiT backbone with a dense head (FCN or DeepLabv3).

A segmentation model is its backbone class with the classifier `head` replaced by a dense
one, so that its parameters keep the backbone's paths ('stem_conv/kernel',
'blocks/3/conv1/kernel', ...): a classification checkpoint of the same backbone loads by
path with `init_from.skip=('head/.*',)`, which matches exactly the dense head, and the
classifier's own 'head/kernel', 'head/bias' are left unused. Skipped variables must keep
their fresh initialisation (`init_from.zero_init_skipped=False`): zeroing a head's convs
and normalisation scales leaves it without gradients.

The backbone runs at `output_stride` 8 by default (its last two stages dilated, as
torchvision's segmentation models and DeepLabv3's evaluation; 2 for the CIFAR stem, whose
own stride is 8); the head's logits
[B, H / os, W / os, K] are resized bilinearly (half-pixel centres, as PyTorch's
`align_corners=False`) to the input's H x W and returned in float32: `model(images, train)
-> [B, H, W, K]`.

Heads (torchvision's `FCNHead` and `DeepLabHead`):
  fcn        3x3 conv to C / 4 channels, norm, ReLU, dropout (0.1), 1x1 classifier.
  deeplabv3  ASPP (Chen et al. 2017): a 1x1 branch, three 3x3 branches dilated at
             `aspp_rates`, and image pooling (global mean, 1x1 conv, broadcast back), each
             256 channels with norm and ReLU, concatenated, projected by a 1x1 conv to 256
             (norm, ReLU, dropout 0.5); then a 3x3 conv, norm, ReLU and the 1x1 classifier.
The default rates are DeepLabv3's (6, 12, 18) at output stride 16, scaled by 16 /
output_stride (12, 24, 36 at 8). They are sized for ~500 px inputs; the CIFAR-stem
variants (32 px inputs) default to a proportionate (1, 2, 3) at stride 8 (4, 8, 12 at 2).
Norm is BatchNorm in ResNet models and GroupNorm(32) in BiT ones, so a BiT segmenter stays
independent of the per-device batch.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import ops
from vision_jax.errors import ConfigError
from vision_jax.models import layers

HEADS = ('fcn', 'deeplabv3')
ASPP_CHANNELS = 256
# Published dropout of each head (torchvision's FCNHead and ASPP projection).
DEFAULT_DROPOUT = {'fcn': 0.1, 'deeplabv3': 0.5}
_HEAD_NAMES = {'fcn': 'FCN', 'deeplabv3': 'DeepLabV3'}
_CONV_INIT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')

Norm = Callable[[int], nnx.Module]


def _conv(cin: int, cout: int, kernel: int, dilation: int, *, dtype, kernels: ops.Kernels,
          rngs: nnx.Rngs) -> nnx.Conv:
  """Bias-free conv (a norm follows), padded to keep the size."""
  pad = (dilation * (kernel // 2),) * 2
  return layers.conv(cin, cout, kernel, padding=(pad, pad), kernel_dilation=dilation,
                     use_bias=False, dtype=dtype, kernel_init=_CONV_INIT, kernels=kernels,
                     rngs=rngs)


def _classifier(cin: int, num_classes: int, *, dtype, kernels: ops.Kernels,
                rngs: nnx.Rngs) -> nnx.Conv:
  return layers.conv(cin, num_classes, 1, padding='VALID', dtype=dtype, kernels=kernels,
                     rngs=rngs)


class ConvNormReLU(nnx.Module):
  """conv (bias-free) -> norm -> ReLU."""

  def __init__(self, cin: int, cout: int, kernel: int, *, dilation: int = 1, norm: Norm,
               dtype, kernels: ops.Kernels, rngs: nnx.Rngs):
    self.conv = _conv(cin, cout, kernel, dilation, dtype=dtype, kernels=kernels, rngs=rngs)
    self.norm = norm(cout)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(x)
    if isinstance(self.norm, layers.BatchNorm):
      return nnx.relu(self.norm(y, use_running_average=not train))
    return nnx.relu(self.norm(y))


class FCNHead(nnx.Module):
  """3x3 conv to cin // 4 channels, norm, ReLU, dropout, 1x1 classifier (with bias)."""

  def __init__(self, cin: int, num_classes: int, *, dropout: float, norm: Norm, dtype,
               kernels: ops.Kernels, rngs: nnx.Rngs):
    mid = cin // 4
    self.block = ConvNormReLU(cin, mid, 3, norm=norm, dtype=dtype, kernels=kernels, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.classifier = _classifier(mid, num_classes, dtype=dtype, kernels=kernels, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return self.classifier(self.dropout(self.block(x, train), deterministic=not train))


class ASPP(nnx.Module):
  """Atrous spatial pyramid pooling: 1x1, 3x3 at each rate, image pooling; concat, 1x1."""

  def __init__(self, cin: int, rates: Sequence[int], *, dropout: float, norm: Norm, dtype,
               kernels: ops.Kernels, rngs: nnx.Rngs):
    c = ASPP_CHANNELS
    common = dict(norm=norm, dtype=dtype, kernels=kernels, rngs=rngs)
    self.branches = nnx.List([ConvNormReLU(cin, c, 1, **common)] +
                             [ConvNormReLU(cin, c, 3, dilation=r, **common) for r in rates])
    self.pooling = ConvNormReLU(cin, c, 1, **common)
    self.project = ConvNormReLU(c * (len(rates) + 2), c, 1, **common)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    outs = [branch(x, train) for branch in self.branches]
    pooled = self.pooling(jnp.mean(x, axis=(1, 2), keepdims=True), train)
    outs.append(jnp.broadcast_to(pooled, outs[0].shape))  # Bilinear from 1x1 = broadcast.
    y = self.project(jnp.concatenate(outs, axis=-1), train)
    return self.dropout(y, deterministic=not train)


class DeepLabHead(nnx.Module):
  """ASPP, then a 3x3 conv, norm, ReLU and the 1x1 classifier (torchvision's DeepLabHead)."""

  def __init__(self, cin: int, num_classes: int, *, rates: Sequence[int], dropout: float,
               norm: Norm, dtype, kernels: ops.Kernels, rngs: nnx.Rngs):
    common = dict(norm=norm, dtype=dtype, kernels=kernels, rngs=rngs)
    self.aspp = ASPP(cin, rates, dropout=dropout, **common)
    self.block = ConvNormReLU(ASPP_CHANNELS, ASPP_CHANNELS, 3, **common)
    self.classifier = _classifier(ASPP_CHANNELS, num_classes, dtype=dtype, kernels=kernels,
                                  rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return self.classifier(self.block(self.aspp(x, train), train))


def upsample(logits: jax.Array, size: Sequence[int]) -> jax.Array:
  """float32 logits [B, h, w, K] resized bilinearly to [B, *size, K] (half-pixel centres)."""
  logits = logits.astype(jnp.float32)
  if tuple(logits.shape[1:3]) == tuple(size):
    return logits
  return jax.image.resize(logits, (logits.shape[0], *size, logits.shape[-1]), 'bilinear')


def aspp_rates(output_stride: int, base: int) -> tuple[int, int, int]:
  """DeepLabv3's rates for `output_stride`: (1, 2, 3) * base / output_stride (at least 1)."""
  return tuple(max(1, k * base // output_stride) for k in (1, 2, 3))


def dense_output_stride(backbone_stride: int, num_stages: int,
                        output_stride: int | None) -> int:
  """`output_stride`, or by default a quarter of the backbone's own stride (its last two
  stages dilated: 8 for ImageNet-stem backbones, 2 for the CIFAR stem)."""
  if output_stride is not None:
    return output_stride
  return backbone_stride // 2**min(2, num_stages - 1)


def make_head(kind: str, cin: int, num_classes: int, *, output_stride: int, rate_base: int,
              dropout: float | None, rates: Sequence[int] | None, norm: Norm, dtype,
              kernels: ops.Kernels, rngs: nnx.Rngs) -> nnx.Module:
  """The dense head `kind` ('fcn' or 'deeplabv3') over `cin`-channel features."""
  if kind not in HEADS:
    raise ConfigError(f'Unknown segmentation head {kind!r}; known: {", ".join(HEADS)}.')
  dropout = DEFAULT_DROPOUT[kind] if dropout is None else dropout
  if not 0 <= dropout < 1:
    raise ConfigError(f'config.model.head_dropout={dropout} must be in [0, 1).')
  common = dict(dropout=dropout, norm=norm, dtype=dtype, kernels=kernels, rngs=rngs)
  if kind == 'fcn':
    if rates is not None:
      raise ConfigError('config.model.aspp_rates is an option of the deeplabv3 head, not of '
                        'fcn; remove it.')
    return FCNHead(cin, num_classes, **common)
  rates = tuple(rates) if rates is not None else aspp_rates(output_stride, rate_base)
  if not rates or any(not isinstance(r, int) or r < 1 for r in rates):
    raise ConfigError(f'config.model.aspp_rates={rates} must be positive integers.')
  return DeepLabHead(cin, num_classes, rates=rates, **common)


class DenseModel(nnx.Module):
  """Mixed into a backbone class by `dense_model_class`: the backbone (a ResNet v1.5 or
  BiT, dilated to `output_stride`) with a dense head in place of its classifier head.

  Its options are the backbone's (width, in_channels, dtype, remat, ...) and the head's
  (output_stride, head_dropout, aspp_rates). The head's norm is BatchNorm on ResNets and
  GroupNorm(32) on BiT (`DENSE_NORM` of the backbone class), so a BiT segmenter stays
  independent of the per-device batch.
  """
  TASK = 'segmentation'
  HEAD = 'fcn'

  def __init__(self, num_classes: int, *, output_stride: int | None = None,
               head_dropout: float | None = None, aspp_rates: Sequence[int] | None = None,
               dtype='float32', kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs,
               **backbone_options):
    imagenet_stem = getattr(self, 'STEM', 'imagenet') == 'imagenet'
    own = (4 if imagenet_stem else 1) * 2**(len(self.STAGES) - 1)
    output_stride = dense_output_stride(own, len(self.STAGES), output_stride)
    super().__init__(num_classes, output_stride=output_stride, dtype=dtype, kernels=kernels,
                     rngs=rngs, **backbone_options)
    compute = layers.as_dtype(dtype)
    if getattr(self, 'DENSE_NORM', 'batch') == 'group':
      norm = lambda c: nnx.GroupNorm(c, num_groups=32, epsilon=1e-6, dtype=compute,
                                     rngs=rngs)
    else:
      norm = lambda c: layers.BatchNorm(c, momentum=0.9, epsilon=1e-5, dtype=compute,
                                        kernels=kernels, rngs=rngs)
    self.head = make_head(self.HEAD, self.num_features, num_classes,
                          output_stride=output_stride, rate_base=96 if imagenet_stem else 8,
                          dropout=head_dropout, rates=aspp_rates, norm=norm, dtype=compute,
                          kernels=kernels, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return upsample(self.head(self.features(x, train), train), x.shape[1:3])


def can_be_dense(backbone_cls: type) -> bool:
  """Whether a registered classifier can carry a dense head: a staged backbone with a
  feature map (the ResNets and BiT; not the ConvNet or AlexNet)."""
  return (isinstance(backbone_cls, type) and hasattr(backbone_cls, 'features')
          and bool(getattr(backbone_cls, 'STAGES', ())))


@functools.cache
def dense_model_class(backbone_cls: type, head: str) -> type:
  """The segmentation model of `head` ('fcn' | 'deeplabv3') on `backbone_cls`, a class
  made once per pair (cached, so graph definitions compare equal). Its parameters keep the
  backbone's paths; its constructor's signature is the backbone's options and the head's,
  which config validation reads."""
  if head not in HEADS:
    raise ConfigError(f'Unknown segmentation head {head!r}; known: {", ".join(HEADS)}.')
  if not can_be_dense(backbone_cls):
    raise ConfigError(f'{backbone_cls.__name__} returns no feature map, so no dense head can '
                      'sit on it; use a ResNet or BiT backbone.')
  cls = type(f'{_HEAD_NAMES[head]}{backbone_cls.__name__}', (DenseModel, backbone_cls),
             {'HEAD': head, '__module__': __name__, '__doc__': DenseModel.__doc__})
  own = inspect.signature(DenseModel.__init__).parameters
  theirs = inspect.signature(backbone_cls.__init__).parameters
  merged = [p for p in own.values() if p.kind != p.VAR_KEYWORD] + [
      p for name, p in theirs.items() if name not in own and name != 'self'
      and p.kind == p.KEYWORD_ONLY]
  init = cls.__init__

  def __init__(self, *args, **kwargs):  # pylint: disable=invalid-name
    init(self, *args, **kwargs)

  __init__.__signature__ = inspect.Signature(merged)
  cls.__init__ = __init__
  return cls
