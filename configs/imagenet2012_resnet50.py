"""ResNet-50 v1.5 on ImageNet-2012, SGD + Nesterov, 100 epochs of batch 1024: ~76.5% top-1.

  python -m vision_jax.main --config configs/imagenet2012_resnet50.py --workdir /tmp/vision_jax/imagenet2012_resnet50

Expect 76.3-76.7% top-1 on the 50,000 validation images. Source: the Flax ImageNet example
(github.com/google/flax, examples/imagenet: README table and configs/tpu.py), whose recipe this
copies: batch 1024, lr 0.1 x batch / 256 = 0.4, 5 linear warmup epochs then cosine to 0 over
100 epochs in all (125,100 steps), SGD Nesterov momentum 0.9, bf16 compute; it reports 76.37%
(TPU v3-8), 76.54% (v3-32), 76.67% (v2-32). Its weight decay is a coupled L2 penalty 1e-4 on
kernels only (ndim > 1); ours is decoupled (vision_jax/optim.py), so 1e-4 / (1 - 0.9) = 1e-3,
on the same kernels (the default wd_rules). The last BatchNorm scale of each block starts at
zero, as in that example. The data must be prepared once with tfds (manual download).
"""
import ml_collections

from vision_jax.config import base_config

_TRAIN_IMAGES, _BATCH, _EPOCHS = 1_281_167, 1024, 100


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.name = 'imagenet2012'
  config.dataset.eval_splits = ('validation',)
  config.dataset.image_size = 224
  config.dataset.preprocess = 'inception'
  config.dataset.mean = (0.485, 0.456, 0.406)
  config.dataset.std = (0.229, 0.224, 0.225)

  config.model.name = 'resnet50'
  config.model.dtype = 'bfloat16'              # Parameters and optimiser stay float32.
  config.model.zero_init_residual = True

  config.optim.name = 'sgd'
  config.optim.learning_rate = 0.1
  config.optim.scale_lr_by_batch = True        # 0.1 x 1024 / 256 = 0.4.
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 1e-3             # = coupled 1e-4 at momentum 0.9.
  config.optim.schedule = 'warmup_cosine'
  config.optim.warmup_steps = 0
  config.optim.warmup_epochs = 5.0

  steps_per_epoch = _TRAIN_IMAGES // _BATCH
  config.train.batch_size = _BATCH
  config.train.steps = _EPOCHS * steps_per_epoch
  config.train.log_every = 100
  config.train.eval_every = 5 * steps_per_epoch
  config.eval.batch_size = 1024              # Divides over 8, 16, 32, ... chips.
  config.checkpoint.every_steps = steps_per_epoch
  return config
