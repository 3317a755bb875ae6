"""Layers that GAN generators and discriminators share: class-conditional BatchNorm, the
discriminator's output with an optional class projection, and optional spectral norm.

Class conditioning follows Miyato & Koyama 2018 ("cGANs with projection discriminator"):
the generator's BatchNorms take their scale and bias from the class (conditional
BatchNorm, one row of each per class; statistics are shared), and the discriminator adds
<embed(y), h> to its linear output on features h. The class also enters the generator's
first linear map (`ClassInput`: z concatenated with one-hot(y), as Mirza & Osindero's
cGAN): a conditional BatchNorm's per-class scale and bias are the same at every position of
a feature map, so at the bottom map, whose features are a linear function of z, they cannot
give a class its own spatial layout; with a single conditional BatchNorm (DCGAN at 8x8) the
generator then cannot draw a class-specific image, the projection discriminator rejects
every sample on its class, and training collapses.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vision_jax import ops
from vision_jax.errors import ConfigError
from vision_jax.models import layers
from vision_jax.models.spectral_norm import SpectralNorm


def check_labels(labels: jax.Array | None, num_classes: int, batch: int) -> None:
  """Raises ValueError unless labels are given exactly when the model is conditional."""
  if num_classes and labels is None:
    raise ValueError(f'This model is class-conditional ({num_classes} classes): pass '
                     'integer labels of shape [batch].')
  if not num_classes and labels is not None:
    raise ValueError('This model is unconditional (num_classes=0): pass labels=None, or '
                     'build it with num_classes set.')
  if labels is not None and labels.shape != (batch,):
    raise ValueError(f'labels have shape {labels.shape}; expected ({batch},).')


def check_num_classes(num_classes: int) -> None:
  if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
    raise ConfigError(f'num_classes={num_classes!r}: use 0 for an unconditional GAN or the '
                      'number of classes (>= 1) to condition on them.')


class ConditionalBatchNorm(nnx.Module):
  """BatchNorm whose scale and bias are rows of [num_classes, features] parameters picked
  by each example's label; statistics (`mean`, `var`) as `layers.BatchNorm`: float32,
  one-pass variance, `momentum` the weight of the old statistics."""

  def __init__(self, num_features: int, num_classes: int, *, momentum: float = 0.9,
               epsilon: float = 1e-5, dtype=None):
    self.momentum, self.epsilon, self.dtype = momentum, epsilon, dtype
    self.scale = nnx.Param(jnp.ones((num_classes, num_features), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_classes, num_features), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x: jax.Array, labels: jax.Array, use_running_average: bool
               ) -> jax.Array:
    out_dtype = self.dtype or x.dtype
    x32 = x.astype(jnp.float32)
    if use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      var = jnp.maximum(jnp.mean(x32 * x32, axes) - mean * mean, 0.0)
      m = self.momentum
      self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
      self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
    expand = (slice(None),) + (None,) * (x.ndim - 2)  # [B, C] -> [B, 1, ..., 1, C].
    scale = self.scale[...][labels][expand]
    bias = self.bias[...][labels][expand]
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(out_dtype)


class GeneratorNorm(nnx.Module):
  """The generator's BatchNorm: plain (`layers.BatchNorm`) when num_classes is 0, else
  conditional. Momentum 0.9 and epsilon 1e-5: PyTorch's BatchNorm2d defaults (momentum
  0.1 of the new batch), which the DCGAN reference code uses."""

  def __init__(self, num_features: int, num_classes: int, *, dtype,
               kernels: ops.Kernels, rngs: nnx.Rngs,
               scale_init=nnx.initializers.ones):
    self.conditional = num_classes > 0
    if self.conditional:  # Per-class scales start at 1.
      self.bn = ConditionalBatchNorm(num_features, num_classes, dtype=dtype)
    else:
      self.bn = layers.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, dtype=dtype,
                                 scale_init=scale_init, kernels=kernels, rngs=rngs)

  def __call__(self, x: jax.Array, labels: jax.Array | None, train: bool) -> jax.Array:
    if self.conditional:
      return self.bn(x, labels, use_running_average=not train)
    return self.bn(x, use_running_average=not train)


class ClassInput(nnx.Module):
  """A learned [num_classes, features] row added to the generator's first linear map of z:
  W [z; one-hot(y)] = W_z z + W_y[y], the class's own bottom feature map (init N(0, std),
  as the rest of that map's weights)."""

  def __init__(self, num_classes: int, features: int, *, std: float, dtype,
               rngs: nnx.Rngs):
    self.embed = nnx.Embed(num_classes, features, dtype=dtype,
                           embedding_init=nnx.initializers.normal(std), rngs=rngs)

  def __call__(self, projected: jax.Array, labels: jax.Array) -> jax.Array:
    """projected [B, features] (W_z z) + the labels' rows."""
    return projected + self.embed(labels).astype(projected.dtype)


def class_input(num_classes: int, features: int, *, std: float, dtype, rngs: nnx.Rngs
                ) -> ClassInput | None:
  """`ClassInput` when num_classes > 0, else None (an unconditional generator)."""
  if not num_classes:
    return nnx.data(None)
  return ClassInput(num_classes, features, std=std, dtype=dtype, rngs=rngs)


def maybe_spectral_norm(layer: nnx.Module, spectral_norm: bool, rngs: nnx.Rngs, *,
                        weight_name: str = 'kernel') -> nnx.Module:
  """`layer` wrapped in SpectralNorm (1 power iteration per call) if `spectral_norm`."""
  return SpectralNorm(layer, weight_name=weight_name, rngs=rngs) if spectral_norm else layer


def apply(layer: nnx.Module, x: jax.Array, train: bool) -> jax.Array:
  """Calls a layer that may be wrapped in SpectralNorm (which takes `train`)."""
  return layer(x, train) if isinstance(layer, SpectralNorm) else layer(x)


class DiscriminatorOutput(nnx.Module):
  """The discriminator's logit from flat features h: linear(h) (= `head`), plus
  <embed(y), h> when conditional (the projection discriminator); both spectrally
  normalised when `spectral_norm` (the embedding as a [num_classes, features] matrix)."""

  def __init__(self, in_features: int, num_classes: int, *, spectral_norm: bool,
               kernel_init, dtype, rngs: nnx.Rngs, use_bias: bool = True):
    self.head = maybe_spectral_norm(
        nnx.Linear(in_features, 1, use_bias=use_bias, kernel_init=kernel_init, dtype=dtype,
                   rngs=rngs),
        spectral_norm, rngs)
    self.embed = nnx.data(None)
    if num_classes:
      self.embed = maybe_spectral_norm(
          nnx.Embed(num_classes, in_features, dtype=dtype, rngs=rngs), spectral_norm, rngs,
          weight_name='embedding')

  def __call__(self, h: jax.Array, labels: jax.Array | None, train: bool) -> jax.Array:
    logits = apply(self.head, h, train)[:, 0].astype(jnp.float32)
    if self.embed is not None:
      projection = apply(self.embed, labels, train).astype(jnp.float32)
      logits = logits + jnp.sum(projection * h.astype(jnp.float32), axis=-1)
    return logits
