"""The on-device half of preprocessing: uint8 images -> normalised floats in the jitted step.

Its own module so that the core (steps.py, inference.py) imports only JAX for it, not the
host side's decoders (preprocess.py: OpenCV, simplejpeg, PIL).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def normalize(images: jnp.ndarray, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> jnp.ndarray:
  """uint8 NHWC -> (x / 255 - mean) / std, on device."""
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)
