"""A class-conditional GAN learns its classes: the digits DCGAN (conditional, small) trained
for 400 steps of the training loop's own step draws, for each requested class, digits that a
classifier fitted on the real digits labels as that class.

Without the class in the generator's first linear map (models/gan_layers.ClassInput) the
8x8 DCGAN's only conditional BatchNorm cannot give a class its own layout, the projection
discriminator rejects every sample on its class and training collapses: the same test then
finds 10% agreement (chance) instead of ~100%.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import datasets, linear_model

from conftest import REPO
from vision_jax import config_files
from vision_jax import config as config_lib
from vision_jax import parallel
from vision_jax import steps
from vision_jax import tasks
from vision_jax import train_state


def test_conditional_generator_draws_the_requested_digit():
  config = config_files.load_config_file(os.path.join(REPO, 'configs', 'digits_dcgan.py'))
  config.model.update(conditional=True, base_features=32, latent_dim=16)
  config.train.batch_size = 32
  config.task.fid_classifier = ''
  task = tasks.build(config)
  config_lib.validate(config, 1, task=task)
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  structure, state = train_state.create(task, mesh, num_classes=10, image_size=8,
                                        in_channels=1, steps_per_epoch=10)
  step = steps.jit_train_step(task, structure, mean=(0.5,), std=(0.5,), num_classes=10,
                              mesh=mesh)
  digits = datasets.load_digits()  # The source of the offline digits dataset.
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  rng = np.random.default_rng(0)
  for _ in range(400):
    rows = rng.integers(0, len(labels), 32)
    state, metrics = step(state, {'image': images[rows], 'label': labels[rows]})
  assert np.isfinite(float(metrics['loss']))

  flat = lambda x: np.asarray(x, np.float32).reshape(len(x), -1)
  judge = linear_model.LogisticRegression(max_iter=2000).fit(
      flat(images) / 127.5 - 1.0, labels)
  generator = structure.model(state.serving(('generator',)), 'generator')  # The EMA.
  requested = jnp.repeat(jnp.arange(10), 50)
  z = jax.random.normal(jax.random.key(7), (500, generator.latent_dim))
  samples = generator(z, False, requested)
  assert float(jnp.std(samples)) > 0.2  # Not collapsed to a constant image.
  agreement = float(np.mean(judge.predict(flat(samples)) == np.asarray(requested)))
  assert agreement >= 0.8, agreement
