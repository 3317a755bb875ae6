"""Plain convolutional networks: the seed ConvNet and AlexNet."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import ops
from vision_jax.models import layers


class ConvNet(nnx.Module):
  """The seed ConvNet: conv3x3(64)-ReLU-pool2, conv3x3(128)-ReLU-pool2, fc(1024)-ReLU, fc.

  The seed's PyTorch code hard-coded fc1's input as 4*4*128, which is only right for 16x16
  inputs; here it is inferred from `image_size` (8x8 digits -> 2*2*128, 32x32 -> 8*8*128).
  """

  def __init__(self, num_classes: int, *, image_size: int = 32, in_channels: int = 3,
               width: int = 64, hidden: int = 1024, dtype='float32',
               kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    dtype = layers.as_dtype(dtype)
    self.kernels = kernels
    self.conv1 = layers.conv(in_channels, width, 3, dtype=dtype, kernels=kernels, rngs=rngs)
    self.conv2 = layers.conv(width, 2 * width, 3, dtype=dtype, kernels=kernels, rngs=rngs)
    side = image_size // 4
    if side < 1:
      raise ValueError(f'ConvNet needs images of at least 4x4 pixels, got {image_size}.')
    self.fc1 = nnx.Linear(side * side * 2 * width, hidden, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or normalisation: same computation in both modes.
    x = layers.max_pool(nnx.relu(self.conv1(x)), 2, 2, kernels=self.kernels)
    x = layers.max_pool(nnx.relu(self.conv2(x)), 2, 2, kernels=self.kernels)
    x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
    return self.head(x).astype(jnp.float32)


def _pool_out(n: int) -> int:
  """Side after `_overlapping_pool` on an n-pixel side."""
  return (n - 3) // 2 + 1 if n >= 3 else (n + 1) // 2


def _overlapping_pool(x: jax.Array, kernels: ops.Kernels) -> jax.Array:
  """AlexNet's 3x3 stride-2 max-pool; on maps under 3 pixels it pads ('SAME') so that
  small inputs (8px digits, 32px CIFAR) still go through. Same result at 224px."""
  padding = 'VALID' if min(x.shape[1:3]) >= 3 else 'SAME'
  return layers.max_pool(x, 3, 2, padding, kernels=kernels)


class AlexNet(nnx.Module):
  """AlexNet, the one-GPU variant of Krizhevsky 2014 ("One weird trick"), as torchvision.

  Convs 64-192-384-256-256 (11x11/4, 5x5, 3x3 x3, all with bias and ReLU), overlapping
  3x3/2 max-pools after conv1, conv2 and conv5, then dropout-fc(4096)-ReLU,
  dropout-fc(4096)-ReLU, head. No local response norm (torchvision drops it too).
  Instead of torchvision's adaptive average pool to 6x6, fc1's input is inferred from
  `image_size`: 6*6*256 at 224px (torchvision's 61,100,840 parameters at 1,000 classes),
  1*1*256 at 32px or 8px, so small inputs do not pay for a 9216-wide fc1 of copies.
  """

  def __init__(self, num_classes: int, *, image_size: int = 224, in_channels: int = 3,
               hidden: int = 4096, dropout_rate: float = 0.5, dtype='float32',
               kernels: ops.Kernels = ops.XLA, rngs: nnx.Rngs):
    if image_size < 7:
      raise ValueError(f'AlexNet needs images of at least 7x7 pixels, got {image_size}.')
    dtype = layers.as_dtype(dtype)
    self.kernels = kernels
    conv = lambda cin, cout, k, **kw: layers.conv(cin, cout, k, dtype=dtype, kernels=kernels,
                                                  rngs=rngs, **kw)
    self.conv1 = conv(in_channels, 64, 11, strides=4, padding=((2, 2), (2, 2)))
    self.conv2 = conv(64, 192, 5)
    self.conv3 = conv(192, 384, 3)
    self.conv4 = conv(384, 256, 3)
    self.conv5 = conv(256, 256, 3)
    side = (image_size + 4 - 11) // 4 + 1  # conv1; the other convs keep the size.
    side = _pool_out(_pool_out(_pool_out(side)))
    self.dropout1 = nnx.Dropout(dropout_rate, rngs=rngs)
    self.fc1 = nnx.Linear(side * side * 256, hidden, dtype=dtype, rngs=rngs)
    self.dropout2 = nnx.Dropout(dropout_rate, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, hidden, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = _overlapping_pool(nnx.relu(self.conv1(x)), self.kernels)
    x = _overlapping_pool(nnx.relu(self.conv2(x)), self.kernels)
    x = nnx.relu(self.conv3(x))
    x = nnx.relu(self.conv4(x))
    x = _overlapping_pool(nnx.relu(self.conv5(x)), self.kernels)
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.fc1(self.dropout1(x, deterministic=not train)))
    x = nnx.relu(self.fc2(self.dropout2(x, deterministic=not train)))
    return self.head(x).astype(jnp.float32)
