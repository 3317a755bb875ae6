"""BYOL on CIFAR-10 with the CIFAR-stem ResNet-18, solo-learn's recipe, and its probe.

  python -m vision_jax.main --config configs/cifar10_byol_resnet18.py --workdir /tmp/vision_jax/cifar10_byol
  python -m vision_jax.main --config configs/cifar10_byol_resnet18.py:probe --workdir /tmp/vision_jax/cifar10_byol_probe \
      --config.init_from.checkpoint=/tmp/vision_jax/cifar10_byol

Pretraining (solo-learn's cifar/byol.yaml, as we read it): 1000 epochs at batch 256 (195
steps each), LARS (momentum 0.9, trust coefficient 0.02, biases and norms excluded from
weight decay and adaptation by the optimiser's own rules), lr 1.0 with 10 warm-up epochs
and cosine decay, weight decay 1e-5; a projector 4096 -> 256 and a predictor of hidden
width 4096; the target's decay from 0.99 to 1 along a cosine; BYOL's asymmetric views
(colour-jitter strength 0.5 here as SimCLR's CIFAR recipe, crops of 8..100% of the area,
no blur at 32 px, solarisation on the second view). k-NN (k 200) on the test split every 10
epochs. The probe (':probe'): a linear head on the frozen online backbone
(init_from.parts=(('model', 'online'),)), 100 epochs, SGD lr 0.1 with cosine decay.
Expected linear-probe accuracy: 92.58% top-1 (solo-learn README, CIFAR-10 table, BYOL
ResNet-18, 1000 epochs; github.com/vturrisi/solo-learn). Not run here: ~195k steps need a
GPU/TPU; tests/test_configs.py builds it.
"""
import ml_collections

from vision_jax.config import base_config


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.name = 'cifar10'
  config.dataset.normalization = 'cifar10'
  config.model.name = 'cifar_resnet18'
  config.train.batch_size = 256
  config.eval.batch_size = 1000
  config.train.log_every = 100
  if variant == 'probe':
    config.dataset.preprocess = 'cifar'
    config.train.steps = 100 * 195
    config.train.eval_every = 10 * 195
    config.checkpoint.every_steps = 10 * 195
    config.optim.name = 'sgd'
    config.optim.learning_rate = 0.1
    config.optim.weight_decay = 0.0
    config.optim.warmup_steps = 0
    config.optim.freeze = ('(?!head/).*',)
    config.init_from.skip = ('head/.*',)
    config.init_from.parts = (('model', 'online'),)
    return config
  if variant:
    raise ValueError(f'Unknown variant {variant!r}; use "" (pretraining) or "probe".')
  config.task.name = 'byol'
  config.task.views = 'byol'
  config.task.color_jitter_strength = 0.5
  config.task.crop_min_scale = 0.08
  config.task.projector_hidden_dim = 4096
  config.task.projector_output_dim = 256
  config.task.predictor_hidden_dim = 4096
  config.task.target_decay = 0.99
  config.task.knn_k = 200
  config.train.steps = 1000 * 195
  config.train.eval_every = 10 * 195
  config.checkpoint.every_steps = 10 * 195
  config.optim.name = 'lars'
  config.optim.learning_rate = 1.0
  config.optim.trust_coefficient = 0.02
  config.optim.weight_decay = 1e-5
  config.optim.warmup_epochs = 10.0
  config.optim.warmup_steps = 0
  return config
