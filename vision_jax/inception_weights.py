"""FID's InceptionV3 weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the
file every FID implementation uses) -> arrays of `models.inception.FIDInceptionV3`.

  python -m vision_jax.convert inception --weights pt_inception-2015-12-05-6726825d.pth \
      --output /tmp/vision_jax/fid_inception

The file is the state dict of `pytorch_fid.inception.fid_inception_v3()`: torchvision's
InceptionV3 names (`Mixed_5b.branch1x1.conv.weight`, `...bn.running_var`) plus a 1008-way
`fc`. Every conv and BatchNorm tensor is mapped by name (conv OIHW -> HWIO; BatchNorm
weight, bias, running_mean, running_var -> scale, bias, mean, var); `fc` (the logits FID
does not use) must be there with its 1008 x 2048 shape, which tells this file from
torchvision's 1000-class ImageNet Inception, and is then dropped with the
`num_batches_tracked` counters. A tensor missing, left over or of another shape is an
error listing them.

The output directory holds `inception_pool3.npz` (our parameter path -> float32 array)
and `conversion.json` (source path, its sha256, and whether that is the published file's:
its name carries the hash prefix 6726825d). `load_inception(directory)` builds the model.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Mapping

import numpy as np

from vision_jax.errors import UserError
from vision_jax.pretrained_weights import ConversionError, read_weights

ARRAYS_FILE = 'inception_pool3.npz'
PROVENANCE_FILE = 'conversion.json'
FC_SHAPES = {'fc.weight': (1008, 2048), 'fc.bias': (1008,)}
PUBLISHED_SHA256_PREFIX = '6726825d'
_BN = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def our_shapes() -> dict[str, tuple[int, ...]]:
  """{parameter path: shape} of every array of FIDInceptionV3 (kernels HWIO)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vision_jax import optim  # pylint: disable=g-import-not-at-top
  from vision_jax.models import inception  # pylint: disable=g-import-not-at-top
  abstract = nnx.eval_shape(inception.FIDInceptionV3)
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(abstract))[0]
  return {optim.param_path(p): tuple(x.shape) for p, x in leaves}


def torch_name(path: str) -> str:
  """Our 'Mixed_5b/branch1x1/conv/kernel' -> pytorch-fid's 'Mixed_5b.branch1x1.conv.weight'."""
  *modules, leaf = path.split('/')
  return '.'.join(modules + ['weight' if leaf == 'kernel' else _BN[leaf]])


def torch_shapes() -> dict[str, tuple[int, ...]]:
  """{pytorch-fid state-dict name: shape} of every tensor the file must hold (without the
  num_batches_tracked counters, which may be there or not)."""
  shapes = {}
  for path, shape in our_shapes().items():
    shapes[torch_name(path)] = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 \
        else shape
  return shapes | FC_SHAPES


def _listed(names: list[str], limit: int = 8) -> str:
  shown = ', '.join(names[:limit])
  return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def convert_state_dict(weights: Mapping[str, np.ndarray], source: str = 'the file'
                       ) -> dict[str, np.ndarray]:
  """pytorch-fid-named arrays -> {our parameter path: float32 array}; ConversionError
  (one paragraph naming every tensor that does not fit) unless the names and shapes are
  exactly those of fid_inception_v3()'s state dict."""
  want = torch_shapes()
  counters = {n for n in weights if n.endswith('.num_batches_tracked')}
  missing = sorted(set(want) - set(weights))
  unused = sorted(set(weights) - set(want) - counters)
  wrong = [f'{n} {tuple(np.shape(weights[n]))} (wants {want[n]})' for n in sorted(want)
           if n in weights and tuple(np.shape(weights[n])) != want[n]]
  if missing or unused or wrong:
    fc = weights.get('fc.weight')
    if any(n.startswith('AuxLogits.') for n in weights) or (
        fc is not None and np.shape(fc) == (1000, 2048)):
      hint = ("it looks like torchvision's ImageNet InceptionV3 (1000 classes), whose "
              "weights and pooling differ from FID's: FID needs pytorch-fid's "
              'pt_inception-2015-12-05-6726825d.pth (the 2015 TensorFlow graph ported to '
              'PyTorch, 1008 classes)')
    elif len(missing) > len(want) // 2:
      hint = ("it is not an InceptionV3 state dict: pass pytorch-fid's "
              'pt_inception-2015-12-05-6726825d.pth (from its GitHub release '
              '"fid_weights"), or a .safetensors / .npz holding the same tensors')
    else:
      hint = ('its names are those of pytorch-fid\'s InceptionV3 but not all of them fit: '
              'the file is truncated or was saved from a modified network. Pass the '
              'unmodified pt_inception-2015-12-05-6726825d.pth')
    parts = [f'{len(missing)} tensors are missing: {_listed(missing)}' if missing else '',
             f'{len(unused)} tensors have no place: {_listed(unused)}' if unused else '',
             f'{len(wrong)} tensors have another shape: {_listed(wrong)}' if wrong else '']
    raise ConversionError(f'{source} is not the FID InceptionV3 weights file; {hint}. '
                          + '; '.join(p for p in parts if p) + '.')
  out = {}
  for path in our_shapes():
    value = np.asarray(weights[torch_name(path)], np.float32)
    out[path] = np.ascontiguousarray(value.transpose(2, 3, 1, 0) if value.ndim == 4
                                     else value)
  return out


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def convert(weights_path: str, output: str) -> dict:
  """Converts the file into `output` (a new or empty directory); returns the provenance
  written to conversion.json."""
  output = os.path.abspath(os.path.expanduser(output))
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise ConversionError(f'--output={output} exists and is not an empty directory; the '
                          'conversion never overwrites. Pass a new directory.')
  arrays = convert_state_dict(read_weights(weights_path), weights_path)
  sha256 = _sha256(weights_path)
  provenance = {'source': 'pytorch-fid pt_inception-2015-12-05',
                'weights': os.path.abspath(weights_path), 'sha256': sha256,
                'published_file': sha256.startswith(PUBLISHED_SHA256_PREFIX),
                'arrays_written': len(arrays)}
  os.makedirs(output, exist_ok=True)
  np.savez(os.path.join(output, ARRAYS_FILE), **arrays)
  with open(os.path.join(output, PROVENANCE_FILE), 'w') as f:  # Last: the output is whole.
    json.dump(provenance, f, indent=2)
  return provenance


def load_arrays(directory: str) -> dict[str, np.ndarray]:
  """The converted arrays of `directory`; UserError unless `convert` wrote it whole."""
  path = os.path.join(directory, ARRAYS_FILE)
  if not os.path.exists(os.path.join(directory, PROVENANCE_FILE)) or not os.path.exists(path):
    raise UserError(f'{directory} holds no converted Inception weights ({ARRAYS_FILE} and '
                    f'{PROVENANCE_FILE}). Write it with: python -m vision_jax.convert '
                    f'inception --weights pt_inception-2015-12-05-6726825d.pth --output '
                    f'{directory}')
  with np.load(path) as npz:
    arrays = dict(npz)
  shapes = our_shapes()
  bad = sorted(set(shapes) ^ set(arrays)) + sorted(
      k for k in shapes if k in arrays and arrays[k].shape != shapes[k])
  if bad:
    raise UserError(f'{path} does not fit FIDInceptionV3 ({len(bad)} arrays missing, extra '
                    f'or of another shape: {_listed(bad)}); it was written by another '
                    'version. Convert the weights file again into a new directory.')
  return arrays


def load_inception(directory: str):
  """FIDInceptionV3 with the weights converted into `directory`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vision_jax import optim  # pylint: disable=g-import-not-at-top
  from vision_jax.models import inception  # pylint: disable=g-import-not-at-top
  arrays = load_arrays(directory)
  graphdef, state = nnx.split(nnx.eval_shape(inception.FIDInceptionV3))
  state = jax.tree_util.tree_map_with_path(
      lambda p, _: jnp.asarray(arrays[optim.param_path(p)]), state)
  return nnx.merge(graphdef, state)


def main(argv: list[str] | None = None) -> int:
  """`python -m vision_jax.convert inception ...`; returns the exit code (2: bad input)."""
  parser = argparse.ArgumentParser(
      prog='python -m vision_jax.convert inception',
      description="pytorch-fid's InceptionV3 weights file -> FID feature weights.")
  parser.add_argument('--weights', required=True, help='pt_inception-2015-12-05-6726825d'
                      '.pth (needs torch to read), or .safetensors / .npz of its tensors.')
  parser.add_argument('--output', required=True, help='New directory to write.')
  args = parser.parse_args(argv)
  try:
    provenance = convert(args.weights, args.output)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  note = ('' if provenance['published_file'] else ' Note: its sha256 is not that of the '
          'published file (6726825d...), so FID values will not compare with published '
          'ones.')
  print(f'Converted {provenance["arrays_written"]} arrays of {args.weights} into '
        f'{os.path.abspath(args.output)}.{note}')
  return 0
