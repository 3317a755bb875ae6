"""ResNets with BatchNorm: v1.5 (ImageNet and CIFAR stems) and the pre-activation WideResNet.

ResNet v1.5 is torchvision's ResNet: the stride of a bottleneck sits on its 3x3 conv, not on
the first 1x1 (He et al. 2015 put it on the 1x1; v1.5 is ~0.5% more accurate on ImageNet).
Layer shapes follow torchvision exactly, so parameter counts match it at 1,000 classes.

BatchNorm uses momentum 0.9 and epsilon 1e-5 (torchvision's momentum 0.1 is the weight of
the new batch; Flax's momentum is the weight of the old statistics).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import ops
from vision_jax.errors import ConfigError
from vision_jax.models import layers
from vision_jax.models import remat as remat_lib

# He init scaled by fan-out, untruncated, as torchvision initialises ResNet convolutions.
_CONV_INIT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, dtype, kernels: ops.Kernels,
          strides: int = 1, dilation: int = 1) -> nnx.Conv:
  """Bias-free conv padded by dilation * (kernel // 2) on every side, as torchvision: with
  stride 2, 'SAME' would pad (0, 1) instead and shift every window by one pixel."""
  pad = (dilation * (kernel // 2),) * 2
  return layers.conv(cin, cout, kernel, strides=strides, padding=(pad, pad), use_bias=False,
                     kernel_dilation=dilation, dtype=dtype, kernel_init=_CONV_INIT,
                     kernels=kernels, rngs=rngs)


def _norm(features: int, rngs: nnx.Rngs, dtype, kernels: ops.Kernels,
          zero_scale: bool = False) -> layers.BatchNorm:
  scale_init = nnx.initializers.zeros if zero_scale else nnx.initializers.ones
  return layers.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype,
                          scale_init=scale_init, kernels=kernels, rngs=rngs)


def stem_max_pool(x: jax.Array, kernels: ops.Kernels, pad_value: float = -jnp.inf
                  ) -> jax.Array:
  """3x3 stride-2 max-pool with one pixel of padding on every side, as torchvision/BiT."""
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad_value)
  return layers.max_pool(x, 3, 2, 'VALID', kernels=kernels)


class DropPath(nnx.Module):
  """Stochastic depth (Huang et al. 2016; timm's DropPath): in training, each example's
  residual branch is zeroed with probability `rate` and otherwise scaled by 1 / (1 - rate),
  one Bernoulli draw per example from the model's 'dropout' RNG stream; the identity at eval.
  """

  def __init__(self, rate: float, rngs: nnx.Rngs):
    self.rate = rate
    self.rngs = rngs['dropout'].fork()

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0:
      return x
    keep = 1.0 - self.rate
    kept = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(kept, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
  """timm's linear rule: block i of n drops its branch with rate * i / (n - 1) (the first
  block never, the last with `rate`)."""
  return [rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]


def add_drop_path(blocks, rate: float, rngs: nnx.Rngs) -> None:
  """Gives each block with a non-zero rate (`drop_path_rates`) its DropPath. Called once
  the parameters are initialised, so the rate leaves them as they were; raises ConfigError
  for a rate outside [0, 1)."""
  if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
    raise ConfigError(f'config.model.drop_path_rate={rate!r}: use a probability in [0, 1) '
                      '(the last block\'s; RSB A1/A2: 0.05), or 0 for off.')
  for block, block_rate in zip(blocks, drop_path_rates(rate, len(blocks))):
    if block_rate > 0:
      block.drop_path = DropPath(block_rate, rngs)


def _drop_path(block: nnx.Module, y: jax.Array, train: bool) -> jax.Array:
  return y if block.drop_path is None else block.drop_path(y, train)


class BasicBlock(nnx.Module):
  """Two 3x3 convs (ResNet-18/34). The stride sits on the first conv.

  Dilation (see `dilation_plan`): the first conv sits where the stride is, so it has
  `first_dilation`, the second `dilation`.
  """
  expansion = 1

  def __init__(self, cin: int, width: int, strides: int, *, zero_init_residual: bool,
               dtype, kernels: ops.Kernels, rngs: nnx.Rngs, dilation: int = 1,
               first_dilation: int = 1):
    cout = width * self.expansion
    self.conv1 = _conv(cin, width, 3, rngs, dtype, kernels, strides, first_dilation)
    self.bn1 = _norm(width, rngs, dtype, kernels)
    self.conv2 = _conv(width, cout, 3, rngs, dtype, kernels, dilation=dilation)
    self.bn2 = _norm(cout, rngs, dtype, kernels, zero_scale=zero_init_residual)
    project = strides != 1 or cin != cout  # Else the shortcut is the identity.
    self.proj = _conv(cin, cout, 1, rngs, dtype, kernels, strides) if project else None
    self.proj_bn = _norm(cout, rngs, dtype, kernels) if project else None
    self.drop_path = nnx.data(None)  # add_drop_path.

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    ura = not train
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = _drop_path(self, self.bn2(self.conv2(y), use_running_average=ura), train)
    if self.proj is not None:
      x = self.proj_bn(self.proj(x), use_running_average=ura)
    return nnx.relu(x + y)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand by 4 (ResNet-50 and deeper).

  Dilation (see `dilation_plan`): the 3x3 conv sits where the stride is, so it has
  `first_dilation`; `dilation` is accepted for the blocks' common signature.
  """
  expansion = 4

  def __init__(self, cin: int, width: int, strides: int, *, zero_init_residual: bool,
               dtype, kernels: ops.Kernels, rngs: nnx.Rngs, dilation: int = 1,
               first_dilation: int = 1):
    del dilation  # A bottleneck's only 3x3 conv is the one at the stride position.
    cout = width * self.expansion
    self.conv1 = _conv(cin, width, 1, rngs, dtype, kernels)
    self.bn1 = _norm(width, rngs, dtype, kernels)
    self.conv2 = _conv(width, width, 3, rngs, dtype, kernels, strides, first_dilation)
    self.bn2 = _norm(width, rngs, dtype, kernels)
    self.conv3 = _conv(width, cout, 1, rngs, dtype, kernels)
    self.bn3 = _norm(cout, rngs, dtype, kernels, zero_scale=zero_init_residual)
    project = strides != 1 or cin != cout  # Else the shortcut is the identity.
    self.proj = _conv(cin, cout, 1, rngs, dtype, kernels, strides) if project else None
    self.proj_bn = _norm(cout, rngs, dtype, kernels) if project else None
    self.drop_path = nnx.data(None)  # add_drop_path.

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    ura = not train
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = nnx.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = _drop_path(self, self.bn3(self.conv3(y), use_running_average=ura), train)
    if self.proj is not None:
      x = self.proj_bn(self.proj(x), use_running_average=ura)
    return nnx.relu(x + y)


_BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


def dilation_plan(num_stages: int, stem_stride: int, output_stride: int | None
                  ) -> list[tuple[int, int, int]]:
  """(stride, first_dilation, dilation) of each stage for a total stride `output_stride`
  (None: the network's own, no dilation).

  Every stage but the first halves the resolution, so the network's own stride is
  stem_stride * 2**(num_stages - 1) (32 with the ImageNet stem, 8 with the CIFAR one). For
  half or a quarter of it, the last one or two stages keep their input's resolution and
  dilate their 3x3 convs by the stride they no longer take (DeepLab's atrous ResNets,
  torchvision's `replace_stride_with_dilation`): a stage's first 3x3 conv, where the stride
  was, keeps the previous dilation (`first_dilation`), its later 3x3 convs take the new
  one. No parameter changes, so a classifier's checkpoint loads into any output stride.
  Raises ConfigError for another output stride.
  """
  natural = stem_stride * 2**(num_stages - 1)
  allowed = [natural // 2**k for k in range(min(2, num_stages - 1) + 1)]
  output_stride = natural if output_stride is None else output_stride
  if output_stride not in allowed:
    raise ConfigError(f'config.model.output_stride={output_stride!r} is not possible for this '
                      f'backbone, whose own output stride is {natural}: use one of '
                      f'{", ".join(map(str, allowed))} (the last stages dilated instead of '
                      'strided).')
  plan, dilation = [], 1
  for i in range(num_stages):
    stride, first_dilation = (2 if i > 0 else 1), dilation
    if i >= num_stages - allowed.index(output_stride):
      dilation, stride = dilation * stride, 1
    plan.append((stride, first_dilation, dilation))
  return plan


class ResNet(nnx.Module):
  """ResNet v1.5; subclasses fix the depth (STAGES, BLOCK) and the stem (STEM).

  STEM 'imagenet': 7x7/2 conv + 3x3/2 max-pool (224px inputs, /32 overall); 'cifar': one
  3x3 stride-1 conv and no pool (32px inputs, /8 overall). Variants are classes, not
  factory functions, so that `__init__`'s signature lists exactly the options a config
  may set. `zero_init_residual` zero-initialises the last BatchNorm scale of each block so
  that every block starts as the identity (Goyal et al. 2017): helps large-batch training.
  `remat` recomputes each block's activations in the backward pass (models/remat.py).
  `output_stride` below the network's own (None: 32, or 8 with the CIFAR stem) dilates the
  last stages instead of striding them (`dilation_plan`), for dense prediction.
  `drop_path_rate` > 0: stochastic depth on the residual branches, linear over the blocks
  (`drop_path_rates`), keyed by the 'dropout' RNG stream; parameters are initialised as
  without it.
  """
  STAGES: tuple[int, ...] = ()
  BLOCK = 'basic'
  STEM = 'imagenet'

  def __init__(self, num_classes: int, *, width: int = 64, zero_init_residual: bool = False,
               output_stride: int | None = None, in_channels: int = 3, dtype='float32',
               remat: str = 'none', drop_path_rate: float = 0.0,
               kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    if not self.STAGES:
      raise TypeError('ResNet is a family: build a variant (ResNet18, ..., CifarResNet50).')
    dtype = layers.as_dtype(dtype)
    self.remat = remat_lib.check(remat)
    self.kernels = kernels
    block_cls = _BLOCKS[self.BLOCK]
    if self.STEM == 'imagenet':
      self.stem_conv = _conv(in_channels, width, 7, rngs, dtype, kernels, 2)
    else:
      self.stem_conv = _conv(in_channels, width, 3, rngs, dtype, kernels)
    self.stem_bn = _norm(width, rngs, dtype, kernels)

    stem_stride = 4 if self.STEM == 'imagenet' else 1
    plan = dilation_plan(len(self.STAGES), stem_stride, output_stride)
    blocks, cin = [], width
    for i, (num_blocks, (stride, first_dilation, dilation)) in enumerate(zip(self.STAGES, plan)):
      for j in range(num_blocks):
        blocks.append(block_cls(cin, width * 2**i, stride if j == 0 else 1, dtype=dtype,
                                kernels=kernels, rngs=rngs,
                                zero_init_residual=zero_init_residual, dilation=dilation,
                                first_dilation=first_dilation if j == 0 else dilation))
        cin = width * 2**i * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.num_features = cin  # Channels of `features`.
    self.head = nnx.Linear(cin, num_classes, dtype=dtype, rngs=rngs)
    add_drop_path(self.blocks, drop_path_rate, rngs)

  def stage_features(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    """Each stage's output map, first to last (strides 4, 8, 16, 32 with the ImageNet
    stem and no dilation): what a feature pyramid reads."""
    x = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    if self.STEM == 'imagenet':
      x = stem_max_pool(x, self.kernels)
    outs, start = [], 0
    for num_blocks in self.STAGES:
      stage = [self.blocks[i] for i in range(start, start + num_blocks)]
      x = remat_lib.run_blocks(stage, x, self.remat, train)
      outs.append(x)
      start += num_blocks
    return outs

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    """The last stage's map [B, H / output_stride, W / output_stride, num_features]."""
    return self.stage_features(x, train)[-1]

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = jnp.mean(self.features(x, train), axis=(1, 2))
    return self.head(x).astype(jnp.float32)


class ResNet18(ResNet):
  STAGES, BLOCK = (2, 2, 2, 2), 'basic'


class ResNet34(ResNet):
  STAGES, BLOCK = (3, 4, 6, 3), 'basic'


class ResNet50(ResNet):
  STAGES, BLOCK = (3, 4, 6, 3), 'bottleneck'


class ResNet101(ResNet):
  STAGES, BLOCK = (3, 4, 23, 3), 'bottleneck'


class ResNet152(ResNet):
  STAGES, BLOCK = (3, 8, 36, 3), 'bottleneck'


class ResNet200(ResNet):
  STAGES, BLOCK = (3, 24, 36, 3), 'bottleneck'


class CifarResNet18(ResNet18):
  STEM = 'cifar'


class CifarResNet34(ResNet34):
  STEM = 'cifar'


class CifarResNet50(ResNet50):
  STEM = 'cifar'


class WideBlock(nnx.Module):
  """Pre-activation basic block of a WideResNet: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3.

  When the shape changes, the 1x1 projection reads the pre-activated input, as in the
  authors' code; otherwise the shortcut is the raw input.
  """

  def __init__(self, cin: int, cout: int, strides: int, *, dropout_rate: float,
               zero_init_residual: bool, dtype, kernels: ops.Kernels, rngs: nnx.Rngs):
    self.bn1 = _norm(cin, rngs, dtype, kernels)
    self.conv1 = _conv(cin, cout, 3, rngs, dtype, kernels, strides)
    self.bn2 = _norm(cout, rngs, dtype, kernels, zero_scale=zero_init_residual)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.conv2 = _conv(cout, cout, 3, rngs, dtype, kernels)
    project = strides != 1 or cin != cout
    self.proj = _conv(cin, cout, 1, rngs, dtype, kernels, strides) if project else None

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    ura = not train
    y = nnx.relu(self.bn1(x, use_running_average=ura))
    shortcut = x if self.proj is None else self.proj(y)
    y = self.conv1(y)
    y = nnx.relu(self.bn2(y, use_running_average=ura))
    y = self.conv2(self.dropout(y, deterministic=not train))
    return shortcut + y


class WideResNet(nnx.Module):
  """WRN-DEPTH-WIDEN (Zagoruyko & Komodakis 2016) for 32px inputs: a 3x3 conv to 16
  channels, three groups of (DEPTH - 4) / 6 pre-activation blocks of width 16k, 32k, 64k
  (k = WIDEN), then BN-ReLU, global average pool and the head. The paper uses dropout 0.3.
  `remat` as for ResNet.
  """
  DEPTH = 28
  WIDEN = 10

  def __init__(self, num_classes: int, *, dropout_rate: float = 0.0,
               zero_init_residual: bool = False, in_channels: int = 3, dtype='float32',
               remat: str = 'none', kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    if (self.DEPTH - 4) % 6:
      raise ValueError(f'WideResNet depth must be 6n + 4 (16, 22, 28, 40), got {self.DEPTH}.')
    dtype = layers.as_dtype(dtype)
    self.remat = remat_lib.check(remat)
    self.stem_conv = _conv(in_channels, 16, 3, rngs, dtype, kernels)
    blocks, cin = [], 16
    for i, cout in enumerate((16 * self.WIDEN, 32 * self.WIDEN, 64 * self.WIDEN)):
      for j in range((self.DEPTH - 4) // 6):
        strides = 2 if i > 0 and j == 0 else 1
        blocks.append(WideBlock(cin, cout, strides, dropout_rate=dropout_rate, dtype=dtype,
                                zero_init_residual=zero_init_residual, kernels=kernels,
                                rngs=rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.final_bn = _norm(cin, rngs, dtype, kernels)
    self.head = nnx.Linear(cin, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.stem_conv(x)
    x = remat_lib.run_blocks(self.blocks, x, self.remat, train)
    x = nnx.relu(self.final_bn(x, use_running_average=not train))
    x = jnp.mean(x, axis=(1, 2))
    return self.head(x).astype(jnp.float32)


class WideResNet28_10(WideResNet):
  DEPTH, WIDEN = 28, 10
