"""The detection task on the core: its split summary equals pycocotools run independently;
through the CLI on a COCO-format folder, a run killed by SIGKILL and resumed equals an
uninterrupted one bit for bit (weights, results.json, detections JSON), and its workdir
predicts (drawn PNGs + predictions.json) and exports (boxes, scores, classes,
num_detections); bad annotations exit 2 with one paragraph; a train step on 8 simulated
devices equals 1 device. Small shapes: a width-8 ResNet-18 FCOS, 32-channel FPN, 64 px."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from cli_in_process import run_main
from conftest import REPO
from vision_jax import checkpoint
from vision_jax.tasks import detection as det_task

CLASSES = ['a', 'b', 'c']


def _random_rows(rng, images=12, max_boxes=6, dets=20):
  """Collected eval rows with known ground truth and noisy detections, at random scales."""
  scale = rng.uniform(0.5, 2.0, (images, 2)).astype(np.float32)
  orig = rng.integers(40, 120, (images, 2)).astype(np.int32)
  gt = np.zeros((images, max_boxes, 4), np.float32)
  mask = np.zeros((images, max_boxes), np.float32)
  for i in range(images):
    h, w = orig[i]
    n = rng.integers(0, max_boxes + 1)  # Some images are background.
    xy = rng.uniform(0, [w - 12, h - 12], (n, 2))
    wh = rng.uniform(4, 40, (n, 2))
    gt[i, :n] = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
    mask[i, :n] = 1
  classes = rng.integers(0, 3, (images, max_boxes)).astype(np.int32)
  # Detections: jittered copies of the ground truth and random boxes, in input pixels.
  boxes = np.concatenate([gt + rng.normal(0, 2, gt.shape),
                          rng.uniform(0, 60, (images, dets - max_boxes, 4))], 1)
  boxes = np.concatenate([np.minimum(boxes[..., :2], boxes[..., 2:]),
                          np.maximum(boxes[..., :2], boxes[..., 2:]) + 1], -1)
  per_box = np.tile(scale[:, ::-1], 2)[:, None]
  return {'boxes': (boxes * per_box).astype(np.float32),
          'scores': rng.uniform(0, 1, (images, dets)).astype(np.float32),
          'classes': np.concatenate([classes, rng.integers(0, 3, (images, dets - max_boxes))],
                                    1).astype(np.int32),
          'num_detections': rng.integers(0, dets + 1, images).astype(np.int32),
          'gt_boxes': (gt * per_box).astype(np.float32), 'gt_classes': classes,
          'gt_mask': mask, 'gt_crowd': (rng.uniform(size=mask.shape) < 0.1).astype(np.float32),
          'gt_area': ((gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])).astype(np.float32),
          'image_id': np.arange(100, 100 + images, dtype=np.int32), 'scale': scale,
          'orig_size': orig}, gt, boxes


def test_summary_equals_pycocotools_computed_independently():
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
  arrays, gt, boxes = _random_rows(np.random.default_rng(0))
  ours = det_task.summarize(arrays, class_names=CLASSES, category_ids=(5, 9, 11))
  ids = (5, 9, 11)
  dataset = {'images': [], 'annotations': [],
             'categories': [{'id': c, 'name': n} for c, n in zip(ids, CLASSES)]}
  results = []
  for i, image_id in enumerate(arrays['image_id'].tolist()):
    h, w = arrays['orig_size'][i].tolist()
    dataset['images'].append({'id': image_id, 'height': h, 'width': w})
    for j in np.flatnonzero(arrays['gt_mask'][i]):
      x1, y1, x2, y2 = gt[i, j].tolist()
      dataset['annotations'].append({
          'id': len(dataset['annotations']) + 1, 'image_id': image_id,
          'category_id': ids[arrays['gt_classes'][i, j]], 'bbox': [x1, y1, x2 - x1, y2 - y1],
          'area': float(arrays['gt_area'][i, j]), 'iscrowd': int(arrays['gt_crowd'][i, j])})
    for j in range(arrays['num_detections'][i]):
      x1, y1, x2, y2 = np.clip(boxes[i, j], 0, [w, h, w, h]).tolist()
      results.append({'image_id': image_id, 'category_id': ids[arrays['classes'][i, j]],
                      'bbox': [x1, y1, x2 - x1, y2 - y1],
                      'score': float(arrays['scores'][i, j])})
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(results), 'bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  names = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100')
  np.testing.assert_allclose([ours[n] for n in names], evaluator.stats[:9], atol=1e-6)
  assert 0.05 < ours['AP50'] < 0.95  # Neither trivial nor perfect.
  assert ours['num_examples'] == 12 and len(ours['json_files']['detections']) == len(results)
  written = ours['json_files']['detections']
  assert {r['category_id'] for r in written} <= set(ids)
  np.testing.assert_allclose([r['bbox'] for r in written], [r['bbox'] for r in results],
                             atol=1e-3)


def _coco_folder(root, images=24):
  """A COCO folder of digits canvases: train and val instances JSON, PNGs."""
  from vision_jax.data import digits, digits_detection  # pylint: disable=import-outside-toplevel
  pool, labels = digits._split_arrays()['test']  # pylint: disable=protected-access
  for split, offset in (('train', 0), ('val', 1000)):
    (root / split).mkdir(parents=True)
    data = {'images': [], 'annotations': [],
            'categories': [{'id': k + 1, 'name': str(k)} for k in range(10)]}
    for i in range(images if split == 'train' else 8):
      canvas, boxes, classes = digits_detection.make_canvas(
          pool[..., 0], labels, np.random.default_rng(offset + i))
      Image.fromarray(np.repeat(canvas, 3, -1)).save(root / split / f'{i}.png')
      data['images'].append({'id': i + offset, 'file_name': f'{i}.png', 'width': 64,
                             'height': 64})
      for (x1, y1, x2, y2), k in zip(boxes.tolist(), classes.tolist()):
        data['annotations'].append({'id': len(data['annotations']) + 1, 'image_id': i + offset,
                                    'category_id': k + 1, 'bbox': [x1, y1, x2 - x1, y2 - y1]})
    (root / 'annotations').mkdir(exist_ok=True)
    (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(data))
  return f'coco_folder:{root}'


def _args(name):
  return ['--config', 'configs/digits_detection.py', f'--config.dataset.name={name}',
          '--config.dataset.train_split=train', "--config.dataset.eval_splits=('val',)",
          '--config.dataset.num_workers=0', '--config.model.width=8',
          '--config.model.fpn_channels=32', '--config.model.head_depth=1',
          '--config.train.batch_size=8', '--config.eval.batch_size=8',
          '--config.train.steps=6', '--config.optim.warmup_steps=2',
          '--config.train.log_every=3', '--config.checkpoint.every_steps=3',
          '--config.checkpoint.keep=5']


def test_sigkill_resume_bit_identical_then_predict_export_and_bad_input(tmp_path):
  name = _coco_folder(tmp_path / 'data')
  args = _args(name)
  straight = tmp_path / 'straight'
  code, err = run_main(args + ['--workdir', str(straight)])
  assert code == 0, err[-3000:]
  killed = tmp_path / 'killed'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  with open(tmp_path / 'log', 'w') as log:
    victim = subprocess.Popen([sys.executable, '-m', 'vision_jax.main', *args, '--workdir',
                               str(killed)], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
      deadline = time.time() + 240
      while not (killed / 'checkpoints' / '3').is_dir():
        assert victim.poll() is None, (tmp_path / 'log').read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    finally:
      victim.send_signal(signal.SIGKILL)
      victim.wait()
  assert victim.returncode == -signal.SIGKILL and not (killed / 'results.json').exists()
  code, err = run_main(args + ['--workdir', str(killed)])
  assert code == 0, err[-3000:]
  (step_a, a), (step_b, b) = checkpoint.read_state(str(straight)), checkpoint.read_state(
      str(killed))
  assert step_a == step_b == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  results = json.loads((straight / 'results.json').read_text())
  assert results == json.loads((killed / 'results.json').read_text())
  val = results['eval']['val']
  assert val['num_examples'] == 8 and -1 <= val['AP50'] <= 1 and 'AP/3' in val
  detections = json.loads((straight / 'detections_val.json').read_text())
  assert detections == json.loads((killed / 'detections_val.json').read_text())
  assert {d['image_id'] for d in detections} <= set(range(1000, 1008))

  # --mode=predict: boxes drawn on copies of the images, predictions.json.
  images = [str(tmp_path / 'data' / 'val' / f'{i}.png') for i in range(2)]
  code, err = run_main(['--mode=predict', '--workdir', str(straight),
                        '--output', str(tmp_path / 'pred'), '--images', *images])
  assert code == 0, err[-3000:]
  coco = json.loads((tmp_path / 'pred' / 'predictions.json').read_text())
  assert [im['file_name'] for im in coco['images']] == images
  drawn = np.asarray(Image.open(coco['images'][0]['drawn']))
  assert drawn.shape == (64, 64, 3)
  for a in coco['annotations']:
    x, y, w, h = a['bbox']
    assert 0 <= x and 0 <= y and x + w <= 64.01 and y + h <= 64.01 and a['category_name']

  # Export: uint8 images -> fixed-size boxes, scores, classes, num_detections, the same
  # as evaluation's on-device post-processing.
  from vision_jax import export, inference  # pylint: disable=import-outside-toplevel
  loaded = inference.load(str(straight), inference.read_config(str(straight)))
  export.export(loaded, str(tmp_path / 'export'), saved_model=False)  # TF: test_export.py.
  served = export.load(str(tmp_path / 'export'))
  canvas = np.asarray(Image.open(images[0]))
  out = served(np.stack([canvas, canvas]))
  assert out['boxes'].shape == (2, 100, 4) and out['num_detections'].shape == (2,)
  n = int(out['num_detections'][0])
  np.testing.assert_allclose(out['boxes'][0, :n], out['boxes'][1, :n])
  ours = sorted((round(s, 4), int(k)) for s, k in zip(out['scores'][0, :n],
                                                       out['classes'][0, :n]))
  predicted = sorted((round(a['score'], 4), a['category_id']) for a in coco['annotations']
                     if a['image_id'] == 0)
  assert ours == predicted
  assert served.metadata['output']['outputs']['classes']['dtype'] == 'int32'

  # A box outside its image: exit 2, one paragraph naming the annotation, nothing written.
  path = tmp_path / 'data' / 'annotations' / 'instances_val.json'
  data = json.loads(path.read_text())
  data['annotations'][0]['bbox'] = [50, 50, 30, 5]
  path.write_text(json.dumps(data))
  code, err = run_main(args + ['--workdir', str(tmp_path / 'bad')])
  paragraphs = [p for p in err.split('\n\n') if p.startswith('error:')]
  assert code == 2 and len(paragraphs) == 1, err[-2000:]
  assert 'annotation 1' in paragraphs[0] and 'outside its 64x64' in paragraphs[0]
  assert not (tmp_path / 'bad' / 'checkpoints').exists()


_DEVICES_SCRIPT = r'''
import json, sys
import jax, numpy as np
from vision_jax import config_files, parallel, steps, tasks, train_state
config = config_files.load_config_file('configs/digits_detection.py')
config.model.width, config.model.fpn_channels, config.model.head_depth = 8, 32, 1
config.optim.warmup_steps = 0
config.optim.name, config.optim.learning_rate = 'sgd', 0.1  # Updates proportional to gradients.
rng = np.random.default_rng(0)
xy = rng.uniform(0, 40, (16, 3, 2))
batch = {'image': rng.integers(0, 256, (16, 64, 64, 1), np.uint8),
         'boxes': np.concatenate([xy, xy + rng.uniform(8, 24, (16, 3, 2))], -1).astype(np.float32),
         'classes': rng.integers(0, 10, (16, 3)).astype(np.int32),
         'box_mask': (rng.uniform(size=(16, 3)) < 0.7).astype(np.float32)}
out = {}
for n in (1, 8):
  config.mesh.data = n
  mesh = parallel.make_mesh(config, jax.devices()[:n])
  task = tasks.build(config)
  structure, state = train_state.create(task, mesh, num_classes=10, image_size=64,
                                        in_channels=1, steps_per_epoch=10)
  step = steps.jit_train_step(task, structure, mean=(0.5,), std=(0.5,), num_classes=10,
                              mesh=mesh)
  for _ in range(2):
    state, metrics = step(state, parallel.to_global(batch, mesh))
    jax.block_until_ready(metrics)
  out[n] = {'loss': float(metrics['loss']), 'fg': float(metrics['num_foreground']),
            'params': [np.asarray(x).ravel()[:32].tolist()
                       for x in jax.tree.leaves(state.parts['model'].params)]}
print(json.dumps(out))
'''


def test_train_step_on_8_devices_equals_1():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _DEVICES_SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['8']['fg'] == out['1']['fg'] > 0
  assert out['8']['loss'] == pytest.approx(out['1']['loss'], rel=1e-5)
  for x, y in zip(out['8']['params'], out['1']['params']):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
