"""The offline digits default trained with Adafactor instead of AdamW: >= 0.95 test accuracy.

  python -m vision_jax.main --config configs/digits_adafactor.py --workdir /tmp/vision_jax/digits_adafactor

Expect about 0.99 test accuracy on the 360 test digits (>= 0.95, the bar issue 5 sets for the
default run with Adafactor), in under a minute on a 2-core CPU, with no network. Where the
number comes from: measured for this recipe with the command above, seed 0, 2-core CPU:
0.994 after 600 steps (0.997 before XLA's multi-threaded convolutions changed the rounding;
0.986 with the earlier grain shuffle),
and 0.986-0.992 over 3 seeds in a standalone loop with the same ConvNet, split and schedule.

Adafactor here (vision_jax/optim.py) keeps factored second moments (row and column
statistics for matrices of at least 128x128: far less optimiser memory than Adam for big
kernels), decay rate 0.8 and update clipping at RMS 1 as in Shazeer & Stern 2018
(arXiv:1804.04235), plus first-moment momentum 0.9 as in big_vision's Adafactor recipes; the
learning rate is absolute (no multiplication by the parameter scale), so Adam-like values fit.
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()             # Digits, ConvNet, 600 steps of batch 128.
  config.optim.name = 'adafactor'
  config.optim.learning_rate = 1e-3
  config.optim.momentum = 0.9
  config.optim.adafactor_decay_rate = 0.8
  config.optim.weight_decay = 1e-4
  config.optim.schedule = 'warmup_cosine'
  config.optim.warmup_steps = 50
  return config
