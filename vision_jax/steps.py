"""The jitted train and eval steps: pure functions of (state, batch), the same for every task.

The train step augments the uint8 images on device, lets the task turn the batch into the
normalised inputs its loss reads, and hands them to the task's update (vision_jax/tasks,
written with updates.Updater): one gradient step of one part, or several parts against each
other. Inside, each part is merged into a module, differentiated with `nnx.value_and_grad`
and split again, so BatchNorm statistics and dropout RNG state advance exactly as in eager
NNX code while the step itself stays functional. A step whose metrics are not all finite
(loss, gradient norms) leaves the whole state as it was, but its step count.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from vision_jax import ops
from vision_jax import parallel
from vision_jax import train_state as ts
from vision_jax import updates
from vision_jax.data import device_augment
from vision_jax.data import mixing
from vision_jax.data.normalize import normalize

Batch = dict[str, jax.Array]


def _all_finite(metrics: dict) -> jax.Array:
  values = [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)
            if jnp.issubdtype(v.dtype, jnp.floating)]
  return jnp.all(jnp.stack(values)) if values else jnp.bool_(True)


def make_train_step(task, structure: ts.Structure, *, mean: Sequence[float],
                    std: Sequence[float], accum_steps: int = 1,
                    augment: Callable | None = None, mix: Callable | None = None):
  """Returns train_step(state, batch) -> (state, metrics); jit it with shardings.

  `task` (vision_jax.tasks) says what the batch holds and updates the state's parts; with
  accum_steps=k each gradient is averaged over k micro-batches (updates.Updater). `augment`
  (data/device_augment.py) changes the uint8 images on device, keyed by (seed, step),
  before they are normalised; `mix` (data/mixing.py: mixup / cutmix) turns the normalised
  batch and its labels into mixed images and soft labels, keyed by (seed, step).
  """
  updater = updates.Updater(structure, accum_steps)

  def train_step(state: ts.TrainState, batch: Batch):
    if augment is not None:
      batch = {**batch, 'image': augment(batch['image'], state.step)}
    inputs = task.train_inputs(batch, lambda x: normalize(x, mean, std))
    if mix is not None:
      inputs['image'], inputs['label'] = mix(inputs['image'], inputs['label'], state.step)
    new, metrics = task.update(updater, state, inputs)
    # A non-finite loss or gradient leaves the state untouched (but its step); the loop
    # stops on it.
    finite = _all_finite(metrics)
    parts = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new.parts, state.parts)
    metrics = {**metrics, 'learning_rate': structure.schedule(state.step), 'finite': finite}
    return ts.TrainState(step=state.step + 1, parts=parts), metrics

  return train_step


def make_eval_step(task, structure: ts.Structure, *, mean: Sequence[float],
                   std: Sequence[float]):
  """Returns eval_step(state, batch) -> the task's per-batch eval arrays (e.g. per-example
  loss, top-k predictions, label, mask).

  It evaluates the parts the task serves with their eval variables: the EMA of the
  weights and statistics when a part keeps one.
  """
  def eval_step(state: ts.TrainState, batch: Batch):
    models = {name: structure.model(state, name, use_eval_variables=True)
              for name in task.serving_parts}
    outputs = task.eval_apply(models, batch, lambda x: normalize(x, mean, std))
    return task.eval_outputs(outputs, batch)

  return eval_step


def jit_train_step(task, structure: ts.Structure, *, mean: Sequence[float],
                   std: Sequence[float], num_classes: int, mesh: Mesh,
                   device_recipe: str = '', image_size: int = 0) -> Callable:
  """The training loop's step for the task, `step(state, batch) -> (state, metrics)`,
  jitted over `mesh` with the state's shardings, the batch split over every device and
  the state donated. `device_recipe` (input_pipeline.Data.device_augment) is the part of
  the augmentation the device does. The benchmarks time this very function."""
  config: ml_collections.ConfigDict = task.config
  step = make_train_step(
      task, structure, mean=mean, std=std, accum_steps=config.optim.accum_steps,
      augment=device_augment.make_device_augment(device_recipe, config.seed, image_size),
      mix=mixing.from_config(config.dataset, num_classes, config.seed))
  remat = config.model.get('remat', 'none') not in ('none', '')
  shardings = structure.shardings
  return jax.jit(step, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)),
                 donate_argnums=0, compiler_options=ops.compiler_options(remat=remat))


def jit_eval_step(task, structure: ts.Structure, *, mean: Sequence[float],
                  std: Sequence[float], mesh: Mesh, state_shardings: Any = None) -> Callable:
  """The eval step jitted over `mesh`: the batch split over every device, as in training
  (for the loop's evaluations and for --mode=eval alike). `state_shardings` default to
  the structure's (those of a restored state may differ)."""
  shardings = structure.shardings if state_shardings is None else state_shardings
  return jax.jit(make_eval_step(task, structure, mean=mean, std=std),
                 in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh),
                 compiler_options=ops.compiler_options())
