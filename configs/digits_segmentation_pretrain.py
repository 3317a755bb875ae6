"""Step 1 of the digits segmentation recipe: a CIFAR-stem ResNet-18 (width 16) classifier.

  python -m vision_jax.main --config configs/digits_segmentation_pretrain.py --workdir /tmp/vision_jax/digits_resnet18

The digits are upscaled to 16x16, the size they have on the segmentation canvases
(12..16 px, data/digits_segmentation.py), and the canvases' test digits are this run's test
split, so the classifier never sees them. Measured: test accuracy 0.967 after 300 steps,
75 s wall on the 2-core CPU (AVX-512, load average ~1-2 from other sessions), including
the one-off digits build. Its workdir is what the segmentation models
`fcn_cifar_resnet18` / `deeplabv3_cifar_resnet18` with `width=16, in_channels=1` load their
backbone from (every array but the classifier's head/kernel and head/bias, by path).
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.name = 'cifar_resnet18'
  config.model.width = 16
  config.dataset.image_size = 16
  config.train.batch_size = 64
  config.train.steps = 300
  config.train.eval_every = 0
  config.checkpoint.every_steps = 300
  config.optim.warmup_steps = 20
  return config
