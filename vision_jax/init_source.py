"""What `config.init_from.checkpoint` names, said before a run starts from it.

A fine-tune starts from another run: its workdir, or one of its `checkpoints/<step>`
directories. Anything else is refused with what it is instead: a weights file (.safetensors,
.pth, .npz: convert it into a workdir first), a directory that holds no run, or nothing at
all. When the checkpoint's parameters do not fit, the message says what the checkpoint is
(its run's model and task, from that run's config.json), so a checkpoint of another
architecture or task is named as such instead of as a list of missing paths.
"""
from __future__ import annotations

import json
import os

from vision_jax.checkpoint import CheckpointError

WEIGHTS_FILES = ('.safetensors', '.pth', '.pt', '.npz', '.bin', '.ckpt', '.h5', '.msgpack')
_CONVERT = ('python -m vision_jax.convert torchvision|timm|bit --arch <model> --weights '
            '<file> --output <new workdir>')


def workdir_of(path: str) -> str | None:
  """The workdir a checkpoint path belongs to (the path itself, or the folder above
  checkpoints/<step>), or None if it is neither."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return path
  parent = os.path.dirname(path)
  if os.path.basename(parent) == 'checkpoints' and os.path.basename(path).isdigit():
    return os.path.dirname(parent)
  return None


def check(path: str, key: str = 'config.init_from.checkpoint') -> None:
  """Raises CheckpointError naming what `path` is, unless it is a run's workdir or one of
  its checkpoints/<step> directories."""
  full = os.path.abspath(os.path.expanduser(path))
  ext = os.path.splitext(full)[1].lower()
  if os.path.isfile(full):
    if ext in WEIGHTS_FILES:
      raise CheckpointError(
          f'{key}={path} is a weights file ({ext}), not a run: a run starts from the '
          f'workdir of another run. Convert the file into one first: {_CONVERT}, then pass '
          f'that workdir as {key}.')
    raise CheckpointError(f'{key}={path} is a file, not a run. Pass the workdir of an '
                          'earlier run, or one of its checkpoints/<step> directories.')
  if not os.path.exists(full):
    raise CheckpointError(f'{key}={path} does not exist. Pass the workdir of an earlier run, '
                          'or one of its checkpoints/<step> directories.')
  if not os.access(full, os.R_OK | os.X_OK):
    raise CheckpointError(f'{key}={path} cannot be read (permission denied). Make it '
                          'readable to this user, or pass a copy.')
  if workdir_of(full) is None and not os.path.isdir(os.path.join(full, 'state')):
    try:
      entries = sorted(os.listdir(full))
    except OSError:
      entries = []
    weights = [e for e in entries if os.path.splitext(e)[1].lower() in WEIGHTS_FILES]
    what = (f'it holds weights files ({", ".join(weights[:3])}): convert one into a '
            f'workdir first with {_CONVERT}' if weights else
            'it has no checkpoints/ folder' + (f' (it holds {", ".join(entries[:5])}'
                                               f'{", ..." if len(entries) > 5 else ""})'
                                               if entries else ' (it is empty)'))
    raise CheckpointError(f'{key}={path} is a directory but not the workdir of a run: '
                          f'{what}. Pass the workdir of an earlier run, or one of its '
                          'checkpoints/<step> directories.')


def describe(path: str) -> tuple[str, str] | None:
  """(model name, task name) of the run a checkpoint path belongs to, from its
  config.json; None if that cannot be read."""
  workdir = workdir_of(path)
  if workdir is None:
    return None
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      saved = json.load(f)
    return (str(saved.get('model', {}).get('name', '?')),
            str(saved.get('task', {}).get('name', 'classification')))
  except (OSError, ValueError, AttributeError):
    return None


def mismatch(path: str, model: str, task: str) -> str:
  """'This checkpoint is a <model> trained for <task>, ...' when the run `path` belongs to
  had another model or task than (model, task); '' otherwise (or when unknown)."""
  source = describe(path)
  if source is None or source == (model, task):
    return ''
  return (f'This checkpoint is a {source[0]} trained for {source[1]}, and this run builds a '
          f'{model} for {task}. ')
