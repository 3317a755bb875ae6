"""--mode=export: the artefact, run in a fresh process without the training code, gives the
logits the framework gives, and so does the TF SavedModel."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli
from test_evaluate import copy_run, trained_workdir

# Runs in a fresh interpreter: load the artefact with vision_jax.export alone, then check
# that nothing of the training stack came with it, then the SavedModel with TensorFlow.
_FRESH = r'''
import sys
import numpy as np
from vision_jax import export
served = export.load(sys.argv[1] + '/export')
images = np.load(sys.argv[2])
np.save(sys.argv[3], served(images))
np.save(sys.argv[3] + '.one.npy', served(images[0]))  # A single HWC image: batch of one.
training = [m for m in sys.modules if m.split('.')[0] in ('flax', 'optax', 'orbax',
            'tensorflow', 'grain', 'tensorflow_datasets') or m in ('vision_jax.train',
            'vision_jax.models', 'vision_jax.inference', 'vision_jax.steps')]
assert not training, training
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1] + '/export/' + served.metadata['files']['saved_model'])
out = model.signatures['serving_default'](images=tf.constant(images))
np.save(sys.argv[3] + '.tf.npy', out['logits'].numpy())
'''


@pytest.fixture(scope='module')
def exported(tmp_path_factory, data_dir):
  workdir = copy_run(trained_workdir(tmp_path_factory, data_dir),
                     tmp_path_factory.mktemp('export') / 'run')
  proc = run_cli(['--mode=export', '--workdir', str(workdir)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, json.loads(proc.stdout.strip().splitlines()[-1])


def test_export_writes_the_artefact(exported):
  workdir, printed = exported
  meta = json.loads((workdir / 'export' / 'metadata.json').read_text())
  assert printed['step'] == meta['step'] == 150
  assert meta['input']['shape'] == [None, 8, 8, 1] and meta['input']['dtype'] == 'uint8'
  assert meta['normalization']['mean'] == [0.5] and meta['normalization']['std'] == [0.5]
  assert meta['class_names'] == [str(i) for i in range(10)]
  assert meta['platforms'] == ['cpu', 'cuda', 'tpu']
  for name in ('model.stablehlo', 'weights.npz', 'saved_model/150/saved_model.pb'):
    assert (workdir / 'export' / name).stat().st_size > 0


def test_exported_logits_equal_the_framework_logits(exported, tmp_path):
  workdir, _ = exported
  from vision_jax import inference
  loaded = inference.load(str(workdir), inference.read_config(str(workdir)))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (37, 8, 8, 1), np.uint8)  # An odd batch: it is symbolic.
  expected = loaded.logits(images)
  np.save(tmp_path / 'images.npy', images)
  out = tmp_path / 'logits.npy'
  proc = subprocess.run([sys.executable, '-c', _FRESH, str(workdir), str(tmp_path /
                         'images.npy'), str(out)], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(np.load(out), expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.load(f'{out}.one.npy'), expected[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.load(f'{out}.tf.npy'), expected, atol=1e-5, rtol=0)


def test_loader_rejects_images_of_another_shape(exported):
  from vision_jax import export
  served = export.load(str(exported[0] / 'export'))
  with pytest.raises(ValueError, match=r'uint8 images of shape \(N, 8, 8, 1\)'):
    served(np.zeros((2, 8, 8, 3), np.uint8))


def test_metadata_states_the_runs_own_eval_preprocessing(exported, tmp_path, data_dir):
  """A center_crop run's export says center_crop with its crop fraction (not 'resize'),
  and Served.prepare applies it: the served logits of a larger image equal predict's."""
  from PIL import Image
  from vision_jax.data.eval_transform import EvalTransform
  workdir, _ = exported
  meta = json.loads((workdir / 'export' / 'metadata.json').read_text())
  assert meta['input']['preprocessing']['name'] == 'resize'
  crop = copy_run(workdir, tmp_path / 'crop')
  dataset = json.loads((crop / 'dataset.json').read_text())
  dataset['eval_transform'] = EvalTransform('center_crop', 8, crop_fraction=0.5,
                                            channels=1).to_json()  # As such a run writes.
  (crop / 'dataset.json').write_text(json.dumps(dataset))
  proc = run_cli(['--mode=export', '--workdir', str(crop)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  from vision_jax import export
  served = export.load(str(crop / 'export'))
  spec = served.metadata['input']['preprocessing']
  assert spec['name'] == 'center_crop' and spec['crop_fraction'] == 0.5
  assert 'central 8x8' in spec['description'] and not spec['exact']
  image = np.random.default_rng(1).integers(0, 256, (24, 20, 1), np.uint8)
  Image.fromarray(image[..., 0]).save(tmp_path / 'big.png')
  out = tmp_path / 'preds.json'
  proc = run_cli(['--mode=predict', '--workdir', str(crop), '--images',
                  str(tmp_path / 'big.png'), '--top_k=10', '--output', str(out)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  predicted = {t['index']: t['probability'] for t in json.loads(out.read_text())[0]['top_k']}
  probs = served.probabilities(served.prepare(image))
  np.testing.assert_allclose([predicted[i] for i in range(10)], probs, atol=1e-5)
  prepared = served.prepare(image)
  # An export written before the transform was one object states the recipe so.
  served.metadata['input']['preprocessing'] = {'recipe': 'center_crop', 'crop_fraction': 0.5,
                                               'convert_channels': 0}
  np.testing.assert_array_equal(served.prepare(image), prepared)
