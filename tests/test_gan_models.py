"""DCGAN and SN-GAN networks: output shapes for every supported size and channel count,
PyTorch DCGAN's parameter counts, class conditioning, what training mode updates, finite
gradients of both losses through every parameter, and clear errors for bad sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vision_jax import gan_losses
from vision_jax.errors import ConfigError
from vision_jax.models import gan
from vision_jax.models.spectral_norm import PowerIterationVector


def _rngs(seed: int) -> nnx.Rngs:
  """RBG keys: XLA compiles their random bits far faster than threefry's (the eager
  initialisers compile once per shape), which keeps these tests quick."""
  return nnx.Rngs(jax.random.key(seed, impl='rbg'))


def _abstract_forward(module, x, train: bool, labels):
  """Output shape/dtype of module(x, train, labels) from abstract parameters: nothing is
  computed."""
  graphdef, state = nnx.split(module)
  return jax.eval_shape(lambda s, x, y: nnx.merge(graphdef, s)(x, train, y), state, x,
                        labels)


def _count(module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize('arch', ['dcgan', 'sngan'])
@pytest.mark.parametrize('size', [8, 16, 32, 64])
@pytest.mark.parametrize('channels,num_classes', [(1, 0), (3, 0), (3, 10)])
def test_output_shapes(arch, size, channels, num_classes):
  g = nnx.eval_shape(lambda: gan.create_generator(arch, size, channels,
                                                  num_classes=num_classes, rngs=nnx.Rngs(0)))
  d = nnx.eval_shape(lambda: gan.create_discriminator(
      arch, size, channels, num_classes=num_classes, rngs=nnx.Rngs(0)))
  z = jax.ShapeDtypeStruct((5, g.latent_dim), jnp.float32)
  labels = jax.ShapeDtypeStruct((5,), jnp.int32) if num_classes else None
  for train in (True, False):
    images = _abstract_forward(g, z, train, labels)
    assert (images.shape, images.dtype) == ((5, size, size, channels), jnp.float32)
    logits = _abstract_forward(d, images, train, labels)
    assert (logits.shape, logits.dtype) == ((5,), jnp.float32)


def test_dcgan_parameter_counts_are_pytorch_examples():
  """PyTorch's DCGAN example at 64x64 RGB, nz=100, ngf=ndf=64 (bias-free convs):
  G 819,200 + 2,097,152 + 524,288 + 131,072 + 3,072 weights + 2 x (512 + 256 + 128 + 64)
  BatchNorm = 3,576,704; D 3,072 + 131,072 + 524,288 + 2,097,152 + 8,192 + 2 x (128 + 256
  + 512) = 2,765,568."""
  g = nnx.eval_shape(lambda: gan.create_generator('dcgan', 64, 3, rngs=nnx.Rngs(0)))
  d = nnx.eval_shape(lambda: gan.create_discriminator('dcgan', 64, 3, rngs=nnx.Rngs(0)))
  assert (_count(g), _count(d)) == (3_576_704, 2_765_568)


def test_sngan_discriminator_is_spectrally_normalised_without_batch_norm():
  d = nnx.eval_shape(lambda: gan.create_discriminator('sngan', 32, 3, rngs=nnx.Rngs(0)))
  assert len(jax.tree.leaves(nnx.state(d, PowerIterationVector))) == 8  # 7 convs + dense.
  assert not jax.tree.leaves(nnx.state(d, nnx.BatchStat))
  plain = nnx.eval_shape(lambda: gan.create_discriminator('sngan', 32, 3, spectral_norm=False,
                                                          rngs=nnx.Rngs(0)))
  assert not jax.tree.leaves(nnx.state(plain, PowerIterationVector))
  assert _count(plain) == _count(d)


@pytest.mark.parametrize('arch', ['dcgan', 'sngan'])
def test_conditional_pair_trains_and_modes(arch):
  """A conditional pair at 8x8: training mode updates BatchNorm statistics and u, eval mode
  leaves every state as it was; both losses have finite gradients, non-zero for every
  parameter; after one step, labels change both networks' outputs."""
  options = {'base_features': 4}
  g = gan.create_generator(arch, 8, 3, num_classes=3, rngs=_rngs(0), **options)
  d = gan.create_discriminator(arch, 8, 3, num_classes=3, rngs=_rngs(1),
                               spectral_norm=True, **options)
  z = jax.random.normal(jax.random.key(0), (6, g.latent_dim))
  real = jax.random.uniform(jax.random.key(1), (6, 8, 8, 3), minval=-1)
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  g_graph, g_params, g_rest = nnx.split(g, nnx.Param, ...)
  d_graph, d_params, d_rest = nnx.split(d, nnx.Param, ...)

  @jax.jit
  def train_step(g_params, g_rest, d_params, d_rest):
    gm, dm = nnx.merge(g_graph, g_params, g_rest), nnx.merge(d_graph, d_params, d_rest)

    def d_loss(dm, gm):
      fake = gm(z, True, labels)
      return gan_losses.discriminator_loss('nonsaturating', dm(real, True, labels),
                                           dm(fake, True, labels)), fake

    def g_loss(gm, dm):
      return gan_losses.generator_loss('hinge', dm(gm(z, True, labels), True, labels))

    (_, fake), d_grads = nnx.value_and_grad(d_loss, has_aux=True)(dm, gm)
    g_grads = nnx.grad(g_loss)(gm, dm)
    return (fake, nnx.state(gm, nnx.Not(nnx.Param)), nnx.state(dm, nnx.Not(nnx.Param)),
            g_grads, d_grads)

  @jax.jit
  def evaluate(g_params, d_params, labels):
    gm, dm = nnx.merge(g_graph, g_params, g_rest), nnx.merge(d_graph, d_params, d_rest)
    fake = gm(z, False, labels)
    return (fake, dm(fake, False, labels), nnx.state(gm, nnx.Not(nnx.Param)),
            nnx.state(dm, nnx.Not(nnx.Param)))

  fake, g_rest2, d_rest2, g_grads, d_grads = train_step(g_params, g_rest, d_params, d_rest)
  assert float(jnp.abs(fake).max()) <= 1.0
  for grads in (g_grads, d_grads):
    for path, grad in jax.tree_util.tree_flatten_with_path(grads)[0]:
      assert np.all(np.isfinite(grad)) and np.any(grad != 0), jax.tree_util.keystr(path)
  # Every statistic and every u moves in training (but a 1-vector u, which is +-1 always).
  changed = lambda a, b: [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                                   jax.tree.leaves(b))
                          if x.size > 1]
  assert all(changed(g_rest, g_rest2)) and all(changed(d_rest, d_rest2))
  fake_eval, _, g_rest3, d_rest3 = evaluate(g_params, d_params, labels)
  assert not any(changed(g_rest, g_rest3)) and not any(changed(d_rest, d_rest3))
  # Conditional BatchNorm starts equal for every class; one SGD step tells them apart.
  sgd = lambda p, g: jax.tree.map(lambda a, b: a - 0.5 * b, p, g)
  g_params, d_params = sgd(g_params, g_grads), sgd(d_params, d_grads)
  fake_eval, logits, _, _ = evaluate(g_params, d_params, labels)
  other_fake, other_logits, _, _ = evaluate(g_params, d_params, (labels + 1) % 3)
  assert not np.allclose(fake_eval, other_fake, rtol=1e-3, atol=0)
  assert not np.allclose(logits, other_logits, rtol=1e-3, atol=0)


def test_labels_must_match_the_model():
  g = gan.create_generator('dcgan', 8, 1, num_classes=2, base_features=2, rngs=_rngs(0))
  with pytest.raises(ValueError, match='class-conditional \\(2 classes\\): pass integer '
                     'labels'):
    g(jnp.zeros((2, 100)), False)
  d = gan.create_discriminator('dcgan', 8, 1, base_features=2, rngs=_rngs(0))
  with pytest.raises(ValueError, match='unconditional'):
    d(jnp.zeros((2, 8, 8, 1)), False, jnp.zeros((2,), jnp.int32))


@pytest.mark.parametrize('arch,size,message', [
    ('dcgan', 24, 'DCGAN needs a square image size of 4 \\* 2\\^n pixels .* gives 24'),
    ('dcgan', 4, 'DCGAN needs a square image size'),
    ('sngan', 12, 'divisible by 8 \\(8, 16, 32, 48, 64, ...\\); the dataset gives 12'),
])
def test_bad_image_size(arch, size, message):
  with pytest.raises(ConfigError, match=message):
    gan.create_generator(arch, size, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match=message):
    gan.create_discriminator(arch, size, 3, rngs=nnx.Rngs(0))


def test_bad_architecture_and_classes():
  with pytest.raises(ConfigError, match="'dcgna' is unknown. Did you mean 'dcgan'"):
    gan.create_generator('dcgna', 32, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match='num_classes=-1'):
    gan.create_discriminator('sngan', 32, 3, num_classes=-1, rngs=nnx.Rngs(0))
