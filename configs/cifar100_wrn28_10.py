"""Wide ResNet-28-10 (dropout 0.3) on CIFAR-100 with SGD + Nesterov momentum: ~81% top-1.

  python -m vision_jax.main --config configs/cifar100_wrn28_10.py --workdir /tmp/vision_jax/cifar100_wrn28_10

Expect about 81% top-1 on the 10,000 test images (>= 80%). Source: Zagoruyko & Komodakis
2016, "Wide Residual Networks" (arXiv:1605.07146), WRN-28-10 with dropout on CIFAR-100 with
mean/std preprocessing: 18.85% test error; the Cutout code (github.com/uoguelph-mlrg/Cutout)
reproduces 18.8% with the same recipe: 200 epochs of batch 128, random crop (pad 4) + flip,
SGD Nesterov momentum 0.9, lr 0.1 x 0.2 at epochs 60, 120 and 160, weight decay 5e-4 (PyTorch's
coupled L2 on every parameter; decoupled equivalent here 5e-4 / (1 - 0.9) = 5e-3), dropout 0.3
between the convolutions of each block. About 36.5M parameters: a GPU/TPU run.
"""
import ml_collections

from vision_jax.config import base_config

_TRAIN_IMAGES, _BATCH, _EPOCHS = 50_000, 128, 200


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.name = 'cifar100'
  config.dataset.eval_splits = ('test',)
  config.dataset.image_size = 32
  config.dataset.preprocess = 'cifar'
  config.dataset.mean = (0.5071, 0.4865, 0.4409)
  config.dataset.std = (0.2673, 0.2564, 0.2762)

  config.model.name = 'wide_resnet28_10'
  config.model.dropout_rate = 0.3

  config.optim.name = 'sgd'
  config.optim.learning_rate = 0.1
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 5e-3             # = coupled 5e-4 at momentum 0.9.
  config.optim.wd_rules = (('.*', 1.0),)       # The source decays every parameter.
  config.optim.schedule = 'piecewise'
  config.optim.warmup_steps = 0
  config.optim.piecewise_boundary_epochs = (60, 120, 160)
  config.optim.piecewise_scales = (0.2, 0.2, 0.2)

  steps_per_epoch = _TRAIN_IMAGES // _BATCH
  config.train.batch_size = _BATCH
  config.train.steps = _EPOCHS * steps_per_epoch
  config.train.log_every = 100
  config.train.eval_every = 10 * steps_per_epoch
  config.eval.batch_size = 512
  config.checkpoint.every_steps = 10 * steps_per_epoch
  return config
