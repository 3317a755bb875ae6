"""DCGAN on the offline digits (8x8 grey), evaluated by FID on the digits classifier's features.

  python -m vision_jax.main --config configs/default.py --workdir /tmp/vision_jax/default
  python -m vision_jax.main --config configs/digits_dcgan.py --workdir /tmp/vision_jax/digits_dcgan

The first command trains the default digits classifier (~20 s), whose penultimate features
(1024) the second one's evaluation compares the generator's samples with: results.json
eval/test/fid_digits and kid_digits (an offline FID, never comparable with Inception FID;
config.task.fid_classifier names that workdir). Then
`python -m vision_jax.main --mode=predict --workdir /tmp/vision_jax/digits_dcgan` writes
samples/samples.png and samples/interpolation.png.

Measured (3,000 steps, batch 64; 1 min 50 s wall on a 2-core CPU shared with other jobs,
37 s of CPU time): fid_digits 49.9 on the 360 test images, against 1954.4 for the same
generator untrained and a floor of 17.9 for 360 real train images (11.6 for all 1,437);
bench/gan_digits_fid.py, docs/tasks.md. With --config.model.conditional=True (one class per
row in predict's grid): fid_digits 28.8 (untrained 1951.9), 1 min 31 s wall, 45 s of CPU.
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.task.name = 'gan'
  config.task.gan_loss = 'nonsaturating'
  config.task.fid_classifier = '/tmp/vision_jax/default'
  config.model.name = 'dcgan'
  config.model.update(latent_dim=64, base_features=128, conditional=False)
  config.train.update(batch_size=64, steps=3000, log_every=100, eval_every=1500)
  config.checkpoint.every_steps = 1500
  return config
