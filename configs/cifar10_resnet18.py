"""ResNet-18 (3x3 CIFAR stem) on CIFAR-10 with SGD + Nesterov momentum: ~95% top-1.

  python -m vision_jax.main --config configs/cifar10_resnet18.py --workdir /tmp/vision_jax/cifar10_resnet18

Expect about 95.3% top-1 on the 10,000 test images (>= 94.5%). Source: DeVries & Taylor 2017,
"Improved Regularization of CNNs with Cutout" (arXiv:1708.04552) and its code
(github.com/uoguelph-mlrg/Cutout, train.py): ResNet-18 without cutout, 4.72% test error (mean
of 5 runs), trained exactly like this: 200 epochs of batch 128, random crop (pad 4) + flip,
mean/std normalisation, SGD Nesterov momentum 0.9, lr 0.1 x 0.2 at epochs 60, 120 and 160,
weight decay 5e-4 on every parameter. That decay is PyTorch's coupled L2; ours is decoupled
(vision_jax/optim.py), so the equivalent is 5e-4 / (1 - 0.9) = 5e-3.

A learning-rate sweep around the recipe: python launch/sweep.py --config
configs/cifar10_resnet18.py --workdir_root /tmp/vision_jax/sweeps [--run]
"""
import ml_collections

from vision_jax.config import base_config

_TRAIN_IMAGES, _BATCH, _EPOCHS = 50_000, 128, 200


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.name = 'cifar10'
  config.dataset.eval_splits = ('test',)
  config.dataset.image_size = 32
  config.dataset.preprocess = 'cifar'
  config.dataset.mean = (0.4914, 0.4824, 0.4467)
  config.dataset.std = (0.2471, 0.2435, 0.2616)

  config.model.name = 'cifar_resnet18'

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

  config.sweep = tuple({'optim.learning_rate': lr} for lr in (0.05, 0.1, 0.2))
  return config
