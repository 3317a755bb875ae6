"""A workdir that is not what it seems: checkpoints say which run wrote them, and a run
refuses others' (a symlinked or copied-in checkpoints/, changed keys that define the run),
a checkpoints/ that is a file, and never hangs after a failed save; a copied workdir
resumes bit-identically as the same run."""
import hashlib
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from cli_in_process import one_paragraph, run_main
from conftest import REPO, TINY_RUN, run_cli


def _hashes(path: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(path.rglob('*')) if p.is_file()}


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(src, dst, symlinks=True))


def _error(proc: subprocess.CompletedProcess, *needles: str) -> str:
  return one_paragraph(proc.returncode, proc.stderr, *needles)


def test_checkpoints_record_the_run_that_wrote_them(tiny_run):
  run = json.loads((tiny_run / 'run.json').read_text())
  for step in (10, 20):
    record = json.loads((tiny_run / 'checkpoints' / str(step) / 'data' / 'metadata').read_text())
    assert record['run'] == run['run'] and len(run['run']) == 32
    assert record['run_keys']['model.name'] == 'convnet'
    assert record['run_keys']['dataset.name'] == 'digits'
    assert 'train.steps' not in record['run_keys']  # Free to change on resume.
    assert len(record['config_fingerprint']) == 16


def test_a_checkpoints_symlink_to_another_run_is_refused(tmp_path, data_dir, tiny_run):
  first = _copy(tiny_run, tmp_path / 'A')
  second = tmp_path / 'B'
  second.mkdir()
  (second / 'checkpoints').symlink_to(first / 'checkpoints')
  before = _hashes(first)
  proc = run_cli(TINY_RUN + ['--workdir', str(second), '--config.train.steps=30',
                             '--config.optim.learning_rate=0.01'], data_dir)
  message = _error(proc, 'is a symlink to', str(first / 'checkpoints'), 'written by run',
                   'no run of its own', 'Nothing was changed', 'init_from.checkpoint')
  assert 'Compiling' not in proc.stderr and 'Dataset digits' not in proc.stderr, message
  assert _hashes(first) == before  # Not resumed, nothing written into it.
  assert sorted(os.listdir(second)) == ['checkpoints']


def test_checkpoints_that_is_a_file_is_refused_at_start_up(tmp_path, data_dir):
  workdir = tmp_path / 'F'
  workdir.mkdir()
  (workdir / 'checkpoints').write_text('not a directory')
  proc = run_cli(TINY_RUN + ['--workdir', str(workdir)], data_dir, timeout=120)
  _error(proc, 'checkpoints is a file, not a directory', 'Nothing was changed')
  assert 'Config:' not in proc.stderr  # Before the config is even built, let alone compiled.
  assert sorted(os.listdir(workdir)) == ['checkpoints']


def test_a_copied_workdir_resumes_as_the_same_run_bit_identically(tmp_path, data_dir,
                                                                  tiny_run):
  from vision_jax import checkpoint  # pylint: disable=g-import-not-at-top
  copy = _copy(tiny_run, tmp_path / 'elsewhere' / 'C')
  shutil.rmtree(copy / 'checkpoints' / '20')  # As if killed after step 10's save.
  proc = run_cli(TINY_RUN + ['--workdir', str(copy)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Resumed from checkpoint at step 10' in proc.stderr
  assert json.loads((copy / 'run.json').read_text()) == json.loads(
      (tiny_run / 'run.json').read_text())  # The identity travelled with the workdir.
  (step_a, a), (step_b, b) = checkpoint.read_state(str(tiny_run)), checkpoint.read_state(
      str(copy))
  assert step_a == step_b == 20
  leaves_a, leaves_b = [np.asarray(x) for x in _leaves(a)], [np.asarray(x) for x in _leaves(b)]
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(tree)


def _refused_in_process(workdir: pathlib.Path, *overrides: str) -> str:
  before = _hashes(workdir)
  code, err = run_main(TINY_RUN + ['--workdir', str(workdir), '--config.train.steps=30',
                                   *overrides])
  message = one_paragraph(code, err, 'Nothing was changed')
  assert _hashes(workdir) == before
  return message


def test_keys_that_define_the_run_may_not_change_on_resume(tmp_path, data_dir, tiny_run):
  workdir = _copy(tiny_run, tmp_path / 'W')
  for override, shown in (('--config.optim.name=sgd', 'optim.name: "adamw" -> "sgd"'),
                          ('--config.dataset.image_size=12', 'dataset.image_size: 0 -> 12'),
                          ('--config.task.num_classes=12', 'task.num_classes: 0 -> 12'),
                          ('--config.model.width=32', 'model.width: 64 -> 32')):  # (Unlisted.)
    message = _refused_in_process(workdir, override)
    assert shown in message and 'latest step 20' in message, message
    assert f'--config.init_from.checkpoint={workdir}' in message


def test_checkpoints_copied_in_without_their_run_are_refused(tmp_path, data_dir, tiny_run):
  workdir = tmp_path / 'D'
  workdir.mkdir()
  shutil.copytree(tiny_run / 'checkpoints', workdir / 'checkpoints')
  message = _refused_in_process(workdir)
  assert 'no run of its own yet' in message and 'copy that workdir\'s run.json' in message
  shutil.copy(tiny_run / 'run.json', workdir / 'run.json')  # The way to adopt them.
  from vision_jax import config as config_lib, run_identity  # pylint: disable=g-import-not-at-top
  assert run_identity.check_resume(str(workdir), config_lib.base_config())['run'] == (
      json.loads((tiny_run / 'run.json').read_text())['run'])


def test_old_checkpoints_without_a_run_are_adopted_and_checked_against_config_json(
    tmp_path, tiny_run):
  """Checkpoints saved before they recorded their run: the workdir's own, unless its
  config.json says the keys that define the run were different."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from vision_jax import config as config_lib, run_identity  # pylint: disable=g-import-not-at-top
  workdir = _copy(tiny_run, tmp_path / 'old')
  (workdir / 'run.json').unlink()
  for step in (10, 20):
    path = workdir / 'checkpoints' / str(step) / 'data' / 'metadata'
    record = json.loads(path.read_text())
    path.write_text(json.dumps({k: record[k] for k in ('next_step', 'seed', 'global_batch')}))
  config = config_lib.base_config()
  warnings = []
  handler = lambda msg, *args: warnings.append(msg % args)
  original, logging.warning = logging.warning, handler
  try:
    assert run_identity.check_resume(str(workdir), config) is None  # Adopted (no run yet).
  finally:
    logging.warning = original
  assert len(warnings) == 1 and 'adopts them' in warnings[0], warnings
  config.model.name = 'resnet18'
  try:
    run_identity.check_resume(str(workdir), config)
  except run_identity.RunIdentityError as e:
    assert 'model.name: "convnet" -> "resnet18"' in str(e)
  else:
    raise AssertionError('a changed model was not refused')


# ------------------------------------------- eval, predict and export load only their own

IMAGE = str(sorted(pathlib.Path(REPO, 'docs', 'digits').iterdir())[0])
MODES = {'eval': ['--mode=eval'], 'predict': ['--mode=predict', '--images', IMAGE],
         'export': ['--mode=export']}


def _another_run_linked(tmp_path: pathlib.Path, tiny_run: pathlib.Path) -> tuple:
  """(A, B): B is a run of its own whose checkpoints/ is a symlink to run A's."""
  first, second = _copy(tiny_run, tmp_path / 'A'), _copy(tiny_run, tmp_path / 'B')
  run = json.loads((second / 'run.json').read_text())
  (second / 'run.json').write_text(json.dumps({**run, 'run': 'b' * 32}))
  shutil.rmtree(second / 'checkpoints')
  (second / 'checkpoints').symlink_to(first / 'checkpoints')
  return first, second


def test_eval_predict_export_refuse_another_runs_checkpoints(tmp_path, data_dir, tiny_run):
  first, second = _another_run_linked(tmp_path, tiny_run)
  before = _hashes(tmp_path)
  for mode, args in MODES.items():
    code, err = run_main(args + ['--workdir', str(second)])
    message = one_paragraph(code, err, f'--mode={mode} would present another run',
                            'is a symlink to', str(first / 'checkpoints'),
                            f"this workdir's run is {'b' * 32}", f'--workdir={first}',
                            'Nothing was changed')
    assert 'Config:' not in err, message  # Refused before anything is loaded.
  (tmp_path / 'D').mkdir()  # Copied in without their run.json.
  for name in ('config.json', 'dataset.json'):
    shutil.copy(first / name, tmp_path / 'D' / name)
  shutil.copytree(first / 'checkpoints', tmp_path / 'D' / 'checkpoints')
  code, err = run_main(['--mode=export', '--workdir', str(tmp_path / 'D')])
  one_paragraph(code, err, 'no run of its own yet', "copy that workdir's run.json")
  shutil.rmtree(tmp_path / 'D')
  assert _hashes(tmp_path) == before


@pytest.mark.parametrize('override, shown', [
    ('--config.model.width=32', 'model.width: 64 -> 32'),  # An option config.json omits.
    ('--config.model.hidden=8', 'model.hidden: 1024 -> 8'),
    ('--config.optim.name=sgd', 'optim.name: "adamw" -> "sgd"'),  # Its state is restored.
])
def test_eval_predict_export_refuse_overrides_of_keys_that_define_the_model(
    override, shown, tmp_path, data_dir, tiny_run):
  workdir = _copy(tiny_run, tmp_path / 'W')
  before = _hashes(workdir)
  for mode, args in MODES.items():
    for config in ([], ['--config', 'configs/default.py']):  # config.json, or the file.
      code, err = run_main(args + config + ['--workdir', str(workdir), override])
      message = one_paragraph(code, err, 'Checkpoint 20', f'--mode={mode} would',
                              shown, 'Omit those overrides', 'Nothing was changed')
      assert 'Config:' not in err, message
  assert _hashes(workdir) == before


def test_eval_may_change_the_data(tmp_path, data_dir, tiny_run):
  """Keys that define a training run's data but not what its checkpoint holds (the
  training split, the image size) may differ in --mode=eval: it scores the same model."""
  workdir = _copy(tiny_run, tmp_path / 'W')
  code, err = run_main(['--mode=eval', '--workdir', str(workdir),
                        '--config.dataset.train_split=train[:50%]'])
  assert code == 0, err[-3000:]
  assert json.loads((workdir / 'results.json').read_text())['step'] == 20


def test_a_copy_and_old_checkpoints_without_a_run_still_load(tmp_path, data_dir, tiny_run):
  from vision_jax import config as config_lib, run_identity  # pylint: disable=g-import-not-at-top
  copy = _copy(tiny_run, tmp_path / 'elsewhere' / 'C')
  code, err = run_main(['--mode=predict', '--images', IMAGE, '--workdir', str(copy)])
  assert code == 0, err[-3000:]  # A copied workdir is its run.
  old = _copy(tiny_run, tmp_path / 'old')
  (old / 'run.json').unlink()
  for step in (10, 20):  # As saved before checkpoints recorded their run.
    path = old / 'checkpoints' / str(step) / 'data' / 'metadata'
    record = json.loads(path.read_text())
    path.write_text(json.dumps({k: record[k] for k in ('next_step', 'seed', 'global_batch')}))
  code, err = run_main(['--mode=eval', '--workdir', str(old)])
  assert code == 0, err[-3000:]
  assert json.loads((old / 'results.json').read_text())['step'] == 20
  code, err = run_main(['--mode=export', '--workdir', str(old), '--config.model.hidden=8'])
  one_paragraph(code, err, 'model.hidden: 1024 -> 8')  # Compared with config.json.
  config = config_lib.base_config()
  config.model.width = 64  # Listed, at the model's default: the same model.
  run_identity.check_load(str(tiny_run), config, 'eval', 10)


def test_export_of_a_workdir_linked_to_another_runs_checkpoints_through_the_cli(
    tmp_path, data_dir, tiny_run):
  first, second = _another_run_linked(tmp_path, tiny_run)
  before = _hashes(tmp_path)
  _error(run_cli(['--mode=export', '--workdir', str(second)], data_dir),
         '--mode=export would present another run', 'is a symlink to')
  assert _hashes(tmp_path) == before and not (second / 'export').exists()
  assert not (second / '.vision_jax.lock').exists()


def _small_file_limit():
  """Files over 1 MiB cannot be written (a full disk, for a checkpoint)."""
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_a_failed_save_never_hangs_and_keeps_the_logs(tmp_path, data_dir):
  workdir = tmp_path / 'full'
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'vision_jax.main', *TINY_RUN, '--workdir',
                         str(workdir)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120, preexec_fn=_small_file_limit)  # A hang fails here.
  _error(proc, 'Saving checkpoint 10', 'failed', 'No earlier checkpoint was saved')
  steps = [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').open()]
  # The lines of the steps it ran are kept (the failed background write of step 10 is
  # noticed at a later step on a busy machine).
  assert steps[:2] == [5, 10] and steps == list(range(5, 5 * len(steps) + 1, 5)), steps
  assert [p for p in os.listdir(workdir) if p.startswith('events.out.tfevents')]
  assert not (workdir / '.vision_jax.lock').exists()
