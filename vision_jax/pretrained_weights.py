"""Weights of torchvision, timm and BiT ResNets as arrays named by vision_jax parameter path.

`read_weights` reads a `.safetensors` file (safetensors' numpy API: no pickle, no torch), a
`.pth`/`.pt` file (only through `torch.load(weights_only=True)`, when torch is installed)
or a BiT `.npz`; `torchvision_names` / `bit_names` map each of our parameter paths to the
source's tensor name; `convert_torchvision` / `convert_bit` apply the map with the layout
changes (conv OIHW -> HWIO, fc transposed, BatchNorm running_mean / running_var -> mean /
var) and refuse anything missing, left over or of another shape, listing each one.
`vision_jax.convert` turns the result into a workdir.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from vision_jax.errors import UserError


class ConversionError(UserError):
  """A weights file or option that cannot be converted; the message names it and the fix."""


# ----------------------------------------------------------------------------- reading

def read_weights(path: str) -> dict[str, np.ndarray]:
  """{tensor name: numpy array} of a .safetensors, .pth/.pt or .npz file."""
  ext = os.path.splitext(path)[1].lower()
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    raise ConversionError(f'--weights={path} is a vision_jax workdir, which needs no '
                          'conversion: use it as --workdir (eval, predict, export) or as '
                          '--config.init_from.checkpoint.')
  if os.path.isdir(path):
    inside = sorted(f for f in os.listdir(path)
                    if os.path.splitext(f)[1].lower() in ('.safetensors', '.pth', '.pt', '.npz'))
    raise ConversionError(f'--weights={path} is a directory, not a weights file. Pass the '
                          'file itself' + (f', e.g. {os.path.join(path, inside[0])}'
                                           if inside else ' (.safetensors, .pth/.pt or BiT '
                                           '.npz)') + '.')
  if not os.path.isfile(path):
    raise ConversionError(f'--weights={path} does not exist. Pass the weights file.')
  if ext == '.safetensors':
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(path))
    except Exception as e:  # pylint: disable=broad-except
      raise ConversionError(
          f'{path} cannot be read as safetensors ({type(e).__name__}: {e}): the file is '
          'truncated or not a safetensors file (bfloat16 tensors cannot be read into numpy '
          'either: save them as float32). Download or save it again.') from e
  if ext in ('.pth', '.pt'):
    return _read_torch(path)
  if ext == '.npz':
    try:
      with np.load(path) as npz:
        return dict(npz)
    except Exception as e:  # pylint: disable=broad-except
      raise ConversionError(f'{path} cannot be read as .npz ({type(e).__name__}: {e}): the '
                            'file is truncated or not an .npz archive. Download it '
                            'again.') from e
  raise ConversionError(f'--weights={path}: unknown file type {ext!r}. Pass a .safetensors '
                        'or .pth/.pt state dict (torchvision, timm) or a BiT .npz file.')


def _read_torch(path: str) -> dict[str, np.ndarray]:
  """A .pth state dict through torch.load(weights_only=True): no arbitrary pickle."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError(
        f'{path} is a PyTorch pickle, and reading it needs torch, which is not installed. '
        'Install torch, or save the state dict as .safetensors where torch is installed '
        '(python -c "import torch, safetensors.torch; safetensors.torch.save_file(torch.'
        f"load('{path}', weights_only=True), 'weights.safetensors')\") and pass that "
        'file: it is read without torch.') from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(
        f'{path} cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}): the file is truncated, or it pickles '
        'a whole model rather than its tensors. Save model.state_dict() (or as '
        '.safetensors) and pass that.') from e
  if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
    kinds = ({k: type(v).__name__ for k, v in list(state.items())[:5]}
             if isinstance(state, Mapping) else type(state).__name__)
    raise ConversionError(
        f'{path} does not hold a state dict of tensors (it holds {kinds}): a training '
        "checkpoint keeps it under a key such as 'state_dict' or 'model'. Save that "
        'dict alone, e.g. torch.save(checkpoint["state_dict"], "weights.pth").')
  return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}


# ----------------------------------------------------------------------------- name maps

def resnet_archs() -> list[str]:
  """Our classifiers with torchvision's ResNet v1.5 layout: the ImageNet-stem ResNets (a
  segmentation model's backbone loads from their converted workdir, by path)."""
  from vision_jax import models  # pylint: disable=g-import-not-at-top
  from vision_jax.models import resnet  # pylint: disable=g-import-not-at-top
  return [n for n in models.list_models() if isinstance(models.model_class(n), type)
          and issubclass(models.model_class(n), resnet.ResNet)
          and models.model_class(n).STEM == 'imagenet'
          and models.model_task(n) == 'classification']


_BN_NAMES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def torchvision_names(arch: str) -> dict[str, str]:
  """{our parameter path: torchvision state-dict name} for a ResNet v1.5 `arch`."""
  from vision_jax import models  # pylint: disable=g-import-not-at-top
  if arch not in resnet_archs():
    raise ConversionError(f'--arch={arch} has no torchvision layout; use one of '
                          f'{", ".join(resnet_archs())}.')
  cls = models.model_class(arch)
  names = {'stem_conv/kernel': 'conv1.weight', 'head/kernel': 'fc.weight',
           'head/bias': 'fc.bias'}
  names |= {f'stem_bn/{ours}': f'bn1.{theirs}' for ours, theirs in _BN_NAMES.items()}
  convs = 2 if cls.BLOCK == 'basic' else 3
  index = 0
  for stage, num_blocks in enumerate(cls.STAGES, start=1):
    for block in range(num_blocks):
      ours, theirs = f'blocks/{index}/', f'layer{stage}.{block}.'
      for k in range(1, convs + 1):
        names[f'{ours}conv{k}/kernel'] = f'{theirs}conv{k}.weight'
        names |= {f'{ours}bn{k}/{o}': f'{theirs}bn{k}.{t}' for o, t in _BN_NAMES.items()}
      if block == 0 and (stage > 1 or cls.BLOCK == 'bottleneck'):  # Shape changes: project.
        names[f'{ours}proj/kernel'] = f'{theirs}downsample.0.weight'
        names |= {f'{ours}proj_bn/{o}': f'{theirs}downsample.1.{t}'
                  for o, t in _BN_NAMES.items()}
      index += 1
  return names


_UNIT_PARTS = {'a': ('gn1', 'conv1'), 'b': ('gn2', 'conv2'), 'c': ('gn3', 'conv3')}


def bit_names(arch: str) -> dict[str, str]:
  """{our parameter path: the BiT authors' .npz key} for a registered BiT model.

  The .npz files (https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz, ...) name
  tensors like 'resnet/block2/unit01/a/proj/standardized_conv2d/kernel'; `bit.py` follows
  their layout, so each maps to one parameter of ours ('blocks/3/proj/kernel').
  """
  from vision_jax import models  # pylint: disable=g-import-not-at-top
  from vision_jax.models import bit  # pylint: disable=g-import-not-at-top
  known = [m for m in models.list_models() if m.startswith('bit_')]
  if arch not in known or not issubclass(models.model_class(arch), bit.BiTResNet):
    raise ConversionError(f'--arch={arch} is not a BiT model; use one of {", ".join(known)}.')
  names = {'stem_conv/kernel': 'resnet/root_block/standardized_conv2d/kernel',
           'final_gn/scale': 'resnet/group_norm/gamma',
           'final_gn/bias': 'resnet/group_norm/beta',
           'head/kernel': 'resnet/head/conv2d/kernel',
           'head/bias': 'resnet/head/conv2d/bias'}
  index = 0
  for stage, units in enumerate(models.model_class(arch).STAGES, start=1):
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


def our_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
  """{parameter path: shape} of every array (parameters and statistics) of our model."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from vision_jax import models, optim  # pylint: disable=g-import-not-at-top
  abstract = nnx.eval_shape(lambda: models.create_model(arch, num_classes))
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(abstract))[0]
  return {optim.param_path(p): tuple(x.shape) for p, x in leaves}


# ----------------------------------------------------------------------------- converting

def _torch_layout(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape torchvision stores our array of `shape` at `path` in."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW.
  return shape[::-1] if path == 'head/kernel' else shape


def _guess_arch(names) -> str | None:
  """The torchvision ResNet whose stage lengths and block type these tensor names have."""
  from vision_jax import models  # pylint: disable=g-import-not-at-top
  stages = tuple(len({n.split('.')[1] for n in names if n.startswith(f'layer{s}.')})
                 for s in range(1, 5))
  block = 'bottleneck' if 'layer1.0.conv3.weight' in names else 'basic'
  for arch in resnet_archs():
    cls = models.model_class(arch)
    if cls.STAGES == stages and cls.BLOCK == block:
      return arch
  return None


def _mismatch(arch: str, missing: list[str], unused: list[str], wrong: list[str]) -> str:
  """Every tensor that did not fit, in one sentence."""
  parts = [f'{len(missing)} tensors {arch} needs are missing: {", ".join(missing)}',
           f'{len(unused)} tensors have no place in {arch}: {", ".join(unused)}',
           f'{len(wrong)} tensors have another shape: {", ".join(wrong)}']
  return '; '.join(p for p, found in zip(parts, (missing, unused, wrong)) if found) + '.'


def convert_torchvision(weights: Mapping[str, np.ndarray], arch: str,
                        source: str = 'the file') -> dict[str, np.ndarray]:
  """torchvision-named arrays -> {our path: array}, each tensor accounted for."""
  names = torchvision_names(arch)
  fc = weights.get('fc.weight')
  num_classes = fc.shape[0] if fc is not None and fc.ndim == 2 else 1000
  shapes = our_shapes(arch, num_classes)
  ignored = {n for n in weights if n.endswith('.num_batches_tracked')}
  missing = [t for t in names.values() if t not in weights]
  unused = sorted(set(weights) - set(names.values()) - ignored)
  wrong = [f'{t} {tuple(weights[t].shape)} (wants {_torch_layout(o, shapes[o])})'
           for o, t in names.items()
           if t in weights and tuple(weights[t].shape) != _torch_layout(o, shapes[o])]
  if missing or unused or wrong:
    guess = _guess_arch(weights)
    if guess and guess != arch:
      hint = f'its tensors are those of a {guess}: pass --arch {guess}'
    elif guess:
      hint = (f'its names are those of a {arch} but some shapes are not (a ResNeXt or '
              'wide ResNet has these names with other shapes: not supported)')
    else:
      hint = ('it is not a torchvision-layout ResNet at all: only resnet18/34/50/101/152 '
              "with torchvision's tensor names (as timm's plain resnet* have) convert; "
              "timm's resnet*d/*s variants, ResNeXt and other families do not")
    raise ConversionError(f'{source} is not a torchvision {arch} state dict; {hint}. '
                          + _mismatch(arch, missing, unused, wrong))
  out = {}
  for ours, theirs in names.items():
    value = np.asarray(weights[theirs], np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    elif ours == 'head/kernel':
      value = value.T  # (out, in) -> (in, out).
    out[ours] = np.ascontiguousarray(value)
  return out


def convert_bit(weights: Mapping[str, np.ndarray], arch: str,
                source: str = 'the file') -> dict[str, np.ndarray]:
  """The authors' BiT arrays -> {our path: array}; kernels are HWIO in both, their head a
  1x1 conv and ours a dense layer, their GroupNorm parameters possibly not 1-D."""
  names = bit_names(arch)
  head = weights.get('resnet/head/conv2d/kernel')
  shapes = our_shapes(arch, head.shape[-1] if head is not None else 21843)
  missing = [t for t in names.values() if t not in weights]
  unused = sorted(set(weights) - set(names.values()))
  out, wrong = {}, []
  for ours, theirs in names.items():
    if theirs not in weights:
      continue
    value, want = np.asarray(weights[theirs], np.float32), shapes[ours]
    fits = (value.shape == want if len(want) == 4 else  # Else a reshape will do.
            value.size == int(np.prod(want)) and value.shape[-1] == want[-1])
    if fits:
      out[ours] = value.reshape(want)
    else:
      wrong.append(f'{theirs} {value.shape} (wants {want})')
  if missing or unused or wrong:
    raise ConversionError(f'{source} is not a BiT {arch} checkpoint (is it one of another '
                          'depth or width? pass that --arch): '
                          + _mismatch(arch, missing, unused, wrong))
  return out
