"""DCGAN (Radford et al. 2015) on CIFAR-10 32x32, FID / KID on InceptionV3 pool3.

  python -m vision_jax.convert inception --weights pt_inception-2015-12-05-6726825d.pth \
      --output /tmp/vision_jax/fid_inception
  python -m vision_jax.main --config configs/cifar10_dcgan.py --workdir /tmp/vision_jax/cifar10_dcgan

PyTorch's DCGAN example layout at 32x32 (G: 4x4x256 -> 128 -> 64 -> 3; D mirrored, BatchNorm,
LeakyReLU 0.2), the non-saturating loss, Adam lr 2e-4 beta1 0.5 for both networks, batch
64, one D update per G update; an EMA of G (0.999) is what evaluation samples. FID is
computed on the 10,000 test images against as many samples (results.json eval/test/fid).

Published: the DCGAN paper reports no FID. Heusel et al. 2017 (TTUR), Table 1
(https://arxiv.org/abs/1706.08500; NeurIPS 2017), DCGAN on CIFAR-10, the best FID during
training: 37.7 with one learning rate 1e-4 for both networks (100k updates) and 36.9 with
their two time-scale rule (discriminator 1e-4, generator 5e-4, 75k updates); FID of 50,000 samples against all 50,000 training images, TensorFlow's
Inception-v3 pool3. This recipe keeps the DCGAN paper's rate (2e-4 for both), so neither
row is its exact setting. Checked against the paper's text (Table 1 and "Model Selection
and Evaluation"); not reproduced: the recipe was not run here (2-core CPU).
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.name = 'cifar10'
  config.task.name = 'gan'
  config.task.gan_loss = 'nonsaturating'
  config.task.fid_inception = '/tmp/vision_jax/fid_inception'
  config.model.name = 'dcgan'
  config.model.update(latent_dim=100, base_features=64)
  config.train.update(batch_size=64, steps=100_000, log_every=500, eval_every=10_000)
  config.eval.batch_size = 500
  config.checkpoint.every_steps = 5_000
  return config
