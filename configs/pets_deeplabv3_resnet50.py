"""DeepLabv3-ResNet-50 on Oxford-IIIT Pet (pet vs background), fine-tuned from ImageNet.

  # The backbone: torchvision's ImageNet ResNet-50 converted into a workdir once (see
  # configs/finetune_cifar10_from_torchvision_resnet50.py, steps 1-2), then:
  tfds build oxford_iiit_pet --file_format=array_record
  python -m vision_jax.main --config configs/pets_deeplabv3_resnet50.py --workdir /tmp/vision_jax/pets_deeplabv3

torchvision's segmentation reference recipe, scaled to the 3,680 trainval images: output
stride 8 (last two stages dilated), ASPP rates 12/24/36, crops of 512 px after a random
rescale of the shorter side to 0.5..2.0 x 512, horizontal flips; SGD momentum 0.9, lr
0.02 with polynomial decay (power 0.9), weight decay 1e-4, batch 16, 30 epochs (6,900
steps); ImageNet normalisation; bfloat16 compute. Classes: background and pet; the
trimap's border band is the ignore label (config.task.pets_border='ignore'; 'class'
makes it a third class). Evaluation: every test image fitted into 512 x 512 without
rescaling (pets images are at most ~500 px), padding ignored, mIoU over the split.
The backbone is loaded by path from the ResNet-50 workdir; the dense head starts fresh.
Expected mIoU: no published figure found for this exact set-up (DeepLabv3-R50, ImageNet
initialisation, pet/background with the border ignored). Indicative only: a public
project reports IoU 0.93 for torchvision's FCN-ResNet-101 (COCO-initialised, 128 px) on
this dataset (github.com/d-f/oxford-semantic-segmentation); we expect a mean IoU above
0.9. Not run here (needs the converted weights and an accelerator); tests/test_tasks.py
runs 2 steps of it on mocked data.
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.task.name = 'segmentation'
  config.task.scale_range = (0.5, 2.0)
  config.task.pets_border = 'ignore'
  config.dataset.name = 'oxford_iiit_pet'
  config.dataset.train_split = 'train'
  config.dataset.eval_splits = ('test',)
  config.dataset.image_size = 512
  config.dataset.normalization = 'imagenet'
  config.model.name = 'deeplabv3_resnet50'
  config.model.dtype = 'bfloat16'
  config.model.output_stride = 8
  config.init_from.checkpoint = '/tmp/vision_jax/torchvision_resnet50'
  config.init_from.skip = ('head/.*',)
  config.init_from.zero_init_skipped = False
  config.optim.name = 'sgd'
  config.optim.momentum = 0.9
  config.optim.learning_rate = 0.02
  config.optim.schedule = 'warmup_poly'
  config.optim.poly_power = 0.9
  config.optim.warmup_steps = 0
  config.optim.weight_decay = 1e-4
  config.train.batch_size = 16
  config.train.steps = 6900
  config.train.log_every = 100
  config.train.eval_every = 1150
  config.eval.batch_size = 16
  config.checkpoint.every_steps = 1150
  return config
