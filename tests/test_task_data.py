"""The SSL and segmentation tasks' data: worker processes give the same batches as none,
and a dataset key the task would ignore is refused, never silently dropped."""
import os

import numpy as np
import pytest

from conftest import REPO
from vision_jax import config as config_lib
from vision_jax import config_files
from vision_jax import tasks
from vision_jax.data import input_pipeline
from vision_jax.errors import ConfigError


def _first_batches(config, workers: int, n: int = 2) -> list[dict]:
  config.dataset.num_workers = workers
  data = tasks.build(config).build_data(input_pipeline.HostShard())
  assert data.num_workers == workers
  with data.train_batches(3) as batches:
    return [next(batches) for _ in range(n)]


@pytest.mark.parametrize('name', ['digits_simclr.py', 'digits_segmentation.py'])
def test_two_workers_give_the_batches_of_none(name, data_dir):
  del data_dir
  config = config_files.load_config_file(os.path.join(REPO, 'configs', name))
  config.train.batch_size = 8
  none, two = _first_batches(config, 0), _first_batches(config, 2)
  for a, b in zip(none, two):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert not np.array_equal(none[0][sorted(none[0])[0]], none[1][sorted(none[1])[0]])


@pytest.mark.parametrize('name, key, value', [
    ('digits_simclr.py', 'randaugment', 'rand-m9-mstd0.5'),
    ('digits_simclr.py', 'preprocess', 'inception'),
    ('digits_byol.py', 'random_erasing', 0.25),
    ('digits_segmentation.py', 'classes', (1, 2)),
    ('digits_segmentation.py', 'eval_preprocess', 'center_crop'),
])
def test_a_dataset_key_the_task_ignores_is_refused(name, key, value):
  config = config_files.load_config_file(os.path.join(REPO, 'configs', name))
  config.dataset[key] = value
  with pytest.raises(ConfigError, match=rf'config.dataset.{key}=.*does not use'):
    config_lib.validate(config, num_devices=1)
