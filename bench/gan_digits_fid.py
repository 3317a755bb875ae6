"""fid_digits of a trained digits GAN beside its two references: the same generator
untrained, and real images against real images (the floor).

  python -m vision_jax.main --config configs/default.py --workdir /tmp/vision_jax/default
  python -m vision_jax.main --config configs/digits_dcgan.py --workdir /tmp/vision_jax/digits_dcgan
  python bench/gan_digits_fid.py /tmp/vision_jax/digits_dcgan

All on the classifier's penultimate features (the run's config.task.fid_classifier), with
the evaluation's own samples (latent i from (sample_seed, i), one per test image, and for a
conditional run that image's label):
- trained: the run's EMA generator (what results.json eval/test/fid_digits reports);
- untrained: the generator as initialised by the same config and seed;
- floor: the test split against the train split (all 1,437 images, and the first 360 of a
  fixed permutation: FID is biased upwards at small n, and the GAN's side has 360).
Prints one JSON line.
"""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import feature_distances as fd
from vision_jax import gan_features
from vision_jax import inference
from vision_jax import parallel
from vision_jax import train_state
from vision_jax.data import sources
from vision_jax.tasks import gan as gan_task


def _fid(a: np.ndarray, b: np.ndarray) -> float:
  return fd.frechet_distance(*fd.feature_statistics(a), *fd.feature_statistics(b))


def main(workdir: str) -> dict:
  config = inference.read_config(workdir)
  loaded = inference.load(workdir, config)
  task = loaded.task
  features = gan_features.load_classifier(config.task.fid_classifier)
  split = lambda name: sources.open_split(config.dataset, name)[0]
  test, train = split('test'), split('train')
  real_test = np.stack([test[i]['image'] for i in range(len(test))])
  labels_test = jnp.asarray([int(test[i]['label']) for i in range(len(test))], jnp.int32)
  real_train = np.stack([train[i]['image'] for i in range(len(train))])
  f_test = np.asarray(features(jnp.asarray(real_test)))
  f_train = np.asarray(features(jnp.asarray(real_train)))
  n = len(real_test)

  def samples_fid(generator) -> float:
    z = task.eval_latents(generator, jnp.arange(n))
    labels = labels_test if generator.num_classes else None  # Conditional: the test labels.
    fake = gan_task.to_uint8(generator(z, False, labels))
    return _fid(f_test, np.asarray(features(fake)))

  _, fresh = train_state.create(
      task, parallel.make_mesh(config, jax.devices()[:1]), num_classes=loaded.num_classes,
      image_size=loaded.image_shape[0], in_channels=loaded.image_shape[2],
      steps_per_epoch=1)
  order = np.random.default_rng(0).permutation(len(real_train))[:n]
  out = {'step': loaded.step, 'num_samples': n,
         'fid_digits_trained': samples_fid(loaded.model('generator')),
         'fid_digits_untrained': samples_fid(loaded.structure.model(
             fresh, 'generator', use_eval_variables=True)),
         'fid_digits_test_vs_train': _fid(f_test, f_train),
         f'fid_digits_test_vs_{n}_train': _fid(f_test, f_train[order])}
  print(json.dumps(out))
  return out


if __name__ == '__main__':
  main(sys.argv[1])
