"""A trained workdir, loaded for inference: config + dataset.json + one checkpoint.

Eval, predict, export and the pictures all start from the same three files a training run
leaves behind, so they share this loader instead of each rebuilding the model its own way:
the model and its state come from `train_state.create` (the code that trained it) and the
arrays from `checkpoint.Checkpointer.restore` (the code that saved them).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from vision_jax import checkpoint
from vision_jax import ops
from vision_jax import parallel
from vision_jax import train_state
from vision_jax.data.normalize import normalize
from vision_jax.errors import UserError


class WorkdirError(UserError):
  """A workdir without the files or checkpoint that inference needs."""


@dataclasses.dataclass
class Loaded:
  """A restored run: enough to run the model on uint8 NHWC images."""
  config: ml_collections.ConfigDict
  workdir: str
  step: int
  dataset: dict  # dataset.json: num_classes, image_size, channels, class_names, mean, std.
  task: Any  # The run's vision_jax.tasks.Task.
  structure: train_state.Structure
  state: train_state.TrainState  # As saved: what the eval step (and its EMA switch) takes.
  mesh: jax.sharding.Mesh

  @functools.cached_property
  def serving_state(self) -> train_state.TrainState:
    """The parts the task serves, with the weights and statistics training evaluates
    (their moving average when the run keeps one), without optimiser state: what
    predict, export and the pictures run."""
    return self.state.serving(self.task.serving_parts)

  @property
  def class_names(self) -> list[str]:
    names = self.dataset.get('class_names') or []
    return names if len(names) == self.num_classes else [str(i) for i in range(
        self.num_classes)]

  @property
  def num_classes(self) -> int:
    return int(self.dataset['num_classes'])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    size = int(self.dataset['image_size'])
    return size, size, int(self.dataset['channels'])

  @property
  def mean(self) -> tuple[float, ...]:
    return tuple(float(m) for m in self.dataset['mean'])

  @property
  def std(self) -> tuple[float, ...]:
    return tuple(float(s) for s in self.dataset['std'])

  def model(self, part: str | None = None) -> nnx.Module:
    """A trained network as an NNX module (call it as `model(x, train=False)`): `part`, by
    default the first the task serves."""
    return self.structure.model(self.serving_state, part or self.task.serving_parts[0])

  def apply(self, state: train_state.TrainState, images: jax.Array) -> jax.Array:
    """Pure `(serving state, NHWC images in 0..255, uint8 or float) -> float32 outputs`
    (the task's eval output: [N, K] logits, per-pixel [N, H, W, K], features [N, F])."""
    models = {name: self.structure.model(state, name) for name in self.task.serving_parts}
    return self.task.apply(models, normalize(images, self.mean, self.std))

  def serve(self, state: train_state.TrainState, inputs: dict[str, jax.Array]) -> jax.Array:
    """Pure `(serving state, the task's serving inputs) -> its served output`: export's
    function (for an image task, `apply` of inputs['images'])."""
    models = {name: self.structure.model(state, name) for name in self.task.serving_parts}
    return self.task.serve(models, inputs, lambda x: normalize(x, self.mean, self.std))

  def serving_inputs(self) -> dict[str, tuple[tuple[int, ...], str]]:
    """The task's serving inputs for this run (Task.serving_inputs)."""
    models = {name: self.model(name) for name in self.task.serving_parts}
    return self.task.serving_inputs(models, self.image_shape)

  @functools.cached_property
  def _jitted_logits(self):
    return jax.jit(self.apply, compiler_options=ops.compiler_options())

  def logits(self, images: np.ndarray) -> np.ndarray:
    """Logits of a host batch of uint8 NHWC images (compiles once per batch size)."""
    return np.asarray(self._jitted_logits(self.serving_state, np.asarray(images, np.uint8)))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config the run in `workdir` was trained with (its config.json)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise WorkdirError(f'{path} is missing: {workdir} does not look like a trained workdir. '
                       'Pass the --workdir of a training run.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def read_dataset_json(workdir: str) -> dict:
  path = os.path.join(workdir, 'dataset.json')
  if not os.path.exists(path):
    raise WorkdirError(f'{path} is missing: {workdir} does not look like a trained workdir '
                       '(training writes dataset.json before its first step). Pass the '
                       '--workdir of a training run.')
  with open(path) as f:
    return json.load(f)


def resolve_step(workdir: str, checkpoint_arg: str | int | None) -> tuple[str, int]:
  """(workdir holding the checkpoints, step) for '' (latest), a step, or a step's folder.

  Reads the folder names (orbax names a finished save by its step, an unfinished one not),
  so that asking a checkpoint-less workdir does not leave an empty checkpoints/ behind.
  """
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  arg = str(checkpoint_arg or '').strip()
  if arg and not arg.isdigit():
    path = os.path.abspath(os.path.expanduser(arg.rstrip('/')))
    match = re.fullmatch(r'(.*)/checkpoints/(\d+)', path)
    if not match or not os.path.isdir(path):
      raise WorkdirError(f'config.eval.checkpoint={arg!r} is neither a step number nor an '
                         'existing checkpoint folder <workdir>/checkpoints/<step>. Pass one '
                         "of those, or '' for the latest checkpoint.")
    return match.group(1), int(match.group(2))
  steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) if os.path.isdir(
      ckpt_dir) else []
  if not steps:
    raise WorkdirError(f'No checkpoint in {ckpt_dir}: there is nothing to evaluate, predict '
                       f'or export. Train first (--mode=train with this --workdir), or pass '
                       'the --workdir of a run that saved checkpoints.')
  if not arg:
    return workdir, steps[-1]
  if int(arg) not in steps:
    raise WorkdirError(f'config.eval.checkpoint={arg} is not a saved step; {ckpt_dir} has '
                       f'{", ".join(map(str, steps))}.')
  return workdir, int(arg)


def load(workdir: str, config: ml_collections.ConfigDict,
         checkpoint_arg: str | int | None = None, devices=None, *,
         portable: bool = True, task=None) -> Loaded:
  """Restores a checkpoint of the run in `workdir`: `checkpoint_arg` if given, else
  config.eval.checkpoint ('' = the latest). `task`: the run's task (main builds it once;
  by default built from `config`).

  The model is built on XLA's own ops (`portable`: what predict and export run, the same
  function on every platform), or with portable=False on the kernels training used
  (--mode=eval, which reproduces training's evaluation).
  """
  if checkpoint_arg is None:
    checkpoint_arg = config.eval.checkpoint
  ckpt_workdir, step = resolve_step(workdir, checkpoint_arg)
  dataset = read_dataset_json(workdir)
  mesh = parallel.make_mesh(config, devices)
  steps_per_epoch = max(1, int(dataset.get('num_train', 1)) // config.train.batch_size)
  if task is None:
    from vision_jax import tasks  # pylint: disable=g-import-not-at-top
    task = tasks.build(config)
  structure, state = train_state.create(
      task, mesh, num_classes=int(dataset['num_classes']),
      image_size=int(dataset['image_size']), in_channels=int(dataset['channels']),
      steps_per_epoch=steps_per_epoch, kernels=ops.XLA if portable else None)
  target = train_state.abstract(state)
  del state  # Only its shapes and shardings are needed.
  ckpt = checkpoint.Checkpointer(ckpt_workdir, keep=config.checkpoint.keep, read_only=True)
  on_corrupt = config.checkpoint.on_corrupt
  try:
    if not str(checkpoint_arg or '').strip() and on_corrupt == 'previous':
      # The latest that restores (a damaged one is reported and skipped, not moved: that
      # is for the training run that saves it anew).
      step, state, _ = ckpt.restore_latest(target, on_corrupt, repair=False)
    else:
      state, _ = ckpt.restore(step, target)
  except checkpoint.CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    denied = checkpoint.permission_denied(os.path.join(ckpt.directory, str(step)), e)
    if denied is not None:
      raise denied from e
    damaged, problem = checkpoint.diagnose(os.path.join(ckpt.directory, str(step)), e)
    fix = ('Pass another step with --config.eval.checkpoint, or '
           '--config.checkpoint.on_corrupt=previous for the latest one that restores.'
           if damaged else "Use the config it was trained with (omit --config to use the "
           "workdir's config.json), or pass another step with --config.eval.checkpoint.")
    raise checkpoint.CheckpointError(f'{problem} {fix}') from e
  finally:
    ckpt.close()
  return Loaded(config=config, workdir=workdir, step=step, dataset=dataset,
                task=task, structure=structure, state=state, mesh=mesh)
