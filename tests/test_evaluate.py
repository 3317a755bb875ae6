"""--mode=eval on a trained workdir, and the short training run the inference tests share."""
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from conftest import run_cli

STEPS = 150
TRAIN_ARGS = ['--config', 'configs/default.py', f'--config.train.steps={STEPS}',
              '--config.train.log_every=10', '--config.train.eval_every=50',
              '--config.checkpoint.every_steps=50']


def trained_workdir(tmp_path_factory, data_dir) -> pathlib.Path:
  """One short default run per test session, shared by the eval, predict, export and
  visualize tests. Treat it as read-only: copy it (`copy_run`) before writing into it."""
  workdir = tmp_path_factory.getbasetemp() / 'trained_default'
  if not (workdir / 'results.json').exists():
    proc = run_cli(TRAIN_ARGS + ['--workdir', str(workdir)], data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def copy_run(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.copytree(src, dst)
  return dst


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, data_dir) -> pathlib.Path:
  return trained_workdir(tmp_path_factory, data_dir)


def test_eval_reproduces_training_results(run_dir, tmp_path, data_dir):
  trained = json.loads((run_dir / 'results.json').read_text())
  confusion = json.loads((run_dir / 'confusion_test.json').read_text())
  workdir = copy_run(run_dir, tmp_path / 'run')
  for name in ('results.json', 'confusion_test.json', 'confusion_test.png'):
    (workdir / name).unlink()

  proc = run_cli(['--mode=eval', '--workdir', str(workdir)], data_dir)  # Its config.json.
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == results
  assert results['step'] == STEPS == trained['step']
  test, want = results['eval']['test'], trained['eval']['test']
  assert test['num_examples'] == want['num_examples'] == 360  # Every example once.
  assert test['accuracy'] == want['accuracy'] and test['top5'] == want['top5']
  assert test['per_class_accuracy'] == want['per_class_accuracy']
  assert test['loss'] == pytest.approx(want['loss'], rel=1e-5)
  assert json.loads((workdir / 'confusion_test.json').read_text()) == confusion
  assert (workdir / 'confusion_test.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['100', '150', '50']  # Untouched.


def test_eval_without_checkpoint_is_a_clear_error(run_dir, tmp_path, data_dir):
  workdir = tmp_path / 'untrained'
  workdir.mkdir()
  for name in ('config.json', 'dataset.json'):  # A run stopped before its first save.
    shutil.copy(run_dir / name, workdir / name)
  proc = run_cli(['--mode=eval', '--workdir', str(workdir)], data_dir)
  assert proc.returncode == 2
  assert 'No checkpoint in' in proc.stderr and 'Train first' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert sorted(os.listdir(workdir)) == ['config.json', 'dataset.json']  # Nothing created.


def test_load_a_given_checkpoint(run_dir):
  from vision_jax import inference
  config = inference.read_config(str(run_dir))
  latest = inference.load(str(run_dir), config)
  config.eval.checkpoint = '50'
  earlier = inference.load(str(run_dir), config)
  assert (latest.step, earlier.step) == (STEPS, 50)
  images = np.zeros((2, 8, 8, 1), np.uint8)
  assert not np.allclose(latest.logits(images), earlier.logits(images))


def test_resolve_step(tmp_path):
  from vision_jax import inference
  for step in (50, 100):
    (tmp_path / 'checkpoints' / str(step)).mkdir(parents=True)
  (tmp_path / 'checkpoints' / '150.orbax-checkpoint-tmp-1').mkdir()  # An unfinished save.
  assert inference.resolve_step(str(tmp_path), '') == (str(tmp_path), 100)
  assert inference.resolve_step(str(tmp_path), '50') == (str(tmp_path), 50)
  folder = str(tmp_path / 'checkpoints' / '50')
  assert inference.resolve_step('/elsewhere', folder) == (str(tmp_path), 50)
  with pytest.raises(inference.WorkdirError, match='is not a saved step; .* has 50, 100'):
    inference.resolve_step(str(tmp_path), '75')
  with pytest.raises(inference.WorkdirError, match='neither a step number'):
    inference.resolve_step(str(tmp_path), str(tmp_path / 'nope'))


def test_results_json_keeps_one_checkpoint_per_file(tmp_path):
  from vision_jax import evaluate
  (tmp_path / 'results.json').write_text(json.dumps(
      {'step': 100, 'eval': {'test': {'accuracy': 0.5}, 'val': {'accuracy': 0.4}}}))
  counts = [[1, 0], [0, 1]]
  same = evaluate.write_results(str(tmp_path), 100, {'test': {'accuracy': 0.6,
                                                             'confusion_matrix': counts}},
                                ['a', 'b'])
  assert same == {'step': 100, 'eval': {'test': {'accuracy': 0.6}, 'val': {'accuracy': 0.4}}}
  assert json.loads((tmp_path / 'results.json').read_text()) == same
  assert json.loads((tmp_path / 'confusion_test.json').read_text()) == counts
  assert (tmp_path / 'confusion_test.png').exists()
  other = evaluate.write_results(str(tmp_path), 50, {'test': {'accuracy': 0.3,
                                                             'confusion_matrix': counts}},
                                 ['a', 'b'])
  assert other == {'step': 50, 'eval': {'test': {'accuracy': 0.3}}}
