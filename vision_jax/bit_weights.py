"""Convert the authors' BiT weights (.npz) into a vision_jax checkpoint for fine-tuning.

  python -m vision_jax.bit_weights --npz BiT-M-R50x1.npz --model bit_r50x1 --out /tmp/vision_jax/bit_r50x1
  python -m vision_jax.main --config configs/finetune_bit_r50x1.py --workdir W \
      --config.init_from.checkpoint=/tmp/vision_jax/bit_r50x1

The .npz files (https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz, ...) name
tensors like 'resnet/block2/unit01/a/proj/standardized_conv2d/kernel'; `bit.py` follows the
authors' layout, so each maps to one parameter of ours ('blocks/3/proj/kernel'). Kernels
are HWIO in both; the head is a 1x1 conv there and a dense layer here.
"""
from __future__ import annotations

import os

import numpy as np
import orbax.checkpoint as ocp
from absl import app
from absl import flags

from vision_jax import models
from vision_jax.errors import UserError
from vision_jax.models import bit

_UNIT_PARTS = {'a': ('gn1', 'conv1'), 'b': ('gn2', 'conv2'), 'c': ('gn3', 'conv3')}


def name_map(model: str) -> dict[str, str]:
  """{our parameter path: the authors' .npz key} for a registered BiT model."""
  cls = models.model_class(model)
  if not issubclass(cls, bit.BiTResNet):
    raise UserError(f'--model={model} is not a BiT model; use one of '
                    f'{[m for m in models.list_models() if m.startswith("bit_")]}.')
  names = {'stem_conv/kernel': 'resnet/root_block/standardized_conv2d/kernel',
           'final_gn/scale': 'resnet/group_norm/gamma',
           'final_gn/bias': 'resnet/group_norm/beta',
           'head/kernel': 'resnet/head/conv2d/kernel',
           'head/bias': 'resnet/head/conv2d/bias'}
  index = 0
  for stage, units in enumerate(cls.STAGES, start=1):
    for unit in range(1, units + 1):
      prefix = f'resnet/block{stage}/unit{unit:02d}/'
      for part, (gn, conv) in _UNIT_PARTS.items():
        names[f'blocks/{index}/{gn}/scale'] = f'{prefix}{part}/group_norm/gamma'
        names[f'blocks/{index}/{gn}/bias'] = f'{prefix}{part}/group_norm/beta'
        names[f'blocks/{index}/{conv}/kernel'] = f'{prefix}{part}/standardized_conv2d/kernel'
      if unit == 1:
        names[f'blocks/{index}/proj/kernel'] = f'{prefix}a/proj/standardized_conv2d/kernel'
      index += 1
  return names


def convert(weights: dict[str, np.ndarray], model: str) -> dict:
  """npz arrays -> nested {'params': {...}} in our layout, every tensor accounted for."""
  names = name_map(model)
  missing = sorted(set(names.values()) - set(weights))
  if missing:
    raise UserError(f'The .npz lacks {len(missing)} tensors that {model} needs, e.g. '
                    f'{missing[:3]}: is it a {model} checkpoint?')
  params: dict = {}
  for ours, theirs in names.items():
    value = np.asarray(weights[theirs], np.float32)
    if ours == 'head/kernel':
      value = value.reshape(value.shape[-2], value.shape[-1])  # 1x1 conv -> dense.
    elif value.ndim != 4:
      value = value.reshape(-1)  # GroupNorm scales/biases and the head bias.
    node = params
    *parents, leaf = ours.split('/')
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return {'params': params}


def save(state: dict, out: str, source: str) -> str:
  """Writes `state` as step 0 of `out/checkpoints`, readable by config.init_from."""
  directory = os.path.join(os.path.abspath(out), 'checkpoints')
  manager = ocp.CheckpointManager(directory, item_names=('state', 'data'),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=ocp.args.JsonSave({'converted_from': source})))
  manager.wait_until_finished()
  manager.close()
  return directory


_NPZ = flags.DEFINE_string('npz', None, 'The authors\' BiT-*.npz file.')
_MODEL = flags.DEFINE_string('model', 'bit_r50x1', 'Our model name.')
_OUT = flags.DEFINE_string('out', None, 'Directory to write (use it as init_from.checkpoint).')


def main(argv) -> None:
  del argv
  try:
    with np.load(_NPZ.value) as f:
      weights = dict(f)
    print('Wrote', save(convert(weights, _MODEL.value), _OUT.value, _NPZ.value))
  except (UserError, OSError) as e:
    raise SystemExit(f'error: {e}') from e


if __name__ == '__main__':
  flags.mark_flags_as_required(['npz', 'out'])
  app.run(main)
