"""Shared test setup: CPU backend, a private tfds data dir, helpers to run the CLI."""
import hashlib
import os
import signal
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def _cpu_flags_digest() -> str:
  """A digest of this CPU's instruction-set flags: executables compiled for one machine's
  CPU (AVX-512, say) must not be loaded on another's."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = next((line for line in f if line.startswith('flags')), '')
  except OSError:
    flags = ''
  return hashlib.sha256(flags.encode()).hexdigest()[:12]


# One XLA compilation cache for the whole suite: both xdist workers and every CLI process
# they start (the environment is inherited) reuse a program another test compiled, e.g. the
# digits step that many CLI tests train. JAX keys an entry by the program, its options and
# the jax version; the directory adds the CPU's flags.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), f'vision_jax_tests_xla_cache_{_cpu_flags_digest()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.3')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A suite started as a background job of a non-interactive shell (`pytest ... &` in a
# script) starts with SIGINT ignored, and every process it starts would inherit that (a
# test's Ctrl-C to a CLI run would go unheard): handle it as a process started from a
# terminal does.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """A tfds data dir with the digits built once per session (offline, ~5 s)."""
  path = str(tmp_path_factory.mktemp('tfds'))
  os.environ['TFDS_DATA_DIR'] = path
  from vision_jax.data import digits
  digits.prepare(path)
  return path


def signal_dispositions() -> tuple:
  """How this process handles SIGINT and SIGTERM: Python's handlers, and (Linux) whether
  the OS ignores them, which is what a child process inherits."""
  ignored = 0
  try:
    with open('/proc/self/status') as f:
      ignored = int(next(l for l in f if l.startswith('SigIgn:')).split()[1], 16)
  except (OSError, StopIteration):
    pass
  return tuple((signal.getsignal(s), bool(ignored & (1 << (s - 1))))
               for s in (signal.SIGINT, signal.SIGTERM))


@pytest.fixture(autouse=True)
def _signals_left_as_found():
  """Fails (at its teardown) a test that leaves SIGINT or SIGTERM handled otherwise than
  it found them: a later test's subprocess would inherit an ignored signal and never stop
  (code that sets a handler restores the previous one)."""
  before = signal_dispositions()
  yield
  after = signal_dispositions()
  assert after == before, f'SIGINT, SIGTERM handling left changed: {before} -> {after}'


def run_cli(args: list[str], data_dir: str, *, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python -m vision_jax.main ARGS` as a user would; returns the finished process."""
  full_env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu', **(env or {}))
  return subprocess.run([sys.executable, '-m', 'vision_jax.main', *args], cwd=REPO,
                        env=full_env, capture_output=True, text=True, timeout=timeout)


def loop_train_step(config, *, image_size: int, channels: int, num_classes: int = 10,
                    platform: str | None = None):
  """(the training loop's own jitted step for `config`, its initial state) on one device,
  the model built on the kernels `platform` would use (default: this backend)."""
  # pylint: disable=g-import-not-at-top
  import jax
  from vision_jax import parallel, steps, tasks, train_state
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  task = tasks.build(config)
  structure, state = train_state.create(
      task, mesh, num_classes=num_classes, image_size=image_size, in_channels=channels,
      steps_per_epoch=10, platform=platform)
  step = steps.jit_train_step(task, structure, mean=(0.5,) * channels,
                              std=(0.5,) * channels, num_classes=num_classes, mesh=mesh)
  return step, state


def lower_digits_train_step(batch_size: int):
  """The training loop's own jitted step (steps.jit_train_step) for the digits default
  config and a zero batch of `batch_size` 8x8 images, lowered (not run)."""
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from vision_jax import config as config_lib
  step, state = loop_train_step(config_lib.base_config(), image_size=8, channels=1)
  batch = {'image': jnp.zeros((batch_size, 8, 8, 1), jnp.uint8),
           'label': jnp.zeros((batch_size,), jnp.int32)}
  return step.lower(state, batch)


TINY_RUN = ['--config', 'configs/default.py', '--config.train.steps=20',
            '--config.train.log_every=5', '--config.train.eval_every=0',
            '--config.checkpoint.every_steps=10', '--config.optim.warmup_steps=2']


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory, data_dir):
  """A finished 20-step run of configs/default.py (TINY_RUN; checkpoints 10 and 20),
  shared by the modules that copy it before touching it."""
  workdir = tmp_path_factory.mktemp('tiny_run') / 'W'
  proc = run_cli(TINY_RUN + ['--workdir', str(workdir)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir
