"""ResNet-50 on ImageNet-2012, "ResNet strikes back" procedure A2: ~79.8% top-1.

  python -m vision_jax.main --config configs/imagenet2012_resnet50_rsb_a2.py --workdir /tmp/vision_jax/imagenet2012_resnet50_rsb_a2

Expect ~79.8% top-1 on the 50,000 validation images (224 px train and test, crop ratio
0.95). Source: Wightman, Touvron & Jegou 2021, "ResNet strikes back: an improved training
procedure in timm" (arXiv:2110.00476): its Table 1 of the three procedures' hyper-parameters
and their ResNet-50 top-1 at 224 px test (A1 80.4, A2 79.8, A3 78.1). Procedure A2: 300
epochs at batch 2048 (187,500 steps), LAMB lr 5e-3 with 5 warmup epochs then cosine, weight
decay 0.02 (not on biases or BatchNorm), binary cross-entropy with targets binarised at 0.2,
no label smoothing, stochastic depth 0.05, repeated augmentation x3, random-resized crop +
flip + RandAugment rand-m7-mstd0.5-inc1, mixup 0.1 / cutmix 1.0 (one of them per batch,
evenly), mixed precision.

timm's Lamb clips the global gradient norm at 1.0 and uses eps 1e-6; its ResNet starts each
block's last BatchNorm scale at zero; both are kept here. Differences: timm's warmup starts
from a small non-zero lr (here from 0), and its BatchNorm statistics are per GPU (here of
the global batch). An epoch here, as in timm, is 1,281,167 images seen: with repeated
augmentation, a third as many distinct ones, each three times (vision_jax/data/stream.py,
RepeatedOrder).
"""
import ml_collections

from vision_jax.config import base_config

_TRAIN_IMAGES, _BATCH, _EPOCHS = 1_281_167, 2048, 300


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.name = 'imagenet2012'
  config.dataset.eval_splits = ('validation',)
  config.dataset.image_size = 224
  config.dataset.preprocess = 'inception'       # Random-resized crop (8-100%) + flip.
  config.dataset.crop_fraction = 0.95           # Test: resize to 236, centre crop 224.
  config.dataset.normalization = 'imagenet'
  config.dataset.randaugment = 'rand-m7-mstd0.5-inc1'
  config.dataset.repeated_aug = 3
  config.dataset.mixup_alpha = 0.1
  config.dataset.cutmix_alpha = 1.0
  config.dataset.cutmix_prob = 0.5              # timm's --mixup-switch-prob.

  config.model.name = 'resnet50'
  config.model.dtype = 'bfloat16'              # Parameters and optimiser stay float32.
  config.model.zero_init_residual = True       # timm's zero_init_last.
  config.model.drop_path_rate = 0.05

  config.optim.name = 'lamb'
  config.optim.learning_rate = 5e-3
  config.optim.eps = 1e-6
  config.optim.grad_clip_norm = 1.0            # Inside timm's Lamb.
  config.optim.weight_decay = 0.02
  config.optim.schedule = 'warmup_cosine'
  config.optim.warmup_steps = 0
  config.optim.warmup_epochs = 5.0
  config.optim.min_lr_ratio = 1e-6 / 5e-3       # timm's --min-lr 1e-6.
  config.optim.loss = 'bce'
  config.optim.bce_target_threshold = 0.2
  config.optim.label_smoothing = 0.0

  steps_per_epoch = _TRAIN_IMAGES // _BATCH
  config.train.batch_size = _BATCH
  config.train.steps = _EPOCHS * steps_per_epoch
  config.train.log_every = 100
  config.train.eval_every = 10 * steps_per_epoch
  config.eval.batch_size = 1024              # Divides over 8, 16, 32, ... chips.
  config.checkpoint.every_steps = steps_per_epoch
  return config
