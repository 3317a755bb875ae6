"""The detection recipes: the COCO configs state torchvision's figures and validate for 8
devices; RetinaNet's trains 2 steps through the real loop on mocked tfds coco/2017 (COCO
category ids in the detections JSON), FCOS's reads mocked voc/2007 (difficult objects as
crowd). Only sizes shrink (a width-8 ResNet-18 of the same detector, 64 px)."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vision_jax import config as config_lib
from vision_jax import config_files
from vision_jax import tasks
from vision_jax import train
from vision_jax.data import detection_sources
from vision_jax.data.stream import HostShard
from vision_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECTED = {'coco_fcos_resnet50_fpn': '39.2', 'coco_retinanet_resnet50_fpn': '36.4'}


def _config(name):
  return config_files.load_config_file(os.path.join(REPO, 'configs', f'{name}.py'))


def test_coco_configs_state_torchvisions_figures_and_validate():
  for name, figure in EXPECTED.items():
    config = _config(name)
    config_lib.validate(config, 8)
    with open(os.path.join(REPO, 'configs', f'{name}.py')) as f:
      doc = f.read()
    assert f'box AP {figure}' in doc and 'Not run here' in doc
    assert (config.task.min_size, config.task.max_size, config.dataset.image_size) == (
        800, 1333, 1344)
    assert config.train.steps == 26 * (117_266 // 16)


def _mock_source(kind):
  """as_data_source_fn for tfds.testing.mock_data: 6 consistent examples per split."""
  def source(builder, split, *args, **kwargs):
    del builder, args, kwargs
    rng = np.random.default_rng(len(split))
    out = []
    for i in range(6):
      n = int(rng.integers(0, 4))
      ymin, xmin = rng.uniform(0, 0.5, (2, n))
      bbox = np.stack([ymin, xmin, ymin + rng.uniform(0.1, 0.5, n),
                       xmin + rng.uniform(0.1, 0.5, n)], 1).astype(np.float32)
      objects = {'bbox': bbox, 'label': rng.integers(0, 20, n)}
      if kind == 'coco':
        objects.update(is_crowd=np.zeros(n, bool), area=np.full(n, 50.0, np.float32))
      else:
        objects['is_difficult'] = np.arange(n) == 0
      out.append({'image': rng.integers(0, 256, (int(rng.integers(40, 90)), 72, 3), np.uint8),
                  'image/id': 500 + i, 'objects': objects})
    return out
  return source


def _shrink(config):
  config.dataset.download = True  # mock_data's builders are never "prepared".
  config.dataset.num_workers = 0
  config.dataset.image_size, config.task.min_size, config.task.max_size = 64, 48, 64
  config.model.name = config.model.name.replace('resnet50', 'resnet18')
  config.model.width, config.model.fpn_channels, config.model.head_depth = 8, 32, 1
  config.train.batch_size, config.eval.batch_size = 4, 4
  config.train.steps, config.train.log_every = 2, 1
  config.optim.warmup_steps, config.optim.piecewise_boundary_epochs = 0, ()
  config.optim.piecewise_scales = ()
  config.checkpoint.every_steps = 2
  return config


def test_retinanet_config_trains_two_steps_on_mock_coco(tmp_path):
  """With class_index='category_id' (torchvision's COCO label space, that of a converted
  COCO workdir) the model has 91 classes, ground truth class k is COCO_CATEGORY_IDS[label]
  and detections keep their index as category id; evaluation scores the 80 categories."""
  config = _shrink(_config('coco_retinanet_resnet50_fpn'))
  config.task.score_thresh = 0.005  # Untrained: every class at its prior 0.01.
  config.task.class_index = 'category_id'
  config_lib.validate(config, 1)
  ids = np.asarray(detection_sources.COCO_CATEGORY_IDS)
  with tfds.testing.mock_data(as_data_source_fn=_mock_source('coco')):
    by_label, info = detection_sources.open_split('coco/2017', 'validation', download=True)
    by_id, id_info = detection_sources.open_split('coco/2017', 'validation', download=True,
                                                  class_index='category_id')
    for i in range(len(by_label)):
      np.testing.assert_array_equal(by_id[i]['classes'], ids[by_label[i]['classes']])
    train.train_and_evaluate(config, str(tmp_path))
  assert (info.num_classes, info.category_ids) == (80, tuple(ids))
  assert id_info.num_classes == 91 and id_info.category_ids is None
  assert [id_info.class_names[k] for k in ids] == info.class_names
  assert {id_info.class_names[k] for k in set(range(91)) - set(ids)} == {'N/A'}
  results = json.loads((tmp_path / 'results.json').read_text())
  split = results['eval']['validation']
  assert results['step'] == 2 and split['num_examples'] == 6
  assert {k for k in split if k.startswith('AP/')} <= {f'AP/{n}' for n in info.class_names}
  dataset = json.loads((tmp_path / 'dataset.json').read_text())
  assert dataset['num_classes'] == 91
  detections = json.loads((tmp_path / 'detections_validation.json').read_text())
  assert detections and {d['image_id'] for d in detections} <= set(range(500, 506))
  assert {d['category_id'] for d in detections} <= set(range(91))


def test_category_id_indexing_is_refused_for_data_without_category_ids():
  config = _shrink(_config('coco_fcos_resnet50_fpn'))
  config.dataset.name, config.task.class_index = 'digits_detection', 'category_id'
  task = tasks.build(config)
  with pytest.raises(detection_sources.DetectionDataError, match='category ids'):
    task.build_data(HostShard())
  config.task.class_index = 'id'
  with pytest.raises(ConfigError, match="class_index='id'"):
    config_lib.validate(config, 1)


def test_fcos_config_reads_mock_voc_with_difficult_as_crowd():
  config = _shrink(_config('coco_fcos_resnet50_fpn'))
  config.dataset.name, config.dataset.eval_splits = 'voc/2007', ('test',)
  task = tasks.build(config)
  with tfds.testing.mock_data(as_data_source_fn=_mock_source('voc')):
    data = task.build_data(HostShard())
    with data.eval_batches('test') as batches:
      batch = next(batches)
    train_batch = data.train[0]
  assert data.num_classes == 20 and task.category_ids is None
  assert batch['image'].shape == (4, 64, 64, 3) and batch['boxes'].shape == (4, 100, 4)
  first = batch['box_mask'] > 0
  assert first.any() and (batch['crowd'][first.any(1), 0] == 1).all()  # Box 0 difficult.
  assert train_batch['boxes'].shape == (4, 100, 4) and set(train_batch) == set(
      task.batch_spec(data))


def test_voc_recipe_fine_tunes_a_coco_detector_keeping_all_but_its_class_layer(tmp_path):
  """configs/voc_fcos_from_coco.py from a COCO FCOS workdir with COCO's 91-class label
  space (as `convert torchvision` writes one; here its freshly initialised state): 20 new
  classes, only head/cls_logits re-initialised, everything else loaded; two steps on mocked
  voc/2007."""
  from vision_jax import checkpoint, parallel, train_state  # pylint: disable=g-import-not-at-top
  recipe = _config('voc_fcos_from_coco')
  config_lib.validate(recipe, 8)
  coco = _shrink(_config('coco_fcos_resnet50_fpn'))
  coco.task.class_index = 'category_id'
  source = tmp_path / 'coco'
  _, state = train_state.create(tasks.build(coco), parallel.make_mesh(coco), num_classes=91,
                                image_size=64, in_channels=3, steps_per_epoch=1)
  ckpt = checkpoint.Checkpointer(str(source), keep=1, async_save=False)
  ckpt.save(0, state, {'next_step': 0, 'seed': 0, 'global_batch': 4})
  ckpt.wait()
  ckpt.close()
  (source / 'config.json').write_text(coco.to_json())
  config = _shrink(recipe)
  config.init_from.checkpoint = str(source)
  config.dataset.eval_splits = ()
  config_lib.validate(config, 1)
  with tfds.testing.mock_data(as_data_source_fn=_mock_source('voc')):
    train.train_and_evaluate(config, str(tmp_path / 'voc'))
  report = json.loads((tmp_path / 'voc' / 'init_report.json').read_text())
  assert sorted(report['reinitialized']) == ['head/cls_logits/bias', 'head/cls_logits/kernel']
  loaded = report['loaded']
  assert any(p.startswith('fpn/') for p in loaded) and 'head/bbox_ctrness/kernel' in loaded
  assert any(p.startswith('head/cls_convs/') for p in loaded)
  assert json.loads((tmp_path / 'voc' / 'dataset.json').read_text())['num_classes'] == 20
