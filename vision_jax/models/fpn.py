"""Feature pyramid network (Lin et al. 2017) with RetinaNet's P6 and P7, as torchvision's.

From the backbone's stage outputs C3, C4, C5 (strides 8, 16, 32): a 1x1 lateral conv maps
each to `channels`; from the top down, each lateral map adds the one above, upsampled
(nearest) to its size; a 3x3 conv smooths each sum into P3, P4, P5. P6 is a 3x3 stride-2
conv of P5 (torchvision's FCOS and RetinaNet; `p6_input='p5'`) or of C5 (RetinaNet v2 and
the paper; `p6_input='c5'`), and P7 a 3x3 stride-2 conv of ReLU(P6). Every conv has a bias
and no norm; they are initialised as torchvision's (Kaiming uniform with a = 1, bias 0).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import ops
from vision_jax.errors import ConfigError
from vision_jax.models import layers

P6_INPUTS = ('p5', 'c5')
# torch's kaiming_uniform_(a=1): uniform with variance 1 / fan_in.
_INIT = nnx.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def _conv(cin: int, cout: int, kernel: int, strides: int, *, dtype, kernels: ops.Kernels,
          rngs: nnx.Rngs) -> nnx.Conv:
  pad = ((kernel // 2,) * 2,) * 2
  return layers.conv(cin, cout, kernel, strides=strides, padding=pad, dtype=dtype,
                     kernel_init=_INIT, kernels=kernels, rngs=rngs)


def upsample_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """x [B, h, w, C] resized to [B, *size, C] by nearest neighbour, row i reading row
  floor(i * h / H) as torch's F.interpolate(mode='nearest') does."""
  if size[0] == 2 * x.shape[1] and size[1] == 2 * x.shape[2]:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # The same, without a gather.
  rows = (jnp.arange(size[0]) * x.shape[1]) // size[0]
  cols = (jnp.arange(size[1]) * x.shape[2]) // size[1]
  return x[:, rows][:, :, cols]


class FPN(nnx.Module):
  """`__call__([C3, C4, C5]) -> [P3, P4, P5, P6, P7]`, each with `channels` channels."""

  def __init__(self, in_channels: Sequence[int], channels: int = 256, *,
               p6_input: str = 'p5', dtype=None, kernels: ops.Kernels = ops.XLA,
               rngs: nnx.Rngs):
    if p6_input not in P6_INPUTS:
      raise ConfigError(f'config.model.p6_input={p6_input!r}: use "p5" (torchvision\'s FCOS '
                        'and RetinaNet) or "c5" (RetinaNet v2 and the paper).')
    common = dict(dtype=dtype, kernels=kernels, rngs=rngs)
    self.inner = nnx.List([_conv(c, channels, 1, 1, **common) for c in in_channels])
    self.layer = nnx.List([_conv(channels, channels, 3, 1, **common) for _ in in_channels])
    self.p6_input = p6_input
    self.p6 = _conv(channels if p6_input == 'p5' else in_channels[-1], channels, 3, 2, **common)
    self.p7 = _conv(channels, channels, 3, 2, **common)

  def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
    if len(features) != len(self.inner):
      raise ValueError(f'FPN: got {len(features)} feature maps, built for {len(self.inner)}.')
    last = self.inner[-1](features[-1])
    outs = [self.layer[-1](last)]
    for i in range(len(features) - 2, -1, -1):
      lateral = self.inner[i](features[i])
      last = lateral + upsample_nearest(last, lateral.shape[1:3])
      outs.insert(0, self.layer[i](last))
    p6 = self.p6(outs[-1] if self.p6_input == 'p5' else features[-1])
    return outs + [p6, self.p7(nnx.relu(p6))]
