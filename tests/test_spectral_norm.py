"""Spectral normalisation: the power iteration against numpy, the largest singular value of
every normalised weight ~1 (numpy.linalg.svd) after the iterations of training steps, u as
non-trainable state updated only in training mode, and the gradient through sigma."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vision_jax.models import dcgan, sngan
from vision_jax.models.spectral_norm import PowerIterationVector, SpectralNorm, power_iteration


def _numpy_power_iteration(matrix, u, steps):
  m, u = matrix.astype(np.float64), u.astype(np.float64)
  for _ in range(steps):
    v = m @ u
    v /= np.linalg.norm(v)
    u = m.T @ v
    u /= np.linalg.norm(u)
  return v @ m @ u, u, v


def _train_calls(module: nnx.Module, steps: int, *args) -> None:
  """`steps` training-mode calls of module(*args, True, ...) in one compiled loop; the
  module's state (u, BatchNorm statistics) is updated in place."""
  graphdef, state = nnx.split(module)

  def body(_, state):
    m = nnx.merge(graphdef, state)
    m(*args)
    return nnx.state(m)

  nnx.update(module, jax.jit(lambda s: jax.lax.fori_loop(0, steps, body, s))(state))


def _top_singular_value(w: np.ndarray) -> float:
  return float(np.linalg.svd(np.asarray(w, np.float64).reshape(-1, w.shape[-1]),
                             compute_uv=False)[0])


@pytest.mark.parametrize('steps', [1, 3])
def test_power_iteration_equals_numpy(steps):
  rng = np.random.default_rng(0)
  matrix = rng.standard_normal((27, 16)).astype(np.float32)
  u = rng.standard_normal(16).astype(np.float32)
  u /= np.linalg.norm(u)
  sigma, new_u = power_iteration(jnp.asarray(matrix), jnp.asarray(u), steps)
  ref_sigma, ref_u, _ = _numpy_power_iteration(matrix, u, steps)
  assert float(sigma) == pytest.approx(ref_sigma, rel=1e-5)
  np.testing.assert_allclose(new_u, ref_u, atol=1e-5)
  assert float(sigma) < _top_singular_value(matrix)  # One step underestimates it.


def _rngs(seed: int) -> nnx.Rngs:
  """RBG keys: XLA compiles their random bits far faster than threefry's (the eager
  initialisers compile once per shape), which keeps these tests quick."""
  return nnx.Rngs(jax.random.key(seed, impl='rbg'))


def _layer(kind: str, seed: int = 0) -> tuple[SpectralNorm, jax.Array]:
  """(a spectrally normalised layer of `kind`, an input for it)."""
  rngs = _rngs(seed)
  if kind == 'linear':
    return SpectralNorm(nnx.Linear(20, 12, rngs=rngs), rngs=rngs), jnp.ones((2, 20))
  if kind == 'conv':
    return SpectralNorm(nnx.Conv(3, 8, (3, 3), rngs=rngs), rngs=rngs), jnp.ones((2, 5, 5, 3))
  if kind == 'conv_transpose':
    layer = nnx.ConvTranspose(8, 4, (4, 4), strides=(2, 2), rngs=rngs)
    return SpectralNorm(layer, rngs=rngs), jnp.ones((2, 3, 3, 8))
  layer = nnx.Embed(10, 6, rngs=rngs)
  return SpectralNorm(layer, weight_name='embedding', rngs=rngs), jnp.arange(2)


@pytest.mark.parametrize('kind', ['linear', 'conv', 'conv_transpose', 'embed'])
def test_layer_weight_has_unit_spectral_norm_after_training_calls(kind):
  sn, x = _layer(kind)
  raw = np.asarray(getattr(sn.layer, sn.weight_name)[...])
  _train_calls(sn, 60, x, True)
  np.testing.assert_array_equal(getattr(sn.layer, sn.weight_name)[...], raw)  # Untouched.
  normalized = np.asarray(sn.normalized_weight())
  assert _top_singular_value(normalized) == pytest.approx(1.0, abs=1e-3)
  np.testing.assert_allclose(normalized * _top_singular_value(raw), raw, rtol=2e-3,
                             atol=1e-6)


def test_u_is_state_updated_only_in_training():
  sn, x = _layer('linear', seed=1)
  assert not nnx.state(sn, nnx.Param).get('u')
  assert set(nnx.state(sn, PowerIterationVector).keys()) == {'u'}
  u0 = np.asarray(sn.u[...])
  eval_out = sn(x, False)
  np.testing.assert_array_equal(sn.u[...], u0)
  np.testing.assert_array_equal(sn(x, False), eval_out)  # Deterministic in eval.
  train_out = sn(x, True)
  np.testing.assert_allclose(eval_out, train_out, rtol=1e-6)  # Same u in -> same sigma.
  assert not np.allclose(sn.u[...], u0)
  # The call is the layer on W / sigma with sigma from one step from the stored u.
  w = np.asarray(sn.layer.kernel[...])
  sigma, _, _ = _numpy_power_iteration(w, np.asarray(sn.u[...]), 1)
  np.testing.assert_allclose(sn(x, False), np.asarray(x) @ (w / sigma)
                             + np.asarray(sn.layer.bias[...]), rtol=1e-5, atol=1e-6)


def test_gradient_flows_through_sigma_with_u_and_v_constant():
  """d/dW of sum(x W / sigma(W)), sigma = v^T W u with u, v held fixed (the paper's and
  PyTorch's gradient), against the same formula written with jnp and fixed u, v."""
  sn, _ = _layer('linear', seed=2)
  x = jax.random.normal(jax.random.key(0), (3, 20))
  u = np.asarray(sn.u[...])
  w0 = np.asarray(sn.layer.kernel[...])
  _, u1, v1 = _numpy_power_iteration(w0, u, 1)

  graphdef, params, rest = nnx.split(sn, nnx.Param, ...)
  grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(x, False)))(params)
  expected = jax.grad(lambda w: jnp.sum(x @ (w / (jnp.asarray(v1) @ w @ jnp.asarray(u1)))))(
      jnp.asarray(w0))
  np.testing.assert_allclose(grads['layer']['kernel'][...], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('build', [
    lambda: sngan.SNGANDiscriminator(8, 3, base_features=8, num_classes=5, rngs=_rngs(0)),
    lambda: dcgan.DCGANDiscriminator(16, 1, base_features=8, spectral_norm=True,
                                     batch_norm=False, rngs=_rngs(0)),
], ids=['sngan_conditional', 'dcgan'])
def test_every_discriminator_weight_is_normalised_after_training_steps(build):
  """Every SpectralNorm in the discriminator: top singular value of W / sigma ~ 1 after the
  one-iteration-per-call updates of 100 training-mode calls."""
  d = build()
  size, channels = (8, 3) if isinstance(d, sngan.SNGANDiscriminator) else (16, 1)
  images = jax.random.uniform(jax.random.key(0), (4, size, size, channels), minval=-1)
  labels = jnp.arange(4) if d.num_classes else None
  wrapped = [m for _, m in nnx.iter_graph(d) if isinstance(m, SpectralNorm)]
  assert len(wrapped) == (9 if d.num_classes else 3)  # Convs, head (and embedding).
  _train_calls(d, 100, images, True, labels)
  for sn in wrapped:
    assert _top_singular_value(np.asarray(sn.normalized_weight())) == pytest.approx(
        1.0, abs=2e-3)
