"""Offline SimCLR: the seed ConvNet's backbone pretrained on the digits without labels.

  python -m vision_jax.main --config configs/digits_simclr.py --workdir /tmp/vision_jax/digits_simclr

Two views per digit (upscaled to 16 px; random resized crop of 25..100% of the area, flip,
brightness/contrast jitter with p 0.8; saturation, hue and grayscale leave grey digits
unchanged; no blur below 64 px), a 2-layer projector (512 -> 128) on the ConvNet's fc1
features (1024), NT-Xent at temperature 0.2 over the global batch of 256 images (512
views). Every `eval_every` steps: k-NN accuracy (k 20, temperature 0.1) of the fc1
features of the 360 test digits against the 1,437 train digits, results.json
eval/test/knn_accuracy (and curves.png). The ConvNet has no BatchNorm, so a linear probe
on the frozen backbone (configs/digits_simclr_linear_probe.py) sees exactly these features.
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.task.name = 'simclr'
  config.task.temperature = 0.2
  config.task.crop_min_scale = 0.25
  config.task.projector_hidden_dim = 512
  config.task.projector_output_dim = 128
  config.task.knn_k = 20
  config.dataset.image_size = 16
  config.model.name = 'convnet'
  config.train.batch_size = 256
  config.train.steps = 300
  config.train.eval_every = 100
  config.checkpoint.every_steps = 300
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 30
  config.optim.weight_decay = 1e-4
  config.eval.batch_size = 256
  return config
