"""RetinaNet ResNet-50-FPN on COCO 2017: torchvision's 26-epoch recipe (expected box AP 36.4).

  python -m vision_jax.main --config configs/coco_retinanet_resnet50_fpn.py --workdir W

torchvision's detection reference (references/detection, `--epochs 26 --lr-steps 16 22
--aspect-ratio-group-factor 3 --lr 0.01 --amp --weights-backbone ResNet50_Weights.
IMAGENET1K_V1`) trains retinanet_resnet50_fpn to box AP 36.4 on val2017 (torchvision's model
docs, RetinaNet_ResNet50_FPN_Weights.COCO_V1). Here: batch 16 (2 per GPU x 8), SGD momentum 0.9,
lr 0.01 with 1000-step linear warmup, x0.1 at epochs 16 and 22 of 26, weight decay 1e-4;
images resized to shorter side 800 with the longer at most 1333 and flipped, padded to a
fixed 1344 x 1344 input (torchvision pads each batch to a multiple of 32 instead);
the backbone's stem and first stage and every BatchNorm frozen, as torchvision's
trainable_backbone_layers=3 with FrozenBatchNorm2d. Start the backbone from an ImageNet
ResNet-50 workdir (init_from, backbone only: `init_from.skip=('head/.*', 'fpn/.*')`;
python -m vision_jax.convert torchvision --arch resnet50 makes one). Not run here (no
COCO and no accelerator on the machine this was written on): the 36.4 is torchvision's
figure, not a measurement of this config.
"""
import ml_collections

from vision_jax.config import base_config

COCO_TRAIN_IMAGES = 117_266  # train2017 images with annotations (torchvision's reference).
BATCH = 16


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.task.name = 'detection'
  config.task.max_boxes = 100
  config.task.max_detections = 100
  config.task.min_size = 800
  config.task.max_size = 1333
  config.task.scale_range = (1.0, 1.0)
  config.task.flip = True
  config.dataset.name = 'coco/2017'
  config.dataset.train_split = 'train'
  config.dataset.eval_splits = ('validation',)
  config.dataset.image_size = 1344
  config.dataset.normalization = 'imagenet'
  config.model.name = 'retinanet_resnet50_fpn'
  steps_per_epoch = COCO_TRAIN_IMAGES // BATCH
  config.train.batch_size = BATCH
  config.train.steps = 26 * steps_per_epoch
  config.train.eval_every = 0
  config.train.log_every = 100
  config.eval.batch_size = 8
  config.checkpoint.every_steps = 2000
  config.optim.name = 'sgd'
  config.optim.momentum = 0.9
  config.optim.learning_rate = 0.01
  config.optim.weight_decay = 1e-4
  config.optim.schedule = 'piecewise'
  config.optim.warmup_steps = 1000
  config.optim.piecewise_boundary_epochs = (16, 22)
  config.optim.piecewise_scales = (0.1, 0.1)
  # torchvision's trainable_backbone_layers=3 and FrozenBatchNorm2d.
  config.optim.freeze = ('stem_(conv|bn)/.*', 'blocks/(0|1|2)/.*',
                         r'(stem_bn|blocks/\d+/(bn\d|proj_bn))/(scale|bias)')
  config.init_from.skip = ('head/.*', 'fpn/.*')
  config.init_from.zero_init_skipped = False
  return config
