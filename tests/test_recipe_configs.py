"""The ResNet strikes back config's three procedures: each builds and validates for 8 devices with the
hyper-parameters of its procedure, and A1 (the one with every part on: RandAugment,
repeated augmentation, mixup / cutmix, stochastic depth, BCE with smoothing and threshold,
LAMB), given A3's larger eval size, trains 2 steps on mocked ImageNet
(tfds.testing.mock_data) through the real loop. Only sizes shrink (batch, image size, the
network: a width-8 ResNet-18 of the same family); one end-to-end run, since compiling the
step dominates (a width-8 ResNet-50's took 75-100 s on a busy 2-core machine)."""
import json
import os

import pytest
import tensorflow_datasets as tfds

from vision_jax import config as config_lib
from vision_jax import config_files
from vision_jax import train
from vision_jax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RSB = {'a1': ('80.4', 600), 'a2': ('79.8', 300), 'a3': ('78.1', 100)}


@pytest.fixture
def online(monkeypatch):
  monkeypatch.setattr(sources, '_check_online', lambda name, data_dir: None)


@pytest.mark.parametrize('variant', sorted(RSB))
def test_rsb_config_cites_its_source_and_validates(variant):
  path = 'configs/imagenet2012_resnet50_rsb.py'
  config = config_files.load_config_file(os.path.join(REPO, f'{path}:{variant}'))
  config_lib.validate(config, 8)
  with open(os.path.join(REPO, path)) as f:
    doc = f.read()
  top1, epochs = RSB[variant]
  assert 'python -m vision_jax.main --config configs/imagenet2012_resnet50_rsb.py:a' in doc
  assert f'{top1}%' in doc and 'ResNet strikes back' in doc and '2110.00476' in doc
  assert config.train.steps == epochs * (1_281_167 // 2048)
  assert (config.optim.name, config.optim.loss, config.optim.bce_target_threshold) == (
      'lamb', 'bce', 0.2)
  assert config.dataset.randaugment.startswith('rand-m') and config.dataset.cutmix_alpha == 1
  assert (config.dataset.image_size, config.dataset.eval_image_size) == (
      (160, 224) if variant == 'a3' else (224, 0))
  assert config.dataset.repeated_aug == (1 if variant == 'a3' else 3)


def test_rsb_a1_trains_two_steps_on_mock_imagenet(online, tmp_path):
  config = config_files.load_config_file(
      os.path.join(REPO, 'configs/imagenet2012_resnet50_rsb.py:a1'))
  config.dataset.download = True  # mock_data's builders are never "prepared".
  config.dataset.image_size, config.dataset.eval_image_size = 32, 48  # A3: 160 / 224.
  config.dataset.num_workers = 0
  # ResNet-18 (same family, same drop-path code) at width 8: its step compiles ~3x faster.
  config.model.name, config.model.width, config.model.dtype = 'resnet18', 8, 'float32'
  config.train.batch_size, config.eval.batch_size = 6, 6
  config.train.steps, config.train.log_every, config.train.eval_every = 2, 1, 0
  config.optim.warmup_epochs = 0.0
  config.checkpoint.every_steps = 2
  config_lib.validate(config, 1)
  with tfds.testing.mock_data(num_examples=8):
    train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  assert results['step'] == 2 and results['eval']['validation']['num_examples'] == 8
  with open(tmp_path / 'dataset.json') as f:
    assert json.load(f)['image_size'] == 48  # What inference will feed.
