"""Issue 36, class 5: what a user is told names the real problem. Config files that are no
config, a std of 0, a checkpoint of another model or task, a weights file or a folder where
a run is expected, a checkpoint this user may not read, a backend that is not there. Messages
are checked through the CLI's entry function in this process; a missing backend and file
permissions through the real CLI in a subprocess (they are about the process)."""
import contextlib
import io
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from cli_in_process import one_paragraph, run_main
from conftest import REPO, run_cli

RUN = ['--config', 'configs/default.py', '--config.train.steps=10',
       '--config.train.log_every=5', '--config.train.eval_every=0',
       '--config.checkpoint.every_steps=5', '--config.optim.warmup_steps=2']


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir) -> pathlib.Path:
  """A finished 10-step convnet classification run (checkpoints 5 and 10)."""
  workdir = tmp_path_factory.mktemp('messages') / 'W'
  proc = run_cli(RUN + ['--workdir', str(workdir)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


# -------------------------------------------------------------- config files that are none

@pytest.mark.parametrize('name, text, needles', [
    ('run.json', '{"seed": 1}', ['is a JSON file', 'get_config()', 'config.json']),
    ('run.yaml', 'seed: 1\n', ['is not a Python file', 'configs/default.py']),
    ('d.py', 'def get_config():\n  return {"seed": 1}\n',
     ['get_config() returned a dict', 'base_config()']),
    ('n.py', 'def get_config():\n  config = 1\n',
     ['get_config() returned None', 'no return statement']),
    ('partial.py', 'import ml_collections\ndef get_config():\n'
     '  c = ml_collections.ConfigDict()\n  c.seed = 1\n  return c\n',
     ['lacks 10 keys of base_config()', 'checkpoint, dataset']),
])
def test_a_config_file_that_is_no_config(tmp_path, data_dir, name, text, needles):
  path = tmp_path / name
  path.write_text(text)
  code, err = run_main(['--config', str(path), '--workdir', str(tmp_path / 'w')])
  one_paragraph(code, err, *needles)
  for misleading in ('NoneType', 'KeyError', '--config is required'):
    assert misleading not in err


def test_a_std_of_zero_is_named_not_blamed_on_the_learning_rate(tmp_path, data_dir):
  code, err = run_main(RUN + ['--workdir', str(tmp_path / 'w'),
                              '--config.dataset.std=(0.0,)'])
  message = one_paragraph(code, err, 'config.dataset.std=(0.0,)', 'divide by zero')
  assert 'learning_rate' not in message


# ------------------------------------------------------- what init_from / --weights names

@pytest.mark.parametrize('config, overrides, needles', [
    ('configs/default.py', ['--config.model.name=resnet18'],
     ['This checkpoint is a convnet trained for classification, and this run builds a '
      'resnet18 for classification', 'and ', 'more']),
    ('configs/digits_segmentation.py', [],
     ['This checkpoint is a convnet trained for classification, and this run builds a '
      'fcn_cifar_resnet18 for segmentation']),
])
def test_init_from_another_architecture_or_task_says_what_the_checkpoint_is(
    tmp_path, data_dir, trained, config, overrides, needles):
  code, err = run_main(['--config', config, '--workdir', str(tmp_path / 'w'),
                        '--config.train.steps=2', '--config.optim.warmup_steps=0',
                        f'--config.init_from.checkpoint={trained}', *overrides])
  message = one_paragraph(code, err, *needles)
  assert len(message) < 1200  # Three paths and a count, not a hundred paths.


def _weights_dir(tmp_path):
  (tmp_path / 'hub').mkdir()
  (tmp_path / 'hub' / 'resnet50.safetensors').write_bytes(b'\0' * 16)
  return tmp_path / 'hub'


@pytest.mark.parametrize('make, needles', [
    (lambda p: (p / 'r50.safetensors').write_bytes(b'\0') and p / 'r50.safetensors',
     ['is a weights file (.safetensors), not a run', 'python -m vision_jax.convert']),
    (lambda p: (p / 'r50.pth').write_bytes(b'\0') and p / 'r50.pth',
     ['is a weights file (.pth)', 'vision_jax.convert']),
    (_weights_dir, ['is a directory but not the workdir of a run',
                    'resnet50.safetensors', 'vision_jax.convert']),
    (lambda p: (p / 'empty').mkdir() or p / 'empty', ['not the workdir of a run',
                                                      'it is empty']),
    (lambda p: (p / 'notes.txt').write_text('x') and p / 'notes.txt', ['is a file, not a run']),
    (lambda p: p / 'typo', ['does not exist']),
])
def test_init_from_names_what_it_was_given(tmp_path, data_dir, make, needles):
  path = make(tmp_path)
  code, err = run_main(RUN + ['--workdir', str(tmp_path / 'w'),
                              f'--config.init_from.checkpoint={path}'])
  one_paragraph(code, err, f'config.init_from.checkpoint={path}', *needles)


@pytest.mark.parametrize('make, needles', [
    (_weights_dir, ['is a directory, not a weights file', 'resnet50.safetensors']),
    (lambda p: p, ['is a vision_jax workdir', 'needs no conversion']),
])
def test_convert_weights_naming_a_directory(tmp_path, trained, make, needles):
  from vision_jax import convert  # pylint: disable=g-import-not-at-top
  path = make(tmp_path) if make is _weights_dir else trained
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = convert.main(['torchvision', '--arch', 'resnet50', '--weights', str(path),
                         '--eval_transform', 'torchvision_v1', '--output',
                         str(tmp_path / 'out')])
  one_paragraph(2 if code == 2 else code, err.getvalue(), *needles)
  assert 'does not exist' not in err.getvalue()


# ------------------------------------------------------------ the process and its rights

def _as_unprivileged() -> list[str]:
  """A command prefix under which file permissions hold (root drops its override)."""
  if os.geteuid() != 0:
    return []
  if shutil.which('capsh') and subprocess.run(
      ['capsh', '--drop=cap_dac_override,cap_dac_read_search', '--', '-c', 'true'],
      capture_output=True).returncode == 0:
    return ['capsh', '--drop=cap_dac_override,cap_dac_read_search', '--', '-c',
            'exec "$0" "$@"']
  pytest.skip('running as root without capsh: permissions cannot be enforced')


@pytest.mark.parametrize('args', [
    ['--mode=eval'],
    RUN + ['--config.train.steps=15', '--config.checkpoint.on_corrupt=previous'],
])
def test_an_unreadable_checkpoint_is_not_called_damaged(tmp_path, data_dir, trained, args):
  workdir = pathlib.Path(shutil.copytree(trained, tmp_path / 'W'))
  data = workdir / 'checkpoints' / '10' / 'state' / 'ocdbt.process_0'
  for p in [data, *data.rglob('*')]:
    p.chmod(0o300 if p.is_dir() else 0o200)  # Write, no read.
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu')
  proc = subprocess.run(_as_unprivileged() + [sys.executable, '-m', 'vision_jax.main', *args,
                                              '--workdir', str(workdir)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  message = _first_error(proc)
  assert 'checkpoints/10 cannot be read by this user' in message, message
  assert 'permission denied' in message and 'no sign of damage' in message
  assert 'damaged' not in message.replace('no sign of damage', '')
  assert 'on_corrupt=previous' not in message
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '5']  # Nothing moved aside.


def _first_error(proc) -> str:
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0]


@pytest.mark.parametrize('platform, needles', [
    ('gpu', ["'gpu' backend", 'jax[cuda12]', 'JAX_PLATFORMS=cpu']),
    ('cuda', ["'cuda' backend", 'jax[cuda12]']),
    ('tpu', ["'tpu' backend", 'jax[tpu]']),
])
def test_a_backend_that_is_not_there(tmp_path, data_dir, platform, needles):
  import jax  # pylint: disable=g-import-not-at-top
  if platform in ('gpu', 'cuda') and jax.devices()[0].platform == 'gpu':
    pytest.skip('this machine has a GPU')
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS=platform)
  proc = subprocess.run([sys.executable, '-m', 'vision_jax.main', *RUN, '--workdir',
                         str(tmp_path / 'w')], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  message = _first_error(proc)
  for needle in needles:
    assert needle in message, message
  assert not (tmp_path / 'w').exists()  # Refused before the workdir was made.
