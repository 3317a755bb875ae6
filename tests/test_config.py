"""Config validation: every bad value is caught before compiling, naming key and fix."""
import pytest

from vision_jax import config as config_lib
from vision_jax import config_files
from vision_jax.config import ConfigError, base_config


def test_base_config_is_valid():
  config_lib.validate(base_config(), num_devices=1)


def test_unknown_section_key_suggests_the_right_one():
  config = base_config()
  config.optim.learning_rat = 0.1  # A typo in a recipe file.
  with pytest.raises(ConfigError, match=r"optim.learning_rat.*Did you mean 'learning_rate'"):
    config_lib.validate(config, num_devices=1)


def test_model_kwargs_are_checked_against_the_constructor():
  config = base_config()
  config.model.depth = 3
  with pytest.raises(ConfigError, match=r"config.model.depth is not an option of model "
                                        r"'convnet'.* Its options: .*hidden"):
    config_lib.validate(config, num_devices=1)


def test_unknown_model_lists_known_ones():
  config = base_config()
  config.model.name = 'resnet5'
  with pytest.raises(ConfigError, match=r"Unknown model.*'resnet5'.*Known models: .*convnet"):
    config_lib.validate(config, num_devices=1)


@pytest.mark.parametrize('key', ['train.batch_size', 'train.steps', 'eval.batch_size'])
@pytest.mark.parametrize('value', [0, -1])
def test_non_positive_sizes(key, value):
  config = base_config()
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(ConfigError, match=f'config.{key}={value} is out of range.*whole number >= 1'):
    config_lib.validate(config, num_devices=1)


def test_batch_must_divide_over_devices():
  config = base_config()
  config.eval.batch_size = 250
  with pytest.raises(ConfigError, match=r'eval.batch_size=250 is not divisible by the 8 '
                                        r'devices. Use a multiple of 8, e.g. 248'):
    config_lib.validate(config, num_devices=8)


def test_override_error_names_the_missing_level(tmp_path):
  argv = ['main', '--config', 'configs/default.py', '--config.train.stepz=3']
  message = config_files.explain_override_error(argv, AttributeError('stepz'))
  assert "config.train has no key 'stepz'" in message and "Did you mean 'steps'" in message


def test_differences_name_each_changed_leaf_with_both_values():
  old = {'seed': 0, 'train': {'steps': 30, 'batch_size': 128}, 'optim': {'wd_rules': [['a', 1]]}}
  new = {'seed': 0, 'train': {'steps': 40, 'batch_size': 128}, 'optim': {'wd_rules': [['a', 2]]},
         'sweep': {'n': 2}}
  assert config_files.differences(old, new) == [
      'optim.wd_rules: [["a", 1]] -> [["a", 2]]', 'sweep: <absent> -> {"n": 2}',
      'train.steps: 30 -> 40']
  assert config_files.differences(old, old) == []
