"""Pretrained weights from torchvision, timm or BiT -> a finished vision_jax workdir.

  python -m vision_jax.convert torchvision --arch resnet50 --weights resnet50.safetensors \
      --eval_transform torchvision_v2 --output /tmp/vision_jax/tv_resnet50
  python -m vision_jax.main --mode=eval --workdir /tmp/vision_jax/tv_resnet50   # or predict, export
  python -m vision_jax.main --config configs/finetune_cifar10_from_torchvision_resnet50.py \
      --workdir W --config.init_from.checkpoint=/tmp/vision_jax/tv_resnet50

Sources: `torchvision` and `timm` ResNet-18/34/50/101/152 state dicts (timm's plain
`resnet*` use torchvision's tensor names) as `.safetensors` or `.pth`, and `bit`: the
authors' BiT `.npz` files; reading and the tensor-name maps are in `pretrained_weights`
(every tensor mapped by name; one missing, left over or of another shape is an error that
lists each one: nothing is skipped silently).

The output is what a training run leaves behind: `config.json` (base_config with the model,
ImageNet normalisation and the weights' own eval transform: torchvision's and timm's
pipelines reproduced pixel for pixel, vision_jax.data.eval_transform), `dataset.json`
(which records that transform for predict and export),
`checkpoints/0` (the state of `train_state.create` with the converted arrays placed by
parameter path, saved by `checkpoint.Checkpointer`), plus `conversion.json` (provenance).

`python -m vision_jax.convert inception --weights FILE --output DIR` converts the FID
InceptionV3 weights instead (a feature network, not a workdir): see `inception_weights`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from typing import Mapping

import numpy as np

from vision_jax.data.eval_transform import INTERPOLATIONS, EvalTransform
from vision_jax.errors import UserError
# Re-exported: the converter's error and the name maps are part of its interface.
from vision_jax.pretrained_weights import (ConversionError, bit_names, convert_bit,  # pylint: disable=unused-import
                                           convert_torchvision, read_weights,
                                           resnet_archs, torchvision_names)

SOURCES = ('torchvision', 'timm', 'bit')
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# ----------------------------------------------------------------------------- metadata

# How each family of weights is evaluated by its authors, as our eval transform
# (vision_jax.data.eval_transform): the reference pipelines are reproduced exactly (PIL,
# the same filter, antialiasing and crop geometry); BiT's plain resize is our fast one.
EVAL_TRANSFORMS = {
    'torchvision_v1': EvalTransform('torchvision_v1', 224, crop_fraction=224 / 256,
                                    channels=3),
    'torchvision_v2': EvalTransform('torchvision_v2', 224, crop_fraction=224 / 232,
                                    channels=3),
    'timm_rsb': EvalTransform('timm', 224, crop_fraction=0.95, interpolation='bicubic',
                              channels=3),
    'timm': EvalTransform('timm', 224, crop_fraction=0.875, interpolation='bicubic',
                          channels=3),
    'bit': EvalTransform('resize', 224, channels=3),
}
_ORIGINAL = {
    'torchvision_v1': 'torchvision IMAGENET1K_V1 weights.transforms()',
    'torchvision_v2': 'torchvision IMAGENET1K_V2 weights.transforms()',
    'timm_rsb': "timm's resnet*.a1_in1k-style weights (crop_pct 0.95, bicubic)",
    'timm': "timm's create_transform(**resolve_data_config(model))",
    'bit': 'BiT resizes the whole image (bilinear)',
}


def _eval_transform(name: str | None, source: str, image_size: int | None,
                    crop_fraction: float | None, interpolation: str | None = None
                    ) -> tuple[EvalTransform, str]:
  """The transform to record, from a preset and/or explicit values, and a note saying what
  it reproduces. --crop_fraction alone (or with --eval_transform timm) is timm's pipeline
  with that crop_pct; its filter is --interpolation (default: bicubic for timm weights,
  bilinear, torchvision's, for others)."""
  if name is None and source == 'bit':
    name = 'bit'
  if name is None and crop_fraction is None:
    raise ConversionError(
        f'Pass --eval_transform for {source} weights (the file does not say how they were '
        'evaluated): torchvision_v1 for IMAGENET1K_V1 weights, torchvision_v2 for '
        'IMAGENET1K_V2, timm_rsb for timm\'s resnet*.a1_in1k-style weights, or '
        "--crop_fraction=<timm's crop_pct> (and --interpolation=<its filter>) for any other.")
  if name is not None and name not in EVAL_TRANSFORMS:
    raise ConversionError(f'--eval_transform={name!r} is unknown; use one of '
                          f'{", ".join(EVAL_TRANSFORMS)}.')
  if name is None:
    name = 'timm'
    default_filter = 'bicubic' if source == 'timm' else 'bilinear'
    interpolation = interpolation or default_filter
  base = EVAL_TRANSFORMS[name]
  fixed = [flag for flag, value in (('--crop_fraction', crop_fraction),
                                    ('--interpolation', interpolation)) if value is not None]
  if fixed and base.name != 'timm':
    raise ConversionError(f'{" and ".join(fixed)} cannot change --eval_transform={name}: its '
                          'crop and filter are the reference\'s own. Use --eval_transform '
                          "timm (timm's pipeline with your crop_pct and filter), or drop "
                          f'{" and ".join(fixed)}.')
  if crop_fraction is not None and not 0 < crop_fraction <= 1:
    raise ConversionError(f'--crop_fraction={crop_fraction}: use a value in (0, 1].')
  if image_size is not None and image_size < 1:
    raise ConversionError(f'--image_size={image_size}: use a positive size.')
  try:
    chosen = dataclasses.replace(
        base, image_size=image_size or base.image_size,
        crop_fraction=base.crop_fraction if crop_fraction is None else crop_fraction,
        interpolation=interpolation or base.interpolation)
  except ValueError as e:  # An interpolation PIL does not have.
    raise ConversionError(f'--interpolation={interpolation}: {e}') from e
  return chosen, f"the weights' own: {_ORIGINAL[name]}; ours: {chosen.describe()}"


def imagenet_synsets() -> list[str] | None:
  """The 1,000 ImageNet-1k WordNet ids in label order, from the labels.txt that
  tensorflow-datasets ships for imagenet2012 (found without importing tfds), or None.

  torchvision and timm index their classes by the sorted synsets, as this file does, and
  it is what tfds's imagenet2012 calls its classes, so `--mode=eval` compares like labels.
  """
  spec = importlib.util.find_spec('tensorflow_datasets')
  for root in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(root, 'datasets', 'imagenet2012', 'labels.txt')
    if os.path.exists(path):
      with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
      return names if len(names) == 1000 else None
  return None


def class_names(path: str | None, num_classes: int) -> tuple[list[str], str]:
  """(class names, where they come from): --class_names, else ImageNet synsets for a
  1,000-way head, else the indices."""
  if path:
    try:
      with open(path) as f:
        names = [line.strip() for line in f.read().splitlines()]
    except OSError as e:
      raise ConversionError(f'--class_names={path} cannot be read ({e.strerror}).') from e
    while names and not names[-1]:
      names.pop()
    if len(names) != num_classes:
      raise ConversionError(f'--class_names={path} has {len(names)} lines; the weights\' '
                            f'head has {num_classes} classes. Pass one name per line, in '
                            'class-index order.')
    return names, path
  if num_classes == 1000:
    synsets = imagenet_synsets()
    if synsets:
      return synsets, ('ImageNet-1k WordNet ids (tensorflow_datasets imagenet2012 '
                       'labels.txt); pass --class_names for readable names')
  return [str(i) for i in range(num_classes)], 'class indices (no names given)'


# ----------------------------------------------------------------------------- the workdir

def make_config(arch: str, transform: EvalTransform, mean: tuple[float, ...],
                std: tuple[float, ...]):
  """A full run config for the converted model: base_config with the model, the
  normalisation and eval transform of the weights, and ImageNet's validation split."""
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.model.name = arch
  ds = config.dataset
  ds.name, ds.train_split, ds.eval_splits = 'imagenet2012', 'train', ('validation',)
  ds.image_size, ds.channels = transform.image_size, 3
  ds.mean, ds.std = tuple(mean), tuple(std)
  ds.preprocess = 'resize' if transform.name == 'resize' else 'inception'
  ds.eval_preprocess, ds.crop_fraction = transform.name, transform.crop_fraction
  ds.eval_interpolation = transform.interpolation if transform.name == 'timm' else ''
  # Only used if training continues in this workdir: SGD with momentum (zero momentum in
  # the checkpoint), as torchvision's ResNet recipe.
  config.optim.name, config.optim.momentum, config.optim.learning_rate = 'sgd', 0.9, 0.1
  return config


def _check_output(output: str) -> str:
  output = os.path.abspath(os.path.expanduser(output))
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise ConversionError(f'--output={output} exists and is not an empty directory; the '
                          'conversion never overwrites a workdir. Pass a new directory.')
  return output


def place_arrays(arrays: Mapping[str, np.ndarray], params, rest):
  """(params, rest) with each array of `arrays` at its parameter path ('blocks/0/conv1/
  kernel', 'stem_bn/mean'), in the target leaf's dtype and sharding. Works on any pytree
  layout `optim.param_path` reads; every parameter must get a value and every array a
  place (`rest` may keep leaves that are no weights, e.g. a dropout RNG state)."""
  import jax  # pylint: disable=g-import-not-at-top
  from vision_jax import optim  # pylint: disable=g-import-not-at-top
  placed, unplaced = set(), []

  def put(trainable: bool):
    def fn(path, leaf):
      name = optim.param_path(path)
      if name not in arrays:
        if trainable:
          unplaced.append(name)
        return leaf
      if tuple(arrays[name].shape) != tuple(leaf.shape):
        raise ConversionError(f'Internal: {name} is {arrays[name].shape}, the model wants '
                              f'{leaf.shape}.')
      placed.add(name)
      return jax.device_put(np.asarray(arrays[name], leaf.dtype),
                            getattr(leaf, 'sharding', None))
    return fn

  params = jax.tree_util.tree_map_with_path(put(True), params)
  rest = jax.tree_util.tree_map_with_path(put(False), rest)
  if unplaced or placed != set(arrays):
    raise ConversionError(f'Internal: parameters without a converted value {unplaced}, '
                          f'converted arrays without a place {sorted(set(arrays) - placed)}.')
  return params, rest


def write_workdir(arrays: Mapping[str, np.ndarray], config, dataset: dict,
                  provenance: dict, output: str) -> str:
  """Writes config.json, dataset.json, conversion.json and checkpoints/0 into `output`.

  The state is the one `train_state.create` builds for `config` (so it restores exactly
  as a trained run's does), with every array of `arrays` placed at its parameter path.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from vision_jax import checkpoint, ops, parallel  # pylint: disable=g-import-not-at-top
  from vision_jax import tasks, train_state  # pylint: disable=g-import-not-at-top
  output = _check_output(output)
  mesh = parallel.make_mesh(config)
  # XLA's kernels: the same state on any kernels, and nothing is built just to convert.
  structure, state = train_state.create(
      tasks.build(config), mesh, num_classes=dataset['num_classes'],
      image_size=dataset['image_size'], in_channels=dataset['channels'], steps_per_epoch=1,
      kernels=ops.XLA)
  part = state.parts['model']
  params, rest = place_arrays(arrays, part.params, part.rest)
  opt_state = jax.jit(structure.txs['model'].init,
                      out_shardings=structure.shardings.parts['model'].opt_state)(params)
  state = state.replace_part('model', train_state.Part(params=params, rest=rest,
                                                       opt_state=opt_state))
  ckpt = checkpoint.Checkpointer(output, keep=config.checkpoint.keep, async_save=False)
  ckpt.save(0, state, {'next_step': 0, 'seed': config.seed,
                       'global_batch': config.train.batch_size})
  ckpt.wait()
  ckpt.close()
  for name, obj in (('dataset.json', dataset), ('conversion.json', provenance)):
    with open(os.path.join(output, name), 'w') as f:
      json.dump(obj, f, indent=2)
  with open(os.path.join(output, 'config.json'), 'w') as f:  # Last: the workdir is whole.
    f.write(config.to_json_best_effort(indent=2))
  return output


def convert(source: str, arch: str, weights_path: str, output: str, *,
            eval_transform: str | None = None, image_size: int | None = None,
            crop_fraction: float | None = None, interpolation: str | None = None,
            class_names_path: str | None = None) -> dict:
  """The whole conversion; returns the provenance written to conversion.json."""
  if source not in SOURCES:
    raise ConversionError(f'Unknown source {source!r}; use one of {", ".join(SOURCES)}.')
  from vision_jax.detection import torchvision_weights  # pylint: disable=g-import-not-at-top
  if source == 'torchvision' and arch in torchvision_weights.ARCHS:  # A detector.
    from vision_jax.detection import torchvision_workdir  # pylint: disable=g-import-not-at-top
    output = _check_output(output)  # Before the slow part: fail fast.
    arrays, config, dataset, provenance = torchvision_workdir.prepare(arch, weights_path)
    write_workdir(arrays, config, dataset, provenance, output)
    return provenance
  transform, note = _eval_transform(eval_transform, source, image_size, crop_fraction,
                                    interpolation)
  output = _check_output(output)  # Before the slow part: fail fast.
  weights = read_weights(weights_path)
  if source == 'bit':
    arrays = convert_bit(weights, arch, weights_path)
    mean = std = (0.5, 0.5, 0.5)  # BiT maps pixels to [-1, 1].
  else:
    arrays = convert_torchvision(weights, arch, weights_path)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
  num_classes = int(arrays['head/bias'].shape[0])
  names, names_from = class_names(class_names_path, num_classes)
  config = make_config(arch, transform, mean, std)
  dataset = {'num_classes': num_classes, 'image_size': transform.image_size, 'channels': 3,
             'class_names': names, 'mean': list(mean), 'std': list(std), 'num_train': 0,
             'eval_sizes': {}, 'eval_transform': transform.to_json()}
  provenance = {'source': source, 'weights': os.path.abspath(weights_path), 'arch': arch,
                'tensors_read': len(weights), 'arrays_written': len(arrays),
                'ignored': sorted(n for n in weights if n.endswith('.num_batches_tracked')),
                'eval_transform': eval_transform, 'eval_transform_note': note,
                'class_names': names_from}
  write_workdir(arrays, config, dataset, provenance, output)
  return provenance


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ['inception']:
    from vision_jax import inception_weights  # pylint: disable=g-import-not-at-top
    return inception_weights.main(argv[1:])
  parser = argparse.ArgumentParser(
      prog='python -m vision_jax.convert', description=__doc__.split('\n\n')[0],
      epilog='FID Inception weights: python -m vision_jax.convert inception --weights FILE '
      '--output DIR.')
  parser.add_argument('source', choices=SOURCES, help='Whose weights these are.')
  parser.add_argument('--arch', required=True, help='Our model: resnet18/34/50/101/152 '
                      '(torchvision, timm), bit_r50x1/bit_r50x3/bit_r101x1 (bit), or a '
                      'torchvision detector: fcos_resnet50_fpn, retinanet_resnet50_fpn, '
                      'retinanet_resnet50_fpn_v2.')
  parser.add_argument('--weights', required=True, help='.safetensors, .pth/.pt or BiT .npz.')
  parser.add_argument('--output', required=True, help='New workdir to write.')
  parser.add_argument('--eval_transform', choices=sorted(EVAL_TRANSFORMS), default=None,
                      help='How the weights are evaluated (required for torchvision/timm '
                      'unless --crop_fraction is given).')
  parser.add_argument('--image_size', type=int, default=None, help='Input size (224).')
  parser.add_argument('--crop_fraction', type=float, default=None,
                      help="timm's crop_pct: resize to floor(image_size / it), crop.")
  parser.add_argument('--interpolation', default=None, choices=sorted(INTERPOLATIONS),
                      help="timm's filter (default bicubic for timm weights, else "
                      'bilinear).')
  parser.add_argument('--class_names', default=None, help='File with one name per line.')
  args = parser.parse_args(argv)
  try:
    provenance = convert(args.source, args.arch, args.weights, args.output,
                         eval_transform=args.eval_transform, image_size=args.image_size,
                         crop_fraction=args.crop_fraction, interpolation=args.interpolation,
                         class_names_path=args.class_names)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  output = os.path.abspath(os.path.expanduser(args.output))
  print(f'Converted {provenance["arrays_written"]} arrays of {args.weights} into {output} '
        f'({provenance["eval_transform_note"]}). Use it with: python -m vision_jax.main '
        f'--mode=eval|predict|export --workdir {output}, or as '
        f'--config.init_from.checkpoint={output}.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
