"""Training-mode BatchNorm with a hand-written gradient: fewer passes over the activations.

Autodiff of BatchNorm (Flax's, or any `(x - mean) * rsqrt(var + eps) * scale + bias`)
keeps `x - mean` as a residual, so XLA writes it out in the forward pass and reads it back
twice in the backward. BatchNorm moves no FLOPs worth counting; its cost is memory
traffic, which is what a CPU step is short of once the convolutions are oneDNN's. Here
the forward pass reads x twice (statistics in one fused pass, then the affine map) and
writes y; the backward reads x and dy twice (two channel sums, then dx) and writes dx.

Same values as `nnx.BatchNorm` in training mode (one-pass variance E[x^2] - E[x]^2, clipped
at 0, as Flax's `use_fast_variance`), gradients equal within float32 rounding.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  mean = jnp.sum(x, axes) / n
  var = jnp.maximum(jnp.sum(x * x, axes) / n - mean * mean, 0.0)
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y, batch mean, batch variance) over every axis but the last (channels), float32.

  y = (x - mean) / sqrt(var + epsilon) * scale + bias. The mean and variance are returned
  for the running averages; gradients flowing into them are honoured too.
  """
  return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
  mean, var = _stats(x)
  inv = jax.lax.rsqrt(var + epsilon)
  a = scale * inv
  y = x * a + (bias - mean * a)
  return (y, mean, var), (x, mean, var, inv, scale)


def _backward(epsilon, residuals, cotangents):
  del epsilon  # Folded into inv.
  x, mean, var, inv, scale = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  sum_dy = jnp.sum(dy, axes)
  # sum(dy * (x - mean)) from two plain sums, and dx below in terms of x, not x - mean:
  # with x - mean written in both places XLA materialised it as one more pass. The
  # cancellation risk is that of the one-pass variance.
  sum_dy_xc = jnp.sum(dy * x, axes) - mean * sum_dy
  dbias = sum_dy
  dscale = inv * sum_dy_xc
  a = scale * inv
  # dx = a * dy + c0 + c1 * (x - mean): the y path, then the statistics' own cotangents
  # (var is clipped at 0; where it was, its gradient is taken as zero like the clip's).
  dvar_total = jnp.where(var > 0, dvar - 0.5 * a * inv * inv * sum_dy_xc, 0.0)
  c1 = 2.0 * dvar_total / n
  c0 = (dmean - a * sum_dy) / n
  dx = a * dy + (c0 - c1 * mean) + c1 * x
  return dx, dscale, dbias


batch_norm_train.defvjp(_forward, _backward)
