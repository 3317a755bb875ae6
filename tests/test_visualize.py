"""Pictures: curves (one point per logged step), confusion, filters, saliency."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from test_evaluate import STEPS, trained_workdir

PNG = b'\x89PNG\r\n\x1a\n'


def assert_png(path: pathlib.Path) -> None:
  assert path.read_bytes()[:8] == PNG, path
  with Image.open(path) as image:
    assert image.width > 100 and image.height > 100


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, data_dir) -> pathlib.Path:
  return trained_workdir(tmp_path_factory, data_dir)


def test_training_writes_curves_with_one_point_per_logged_step(run_dir):
  from vision_jax import visualize
  assert_png(run_dir / 'curves.png')
  assert_png(run_dir / 'confusion_test.png')
  logged = [json.loads(line)['step'] for line in (run_dir / 'metrics.jsonl').open()]
  assert logged == list(range(10, STEPS + 1, 10))
  series = visualize.curve_series(str(run_dir))
  for metric in ('loss', 'accuracy', 'learning_rate', 'grad_norm'):
    assert series[f'train/{metric}'][0] == logged
  for metric in ('loss', 'accuracy', 'top5'):
    assert series[f'eval/test/{metric}'][0] == [50, 100, 150]
  final = json.loads((run_dir / 'results.json').read_text())['eval']['test']['accuracy']
  assert series['eval/test/accuracy'][1][-1] == final
  # What is drawn is that series, point for point.
  fig = visualize.curves_figure(series)
  drawn = {(ax.get_title(), line.get_label()): list(line.get_xdata())
           for ax in fig.axes for line in ax.lines}
  assert drawn[('loss', 'train')] == logged and drawn[('loss', 'eval/test')] == [50, 100, 150]
  assert drawn[('learning rate', 'train')] == logged
  assert drawn[('accuracy', 'eval/test')] == [50, 100, 150]


def test_a_resumed_step_counts_once(tmp_path):
  from vision_jax import visualize
  rows = [(10, 2.0), (20, 1.0), (20, 0.9), (30, 0.5)]  # Step 20 logged again after a resume.
  (tmp_path / 'metrics.jsonl').write_text(''.join(
      json.dumps({'step': s, 'train/loss': v}) + '\n' for s, v in rows))
  assert visualize.curve_series(str(tmp_path)) == {'train/loss': ([10, 20, 30],
                                                                  [2.0, 0.9, 0.5])}
  assert visualize.write_curves(str(tmp_path)) == str(tmp_path / 'curves.png')
  assert_png(tmp_path / 'curves.png')


def test_integrated_gradients_add_up_to_the_logit_difference(run_dir):
  from vision_jax import inference, visualize
  loaded = inference.load(str(run_dir), inference.read_config(str(run_dir)))
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), np.uint8)
  targets = np.array([0, 3, 7])
  vanilla, integrated = visualize.saliency_maps(loaded.apply, loaded.serving_state, images,
                                                targets, ig_steps=64)
  assert vanilla.shape == integrated.shape == (3, 8, 8)
  logits = loaded.logits(images)[np.arange(3), targets]
  black = loaded.logits(np.zeros_like(images))[np.arange(3), targets]
  # Completeness (Sundararajan et al.): the attributions sum to logit(x) - logit(baseline).
  np.testing.assert_allclose(integrated.sum((1, 2)), logits - black, rtol=0.05, atol=0.05)
  path, kernel = visualize.first_conv_kernel(loaded.model(), 1)
  assert path == 'conv1/kernel' and kernel.shape == (3, 3, 1, 64)


def test_cli_writes_every_picture(run_dir, tmp_path):
  images = tmp_path / 'images'
  images.mkdir()
  for i in range(3):
    Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(images / f'{i}.png')
  out = tmp_path / 'pictures'
  proc = subprocess.run([sys.executable, '-m', 'vision_jax.visualize', '--workdir',
                         str(run_dir), '--images', str(images), '--output_dir', str(out)],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = ['confusion_test.png', 'curves.png', 'filters.png', 'saliency.png']
  assert sorted(p.name for p in out.iterdir()) == names
  for name in names:
    assert_png(out / name)
  assert proc.stdout.split() == [str(out / n) for n in
                                 ('curves.png', 'confusion_test.png', 'filters.png',
                                  'saliency.png')]
