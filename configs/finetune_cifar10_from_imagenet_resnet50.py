"""Fine-tune an ImageNet ResNet-50 (ours) on CIFAR-10 at 128x128.

  python -m vision_jax.main --config configs/finetune_cifar10_from_imagenet_resnet50.py \
      --workdir /tmp/vision_jax/cifar10_from_r50 \
      --config.init_from.checkpoint=/tmp/vision_jax/imagenet2012_resnet50

The checkpoint is the workdir of configs/imagenet2012_resnet50.py (or one of its
checkpoints/<step> folders). Every layer but the 1000-way head is loaded; the new 10-way head
starts at zero. The recipe follows BiT's HyperRule for a 50k-image dataset: batch 512, 10k
steps, SGD momentum 0.9, lr 0.003 with 500 warmup steps and x0.1 at 30/60/90% of training,
no weight decay, images upsampled from 32 to 128 with a random crop and flip.
Expected result: about 97% top-1 (Kornblith, Shlens & Le 2019, "Do Better ImageNet Models
Transfer Better?", arXiv:1805.08974, fine-tune ImageNet ResNets on CIFAR-10 to this level).
Not run here: no ImageNet checkpoint and no GPU/TPU on this machine.
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.name = 'cifar10'
  config.dataset.image_size = 128
  config.dataset.preprocess = 'inception'
  config.dataset.eval_preprocess = 'resize'
  config.dataset.normalization = 'imagenet'     # The statistics the backbone was trained with.

  config.model.name = 'resnet50'
  config.model.dtype = 'bfloat16'

  config.init_from.checkpoint = '/tmp/vision_jax/imagenet2012_resnet50'
  config.init_from.skip = ('head/.*',)

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
