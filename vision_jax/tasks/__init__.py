"""Tasks: what one training loop trains, selected by `config.task.name`.

  classification  one label per image: softmax cross-entropy, top-1/top-5 (the default)
  segmentation    one label per pixel: dense heads (models/segmentation.py), per-pixel
                  cross-entropy with an ignore label, confusion-matrix mIoU
  detection       boxes and classes: FCOS / RetinaNet (models/detection.py), COCO mAP by
                  pycocotools
  simclr          no labels in training: two views per image, NT-Xent over the global
                  batch; evaluated by k-NN accuracy of the backbone's features
  byol            two views, an online network (+ predictor) regressing the projections
                  of its EMA target network; evaluated by k-NN like SimCLR
  gan             a generator and a discriminator trained against each other; evaluated
                  by FID / KID of the generator's samples

`build(config)` makes the run's task once (main.py); the loop (train.py), the steps
(steps.py), evaluation, predict, export and inference receive it and name no task. A `Task`
holds its config and is what differs between tasks, and only that:

  validate()                  task keys and the model check, before anything compiles
  create_parts(...)           the networks, {part name: module}: 'model' for one network
  part_optim(name)            the optimiser config of a part, None if no optimiser trains it
  serving_parts               the parts evaluation, predict and export run
  build_data(shard)           an input_pipeline.Data whose batches hold what the step reads:
                              input_pipeline.assemble with the task's open_split and
                              Transforms (classification's: input_pipeline.build)
  batch_spec(data)            shapes and dtypes of one training batch (ahead-of-time compile)
  train_inputs(batch, norm)   the normalised arrays the loss reads
  update(updater, state, x)   the new state and the step's metrics (default: one gradient
                              step of 'model' on `loss`, updates.Updater.gradient_update)
  loss(model, inputs)         (scalar loss, aux) of one micro-batch, differentiated
  train_metrics(loss, aux, x) the step's metrics besides lr / grad norm
  apply(models, images)       what eval, predict and export compute (eval mode)
  eval_apply(models, batch, normalize)  what the eval step computes from a whole eval batch
                              (default: apply on its normalised images; a GAN generates)
  eval_outputs(out, batch)    per-batch eval arrays: keys 'sum_*' are summed over the split
                              on the host (int64 / float64), the others are per-example rows
                              whose padding (batch['mask'] == 0) evaluate.collect drops
  eval_context(data, collect) what a split's summary needs besides its own rows (the k-NN
                              bank); None for most tasks
  summarize(arrays, ...)      one split's results (results.json's eval/<split>)
  eval_metrics                the scalar names summarize produces (checkpoint.keep_best)
  predict(loaded, images, ...)  --mode=predict: what it writes for image files (or, for a
                              task whose `takes_images` is False, from nothing: samples)
  serving_inputs(models, shape)  what export's function takes besides the weights: name ->
                              (shape after the batch dimension, dtype); default uint8 images
  serve(models, inputs, normalize)  export's function of those inputs (default: apply)
  served_outputs              what export's function returns, in words (its metadata)

Tasks import no loop module (steps, evaluate, train, predict's driver, config): those
import them.
"""
from __future__ import annotations

import abc
import importlib
from typing import Any, Callable, Sequence

import jax
import ml_collections
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.errors import UserError

# name -> 'module:Class'; a fork adds its own with `register`.
_REGISTRY = {
    'classification': 'vision_jax.tasks.classification:Classification',
    'segmentation': 'vision_jax.tasks.segmentation:Segmentation',
    'detection': 'vision_jax.tasks.detection:Detection',
    'simclr': 'vision_jax.tasks.simclr:SimCLR',
    'byol': 'vision_jax.tasks.byol:BYOL',
    'gan': 'vision_jax.tasks.gan:GAN',
}
Batch = dict[str, jax.Array]


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def register(name: str, target: 'str | type[Task]') -> None:
  """Makes `config.task.name=name` build `target`, a Task subclass or 'module:Class' (a
  fork's module registers its tasks when `config.imports` names it)."""
  _REGISTRY[name] = target


class Task(abc.ABC):
  """The interface (module docstring). Subclasses implement every abstract method; the
  others have the defaults a one-network task wants."""
  name = 'classification'
  eval_metrics: tuple[str, ...] = ('accuracy', 'top5', 'loss')
  serving_parts: tuple[str, ...] = ('model',)
  served_outputs = 'logits [N, num_classes]'

  # Whether --mode=predict reads image files (False: it generates, from no input).
  takes_images = True

  # config.dataset keys this task's data does not use, with the value that means "off":
  # any other value is refused (check_dataset_keys), never silently ignored.
  unused_dataset_keys: dict[str, Any] = {}

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def validate(self) -> None:
    """See the module docstring."""

  def check_dataset_keys(self) -> None:
    """Refuses a config.dataset key set to something this task's data would ignore."""
    for key, off in self.unused_dataset_keys.items():
      value = self.config.dataset[key]
      if value != off and not (isinstance(off, tuple) and tuple(value) == off):
        raise ConfigError(
            f'config.dataset.{key}={value!r}, but the {self.name} task does not use '
            f'config.dataset.{key} (its data is built its own way: vision_jax/tasks/'
            f'{self.name}.py), so the run would silently differ from what you asked. '
            f'Set it back to {off!r}.')

  def create_model(self, num_classes: int, *, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """kwargs: image_size, in_channels, kernels and config.model's options
    (train_state.build_models)."""
    from vision_jax import models  # pylint: disable=g-import-not-at-top
    return models.create_model(self.config.model.name, num_classes, rngs=rngs, **kwargs)

  def create_parts(self, num_classes: int, *, rngs: nnx.Rngs,
                   **kwargs: Any) -> dict[str, nnx.Module]:
    return {'model': self.create_model(num_classes, rngs=rngs, **kwargs)}

  def part_optim(self, name: str) -> ml_collections.ConfigDict | None:
    del name
    return self.config.optim

  @abc.abstractmethod
  def build_data(self, shard, *, augment_on_device: bool = False):
    """See the module docstring."""

  @abc.abstractmethod
  def batch_spec(self, data) -> dict:
    """See the module docstring."""

  @abc.abstractmethod
  def train_inputs(self, batch: Batch, normalize: Callable) -> Batch:
    """See the module docstring."""

  def update(self, updater, state, inputs: Batch):
    """One gradient step of the 'model' part on `loss`: (new state, metrics)."""
    part, metrics = updater.gradient_update(state, 'model', self.loss, self.train_metrics,
                                            inputs)
    return state.replace_part('model', part), metrics

  def loss(self, model: nnx.Module, inputs: Batch) -> tuple[jax.Array, Any]:
    raise TypeError(f'{type(self).__name__} overrides update and has no loss.')

  def train_metrics(self, loss: jax.Array, aux: Any, inputs: Batch) -> dict:
    return {'loss': loss}

  def apply(self, models: dict[str, nnx.Module], images: jax.Array) -> jax.Array:
    return models['model'](images, train=False)

  def eval_apply(self, models: dict[str, nnx.Module], batch: Batch,
                 normalize: Callable[[jax.Array], jax.Array]) -> Any:
    """The eval step's outputs for one eval batch (`normalize`: the run's uint8 ->
    normalised images)."""
    return self.apply(models, normalize(batch['image']))

  @abc.abstractmethod
  def eval_outputs(self, outputs: jax.Array, batch: Batch) -> dict:
    """See the module docstring."""

  def eval_context(self, data, collect: Callable) -> Any:
    """`collect(batches)` is evaluate.collect with the eval step, state and mesh bound."""
    return None

  @abc.abstractmethod
  def summarize(self, arrays: dict, *, num_classes: int, class_names, context=None) -> dict:
    """See the module docstring."""

  def serving_inputs(self, models: dict[str, nnx.Module], image_shape: tuple[int, int, int]
                     ) -> dict[str, tuple[tuple[int, ...], str]]:
    """Export's inputs: name -> (shape after the batch dimension, numpy dtype name)."""
    del models
    return {'images': (tuple(image_shape), 'uint8')}

  def serve(self, models: dict[str, nnx.Module], inputs: dict[str, jax.Array],
            normalize: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Export's function of `inputs` (named as serving_inputs), in eval mode."""
    return self.apply(models, normalize(inputs['images']))

  def predict(self, loaded, inputs: Sequence[str], *, output: str | None,
              top_k: int) -> list[dict]:
    """--mode=predict for image files (predict.py reads and checks them)."""
    raise UserError(
        f'--mode=predict writes class probabilities, masks, boxes or samples; the run in '
        f'{loaded.workdir} is a {self.name} run (its model gives features). Train a linear '
        'probe or fine-tune it (init_from) and predict with that run.')


def build(config: ml_collections.ConfigDict) -> Task:
  """The task `config.task.name` names, configured by `config`: once per run."""
  name = config.task.name
  if name not in _REGISTRY:
    raise ConfigError(f'config.task.name={name!r} is not a task; use one of '
                      f'{", ".join(map(repr, _REGISTRY))}.')
  target = _REGISTRY[name]
  if isinstance(target, str):
    module, cls = target.split(':')
    target = getattr(importlib.import_module(module), cls)
  return target(config)
