"""Offline semantic segmentation: the digits canvases, fine-tuned from the digits classifier.

  python -m vision_jax.main --config configs/digits_segmentation_pretrain.py --workdir /tmp/vision_jax/digits_resnet18
  python -m vision_jax.main --config configs/digits_segmentation.py --workdir /tmp/vision_jax/digits_seg

Step 2 of the recipe (step 1 is configs/digits_segmentation_pretrain.py): an FCN head on
the CIFAR-stem ResNet-18 (width 16; its last stage dilated: output stride 4) over 32x32 canvases holding 2-4
digits, 11 classes (background, '0'..'9'; data/digits_segmentation.py). The backbone is
loaded from the classifier's workdir by path (`init_from`, every array but the dense head,
which keeps its fresh initialisation); from scratch: --config.init_from.checkpoint=''.
Training crops are rescaled by 0.75..1.25 (the digits stay near the 16 px the classifier
saw) and never flipped (digits are not mirror-symmetric). Evaluation: mIoU over the 500
test canvases, whose digits neither run saw.
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.task.name = 'segmentation'
  config.task.flip = False
  config.task.scale_range = (0.75, 1.25)
  config.dataset.name = 'digits_segmentation'
  config.dataset.image_size = 32
  config.model.name = 'fcn_cifar_resnet18'
  config.model.width = 16
  config.model.output_stride = 4
  config.train.batch_size = 32
  config.train.steps = 300
  config.train.eval_every = 0
  config.train.log_every = 50
  config.eval.batch_size = 100
  config.checkpoint.every_steps = 300
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 20
  config.init_from.checkpoint = '/tmp/vision_jax/digits_resnet18'
  config.init_from.skip = ('head/.*',)
  config.init_from.zero_init_skipped = False  # A zeroed dense head gets no gradient.
  return config
