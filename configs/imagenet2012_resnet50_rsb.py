"""ResNet-50 on ImageNet-2012, "ResNet strikes back" procedures A1 / A2 / A3: ~80.4 / 79.8 / 78.1%.

  python -m vision_jax.main --config configs/imagenet2012_resnet50_rsb.py:a1 --workdir /tmp/vision_jax/imagenet2012_resnet50_rsb_a1
  python -m vision_jax.main --config configs/imagenet2012_resnet50_rsb.py:a3 --workdir /tmp/vision_jax/imagenet2012_resnet50_rsb_a3

Expect ~80.4% (A1), ~79.8% (A2), ~78.1% (A3) top-1 on the 50,000 validation images at 224
px, crop ratio 0.95. Source: Wightman, Touvron & Jegou 2021, "ResNet strikes back: an
improved training procedure in timm" (arXiv:2110.00476), Table 1 of the three procedures'
hyper-parameters and their ResNet-50 top-1. Common to all: batch 2048, LAMB with 5 warm-up
epochs then cosine to 1e-6, weight decay not on biases or BatchNorm, binary cross-entropy
with targets binarised at 0.2, random-resized crop + flip + RandAugment, mixup / cutmix 1.0
(one of them per batch, evenly), mixed precision. Per procedure (`_PROCEDURES` below):

  A1: 600 epochs at 224 px, lr 5e-3, wd 0.01, label smoothing 0.1, stochastic depth 0.05,
      repeated augmentation x3, rand-m7-mstd0.5-inc1, mixup 0.2
  A2: 300 epochs at 224 px, lr 5e-3, wd 0.02, stochastic depth 0.05, repeated augmentation
      x3, rand-m7-mstd0.5-inc1, mixup 0.1
  A3: 100 epochs at 160 px (tested at 224), lr 8e-3, wd 0.02, rand-m6-mstd0.5-inc1, mixup 0.1

timm's Lamb clips the global gradient norm at 1.0 and uses eps 1e-6; its ResNet starts each
block's last BatchNorm scale at zero; both are kept here. Differences: timm's warmup starts
from a small non-zero lr (here from 0), and its BatchNorm statistics are per GPU (here of
the global batch). An epoch here, as in timm, is 1,281,167 images seen: with repeated
augmentation a third as many distinct ones, each three times (vision_jax/data/stream.py,
RepeatedOrder).
"""
import ml_collections

from vision_jax.config import base_config

_TRAIN_IMAGES, _BATCH = 1_281_167, 2048
_PROCEDURES = {
    'a1': dict(epochs=600, size=224, lr=5e-3, wd=0.01, smoothing=0.1, drop_path=0.05,
               repeats=3, randaugment='rand-m7-mstd0.5-inc1', mixup=0.2),
    'a2': dict(epochs=300, size=224, lr=5e-3, wd=0.02, smoothing=0.0, drop_path=0.05,
               repeats=3, randaugment='rand-m7-mstd0.5-inc1', mixup=0.1),
    'a3': dict(epochs=100, size=160, lr=8e-3, wd=0.02, smoothing=0.0, drop_path=0.0,
               repeats=1, randaugment='rand-m6-mstd0.5-inc1', mixup=0.1),
}


def get_config(variant: str = 'a1') -> ml_collections.ConfigDict:
  if variant not in _PROCEDURES:
    raise ValueError(f'Unknown procedure {variant!r}: use :a1, :a2 or :a3.')
  p = _PROCEDURES[variant]
  config = base_config()
  config.dataset.name = 'imagenet2012'
  config.dataset.eval_splits = ('validation',)
  config.dataset.image_size = p['size']
  config.dataset.eval_image_size = 224 if p['size'] != 224 else 0  # A3: FixRes effect.
  config.dataset.preprocess = 'inception'       # Random-resized crop (8-100%) + flip.
  config.dataset.crop_fraction = 0.95           # Test: resize to 236, centre crop 224.
  config.dataset.normalization = 'imagenet'
  config.dataset.randaugment = p['randaugment']
  config.dataset.repeated_aug = p['repeats']
  config.dataset.mixup_alpha = p['mixup']
  config.dataset.cutmix_alpha = 1.0
  config.dataset.cutmix_prob = 0.5              # timm's --mixup-switch-prob.

  config.model.name = 'resnet50'
  config.model.dtype = 'bfloat16'              # Parameters and optimiser stay float32.
  config.model.zero_init_residual = True       # timm's zero_init_last.
  config.model.drop_path_rate = p['drop_path']

  config.optim.name = 'lamb'
  config.optim.learning_rate = p['lr']
  config.optim.eps = 1e-6
  config.optim.grad_clip_norm = 1.0            # Inside timm's Lamb.
  config.optim.weight_decay = p['wd']
  config.optim.schedule = 'warmup_cosine'
  config.optim.warmup_steps = 0
  config.optim.warmup_epochs = 5.0
  config.optim.min_lr_ratio = 1e-6 / p['lr']   # timm's --min-lr 1e-6.
  config.optim.loss = 'bce'
  config.optim.bce_target_threshold = 0.2
  config.optim.label_smoothing = p['smoothing']

  steps_per_epoch = _TRAIN_IMAGES // _BATCH
  config.train.batch_size = _BATCH
  config.train.steps = p['epochs'] * steps_per_epoch
  config.train.log_every = 100
  config.train.eval_every = 10 * steps_per_epoch
  config.eval.batch_size = 1024              # Divides over 8, 16, 32, ... chips.
  config.checkpoint.every_steps = steps_per_epoch
  return config
