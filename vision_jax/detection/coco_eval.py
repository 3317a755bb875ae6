"""COCO box mAP by pycocotools (the field's evaluator) from arrays, and COCO results JSON.

`evaluate` takes one split's ground truth and detections as per-image arrays (padding
already dropped: every row one real image, each image once), builds pycocotools' COCO
objects in memory, runs COCOeval('bbox') and returns its summary:

  AP       mean over IoU 0.50:0.05:0.95, area all, 100 detections per image
  AP50, AP75                  at IoU 0.5 and 0.75
  APs, APm, APl               small (< 32^2 px), medium, large (> 96^2 px) objects
  AR1, AR10, AR100            recall with at most 1, 10, 100 detections per image
  ARs, ARm, ARl               AR100 by object size
  AP/<class name>             a class's AP (IoU 0.5:0.95, area all, 100 detections), for
                              every class with ground truth in the split
As in pycocotools, a figure whose objects do not occur (no small objects, say) is -1.

Ground truth {'boxes' [I, M, 4] (x1, y1, x2, y2 pixels of the image evaluated in),
'labels' [I, M] class indices, 'mask' [I, M], optional 'crowd' [I, M] (COCO's iscrowd:
matched detections neither count nor cost) and 'area' [I, M] (COCO's object area, which
decides small / medium / large; default the box's area)}; detections {'boxes' [I, D, 4],
'scores' [I, D], 'classes' [I, D], 'num_detections' [I]} in the same pixels (postprocess.py's
output). `image_ids` [I] name the images (COCO's ids where the split has them);
`category_ids` maps class index -> COCO category id (default: the index itself, which is
torchvision's convention for its 91-output COCO models). An image without ground truth
boxes is a background image: its detections are all false positives.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Mapping, Sequence

import numpy as np

SUMMARY = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm',
           'ARl')  # The order of COCOeval.stats.


def _xywh(boxes: np.ndarray) -> np.ndarray:
  boxes = np.asarray(boxes, np.float64)
  return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def _category_ids(category_ids: Sequence[int] | None, num_classes: int) -> list[int]:
  ids = list(range(num_classes)) if category_ids is None else [int(c) for c in category_ids]
  if len(ids) != num_classes or len(set(ids)) != len(ids):
    raise ValueError(f'coco_eval: category_ids must give {num_classes} distinct ids, one per '
                     f'class name; got {len(ids)} ({len(set(ids))} distinct).')
  return ids


def ground_truth_dataset(ground_truth: Mapping[str, np.ndarray], image_ids: Sequence[int],
                         image_sizes: np.ndarray, class_names: Sequence[str],
                         category_ids: Sequence[int] | None = None) -> dict:
  """The split's ground truth as a COCO instances dict (images, annotations, categories)."""
  ids = _category_ids(category_ids, len(class_names))
  mask = np.asarray(ground_truth['mask'], bool)
  labels = np.asarray(ground_truth['labels'])
  boxes = _xywh(ground_truth['boxes'])
  crowd = np.asarray(ground_truth.get('crowd', np.zeros_like(mask)), bool)
  areas = ground_truth.get('area')
  if labels[mask].size and (labels[mask].min() < 0 or labels[mask].max() >= len(ids)):
    raise ValueError(f'coco_eval: ground-truth labels span {labels[mask].min()}.. '
                     f'{labels[mask].max()}, outside the {len(ids)} classes.')
  images = [{'id': int(i), 'height': int(h), 'width': int(w)}
            for i, (h, w) in zip(image_ids, np.asarray(image_sizes))]
  annotations = []
  for row, image_id in enumerate(image_ids):
    for j in np.flatnonzero(mask[row]):
      x, y, w, h = (float(v) for v in boxes[row, j])
      area = float(areas[row][j]) if areas is not None else w * h
      annotations.append({'id': len(annotations) + 1, 'image_id': int(image_id),
                          'category_id': ids[int(labels[row, j])], 'bbox': [x, y, w, h],
                          'area': area, 'iscrowd': int(crowd[row, j])})
  categories = [{'id': c, 'name': str(n)} for c, n in zip(ids, class_names)]
  return {'images': images, 'annotations': annotations, 'categories': categories}


def results(detections: Mapping[str, np.ndarray], image_ids: Sequence[int],
            category_ids: Sequence[int] | None = None) -> list[dict]:
  """Detections as COCO results: [{'image_id', 'category_id', 'bbox': [x, y, w, h],
  'score'}], the format of COCO's result files and pycocotools' loadRes."""
  classes = np.asarray(detections['classes'])
  boxes = _xywh(detections['boxes'])
  scores = np.asarray(detections['scores'], np.float64)
  out = []
  for row, image_id in enumerate(image_ids):
    for j in range(int(detections['num_detections'][row])):
      k = int(classes[row, j])
      if category_ids is not None and not 0 <= k < len(category_ids):
        raise ValueError(f'coco_eval: a detection has class {k}, outside the '
                         f'{len(category_ids)} classes.')
      out.append({'image_id': int(image_id),
                  'category_id': k if category_ids is None else int(category_ids[k]),
                  'bbox': [float(v) for v in boxes[row, j]], 'score': float(scores[row, j])})
  return out


def write_results(path: str, coco_results: list[dict]) -> None:
  """Writes COCO results JSON (written to a temporary name, then renamed)."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(coco_results, f)
  os.replace(tmp, path)


def summarize(gt_dataset: dict, coco_results: list[dict]) -> dict[str, float]:
  """COCOeval('bbox') of COCO results against a COCO instances dict: SUMMARY and the
  per-class APs (module docstring)."""
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes.
    gt = COCO()
    gt.dataset = gt_dataset
    gt.createIndex()
    if coco_results:
      dt = gt.loadRes(coco_results)
    else:  # loadRes cannot take an empty list.
      dt = COCO()
      dt.dataset = {'images': list(gt_dataset['images']), 'annotations': [],
                    'categories': list(gt_dataset['categories'])}
      dt.createIndex()
    evaluator = COCOeval(gt, dt, 'bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  out = {name: float(v) for name, v in zip(SUMMARY, evaluator.stats)}
  precision = evaluator.eval['precision']  # [IoU, recall, class, area, max detections]
  names = {c['id']: c['name'] for c in gt_dataset['categories']}
  with_gt = {a['category_id'] for a in gt_dataset['annotations']}
  for k, category in enumerate(evaluator.params.catIds):
    if category in with_gt:
      p = precision[:, :, k, 0, -1]
      out[f'AP/{names[category]}'] = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
  return out


def evaluate(ground_truth: Mapping[str, np.ndarray], detections: Mapping[str, np.ndarray],
             image_ids: Sequence[int], image_sizes: np.ndarray, class_names: Sequence[str],
             category_ids: Sequence[int] | None = None, results_path: str | None = None
             ) -> dict[str, float]:
  """One split's COCO summary (module docstring); with `results_path`, its detections are
  also written there as a COCO results JSON."""
  if len(set(int(i) for i in image_ids)) != len(image_ids):
    raise ValueError('coco_eval: image_ids repeat; every image must be evaluated once '
                     '(drop the padding and any duplicate rows first).')
  gt = ground_truth_dataset(ground_truth, image_ids, image_sizes, class_names, category_ids)
  dets = results(detections, image_ids,
                 _category_ids(category_ids, len(class_names)))
  if results_path:
    write_results(results_path, dets)
  return summarize(gt, dets)
