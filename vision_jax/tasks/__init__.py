"""Tasks: what one training loop trains, selected by `config.task.name`.

  classification  one label per image: softmax cross-entropy, top-1/top-5 (the default)
  segmentation    one label per pixel: dense heads (models/segmentation.py), per-pixel
                  cross-entropy with an ignore label, confusion-matrix mIoU
  simclr          no labels in training: two views per image, NT-Xent over the global
                  batch; evaluated by k-NN accuracy of the backbone's features

The loop (train.py), the steps (steps.py) and the eval driver (evaluate.py) are the same
for every task; a `Task` is what differs, and only that:

  validate(config)            task keys and the model check, before anything compiles
  create_model(config, ...)   the network (SimCLR wraps a backbone, models/ssl.py)
  build_data(config, shard)   an input_pipeline.Data whose batches hold what the step reads
  batch_spec(config, data)    shapes and dtypes of one training batch (ahead-of-time compile)
  train_inputs(batch, norm)   the normalised arrays the loss reads
  loss(model, inputs)         (scalar loss, aux) of one micro-batch, differentiated
  train_metrics(loss, aux, inputs)  the step's metrics besides lr / grad norm
  apply(model, images)        what eval, predict and export compute (eval mode)
  eval_outputs(out, batch)    per-batch eval arrays: keys 'sum_*' are summed over the split
                              on the host (int64 / float64), the others are per-example rows
                              whose padding (batch['mask'] == 0) evaluate.collect drops
  eval_context(data, collect) what a split's summary needs besides its own rows (the k-NN
                              bank); None for most tasks
  summarize(arrays, ...)      one split's results (results.json's eval/<split>)
  eval_metrics                the scalar names summarize produces (checkpoint.keep_best)

Predict and export go through `apply` (predict.py writes class probabilities or masks).
Tasks import no loop module (steps, evaluate, train, predict, config): those import them.
"""
from __future__ import annotations

import abc
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from vision_jax.errors import ConfigError

NAMES = ('classification', 'segmentation', 'simclr')
Batch = dict[str, jax.Array]


class Task(abc.ABC):
  """The interface (module docstring). Subclasses implement every abstract method; the
  others have the defaults most tasks want."""
  name = 'classification'
  eval_metrics: tuple[str, ...] = ('accuracy', 'top5', 'loss')

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def validate(self, config: ml_collections.ConfigDict) -> None:
    """See the module docstring."""

  def create_model(self, config: ml_collections.ConfigDict, num_classes: int, *,
                   rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """kwargs: image_size, in_channels, kernels and config.model's options."""
    from vision_jax import models  # pylint: disable=g-import-not-at-top
    return models.create_model(config.model.name, num_classes, rngs=rngs, **kwargs)

  @abc.abstractmethod
  def build_data(self, config: ml_collections.ConfigDict, shard, *,
                 augment_on_device: bool = False):
    """See the module docstring."""

  @abc.abstractmethod
  def batch_spec(self, config: ml_collections.ConfigDict, data) -> dict:
    """See the module docstring."""

  @abc.abstractmethod
  def train_inputs(self, batch: Batch, normalize: Callable) -> Batch:
    """See the module docstring."""

  @abc.abstractmethod
  def loss(self, model: nnx.Module, inputs: Batch) -> tuple[jax.Array, Any]:
    """See the module docstring."""

  @abc.abstractmethod
  def train_metrics(self, loss: jax.Array, aux: Any, inputs: Batch) -> dict:
    """See the module docstring."""

  def apply(self, model: nnx.Module, images: jax.Array) -> jax.Array:
    return model(images, train=False)

  @abc.abstractmethod
  def eval_outputs(self, outputs: jax.Array, batch: Batch) -> dict:
    """See the module docstring."""

  def eval_context(self, data, collect: Callable) -> Any:
    """`collect(batches)` is evaluate.collect with the eval step, state and mesh bound."""
    return None

  @abc.abstractmethod
  def summarize(self, arrays: dict, *, num_classes: int, class_names, context=None) -> dict:
    """See the module docstring."""


def task_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.task; a config.json written before tasks existed is a classification run."""
  given = config.get('task')
  return ml_collections.ConfigDict({'name': 'classification'}) if given is None else given


def get(config: ml_collections.ConfigDict) -> Task:
  """The task `config.task.name` names, configured by `config`."""
  name = task_config(config).get('name', 'classification')
  # pylint: disable=g-import-not-at-top
  if name == 'classification':
    from vision_jax.tasks.classification import Classification
    return Classification(config)
  if name == 'segmentation':
    from vision_jax.tasks.segmentation import Segmentation
    return Segmentation(config)
  if name == 'simclr':
    from vision_jax.tasks.simclr import SimCLR
    return SimCLR(config)
  raise ConfigError(f'config.task.name={name!r} is not a task; use one of '
                    f'{", ".join(map(repr, NAMES))}. (BYOL is not implemented: its target '
                    'network would need a second state in the loop.)')
