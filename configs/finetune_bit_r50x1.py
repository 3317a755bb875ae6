"""Fine-tune a BiT ResNet-v2 R50x1 (GroupNorm + weight standardisation) on CIFAR-10.

  python -m vision_jax.main --config configs/finetune_bit_r50x1.py --workdir /tmp/vision_jax/bit_r50x1_cifar10 \
      --config.init_from.checkpoint=/tmp/vision_jax/bit_r50x1

Anchor: BiT-M R50x1 (ImageNet-21k pretraining) fine-tuned with this BiT-HyperRule recipe
reaches 97.2-97.4% top-1 on CIFAR-10 per its authors (Kolesnikov et al. 2020, "Big Transfer
(BiT): General Visual Representation Learning", arXiv:1912.11370). The HyperRule for a
dataset of 20k-500k images: 10k steps of batch 512, SGD momentum 0.9, lr 0.003 with 500
warmup steps and x0.1 at 30/60/90% of training, no weight decay, MixUp alpha 0.1, images
resized to 160 with a random 128 crop (here: an inception crop to 128) and flip, a
zero-initialised head.

The checkpoint is a vision_jax workdir of `bit_r50x1`: convert the authors' BiT-M weights
once with
  python -m vision_jax.convert bit --arch bit_r50x1 --weights BiT-M-R50x1.npz --output /tmp/vision_jax/bit_r50x1
(tested on synthetic files with the authors' tensor names; the 97.2-97.4% anchor itself has
not been reproduced here: no network to fetch the weights, no accelerator).
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.name = 'cifar10'
  config.dataset.image_size = 128
  config.dataset.preprocess = 'inception'
  config.dataset.eval_preprocess = 'resize'
  config.dataset.mean = (0.5, 0.5, 0.5)       # BiT maps pixels to [-1, 1].
  config.dataset.std = (0.5, 0.5, 0.5)
  config.dataset.mixup_alpha = 0.1

  config.model.name = 'bit_r50x1'

  config.init_from.checkpoint = '/tmp/vision_jax/bit_r50x1'
  config.init_from.skip = ('head/.*',)
  config.init_from.zero_init_skipped = True

  config.optim.name = 'sgd'
  config.optim.momentum = 0.9
  config.optim.learning_rate = 0.003
  config.optim.weight_decay = 0.0
  config.optim.schedule = 'piecewise'
  config.optim.warmup_steps = 500
  config.optim.piecewise_boundaries = (3000, 6000, 9000)
  config.optim.piecewise_scales = (0.1, 0.1, 0.1)

  config.train.batch_size = 512
  config.train.steps = 10_000
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.eval.batch_size = 1024
  config.checkpoint.every_steps = 1000
  return config
