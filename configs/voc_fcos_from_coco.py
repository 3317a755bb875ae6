"""Fine-tune torchvision's COCO FCOS ResNet-50-FPN to PASCAL VOC 2007's 20 classes.

  # 1. Get the weights, once, where there is network and torch + torchvision:
  python -c "import torchvision, safetensors.torch; safetensors.torch.save_file(torchvision.models.detection.fcos_resnet50_fpn(weights='COCO_V1').state_dict(), 'fcos_coco.safetensors')"
  # 2. Convert them into a vision_jax workdir (no torch needed; it evaluates on COCO too):
  python -m vision_jax.convert torchvision --arch fcos_resnet50_fpn \
      --weights fcos_coco.safetensors --output /tmp/vision_jax/tv_fcos
  # 3. Fine-tune (tfds voc/2007 prepared):
  python -m vision_jax.main --config configs/voc_fcos_from_coco.py \
      --workdir /tmp/vision_jax/voc_fcos_from_coco

Everything of the COCO detector is loaded but the classification layer (`head/cls_logits`,
91 COCO outputs here, 20 VOC classes there), which restarts at its focal-loss prior
(bias -log(99), no zero init: a zero bias would score every location 0.5), as torchvision's
fine-tuning tutorial replaces only the predictor. The classification and box towers, the
centerness branch, the FPN and the backbone start from COCO. Data: VOC 2007 trainval
(5,011 images) for training, test (4,952) for evaluation; 'difficult' objects are crowd
(left out of training, ignored by the evaluation). Images: shorter side 600, longer at
most 1000 (the common VOC scale), flipped, padded to 1024 x 1024. Recipe: batch 16, SGD
momentum 0.9, lr 0.01 with 500 warmup steps, x0.1 after 8 and 11 of 12 epochs, weight
decay 1e-4, the backbone's stem, first stage and BatchNorm frozen as in the COCO recipe.
The evaluation is COCO's (pycocotools: AP50 is COCO's 101-point AP at IoU 0.5, not VOC's
11-point metric). Expected result: no published figure for this recipe; not run here (no
VOC and no accelerator on the machine this was written on).
"""
import ml_collections

from vision_jax.config import base_config

VOC07_TRAINVAL_IMAGES = 5_011
BATCH = 16


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.task.name = 'detection'
  config.task.max_boxes = 64              # VOC 2007 has at most 42 objects per image.
  config.task.max_detections = 100
  config.task.min_size = 600
  config.task.max_size = 1000
  config.task.scale_range = (1.0, 1.0)
  config.task.flip = True
  config.dataset.name = 'voc/2007'
  config.dataset.train_split = 'train+validation'
  config.dataset.eval_splits = ('test',)
  config.dataset.image_size = 1024
  config.dataset.normalization = 'imagenet'  # The statistics torchvision's weights use.
  config.model.name = 'fcos_resnet50_fpn'
  steps_per_epoch = VOC07_TRAINVAL_IMAGES // BATCH
  config.train.batch_size = BATCH
  config.train.steps = 12 * steps_per_epoch
  config.train.eval_every = 4 * steps_per_epoch
  config.train.log_every = 50
  config.eval.batch_size = 8
  config.checkpoint.every_steps = 1000
  config.optim.name = 'sgd'
  config.optim.momentum = 0.9
  config.optim.learning_rate = 0.01
  config.optim.weight_decay = 1e-4
  config.optim.schedule = 'piecewise'
  config.optim.warmup_steps = 500
  config.optim.piecewise_boundary_epochs = (8, 11)
  config.optim.piecewise_scales = (0.1, 0.1)
  config.optim.freeze = ('stem_(conv|bn)/.*', 'blocks/(0|1|2)/.*',
                         r'(stem_bn|blocks/\d+/(bn\d|proj_bn))/(scale|bias)')
  config.init_from.checkpoint = '/tmp/vision_jax/tv_fcos'
  config.init_from.skip = ('head/cls_logits/.*',)
  config.init_from.zero_init_skipped = False
  return config
