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
