"""ResNet-50 v1.5 on ImageNet-2012 at batch 32,768 with LARS: ~76.3% top-1.

  python -m vision_jax.main --config configs/imagenet2012_resnet50_lars.py --workdir /tmp/vision_jax/imagenet2012_resnet50_lars

Expect about 76.3% top-1 on the 50,000 validation images. Source: the LARS optimizer of
TensorFlow (commit 1608a0c, "With this optimizer, ResNet-50 now converges to 76.3% top-1
accuracy at batch 32K on a JF Pod"; LARS: You, Gitman & Ginsburg 2017, arXiv:1708.03888) and
the hyper-parameters tensorflow/tpu used with it (models/official/resnet/lars_util.py, batch
32768): lr 34 reached by linear warmup over 12 epochs, then polynomial decay of power 2 to 0;
momentum 0.9; weight decay 1e-4 inside LARS; no decay and no layer adaptation for BatchNorm
and biases (the ndim <= 1 defaults here); trust coefficient 0.001. 90 epochs is that repo's
ImageNet schedule length; the commit does not state the epochs of its 32K run.

Needs a pod slice (e.g. 256+ accelerators) for the batch to fit. On fewer devices
config.optim.accum_steps splits it into micro-batches, but BatchNorm then sees the smaller
batches, so the result may differ.
"""
import ml_collections

from vision_jax.config import base_config

_TRAIN_IMAGES, _BATCH, _EPOCHS = 1_281_167, 32_768, 90


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

  config.optim.name = 'lars'
  config.optim.learning_rate = 34.0            # Already for batch 32768 (= 0.266 x B / 256).
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.trust_coefficient = 0.001
  config.optim.weight_decay = 1e-4
  config.optim.schedule = 'warmup_poly'
  config.optim.poly_power = 2.0
  config.optim.warmup_steps = 0
  config.optim.warmup_epochs = 12.0

  steps_per_epoch = _TRAIN_IMAGES // _BATCH     # 39 full batches.
  config.train.batch_size = _BATCH
  config.train.steps = _EPOCHS * steps_per_epoch
  config.train.log_every = 20
  config.train.eval_every = 4 * steps_per_epoch
  config.eval.batch_size = 1024              # Divides over 8, 16, 32, ... chips.
  config.checkpoint.every_steps = 4 * steps_per_epoch
  return config
