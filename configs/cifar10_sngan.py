"""SN-GAN standard CNN (Miyato et al. 2018) on CIFAR-10 32x32 with the hinge loss, FID / KID
on InceptionV3 pool3.

  python -m vision_jax.convert inception --weights pt_inception-2015-12-05-6726825d.pth \
      --output /tmp/vision_jax/fid_inception
  python -m vision_jax.main --config configs/cifar10_sngan.py --workdir /tmp/vision_jax/cifar10_sngan

The paper's Table 3 networks (models/sngan.py), every D weight spectrally normalised, the
hinge loss (their Eq. 17), Adam lr 1e-4, beta1 0.5, beta2 0.9 and n_dis = 5 (their setting
A), batch 64 per update: config.train.batch_size = 5 x 64 real images per step, one chunk
of 64 per D update (tasks/gan.py); 50,000 generator updates.

Published: Miyato et al. 2018 (arXiv:1802.05957, Table 2) report FID 29.3 for SN-GAN with
the standard CNN on CIFAR-10, and 25.5 with the hinge loss, computed with TensorFlow's
Inception on 10,000 samples against 5,000 test images. Quoted, not reproduced: this recipe
was not run here (2-core CPU), and the numbers have not been re-checked against the paper's
text in this repository (nor whether the hinge row used setting A or C).
"""
import ml_collections

from vision_jax.config import base_config

_ADAM = dict(name='adamw', learning_rate=1e-4, b1=0.5, b2=0.9, weight_decay=0.0,
             schedule='constant', warmup_steps=0)


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.name = 'cifar10'
  config.task.name = 'gan'
  config.task.gan_loss = 'hinge'
  config.task.n_critic = 5
  config.task.generator_optim = ml_collections.ConfigDict(dict(_ADAM, ema_decay=0.999))
  config.task.discriminator_optim = ml_collections.ConfigDict(dict(_ADAM, ema_decay=0.0))
  config.task.fid_inception = '/tmp/vision_jax/fid_inception'
  config.model.name = 'sngan'
  config.model.update(latent_dim=128, base_features=64)
  config.train.update(batch_size=5 * 64, steps=50_000, log_every=500, eval_every=10_000)
  config.eval.batch_size = 500
  config.checkpoint.every_steps = 5_000
  return config
