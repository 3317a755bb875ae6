"""A task of two networks trained against each other: the worked example of docs/extending.md.

A tiny adversarial pair on the digits: a 'generator' (a linear map from 16 Gaussian numbers
to an image in [-1, 1]) and a 'discriminator' (an MLP scoring images as real), each its own
state part with its own optimiser (config.optim for the generator, the same settings with
config.optim.learning_rate halved for the discriminator), updated one after the other in
every step with the non-saturating GAN losses. Evaluation reports the discriminator's mean
probability that the eval split's real images are real. It lives outside vision_jax and
reaches the CLI the way a fork's task does:

  python -m vision_jax.main --config configs/default.py --workdir /tmp/pair \
      --config.imports="('tests.two_part_task',)" --config.task.name=adversarial_pair

tests/test_two_parts.py trains it, resumes it bit-identically and shards it over 8 devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vision_jax import tasks
from vision_jax.tasks.classification import Classification

LATENT = 16


class Generator(nnx.Module):

  def __init__(self, image_shape: tuple[int, int, int], *, rngs: nnx.Rngs):
    self.image_shape = image_shape
    self.linear = nnx.Linear(LATENT, int(np.prod(image_shape)), rngs=rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    return jnp.tanh(self.linear(z)).reshape((-1, *self.image_shape))


class Discriminator(nnx.Module):

  def __init__(self, num_inputs: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(num_inputs, 32, rngs=rngs)
    self.out = nnx.Linear(32, 1, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    x = nnx.leaky_relu(self.hidden(images.reshape(images.shape[0], -1)), 0.2)
    return self.out(x)[:, 0]


class AdversarialPair(Classification):
  """Classification's data and batches (the labels are not used); two parts of its own."""
  name = 'adversarial_pair'
  eval_metrics = ('real_probability',)
  serving_parts = ('discriminator',)
  served_outputs = 'discriminator logits [N]'

  def validate(self) -> None:
    pass

  def create_parts(self, num_classes: int, *, rngs: nnx.Rngs, image_size: int,
                   in_channels: int, **kwargs):
    del num_classes, kwargs
    shape = (image_size, image_size, in_channels)
    return {'generator': Generator(shape, rngs=rngs),
            'discriminator': Discriminator(int(np.prod(shape)), rngs=rngs)}

  def part_optim(self, name: str) -> ml_collections.ConfigDict:
    if name == 'generator':
      return self.config.optim
    optim = ml_collections.ConfigDict(self.config.optim.to_dict())
    optim.learning_rate = self.config.optim.learning_rate / 2
    return optim

  def update(self, updater, state, inputs):
    key = jax.random.fold_in(jax.random.key(self.config.seed), state.step)
    z = jax.random.normal(key, (inputs['image'].shape[0], LATENT))
    fake = jax.lax.stop_gradient(updater.model(state, 'generator')(z))

    def d_loss(d, batch):
      real, fake = d(batch['image']), d(batch['fake'])
      return jnp.mean(optax.sigmoid_binary_cross_entropy(real, jnp.ones_like(real)) +
                      optax.sigmoid_binary_cross_entropy(fake, jnp.zeros_like(fake))), None

    disc, d_metrics = updater.gradient_update(
        state, 'discriminator', d_loss, lambda loss, aux, batch: {'d_loss': loss},
        {'image': inputs['image'], 'fake': fake})
    state = state.replace_part('discriminator', disc)
    d = updater.model(state, 'discriminator')

    def g_loss(g, batch):  # The updated discriminator judges; only g is differentiated.
      logits = d(g(batch['z']))
      return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.ones_like(logits))), None

    gen, g_metrics = updater.gradient_update(
        state, 'generator', g_loss, lambda loss, aux, batch: {'loss': loss}, {'z': z})
    metrics = {**g_metrics, 'd_loss': d_metrics['d_loss'],
               'd_grad_norm': d_metrics['grad_norm']}
    return state.replace_part('generator', gen), metrics

  def apply(self, models, images):
    return models['discriminator'](images)

  def eval_outputs(self, outputs, batch):
    return {'real_probability': jax.nn.sigmoid(outputs), 'mask': batch['mask']}

  def summarize(self, arrays, *, num_classes, class_names, context=None):
    return {'real_probability': float(np.mean(arrays['real_probability'])),
            'num_examples': int(arrays['real_probability'].shape[0])}


tasks.register('adversarial_pair', AdversarialPair)
