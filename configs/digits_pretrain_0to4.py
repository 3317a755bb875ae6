"""Transfer experiment, step 1: pretrain the seed ConvNet on the digits 0-4 only.

  python -m vision_jax.main --config configs/digits_pretrain_0to4.py --workdir /tmp/vision_jax/digits_0to4

Expect ~0.99 test accuracy on the 181 test images of the digits 0-4 (measured here; see the
README's transfer table). Step 2 fine-tunes this workdir on the digits 5-9
(configs/digits_finetune_5to9.py); configs/digits_scratch_5to9.py is the baseline.
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.classes = (0, 1, 2, 3, 4)
  config.train.steps = 400
  config.train.eval_every = 0
  config.checkpoint.every_steps = 400
  return config
