"""BYOL's target network: an exponential moving average of the online network's weights
whose decay rises from `base` to `final` (1.0) along a cosine over the training run.

  tau(k) = final - (final - base) * (cos(pi k / K) + 1) / 2      (BYOL eq. 5 for final = 1)
  target <- tau(k) * target + (1 - tau(k)) * online              after update k

k is the current training step (`state.step` of the update, 0 for the first) and K the
total number of training steps: tau(0) = base, tau(K) = final. BYOL uses base 0.996 on
ImageNet (batch 4096), solo-learn 0.99 on CIFAR. Unlike `train_state.update_ema` (the
evaluation average) there is no warm-up: the target starts as a copy of the online network
and the schedule alone sets how fast it follows.

Pure functions of arrays and trees: they run inside the jitted step on any sharding.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def target_decay(step: jax.Array, total_steps: int, base: float = 0.996,
                 final: float = 1.0) -> jax.Array:
  """BYOL's tau at `step` of `total_steps` (float32 scalar); steps past the end keep final."""
  if total_steps < 1:
    raise ValueError(f'total_steps must be >= 1, got {total_steps}.')
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
  return final - (final - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def update_target(target: PyTree, online: PyTree, decay: jax.Array | float) -> PyTree:
  """tau * target + (1 - tau) * online on every floating leaf (computed in float32, stored
  in the target's dtype); other leaves (RNG state, counters) are taken from `online`."""

  def average(t, o):
    if not jnp.issubdtype(o.dtype, jnp.floating):
      return o
    mixed = decay * t.astype(jnp.float32) + (1.0 - decay) * o.astype(jnp.float32)
    return mixed.astype(t.dtype)

  return jax.tree.map(average, target, online)
