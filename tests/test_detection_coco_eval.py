"""COCO mAP from arrays: known answers on synthetic detections, and on random detections
the same summary as pycocotools run independently here from COCO files."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vision_jax.detection import coco_eval

NAMES = ['cat', 'dog', 'bird']
SIZES = np.array([[200, 300]] * 4)


def _gt(boxes_per_image, labels_per_image, crowd_per_image=None, max_boxes=6):
  n = len(boxes_per_image)
  out = {'boxes': np.zeros((n, max_boxes, 4), np.float32),
         'labels': np.zeros((n, max_boxes), np.int32), 'mask': np.zeros((n, max_boxes), bool),
         'crowd': np.zeros((n, max_boxes), bool)}
  for i, (b, l) in enumerate(zip(boxes_per_image, labels_per_image)):
    out['boxes'][i, :len(b)] = np.asarray(b, np.float32).reshape(-1, 4)
    out['labels'][i, :len(l)] = l
    out['mask'][i, :len(b)] = True
    if crowd_per_image:
      out['crowd'][i, :len(b)] = crowd_per_image[i]
  return out


def _dets(boxes_per_image, scores_per_image, classes_per_image, max_dets=8):
  n = len(boxes_per_image)
  out = {'boxes': np.zeros((n, max_dets, 4), np.float32), 'scores': np.zeros((n, max_dets)),
         'classes': np.zeros((n, max_dets), np.int32), 'num_detections': np.zeros(n, np.int32)}
  for i, (b, s, c) in enumerate(zip(boxes_per_image, scores_per_image, classes_per_image)):
    out['boxes'][i, :len(b)] = np.asarray(b, np.float32).reshape(-1, 4)
    out['scores'][i, :len(s)] = s
    out['classes'][i, :len(c)] = c
    out['num_detections'][i] = len(s)
  return out


GT_BOXES = [[[10, 10, 60, 60], [100, 50, 180, 150]], [[20, 30, 120, 130]],
            [[50, 50, 90, 100], [150, 20, 250, 180]], [[30, 40, 140, 160], [5, 5, 55, 45]]]
GT_LABELS = [[0, 1], [2], [1, 0], [2, 1]]


def _evaluate(gt, dets, **kwargs):
  n = len(gt['boxes'])
  return coco_eval.evaluate(gt, dets, list(range(1, n + 1)), SIZES[:n], NAMES, **kwargs)


def test_perfect_detections():
  summary = _evaluate(_gt(GT_BOXES, GT_LABELS),
                      _dets(GT_BOXES, [[0.9] * len(b) for b in GT_BOXES], GT_LABELS))
  for key in ('AP', 'AP50', 'AP75', 'AR100', 'AP/cat', 'AP/dog', 'AP/bird'):
    assert summary[key] == pytest.approx(1.0), key
  assert summary['APs'] == -1  # No object under 32^2 px.


def test_half_of_the_objects_found():
  boxes = [[[10, 10, 60, 60], [100, 50, 180, 150]], [[20, 30, 120, 130], [150, 20, 250, 180]]]
  labels = [[0, 0], [0, 0]]
  summary = _evaluate(_gt(boxes, labels), _dets([b[:1] for b in boxes], [[0.9], [0.8]],
                                                [[0], [0]]))
  # Precision 1 up to recall 0.5, nothing beyond: 51 of COCO's 101 recall points.
  assert summary['AP'] == pytest.approx(51 / 101)
  assert summary['AR100'] == pytest.approx(0.5)


def test_iou_062_counts_for_three_of_ten_thresholds():
  gt = [[[0, 0, 100, 100]]]
  # Shifted by 23.4568 px along x: IoU = 76.5432 / 123.4568 = 0.62.
  det = [[[23.4568, 0, 123.4568, 100]]]
  summary = _evaluate(_gt(gt, [[0]]), _dets(det, [[0.9]], [[0]]))
  assert summary['AP50'] == pytest.approx(1.0)
  assert summary['AP75'] == pytest.approx(0.0)
  assert summary['AP'] == pytest.approx(0.3)  # Matched at 0.5, 0.55 and 0.6.


def test_false_positive_ranked_first_halves_the_precision():
  gt = [[[0, 0, 100, 100]]]
  det = [[[150, 150, 190, 190], [0, 0, 100, 100]]]
  summary = _evaluate(_gt(gt, [[0]]), _dets(det, [[0.9, 0.8]], [[0, 0]]))
  assert summary['AP'] == pytest.approx(0.5)


def test_wrong_class_is_no_match():
  summary = _evaluate(_gt([[[0, 0, 100, 100]]], [[0]]),
                      _dets([[[0, 0, 100, 100]]], [[0.9]], [[1]]))
  assert summary['AP'] == pytest.approx(0.0) and summary['AP/cat'] == pytest.approx(0.0)
  assert 'AP/dog' not in summary  # Classes without ground truth have no AP.


def test_background_image_detections_are_false_positives():
  gt = _gt([[[0, 0, 100, 100]], []], [[0], []])
  dets = _dets([[[0, 0, 100, 100]], [[10, 10, 50, 50]]], [[0.5], [0.9]], [[0], [0]])
  assert _evaluate(gt, dets)['AP'] == pytest.approx(0.5)


def test_detection_on_a_crowd_region_costs_nothing():
  gt = _gt([[[0, 0, 100, 100], [150, 100, 290, 190]]], [[0, 0]], [[False, True]])
  dets = _dets([[[0, 0, 100, 100], [160, 110, 280, 180]]], [[0.5, 0.9]], [[0, 0]])
  assert _evaluate(gt, dets)['AP'] == pytest.approx(1.0)
  no_crowd = dict(gt, crowd=np.zeros_like(gt['crowd']))
  assert _evaluate(no_crowd, dets)['AP'] < 0.6  # As a real object it is mostly missed.


def test_no_detections_at_all():
  summary = _evaluate(_gt(GT_BOXES, GT_LABELS), _dets([[]] * 4, [[]] * 4, [[]] * 4))
  assert summary['AP'] == 0 and summary['AR100'] == 0


def test_category_ids_and_results_file(tmp_path):
  path = str(tmp_path / 'detections.json')
  dets = _dets(GT_BOXES, [[0.9] * len(b) for b in GT_BOXES], GT_LABELS)
  summary = _evaluate(_gt(GT_BOXES, GT_LABELS), dets, category_ids=[1, 3, 17],
                      results_path=path)
  assert summary['AP'] == pytest.approx(1.0)
  with open(path) as f:
    written = json.load(f)
  assert len(written) == 7 and {d['category_id'] for d in written} == {1, 3, 17}
  first = next(d for d in written if d['image_id'] == 1 and d['category_id'] == 1)
  assert first['bbox'] == [10.0, 10.0, 50.0, 50.0] and first['score'] == pytest.approx(0.9)


def test_bad_input_is_named():
  gt, dets = _gt(GT_BOXES, GT_LABELS), _dets([[]] * 4, [[]] * 4, [[]] * 4)
  with pytest.raises(ValueError, match='image_ids repeat'):
    coco_eval.evaluate(gt, dets, [1, 2, 2, 3], SIZES, NAMES)
  bad = dict(gt, labels=gt['labels'] + 5)
  with pytest.raises(ValueError, match='outside the 3 classes'):
    _evaluate(bad, dets)
  with pytest.raises(ValueError, match='3 distinct ids'):
    _evaluate(gt, dets, category_ids=[1, 1, 2])


def _random_split(seed, images=12):
  rng = np.random.default_rng(seed)
  boxes, labels, dboxes, scores, classes = [], [], [], [], []
  for i in range(images):
    n = int(rng.integers(0, 6))
    xy = rng.uniform(0, 220, (n, 2))
    wh = rng.uniform(4, 120, (n, 2))
    b = np.concatenate([xy, xy + wh], 1)
    boxes.append(b)
    labels.append(rng.integers(0, 3, n))
    # Detections: jittered copies of some objects (mixed quality) plus clutter.
    keep = b[rng.uniform(size=n) < 0.8]
    jitter = keep + rng.normal(0, 1, keep.shape) * np.repeat(keep[:, 2:] - keep[:, :2], 2,
                                                             axis=1) * 0.08
    m = int(rng.integers(0, 4))
    cxy = rng.uniform(0, 250, (m, 2))
    clutter = np.concatenate([cxy, cxy + rng.uniform(5, 80, (m, 2))], 1)
    d = np.concatenate([jitter, clutter]) if len(jitter) + m else np.zeros((0, 4))
    dboxes.append(d)
    scores.append(rng.uniform(0.05, 1, len(d)))
    classes.append(np.concatenate([labels[-1][rng.uniform(size=n) < 0.8][:len(keep)],
                                   rng.integers(0, 3, m)])[:len(d)])
    classes[-1] = np.pad(classes[-1], (0, len(d) - len(classes[-1])))
  return boxes, labels, dboxes, scores, classes


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_detections_equal_pycocotools(tmp_path, seed):
  boxes, labels, dboxes, scores, classes = _random_split(seed)
  n = len(boxes)
  sizes = np.array([[300, 320]] * n)
  image_ids = [100 + 7 * i for i in range(n)]
  category_ids = [5, 2, 9]
  ours = coco_eval.evaluate(_gt(boxes, labels), _dets(dboxes, scores, classes),
                            image_ids, sizes, NAMES, category_ids=category_ids,
                            results_path=str(tmp_path / 'results.json'))
  # pycocotools alone, from COCO files written here.
  annotations = [{'id': len_id + 1, 'image_id': image_ids[i], 'category_id':
                  category_ids[int(l)], 'bbox': [x1, y1, x2 - x1, y2 - y1],
                  'area': (x2 - x1) * (y2 - y1), 'iscrowd': 0}
                 for len_id, (i, (x1, y1, x2, y2), l) in enumerate(
                     (i, b, l) for i in range(n) for b, l in zip(boxes[i], labels[i]))]
  dataset = {'images': [{'id': i, 'height': 300, 'width': 320} for i in image_ids],
             'annotations': annotations,
             'categories': [{'id': c, 'name': m} for c, m in zip(category_ids, NAMES)]}
  (tmp_path / 'gt.json').write_text(json.dumps(dataset))
  dets = [{'image_id': image_ids[i], 'category_id': category_ids[int(c)],
           'bbox': [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], 'score': float(s)}
          for i in range(n) for (x1, y1, x2, y2), s, c in zip(
              dboxes[i].astype(np.float32), scores[i], classes[i])]
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(str(tmp_path / 'gt.json'))
    evaluator = COCOeval(gt, gt.loadRes(dets), 'bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  for name, value in zip(coco_eval.SUMMARY, evaluator.stats):
    assert ours[name] == pytest.approx(value, abs=1e-6), name
  assert 0.05 < ours['AP'] < 0.95  # Neither trivial nor hopeless.
  for name, category in zip(NAMES, category_ids):
    k = evaluator.params.catIds.index(category)  # COCOeval sorts the ids.
    p = evaluator.eval['precision'][:, :, k, 0, -1]
    assert ours[f'AP/{name}'] == pytest.approx(np.mean(p[p > -1]), abs=1e-6)
  with contextlib.redirect_stdout(io.StringIO()):
    again = COCOeval(gt, gt.loadRes(str(tmp_path / 'results.json')), 'bbox')
    again.evaluate()
    again.accumulate()
    again.summarize()
  np.testing.assert_allclose(again.stats, evaluator.stats, atol=1e-6)  # The written file.
