"""Linear probe of a SimCLR-pretrained digits backbone: a new linear head on frozen features.

  python -m vision_jax.main --config configs/digits_simclr_linear_probe.py --workdir /tmp/vision_jax/digits_probe \
      --config.init_from.checkpoint=/tmp/vision_jax/digits_simclr

The ConvNet of configs/digits_simclr.py, every backbone parameter loaded from the SSL
workdir by path and frozen (`optim.freeze`: all but head/); the head starts at zero
(init_from skips head/.*; the SSL run's projector is listed as unused in
init_report.json). Without init_from.checkpoint it probes a randomly initialised backbone
of the same seed: the baseline. Full fine-tuning: the same command with
--config.optim.freeze='()'. results.json: eval/test/accuracy.
"""
import ml_collections

from vision_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.image_size = 16
  config.model.name = 'convnet'
  config.train.batch_size = 128
  config.train.steps = 300
  config.train.eval_every = 0
  config.checkpoint.every_steps = 300
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 20
  config.optim.weight_decay = 0.0
  config.optim.freeze = ('(?!head/).*',)
  config.init_from.skip = ('head/.*',)
  return config
