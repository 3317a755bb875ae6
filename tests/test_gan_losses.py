"""GAN losses against the formulas written out in numpy (float64), including logits large
enough that a naive log(sigmoid) would overflow in float32, and their gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import gan_losses
from vision_jax.errors import ConfigError

REAL = np.array([2.0, -0.5, 30.0, -40.0, 0.0], np.float32)
FAKE = np.array([-1.5, 0.7, -35.0, 25.0, 0.1, 3.0], np.float32)


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


@pytest.mark.parametrize('real,fake', [(REAL, FAKE), (REAL[:2], FAKE[:2])])
def test_nonsaturating(real, fake):
  # BCE: -log sigmoid(real) - log(1 - sigmoid(fake)); 1 - sigmoid(f) = sigmoid(-f).
  d = np.mean(-_log_sigmoid(real)) + np.mean(-_log_sigmoid(-fake.astype(np.float64)))
  g = np.mean(-_log_sigmoid(fake))
  assert float(gan_losses.discriminator_loss('nonsaturating', real, fake)) == pytest.approx(
      d, rel=1e-6)
  assert float(gan_losses.generator_loss('nonsaturating', fake)) == pytest.approx(g, rel=1e-6)


@pytest.mark.parametrize('real,fake', [(REAL, FAKE), (REAL[:2], FAKE[:2])])
def test_hinge(real, fake):
  r, f = real.astype(np.float64), fake.astype(np.float64)
  d = np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f))
  assert float(gan_losses.discriminator_loss('hinge', real, fake)) == pytest.approx(d,
                                                                                    rel=1e-6)
  assert float(gan_losses.generator_loss('hinge', fake)) == pytest.approx(-np.mean(f),
                                                                          rel=1e-6)


def test_gradients_with_respect_to_fake_logits():
  """Non-saturating G: d/df mean(-log sigmoid f) = -(1 - sigmoid f) / n, which stays
  large while D rejects the fakes (f << 0); hinge G: -1 / n."""
  f = jnp.asarray(FAKE)
  n = len(FAKE)
  grad = jax.grad(lambda x: gan_losses.generator_loss('nonsaturating', x))(f)
  np.testing.assert_allclose(grad, -(1 - 1 / (1 + np.exp(-FAKE.astype(np.float64)))) / n,
                             rtol=1e-5, atol=1e-9)
  grad = jax.grad(lambda x: gan_losses.generator_loss('hinge', x))(f)
  np.testing.assert_allclose(grad, -np.ones(n) / n, rtol=1e-6)
  # The hinge D loss ignores fakes already below -1 and reals above 1.
  grad = jax.grad(lambda x: gan_losses.discriminator_loss('hinge', jnp.asarray(REAL), x))(f)
  np.testing.assert_allclose(grad, (FAKE > -1) / n, rtol=1e-6)


def test_bf16_logits_give_float32_losses():
  loss = gan_losses.discriminator_loss('nonsaturating', jnp.asarray(REAL, jnp.bfloat16),
                                       jnp.asarray(FAKE, jnp.bfloat16))
  assert loss.dtype == jnp.float32


def test_unknown_loss():
  with pytest.raises(ConfigError, match="GAN loss 'wasserstein' is unknown; use one of "
                     'nonsaturating, hinge'):
    gan_losses.generator_loss('wasserstein', FAKE)
