"""Spectral normalisation (Miyato et al. 2018): a layer's weight divided by its largest
singular value, estimated by power iteration.

`SpectralNorm(layer)` wraps a layer that holds its weight as an `nnx.Param` (`kernel` of
`nnx.Conv`, `nnx.ConvTranspose`, `nnx.Linear`; `embedding` of `nnx.Embed`). The weight is
read as a matrix with its last axis as columns (HWIO kernels -> [H*W*I, O]), the
orientation of the paper's W^T. The power-iteration vector `u` (one entry per column) is a
`PowerIterationVector`: an `nnx.Variable` that is not an `nnx.Param`, so it sits with the
non-trainable state (beside BatchNorm statistics) and never receives gradients.

Each call runs `n_power_iterations` steps (1, as the paper) from the stored `u`, divides
the weight by the resulting estimate sigma = u^T W v and applies the layer with it; the
stored `u` is replaced by the new one only when `train` is true (the authors' Chainer code
does the same), so evaluation is deterministic and leaves the state as it was. u and v are
constants to the gradient, as in the paper and in PyTorch's `spectral_norm`.

Flax's own `nnx.SpectralNorm` writes the normalised weight back into the parameter, so the
optimiser would then update W / sigma rather than W; this wrapper leaves the parameter as
it is and normalises a copy on every call.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class PowerIterationVector(nnx.Variable):
  """The left singular vector estimate `u` of spectral normalisation: state that the power
  iteration updates in training mode, never a parameter of the optimiser."""


def l2_normalize(x: jax.Array, eps: float) -> jax.Array:
  """x / max(||x||, eps), as PyTorch's and Chainer's spectral norm."""
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def power_iteration(matrix: jax.Array, u: jax.Array, steps: int, eps: float = 1e-12
                    ) -> tuple[jax.Array, jax.Array]:
  """(sigma, new u) after `steps` power iterations from `u` on `matrix` [rows, cols].

  With W = matrix^T (the paper's [out, in] weight): v = W^T u / ||.||, u = W v / ||.||,
  sigma = u^T W v. u and v are constants to the gradient (sigma stays differentiable in
  the matrix, linearly); steps >= 1.
  """
  if steps < 1:
    raise ValueError(f'power_iteration needs 1 or more steps, got {steps}.')
  m = matrix.astype(jnp.float32)
  u = u.astype(jnp.float32)
  for _ in range(steps):
    v = l2_normalize(m @ u, eps)
    u = l2_normalize(m.T @ v, eps)
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  sigma = jnp.dot(v, m @ u)
  return sigma, u


class SpectralNorm(nnx.Module):
  """`layer` applied with its weight divided by the weight's largest singular value.

  Call as `sn(x, train)`; `train` decides whether the power iteration's result is stored.
  `normalized_weight(train=False)` gives the weight the next call in eval mode would use.
  """

  def __init__(self, layer: nnx.Module, *, weight_name: str = 'kernel',
               n_power_iterations: int = 1, eps: float = 1e-12, rngs: nnx.Rngs):
    weight = getattr(layer, weight_name, None)
    if not isinstance(weight, nnx.Param) or weight.ndim < 2:
      raise ValueError(f'SpectralNorm needs a layer whose {weight_name!r} is a parameter '
                       f'of 2 or more axes; {type(layer).__name__} has '
                       f'{type(weight).__name__}.')
    if n_power_iterations < 1:
      raise ValueError(f'n_power_iterations={n_power_iterations}: use 1 or more.')
    self.layer = layer
    self.weight_name = weight_name
    self.n_power_iterations = n_power_iterations
    self.eps = eps
    u = jax.random.normal(rngs.params(), (weight.shape[-1],), jnp.float32)
    self.u = PowerIterationVector(l2_normalize(u, eps))

  def _normalize(self, train: bool) -> jax.Array:
    weight = getattr(self.layer, self.weight_name)[...]
    matrix = weight.reshape(-1, weight.shape[-1])
    sigma, u = power_iteration(matrix, self.u[...], self.n_power_iterations, self.eps)
    if train:
      self.u[...] = u
    return (weight / sigma.astype(weight.dtype)).astype(weight.dtype)

  def normalized_weight(self, train: bool = False) -> jax.Array:
    """The weight divided by the power iteration's sigma (stores u when `train`)."""
    return self._normalize(train)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    normalized = self._normalize(train)
    # A copy of the layer whose weight is the normalised array; the parameter itself (and
    # its gradient path: normalized is a function of it) is untouched.
    graphdef, state = nnx.split(self.layer)
    state[self.weight_name] = nnx.Param(normalized)
    return nnx.merge(graphdef, state)(x)
