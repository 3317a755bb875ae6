"""DCGAN (Radford et al. 2015) on CIFAR-10 32x32, FID / KID on InceptionV3 pool3.

  python -m vision_jax.convert inception --weights pt_inception-2015-12-05-6726825d.pth \
      --output /tmp/vision_jax/fid_inception
  python -m vision_jax.main --config configs/cifar10_dcgan.py --workdir /tmp/vision_jax/cifar10_dcgan

PyTorch's DCGAN example layout at 32x32 (G: 4x4x256 -> 128 -> 64 -> 3; D mirrored, BatchNorm,
LeakyReLU 0.2), the non-saturating loss, Adam lr 2e-4 beta1 0.5 for both networks, batch
64, one D update per G update; an EMA of G (0.999) is what evaluation samples. FID is
computed on the 10,000 test images against as many samples (results.json eval/test/fid).

Published: the DCGAN paper reports no FID. Heusel et al. 2017 (TTUR, arXiv:1706.08500,
Table 1) report FID 36.9 on CIFAR-10 for a DCGAN trained with one learning rate for both
networks (33.9 with their two-time-scale rule), against the 50,000 training images with
TensorFlow's Inception. Quoted, not reproduced: this recipe was not run here (2-core CPU),
and the number has not been re-checked against the paper's text in this repository.
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
