"""Shared test setup: CPU backend, a private tfds data dir, helpers to run the CLI."""
import os
import subprocess
import sys

import pytest

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """A tfds data dir with the digits built once per session (offline, ~5 s)."""
  path = str(tmp_path_factory.mktemp('tfds'))
  os.environ['TFDS_DATA_DIR'] = path
  from vision_jax.data import digits
  digits.prepare(path)
  return path


def run_cli(args: list[str], data_dir: str, *, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python -m vision_jax.main ARGS` as a user would; returns the finished process."""
  full_env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu', **(env or {}))
  return subprocess.run([sys.executable, '-m', 'vision_jax.main', *args], cwd=REPO,
                        env=full_env, capture_output=True, text=True, timeout=timeout)


def lower_digits_train_step(batch_size: int):
  """The training loop's own jitted step (train.jit_train_step) for the digits default
  config and a zero batch of `batch_size` 8x8 images, lowered (not run)."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from vision_jax import config as config_lib, parallel, train, train_state
  from vision_jax.data import input_pipeline
  config = config_lib.base_config()
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  graphdef, state, tx, schedule, shardings = train_state.create(
      config, mesh, num_classes=10, image_size=8, in_channels=1, steps_per_epoch=10)
  data = input_pipeline.Data(train=None, evals={}, num_train=10, eval_sizes={},
                             num_classes=10, image_size=8, channels=1, mean=(0.5,),
                             std=(0.5,), class_names=[], num_threads=0)
  step = train.jit_train_step(config, graphdef, tx, schedule, data, mesh, shardings)
  batch = {'image': jnp.zeros((batch_size, 8, 8, 1), jnp.uint8),
           'label': jnp.zeros((batch_size,), jnp.int32)}
  return step.lower(state, batch)
