"""Transfer experiment, step 2: a new 5-class head on the digits 5-9, from the 0-4 model.

  python -m vision_jax.main --config configs/digits_finetune_5to9.py --workdir /tmp/vision_jax/digits_5to9_ft \
      --config.init_from.checkpoint=/tmp/vision_jax/digits_0to4

and the baseline, the same recipe from random weights:

  python -m vision_jax.main --config configs/digits_finetune_5to9.py:scratch --workdir /tmp/vision_jax/digits_5to9_scratch

Every layer but the head is loaded from the pretrained workdir; the head starts at zero
(`init_from.skip`). Few steps and few examples (10% of the 5-9 training images, ~72), a
small constant learning rate: the regime transfer is for. The README's transfer table has
both runs, measured here. Add --config.optim.freeze="('conv1/.*', 'conv2/.*')" to keep
the conv layers fixed.
"""
import ml_collections

from vision_jax.config import base_config


def get_config(variant: str = 'finetune') -> ml_collections.ConfigDict:
  if variant not in ('finetune', 'scratch'):
    raise ValueError(f'Unknown variant {variant!r}: use :finetune or :scratch.')
  config = base_config()
  config.dataset.classes = (5, 6, 7, 8, 9)
  config.dataset.train_split = 'train[:10%]'
  config.train.batch_size = 32
  config.train.steps = 60
  config.train.log_every = 10
  config.train.eval_every = 0
  config.checkpoint.every_steps = 60
  config.optim.learning_rate = 3e-4
  config.optim.schedule = 'constant'
  config.optim.warmup_steps = 0
  # The pretrain command's workdir; it must exist (a missing one is an error, never a
  # silent start from scratch). Override with --config.init_from.checkpoint=DIR.
  config.init_from.checkpoint = '/tmp/vision_jax/digits_0to4' if variant == 'finetune' else ''
  config.init_from.skip = ('head/.*',)
  return config
