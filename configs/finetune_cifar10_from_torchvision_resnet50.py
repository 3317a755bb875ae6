"""Fine-tune torchvision's ImageNet ResNet-50 on CIFAR-10 at 128x128.

  # 1. Get the weights, once, where there is network and torch + torchvision:
  python -c "import torchvision, safetensors.torch; safetensors.torch.save_file(torchvision.models.resnet50(weights='IMAGENET1K_V1').state_dict(), 'resnet50_v1.safetensors')"
  # 2. Convert them into a vision_jax workdir (no torch needed):
  python -m vision_jax.convert torchvision --arch resnet50 --weights resnet50_v1.safetensors \
      --eval_transform torchvision_v1 --output /tmp/vision_jax/torchvision_resnet50
  # 3. Fine-tune:
  python -m vision_jax.main --config configs/finetune_cifar10_from_torchvision_resnet50.py \
      --workdir /tmp/vision_jax/cifar10_from_torchvision_r50

IMAGENET1K_V2 weights convert the same way (--eval_transform torchvision_v2), and so do
timm's (`vision_jax.convert timm`, e.g. the model.safetensors of huggingface.co/timm/
resnet50.a1_in1k with --eval_transform timm_rsb). Any other ResNet-50 workdir works too,
e.g. one of configs/imagenet2012_resnet50.py: pass --config.init_from.checkpoint=<it>.
Every layer but the 1000-way head is loaded; the new 10-way head starts at zero. The
recipe follows BiT's HyperRule for a 50k-image dataset: batch 512, 10k steps, SGD momentum
0.9, lr 0.003 with 500 warmup steps and x0.1 at 30/60/90% of training, no weight decay,
images upsampled from 32 to 128 with a random crop and flip, ImageNet's normalisation.
Expected result: about 97% top-1 (Kornblith, Shlens & Le 2019, "Do Better ImageNet Models
Transfer Better?", arXiv:1805.08974, fine-tune ImageNet ResNet-50s on CIFAR-10 to this
level, with their own ImageNet weights and 224 px inputs). Not run here: no network to
fetch the weights and no GPU/TPU on this machine; the conversion itself is tested against
torchvision's logits (tests/test_convert.py).
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.name = 'cifar10'
  config.dataset.image_size = 128
  config.dataset.preprocess = 'inception'
  config.dataset.eval_preprocess = 'resize'
  config.dataset.normalization = 'imagenet'     # The statistics the backbone was trained with.

  config.model.name = 'resnet50'
  config.model.dtype = 'bfloat16'

  config.init_from.checkpoint = '/tmp/vision_jax/torchvision_resnet50'
  config.init_from.skip = ('head/.*',)

  config.optim.name = 'sgd'
  config.optim.momentum = 0.9
  config.optim.learning_rate = 0.003
  config.optim.weight_decay = 0.0
  config.optim.schedule = 'piecewise'
  config.optim.warmup_steps = 500
  config.optim.piecewise_boundaries = (3000, 6000, 9000)
  config.optim.piecewise_scales = (0.1, 0.1, 0.1)

  config.train.batch_size = 512
  config.train.steps = 10_000
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.eval.batch_size = 1024
  config.checkpoint.every_steps = 1000
  return config
