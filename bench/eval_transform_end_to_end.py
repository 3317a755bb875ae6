"""Converted torchvision / timm ResNets predict what the libraries' own pipelines predict,
on real photos, through --mode=predict, export.load and the TF SavedModel.

  python bench/eval_transform_end_to_end.py            # ~10 min on 2 busy cores
  python bench/eval_transform_end_to_end.py --models torchvision_resnet18/torchvision_v1

Reads tests/fixtures/eval_transform_photos.npz, written in the torch venv by
tests/fixtures/make_eval_transform_fixtures.py: 10 photos (97x131 to 640x427, one grey),
and the probabilities torchvision's resnet18 / resnet50 and timm's resnet50 give them
through the libraries' own eval pipelines, with random weights drawn by numpy
(tests/torch_reference.py, seed 0, a head that makes them depend on the image). This
script redraws the same weights, saves them as .safetensors and, for each (model,
pipeline):
  convert      python -m vision_jax.convert <source> --eval_transform <the pipeline>
  predict      python -m vision_jax.main --mode=predict --images <the photos as PNG>
               --top_k 1000 (every class's probability)
  export.load  --mode=export, then served.probabilities(served.prepare(photo))
  saved_model  the export's SavedModel (TensorFlow): serving_default(images=prepared)
  fast         for contrast: our fast center_crop of the same share of the shorter side
               (the converter's transform before it was exact), through the served model
and prints, per route, the photos whose top-1 differs from the reference's and the max
|probability difference|. Pass (exit 0): every exact route has the reference's top-1 on
every photo and max |difference| < 0.002.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'tests'))
import torch_reference  # pylint: disable=g-import-not-at-top,wrong-import-position

FIXTURE = os.path.join(REPO, 'tests', 'fixtures', 'eval_transform_photos.npz')
PRESET = {'torchvision_v1': 'torchvision_v1', 'torchvision_v2': 'torchvision_v2',
          'timm': 'timm_rsb'}  # timm's resnet50 resolves to crop_pct 0.95, bicubic.
MODELS = ('torchvision_resnet18/torchvision_v1', 'torchvision_resnet50/torchvision_v1',
          'torchvision_resnet50/torchvision_v2', 'timm_resnet50/timm')
TOLERANCE = 0.002


def _cli(args: list[str]) -> str:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1800)
  if proc.returncode:
    raise RuntimeError(f'{" ".join(args[:3])} failed:\n{proc.stderr[-3000:]}')
  return proc.stdout


def _photos(fixture) -> dict[str, np.ndarray]:
  out = {}
  for name in fixture['names']:
    array = np.asarray(Image.open(io.BytesIO(fixture[f'photo/{name}'].tobytes())))
    out[str(name)] = array[..., None] if array.ndim == 2 else array
  return out


def _weights(fixture, key: str) -> dict[str, np.ndarray]:
  names_shapes = list(zip(fixture[f'{key}.names'].tolist(),
                          json.loads(str(fixture[f'{key}.shapes']))))
  state = torch_reference.with_head(torch_reference.random_state_dict(names_shapes, seed=0),
                                    float(fixture[f'{key}.fc_scale']), fixture[f'{key}.fc_bias'])
  if abs(torch_reference.checksum(state) - float(fixture[f'{key}.checksum'])) > 1e-9 * float(
      fixture[f'{key}.checksum']):
    raise RuntimeError(f'{key}: numpy drew other weights than the fixture holds.')
  return state


def _compare(name: str, probs: np.ndarray, reference: np.ndarray, photos: list[str]) -> dict:
  diff = float(np.abs(probs - reference).max())
  wrong = [p for p, a, b in zip(photos, probs.argmax(-1), reference.argmax(-1)) if a != b]
  print(f'  {name:12s} top-1 differs on {len(wrong):2d} / {len(photos)} photos '
        f'{wrong if wrong else ""}  max |p - reference| {diff:.2e}', flush=True)
  return {'top1_mismatches': wrong, 'max_abs_diff': diff}


def run(model: str, fixture, photos: dict[str, np.ndarray], tmp: str) -> dict:
  """Every route for one (model key, pipeline): {route: {top1_mismatches, max_abs_diff}}."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vision_jax import export  # pylint: disable=g-import-not-at-top
  from vision_jax.data.eval_transform import EvalTransform  # pylint: disable=g-import-not-at-top
  key, pipeline = model.split('/')
  reference = fixture[f'{key}/{pipeline}.probabilities'].astype(np.float64)
  names = list(photos)
  work = os.path.join(tmp, model.replace('/', '_'))
  os.makedirs(work)
  weights = os.path.join(work, 'weights.safetensors')
  save_file(_weights(fixture, key), weights)
  source, arch = key.split('_')
  workdir = os.path.join(work, 'workdir')
  _cli(['vision_jax.convert', source, '--arch', arch, '--weights', weights, '--eval_transform',
        PRESET[pipeline], '--output', workdir])
  folder = os.path.join(work, 'photos')
  os.makedirs(folder)
  for name, photo in photos.items():
    Image.fromarray(photo[..., 0] if photo.shape[-1] == 1 else photo).save(
        os.path.join(folder, f'{name}.png'))
  print(f'{model}: converted with --eval_transform {PRESET[pipeline]}', flush=True)
  out = {}
  preds = os.path.join(work, 'preds.json')
  _cli(['vision_jax.main', '--mode=predict', '--workdir', workdir, '--images', folder,
        '--top_k', '1000', '--output', preds])
  predicted = {}
  for entry in json.load(open(preds)):
    vector = np.zeros(1000)
    for t in entry['top_k']:
      vector[t['index']] = t['probability']
    predicted[os.path.basename(entry['image'])[:-4]] = vector
  out['predict'] = _compare('predict', np.stack([predicted[n] for n in names]), reference,
                            names)
  _cli(['vision_jax.main', '--mode=export', '--workdir', workdir])
  served = export.load(os.path.join(workdir, 'export'))
  prepared = np.stack([served.prepare(photo) for photo in photos.values()])
  out['export.load'] = _compare('export.load', served.probabilities(prepared), reference, names)
  saved = tf.saved_model.load(os.path.join(workdir, 'export',
                                           served.metadata['files']['saved_model']))
  tf_probs = saved.signatures['serving_default'](images=tf.constant(prepared))['probabilities']
  out['saved_model'] = _compare('saved_model', tf_probs.numpy(), reference, names)
  exact = EvalTransform.from_json(served.metadata['input']['preprocessing'])
  fast = EvalTransform('center_crop', 224, crop_fraction=224 / exact.resize_size, channels=3)
  out['fast'] = _compare('fast', served.probabilities(np.stack([fast(p) for p in photos.values()])),
                         reference, names)
  return out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  fixture = np.load(FIXTURE)
  photos = _photos(fixture)
  print('photos:', ', '.join(f'{n} {p.shape[1]}x{p.shape[0]}x{p.shape[2]}'
                             for n, p in photos.items()))
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for model in args.models:
      results[model] = run(model, fixture, photos, tmp)
  failed = [f'{m} {route}' for m, routes in results.items() for route, r in routes.items()
            if route != 'fast' and (r['top1_mismatches'] or r['max_abs_diff'] >= TOLERANCE)]
  print('PASS' if not failed else f'FAIL: {", ".join(failed)}',
        f'(same top-1 on every photo, max |p - reference| < {TOLERANCE})')
  if args.json:
    print(json.dumps(results))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
