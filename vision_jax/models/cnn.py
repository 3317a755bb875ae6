"""Plain convolutional networks: the seed ConvNet and AlexNet."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax.models import layers


class ConvNet(nnx.Module):
  """The seed ConvNet: conv3x3(64)-ReLU-pool2, conv3x3(128)-ReLU-pool2, fc(1024)-ReLU, fc.

  The seed's PyTorch code hard-coded fc1's input as 4*4*128, which is only right for 16x16
  inputs; here it is inferred from `image_size` (8x8 digits -> 2*2*128, 32x32 -> 8*8*128).
  """

  def __init__(self, num_classes: int, *, image_size: int = 32, in_channels: int = 3,
               width: int = 64, hidden: int = 1024, dtype='float32', rngs: nnx.Rngs):
    dtype = layers.as_dtype(dtype)
    self.conv1 = layers.conv(in_channels, width, 3, dtype=dtype, rngs=rngs)
    self.conv2 = layers.conv(width, 2 * width, 3, dtype=dtype, rngs=rngs)
    side = image_size // 4
    if side < 1:
      raise ValueError(f'ConvNet needs images of at least 4x4 pixels, got {image_size}.')
    self.fc1 = nnx.Linear(side * side * 2 * width, hidden, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or normalisation: same computation in both modes.
    x = layers.max_pool(nnx.relu(self.conv1(x)), 2, 2)
    x = layers.max_pool(nnx.relu(self.conv2(x)), 2, 2)
    x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
    return self.head(x).astype(jnp.float32)
