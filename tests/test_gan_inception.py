"""Inception FID in the training loop: random weights in pytorch-fid's state-dict layout (the
names and shapes of tests/fixtures/fid_inception_features.npz, drawn by numpy: no torch),
converted by `python -m vision_jax.convert inception`, then a 2-step digits DCGAN run whose
evaluation reports `fid` / `kid` on those Inception features in results.json and in
TensorBoard, under the standard names (no `_digits` suffix, no classifier metric).

InceptionV3 at 299 x 299 on a CPU makes this 50-90 s on this 2-core machine (compiling the
network and one evaluation of 8 real and 8 generated images), over the suite's per-test
budget: it runs with VISION_JAX_SLOW_TESTS=1 (as the deep models of test_models.py)."""
import contextlib
import io
import json
import math
import os

import numpy as np
import pytest

from conftest import REPO
from test_writers import read_scalars
import torch_reference
from vision_jax import config as config_lib
from vision_jax import config_files
from vision_jax import convert
from vision_jax import train

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'fid_inception_features.npz')
SPLIT = 'test[:8]'
SLOW = os.environ.get('VISION_JAX_SLOW_TESTS') == '1'


def _converted_weights(tmp_path) -> str:
  with np.load(FIXTURE) as npz:
    names_shapes = [(str(n), tuple(s)) for n, s in zip(npz['names'],
                                                      json.loads(str(npz['shapes'])))]
  path = str(tmp_path / 'pt_inception-random.npz')
  np.savez(path, **torch_reference.random_state_dict(names_shapes, seed=0))
  out = str(tmp_path / 'fid_inception')
  with contextlib.redirect_stdout(io.StringIO()):
    assert convert.main(['inception', '--weights', path, '--output', out]) == 0
  return out


@pytest.mark.skipif(not SLOW, reason='InceptionV3 on CPU, 50-90 s; set '
                    'VISION_JAX_SLOW_TESTS=1 to run')
def test_inception_fid_and_kid_in_results_and_tensorboard(tmp_path, data_dir):
  del data_dir  # The digits, built for tfds.
  config = config_files.load_config_file(os.path.join(REPO, 'configs', 'digits_dcgan.py'))
  config.model.update(base_features=8, latent_dim=8)
  config.train.update(batch_size=16, steps=2, log_every=1, eval_every=0)
  config.checkpoint.every_steps = 2
  config.dataset.eval_splits = (SPLIT,)
  config.eval.batch_size = 8
  config.task.fid_classifier = ''
  config.task.fid_inception = _converted_weights(tmp_path)
  config_lib.validate(config, 1)
  workdir = str(tmp_path / 'gan')
  train.train_and_evaluate(config, workdir)

  with open(os.path.join(workdir, 'results.json')) as f:
    metrics = json.load(f)['eval'][SPLIT]
  assert metrics['num_samples'] == 8
  assert {'fid', 'kid', 'kid_std'} <= set(metrics)
  assert not [k for k in metrics if 'digits' in k or 'classifier' in k]
  assert math.isfinite(metrics['fid']) and metrics['fid'] > 0
  assert math.isfinite(metrics['kid'])
  scalars = read_scalars(workdir)
  for name in ('fid', 'kid'):
    assert scalars[(2, f'eval/{SPLIT}/{name}')] == pytest.approx(metrics[name], rel=1e-6)
