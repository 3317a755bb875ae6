"""SN-GAN standard CNN (Miyato et al. 2018) on CIFAR-10 32x32 with the hinge loss, FID / KID
on InceptionV3 pool3.

  python -m vision_jax.convert inception --weights pt_inception-2015-12-05-6726825d.pth \
      --output /tmp/vision_jax/fid_inception
  python -m vision_jax.main --config configs/cifar10_sngan.py --workdir /tmp/vision_jax/cifar10_sngan

The paper's Table 3 networks (models/sngan.py), every D weight spectrally normalised, the
hinge loss (their Eq. 17), Adam lr 1e-4, beta1 0.5, beta2 0.9 and n_dis = 5 (their setting
A), batch 64 per update: config.train.batch_size = 5 x 64 real images per step, one chunk
of 64 per D update (tasks/gan.py); 100,000 generator updates (the paper's Section 4: "100K
for all experiments, unless otherwise noted").

Published: Miyato et al. 2018, Table 2 (https://arxiv.org/abs/1802.05957; ICLR 2018),
unsupervised CIFAR-10, standard CNN: FID 29.3 for SN-GANs with the non-saturating loss and
25.5 with the hinge loss (their Eq. 17, this recipe's loss); each method at its best of the
Adam settings A-F of their Table 1 (the text does not name the setting per row; this
recipe uses A). FID "over 10000 and 5000 samples" (their Appendix B.1) with TensorFlow's
Inception. Checked against the paper's text (Table 2, Sections 4 and B.1); not reproduced:
the recipe was not run here (2-core CPU).
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
  config.train.update(batch_size=5 * 64, steps=100_000, log_every=500, eval_every=10_000)
  config.eval.batch_size = 500
  config.checkpoint.every_steps = 5_000
  return config
