"""SimCLR on CIFAR-10 with the CIFAR-stem ResNet-18, solo-learn's recipe, and its probe.

  python -m vision_jax.main --config configs/cifar10_simclr_resnet18.py --workdir /tmp/vision_jax/cifar10_simclr
  python -m vision_jax.main --config configs/cifar10_simclr_resnet18.py:probe --workdir /tmp/vision_jax/cifar10_simclr_probe \
      --config.init_from.checkpoint=/tmp/vision_jax/cifar10_simclr

Pretraining (solo-learn's cifar/simclr.yaml, as we read it): 1000 epochs at batch 256
(195 steps each), LARS (momentum 0.9, trust coefficient 0.02 here as theirs; biases and
norms excluded from weight decay and adaptation by the optimiser's own rules), lr 0.4 with
10 warm-up epochs and cosine decay, weight decay 1e-5, NT-Xent at temperature 0.2, a
2-layer projector 2048 -> 256, SimCLR's two views with colour-jitter strength 0.5
(brightness, contrast, saturation 0.4, hue 0.1), crops of 8..100% of the area, no blur
at 32 px (data/two_views.py). k-NN (k 200) on the test split every 10 epochs.
The probe (':probe'): a linear head on the frozen backbone, 100 epochs, SGD lr 0.1 with
cosine decay, batch 256, the usual crop-and-flip. BatchNorm statistics of a frozen
backbone still follow the probe's batches (the loop trains in train mode), a small
departure from solo-learn's frozen-eval-mode backbone.
Expected linear-probe accuracy: 90.74% top-1 (solo-learn README, CIFAR-10 table, SimCLR
ResNet-18, 1000 epochs; github.com/vturrisi/solo-learn). Not run here: ~195k steps need a
GPU/TPU; tests/test_tasks.py runs 2 steps of it on mocked CIFAR-10.
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
    return config
  if variant:
    raise ValueError(f'Unknown variant {variant!r}; use "" (pretraining) or "probe".')
  config.task.name = 'simclr'
  config.task.temperature = 0.2
  config.task.color_jitter_strength = 0.5
  config.task.crop_min_scale = 0.08
  config.task.projector_hidden_dim = 2048
  config.task.projector_output_dim = 256
  config.task.knn_k = 200
  config.train.steps = 1000 * 195
  config.train.eval_every = 10 * 195
  config.checkpoint.every_steps = 10 * 195
  config.optim.name = 'lars'
  config.optim.learning_rate = 0.4
  config.optim.trust_coefficient = 0.02
  config.optim.weight_decay = 1e-5
  config.optim.warmup_epochs = 10.0
  config.optim.warmup_steps = 0
  return config
