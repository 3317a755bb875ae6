"""Boxes through the data: the joint transforms keep every box on its object, the digits
canvases' boxes are their digits' ink, a COCO folder reads (background images kept), and
every bad input is one clear message (exit 2 from the CLI: test_detection_task.py)."""
import json

import numpy as np
import pytest
from PIL import Image

from vision_jax.data import coco_folder
from vision_jax.data import detection_sources
from vision_jax.data import detection_transforms as dt
from vision_jax.data import digits_detection
from vision_jax.errors import UserError


def _coded_image(h, w):
  """Red = x, green = y, blue 255 (h, w <= 256): every pixel says where it came from."""
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x, y, np.full_like(x, 255)], -1).astype(np.uint8)


def _box_content(image, box):
  """Mean source (x, y) of the pixels well inside `box` of a transformed coded image."""
  x1, y1, x2, y2 = box
  region = image[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
  return region[..., 0].mean(), region[..., 1].mean()


@pytest.mark.parametrize('seed', range(6))
def test_train_transform_keeps_boxes_on_their_objects(seed):
  """Boxes around known source regions, after resize, flip, crop and pad: the pixels inside
  each kept box come from that box's source region (its centre), clipped boxes are inside
  the crop, and boxes cut to slivers are dropped."""
  h, w = 90, 120
  image = _coded_image(h, w)
  boxes = np.array([[10, 10, 40, 50], [70, 20, 110, 60], [50, 60, 90, 88]], np.float32)
  transform = dt.make_transform(96, train=True, max_boxes=5, min_size=100, max_size=96,
                                scale_range=(0.9, 1.6), flip=True, min_box_size=8)
  out = transform({'image': image, 'boxes': boxes, 'classes': np.array([0, 1, 2])},
                  np.random.default_rng(seed))
  assert out['image'].shape == (96, 96, 3) and out['boxes'].shape == (5, 4)
  n = int(out['box_mask'].sum())
  assert out['box_mask'][n:].sum() == 0 and (out['boxes'][n:] == 0).all()
  flipped = None
  for box, k in zip(out['boxes'][:n], out['classes'][:n]):
    assert (box >= 0).all() and (box <= 96).all() and box[2] - box[0] >= 8
    src = boxes[k]
    cx, cy = _box_content(out['image'], box)
    in_y = src[1] - 1 <= cy <= src[3] + 1
    if flipped is None:
      flipped = not src[0] - 1 <= cx <= src[2] + 1
    # A flip mirrors the coded x: the content is the source region's mirror (x -> w - x).
    want_x = (w - src[2] - 1, w - src[0] + 1) if flipped else (src[0] - 1, src[2] + 1)
    assert in_y and want_x[0] <= cx <= want_x[1], (seed, k, box, cx, cy)


def test_eval_transform_keeps_every_box_and_records_the_scale():
  image = _coded_image(60, 200)
  boxes = np.array([[0, 0, 200, 60], [150.5, 10, 199, 30]], np.float32)
  transform = dt.make_transform(64, train=False, max_boxes=3)
  out = transform({'image': image, 'boxes': boxes, 'classes': [1, 0], 'image_id': 7}, None)
  np.testing.assert_allclose(out['scale'], [19 / 60, 64 / 200])  # round(60 * 0.32) = 19.
  np.testing.assert_allclose(out['boxes'][:2] / np.tile(out['scale'][::-1], 2), boxes,
                             rtol=1e-5)
  assert out['image'][19:].max() == 0 and out['image_id'] == 7
  np.testing.assert_allclose(out['area'][:2], [200 * 60, 48.5 * 20], rtol=1e-4)
  cx, _ = _box_content(out['image'], out['boxes'][1])
  assert 150 <= cx <= 199


def test_too_many_boxes_is_an_error_not_a_truncation():
  transform = dt.make_transform(32, train=False, max_boxes=1)
  with pytest.raises(UserError, match='max_boxes=1.*at least 2'):
    transform({'image': np.zeros((32, 32, 1), np.uint8), 'boxes': np.ones((2, 4)) * [0, 0, 5, 5],
               'classes': [0, 1]}, None)


def test_digits_canvases_are_deterministic_and_boxed_on_their_ink():
  a = digits_detection.make_canvas(*_digits(), np.random.default_rng(3))
  b = digits_detection.make_canvas(*_digits(), np.random.default_rng(3))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  canvas, boxes, classes = a
  assert 2 <= len(boxes) <= 5 and set(classes) <= set(range(10))
  ink = canvas[..., 0] >= digits_detection.INK
  covered = np.zeros_like(ink)
  for x1, y1, x2, y2 in boxes.astype(int):
    assert ink[y1, x1:x2].any() and ink[y2 - 1, x1:x2].any()  # Tight: ink on each edge.
    assert ink[y1:y2, x1].any() and ink[y1:y2, x2 - 1].any()
    covered[y1:y2, x1:x2] = True
  assert not (ink & ~covered).any()


def _digits():
  from vision_jax.data import digits  # pylint: disable=import-outside-toplevel
  images, labels = digits._split_arrays()['test']  # pylint: disable=protected-access
  return images[..., 0], labels


def _write_folder(root, annotations, images=((1, 'a.png', 40, 30), (2, 'b.png', 20, 20)),
                  categories=((3, 'cat'), (7, 'dog')), write=True):
  (root / 'annotations').mkdir(parents=True, exist_ok=True)
  (root / 'val').mkdir(exist_ok=True)
  for _, name, w, h in images:
    Image.fromarray(np.full((h, w, 3), 9, np.uint8)).save(root / 'val' / name)
  data = {'images': [{'id': i, 'file_name': n, 'width': w, 'height': h}
                     for i, n, w, h in images],
          'annotations': annotations,
          'categories': [{'id': c, 'name': n} for c, n in categories]}
  if write:
    (root / 'annotations' / 'instances_val.json').write_text(json.dumps(data))
  return f'coco_folder:{root}'


def test_coco_folder_reads_boxes_classes_and_background_images(tmp_path):
  name = _write_folder(tmp_path, [
      {'id': 1, 'image_id': 1, 'category_id': 7, 'bbox': [5, 6, 10, 12], 'iscrowd': 0},
      {'id': 2, 'image_id': 1, 'category_id': 3, 'bbox': [0, 0, 40, 30], 'iscrowd': 1,
       'area': 100.0}])
  source, info = detection_sources.open_split(name, 'val')
  assert info.class_names == ['cat', 'dog'] and info.category_ids == (3, 7)
  assert len(source) == 2
  first, background = source[0], source[1]
  np.testing.assert_allclose(first['boxes'], [[5, 6, 15, 18], [0, 0, 40, 30]])
  assert first['classes'].tolist() == [1, 0] and first['crowd'].tolist() == [False, True]
  assert first['area'][1] == 100 and first['image'].shape == (30, 40, 3)
  assert background['boxes'].shape == (0, 4) and background['image_id'] == 2


BAD = {
    'outside': ([{'id': 5, 'image_id': 1, 'category_id': 3, 'bbox': [30, 0, 20, 10]}],
                'annotation 5 .* outside its 40x30'),
    'degenerate': ([{'id': 6, 'image_id': 1, 'category_id': 3, 'bbox': [3, 3, 0, 10]}],
                   'annotation 6 .* no area'),
    'class': ([{'id': 8, 'image_id': 1, 'category_id': 4, 'bbox': [1, 1, 5, 5]}],
              'category_id 4, which is not among'),
    'image': ([{'id': 9, 'image_id': 77, 'category_id': 3, 'bbox': [1, 1, 5, 5]}],
              'names image 77, which is not among'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_coco_folder_bad_annotations_are_named(tmp_path, case):
  annotations, match = BAD[case]
  name = _write_folder(tmp_path, annotations)
  with pytest.raises(detection_sources.DetectionDataError, match=match):
    detection_sources.open_split(name, 'val')


def test_coco_folder_missing_malformed_json_and_missing_images(tmp_path):
  name = _write_folder(tmp_path, [], write=False)
  with pytest.raises(UserError, match='No annotation file .*instances_val.json'):
    detection_sources.open_split(name, 'val')
  path = tmp_path / 'annotations' / 'instances_val.json'
  path.write_text('{"images": [')
  with pytest.raises(UserError, match='cannot be read as JSON'):
    detection_sources.open_split(name, 'val')
  path.write_text('{"images": []}')
  with pytest.raises(UserError, match='lacks the list.*annotations, categories'):
    detection_sources.open_split(name, 'val')
  _write_folder(tmp_path, [], images=((1, 'a.png', 40, 30),))
  data = json.loads(path.read_text())
  data['images'].append({'id': 2, 'file_name': 'gone.jpg', 'width': 5, 'height': 5})
  path.write_text(json.dumps(data))
  with pytest.raises(UserError, match="'gone.jpg', which is in neither"):
    coco_folder.CocoFolder(str(tmp_path), 'val')


def test_class_id_above_the_classes_is_named():
  with pytest.raises(UserError, match='box 1 has class 12, outside the 10 classes'):
    detection_sources.check_boxes(np.array([[0, 0, 4, 4], [1, 1, 3, 3]]), [1, 12], 8, 8, 10,
                                  'example 3')


@pytest.mark.parametrize('min_size,max_size', [(48, 60), (0, 0), (0, 40)])
def test_recorded_eval_transform_is_the_one_evaluation_runs(min_size, max_size):
  """What dataset.json records (and predict and export run from it) gives the same input
  pixels as the detection task's eval transform, for images smaller and larger than the
  canvas, upscaled by min_size or shrunk by max_size."""
  import os
  from vision_jax import config_files
  from vision_jax import tasks
  from vision_jax.data.eval_transform import EvalTransform
  from vision_jax.data.stream import HostShard
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_files.load_config_file(os.path.join(repo, 'configs', 'digits_detection.py'))
  config.task.min_size, config.task.max_size = min_size, max_size
  task = tasks.build(config)
  data = task.build_data(HostShard())
  recorded = EvalTransform.from_json(json.loads(json.dumps(data.describe()['eval_transform'])))
  assert recorded.name == 'resize_and_pad'
  evaluated = task.transform(data.image_size, data.channels, data.mean, train=False)
  rng = np.random.default_rng(0)
  for h, w in [(20, 30), (64, 64), (130, 50), (37, 90), (7, 200)]:
    image = rng.integers(0, 256, (h, w, data.channels), np.uint8)
    want = evaluated({'image': image, 'boxes': np.zeros((0, 4)), 'classes': []}, None)
    np.testing.assert_array_equal(recorded(image), want['image'])
