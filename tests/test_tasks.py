"""Tasks in the one training loop: segmentation and SimCLR through train, eval, predict and
export; their metrics against references; every new config for 2 steps; bad input."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.metrics import jaccard_score

from conftest import REPO, run_cli
from segmentation_mocks import mock_pets
from vision_jax import config as config_lib
from vision_jax import config_files
from vision_jax import evaluate
from vision_jax import parallel
from vision_jax import tasks
from vision_jax import train
from vision_jax.data import sources
from vision_jax.errors import ConfigError


def _config(path: str, **overrides) -> config_lib.ml_collections.ConfigDict:
  config = config_files.load_config_file(os.path.join(REPO, 'configs', path))
  for dotted, value in overrides.items():
    node, keys = config, dotted.split('.')
    for key in keys[:-1]:
      node = node[key]
    with node.unlocked():
      node[keys[-1]] = value
  return config


def _two_steps(config, workdir: str, **overrides) -> dict:
  """Validates `config` with small overrides and trains it for 2 steps in-process."""
  base = {'train.steps': 2, 'train.eval_every': 0, 'checkpoint.every_steps': 2,
          'train.log_every': 1, 'init_from.checkpoint': '', 'optim.warmup_steps': 0,
          'optim.warmup_epochs': 0.0}
  for dotted, value in (base | overrides).items():
    section, key = dotted.split('.')
    config[section][key] = value
  config_lib.validate(config, num_devices=1)
  return train.train_and_evaluate(config, workdir)


def test_segmentation_eval_driver_miou_equals_sklearn_with_a_padded_last_batch():
  config = config_lib.base_config()
  config.task.name = 'segmentation'
  task = tasks.build(config)
  rng = np.random.default_rng(0)
  k, n, b = 4, 10, 4  # 3 batches; the last one holds 2 real rows and 2 padded copies.
  labels = rng.integers(0, k, (n, 6, 6)).astype(np.uint8)
  labels[rng.random(labels.shape) < 0.2] = 255
  logits = rng.normal(size=(n, 6, 6, k)).astype(np.float32)
  batches = []
  for start in range(0, n, b):
    rows = np.arange(start, start + b)
    real = np.minimum(rows, n - 1)
    batches.append({'logits': logits[real], 'label': labels[real],
                    'mask': (rows < n).astype(np.float32)})
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  step = jax.jit(lambda state, batch: task.eval_outputs(batch['logits'], batch))
  out = task.summarize(evaluate.collect(step, None, batches, mesh), num_classes=k,
                       class_names=list('abcd'))
  keep = labels != 255
  y, p = labels[keep], logits.argmax(-1)[keep]
  present = sorted(set(y.tolist()) | set(p.tolist()))
  reference = jaccard_score(y, p, labels=present, average=None)
  assert out['mean_iou'] == pytest.approx(reference.mean(), rel=1e-12)
  np.testing.assert_allclose([out['per_class_iou'][c] for c in 'abcd'], reference)
  assert out['pixel_accuracy'] == pytest.approx(np.mean(y == p))
  assert out['num_examples'] == n and out['num_pixels'] == keep.sum()
  z = logits[keep]
  nll = np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]
  assert out['loss'] == pytest.approx(nll.mean(), rel=1e-5)
  assert np.asarray(out['confusion_matrix']).sum() == keep.sum()


@pytest.mark.parametrize('overrides, message', [
    ({'task.name': 'segmentation', 'model.name': 'convnet'},
     r"config.model.name='convnet' is a classification model, but config.task.name="),
    ({'task.name': 'simclr', 'model.name': 'fcn_resnet18'},
     r"config.model.name='fcn_resnet18' is a segmentation model"),
    ({'task.name': 'moco'}, r"config.task.name='moco'; use one of"),
    ({'task.name': 'segmentation', 'model.name': 'fcn_resnet18', 'task.ignore_label': 300},
     r'config.task.ignore_label=300'),
    ({'task.name': 'segmentation', 'model.name': 'fcn_resnet18',
      'dataset.mixup_alpha': 0.2}, r'config.dataset.mixup_alpha=0.2'),
    ({'task.name': 'simclr', 'task.temperature': 0.0}, r'config.task.temperature=0.0'),
    ({'task.name': 'simclr', 'task.blur': 'yes'}, r"config.task.blur='yes'"),
    ({'model.name': 'fcn_resnet18'}, r"is a segmentation model, but config.task.name="
                                     r"'classification'"),
])
def test_bad_task_configs_are_one_clear_error(overrides, message):
  config = config_lib.base_config()
  for dotted, value in overrides.items():
    section, key = dotted.split('.')
    config[section][key] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config, num_devices=1)


def _canvas_png(path: str, image: np.ndarray) -> None:
  Image.fromarray(image[..., 0]).save(path)


def test_digits_segmentation_train_eval_predict_export(tmp_path, data_dir):
  # pylint: disable=g-import-not-at-top
  from vision_jax import export, inference
  from vision_jax.data import digits_segmentation  # pylint: disable=g-import-not-at-top
  work = str(tmp_path / 'seg')
  small = ['--config.train.steps=2', '--config.train.batch_size=8', '--config.model.width=8',
           '--config.checkpoint.every_steps=2', '--config.init_from.checkpoint=',
           '--config.optim.warmup_steps=0']
  proc = run_cli(['--config=configs/digits_segmentation.py', f'--workdir={work}', *small],
                 data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  os.remove(os.path.join(work, 'results.json'))
  config = inference.read_config(work)
  evaluate.run(config, work)  # --mode=eval
  with open(os.path.join(work, 'results.json')) as f:
    test = json.load(f)['eval']['test']
  assert test['num_examples'] == 500 and 0 <= test['mean_iou'] <= 1
  assert set(test['per_class_iou']) == set(digits_segmentation.CLASS_NAMES)
  assert test['num_pixels'] == 500 * 32 * 32  # No ignored pixel in the canvases.
  assert os.path.exists(os.path.join(work, 'confusion_test.json'))

  canvases, _ = digits_segmentation.make_split('test', 1)
  _canvas_png(str(tmp_path / 'canvas.png'), canvases[0])
  big = np.asarray(Image.fromarray(canvases[0][..., 0]).resize((50, 40)))[..., None]
  _canvas_png(str(tmp_path / 'big.png'), big)
  out = str(tmp_path / 'masks')
  loaded = inference.load(work, config)
  loaded.task.predict(loaded, [str(tmp_path / 'canvas.png'), str(tmp_path / 'big.png')],
                      output=out, top_k=1)  # --mode=predict of a segmentation run
  with open(os.path.join(out, 'predictions.json')) as f:
    predictions = json.load(f)
  for entry, (h, w) in zip(predictions, [(32, 32), (40, 50)]):
    with Image.open(entry['mask']) as mask:
      assert mask.mode == 'P' and mask.size == (w, h)
    assert sum(entry['histogram'].values()) == h * w

  metadata = export.export(loaded, str(tmp_path / 'export'), saved_model=False)
  assert metadata['output']['logits'] == [None, 32, 32, 11]
  served = export.load(str(tmp_path / 'export'))
  image = served.prepare(canvases[0])
  np.testing.assert_allclose(served(image[None]), loaded.logits(image[None]), atol=1e-4)


def test_pets_deeplabv3_config_runs_two_steps_on_mock_data(tmp_path):
  config = _config('pets_deeplabv3_resnet50.py')
  with mock_pets(num_examples=4):
    results = _two_steps(config, str(tmp_path), **{
        'train.batch_size': 2, 'eval.batch_size': 4, 'dataset.image_size': 48,
        'dataset.download': True, 'model.dtype': 'float32'})
  test = results['eval']['test']
  assert test['num_examples'] == 4 and set(test['per_class_iou']) == {'background', 'pet'}


def test_digits_simclr_then_linear_probe_from_its_checkpoint(tmp_path, data_dir):
  del data_dir  # The digits, built once.
  ssl_dir, probe_dir = str(tmp_path / 'ssl'), str(tmp_path / 'probe')
  results = _two_steps(_config('digits_simclr.py'), ssl_dir,
                       **{'train.batch_size': 16, 'train.eval_every': 1})
  test = results['eval']['test']
  assert test['num_examples'] == 360 and test['bank_size'] == 1437
  assert 0.1 < test['knn_accuracy'] <= 1
  with open(os.path.join(ssl_dir, 'eval_metrics.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == [1, 2]  # Every eval_every.
  probe = _config('digits_simclr_linear_probe.py')
  _two_steps(probe, probe_dir, **{'train.batch_size': 16})  # The random-backbone baseline.
  probe = _config('digits_simclr_linear_probe.py')
  results = _two_steps(probe, str(tmp_path / 'probe2'),
                       **{'train.batch_size': 16, 'init_from.checkpoint': ssl_dir})
  assert 'accuracy' in results['eval']['test']
  with open(tmp_path / 'probe2' / 'init_report.json') as f:
    report = json.load(f)
  assert report['reinitialized'] == ['head/bias', 'head/kernel']
  assert {'conv1/kernel', 'fc1/kernel'} <= set(report['loaded'])
  assert any(p.startswith('projector/') for p in report['unused_from_checkpoint'])
  assert set(report['frozen']) == set(report['loaded'])


def test_cifar10_simclr_config_runs_two_steps_on_mock_data(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, '_check_online', lambda name, data_dir: None)
  config = _config('cifar10_simclr_resnet18.py')
  with tfds.testing.mock_data(num_examples=8):
    results = _two_steps(config, str(tmp_path), **{
        'train.batch_size': 4, 'eval.batch_size': 8, 'dataset.download': True})
  assert results['eval']['test']['num_examples'] == 8


_DEVICES_SCRIPT = r'''
import json
import jax, numpy as np
from vision_jax import config as config_lib, parallel, steps, tasks, train_state
config = config_lib.base_config()
config.task.name = 'simclr'
config.task.projector_hidden_dim, config.task.projector_output_dim = 32, 16
config.model.width, config.model.hidden = 8, 32
rng = np.random.default_rng(0)
batch = {'view1': rng.integers(0, 256, (16, 8, 8, 1), np.uint8),
         'view2': rng.integers(0, 256, (16, 8, 8, 1), np.uint8),
         'label': np.zeros(16, np.int32)}
out = {}
for n in (1, 8):
  config.mesh.data = n
  mesh = parallel.make_mesh(config, jax.devices()[:n])
  task = tasks.build(config)
  structure, state = train_state.create(
      task, mesh, num_classes=10, image_size=8, in_channels=1, steps_per_epoch=10)
  step = steps.jit_train_step(task, structure, mean=(0.5,), std=(0.5,),
                              num_classes=10, mesh=mesh)
  state, metrics = step(state, parallel.to_global(batch, mesh))
  out[n] = {'loss': float(metrics['loss']),
            'fc1': np.asarray(state.parts['model'].params['fc1']['kernel']).ravel()[:64].tolist()}
print(json.dumps(out))
'''


def test_simclr_train_step_is_the_same_on_1_and_8_devices():
  """Negatives come from the global batch: per-device batches of 2 pairs would give
  another loss."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-c', _DEVICES_SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['8']['loss'] == pytest.approx(out['1']['loss'], rel=1e-5)
  np.testing.assert_allclose(out['8']['fc1'], out['1']['fc1'], rtol=1e-4, atol=1e-6)
  assert out['1']['loss'] > np.log(2 * 16 - 1) * 0.5  # A real contrastive loss, not 0.


def test_simclr_resume_is_bit_identical(tmp_path, data_dir):
  """4 steps straight == the same run resumed from its step-2 checkpoint."""
  import shutil  # pylint: disable=g-import-not-at-top
  from vision_jax.checkpoint import read_state  # pylint: disable=g-import-not-at-top
  del data_dir
  small = {'train.batch_size': 16, 'train.log_every': 2, 'train.steps': 4}
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  _two_steps(_config('digits_simclr.py'), a, **small)
  shutil.copytree(a, b)
  shutil.rmtree(os.path.join(b, 'checkpoints', '4'))  # As if killed after step 2's save.
  assert read_state(b)[0] == 2
  _two_steps(_config('digits_simclr.py'), b, **small)
  (step_a, state_a), (step_b, state_b) = read_state(a), read_state(b)
  assert step_a == step_b == 4
  leaves_a = jax.tree.leaves(state_a['parts'])
  leaves_b = jax.tree.leaves(state_b['parts'])
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
