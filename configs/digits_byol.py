"""Offline BYOL: the seed ConvNet's backbone pretrained on the digits without labels, and its
linear probe.

  python -m vision_jax.main --config configs/digits_byol.py --workdir /tmp/vision_jax/digits_byol
  python -m vision_jax.main --config configs/digits_byol.py:probe --workdir /tmp/vision_jax/digits_byol_probe \
      --config.init_from.checkpoint=/tmp/vision_jax/digits_byol

Pretraining: two BYOL views per digit (upscaled to 16 px; crops of 25..100% of the area,
flip, BYOL's jitter; blur and solarisation are no-ops or rare at this size), an online
ConvNet with a 2-layer projector (512 -> 128) and predictor (512), a target network moved
towards it with BYOL's cosine decay from 0.99 to 1, the symmetric 2 - 2 cos loss, LARS
(lr 1.0, trust coefficient 0.02, weight decay 1e-5 as solo-learn's CIFAR recipe), batch 256,
300 steps. Every `eval_every` steps: k-NN accuracy (k 20) of the online ConvNet's fc1
features, results.json eval/test/knn_accuracy. ':probe' trains a linear head on the frozen
online backbone (init_from.parts maps the classifier's 'model' onto BYOL's 'online'); without
init_from.checkpoint it probes a random backbone of the same seed, the baseline. Figures
measured on this machine are in docs/tasks.md.
"""
import ml_collections

from vision_jax.config import base_config


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.image_size = 16
  config.model.name = 'convnet'
  config.eval.batch_size = 256
  if variant == 'probe':
    config.train.batch_size = 128
    config.train.steps = 300
    config.train.eval_every = 0
    config.checkpoint.every_steps = 300
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 20
    config.optim.weight_decay = 0.0
    config.optim.freeze = ('(?!head/).*',)
    config.init_from.skip = ('head/.*',)
    config.init_from.parts = (('model', 'online'),)
    return config
  if variant:
    raise ValueError(f'Unknown variant {variant!r}; use "" (pretraining) or "probe".')
  config.task.name = 'byol'
  config.task.views = 'byol'
  config.task.crop_min_scale = 0.25
  config.task.projector_hidden_dim = 512
  config.task.projector_output_dim = 128
  config.task.predictor_hidden_dim = 512
  config.task.target_decay = 0.99
  config.task.knn_k = 20
  config.train.batch_size = 256
  config.train.steps = 300
  config.train.eval_every = 100
  config.checkpoint.every_steps = 300
  config.optim.name = 'lars'
  config.optim.learning_rate = 1.0
  config.optim.trust_coefficient = 0.02
  config.optim.weight_decay = 1e-5
  config.optim.warmup_steps = 30
  return config
