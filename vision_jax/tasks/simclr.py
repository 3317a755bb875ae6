"""The SimCLR task: self-supervised pretraining of a classifier's backbone (Chen et al. 2020).

Batches hold {'view1', 'view2': uint8 NHWC, 'label'}: two augmented views of each image
(data/two_views.py, SimCLR's recipe by default; `config.task.views`, `crop_min_scale`,
`color_jitter_strength`, `blur`). The label travels with the batch but the loss never
reads it. The model is the configured classifier's backbone with a projection MLP in
place of its head (models/ssl.py; `config.task.projector_*`); both views go through it as
one batch of 2N, so BatchNorm statistics are those of every view of the global batch.
Loss: NT-Xent (losses.nt_xent, `config.task.temperature`) over the projections of the
micro-batch. Under jit over the mesh the projections are one global array, so every
device's and host's views are negatives of every anchor: global-batch negatives follow
from the sharding (tests/test_tasks.py runs it on 8 simulated devices).

Evaluation: weighted k-NN accuracy (knn.py; `config.task.knn_k`, `knn_temperature`) of
the backbone's pooled features in eval mode: the bank is the labelled train split with the
eval preprocessing, read once per evaluation (`eval_context`), the queries each eval split;
results.json eval/<split>/knn_accuracy. --mode=export serves the features [N, F].
After pretraining, a classifier initialised from this workdir (`init_from`, its head
skipped) is the linear probe or the fine-tune (configs/digits_simclr_linear_probe.py).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vision_jax import losses
from vision_jax import tasks
from vision_jax.errors import ConfigError

_BLUR = {'auto': 'auto', 'on': True, 'off': False}


def _data_class():
  from vision_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass
  class SSLData(input_pipeline.Data):
    """input_pipeline.Data plus the k-NN bank: the train split, eval-preprocessed."""
    bank: grain.MapDataset | None = None

    def bank_batches(self):
      # The train split's examples: read by as many workers as training reads it with.
      return input_pipeline.iterate(self.bank, 0, self.num_threads, self.num_workers)

  return SSLData


class SimCLR(tasks.Task):
  name = 'simclr'
  eval_metrics = ('knn_accuracy',)
  # The views replace the train recipe (config.task.views, crop_min_scale, ...).
  unused_dataset_keys = {
      'randaugment': '', 'autoaugment': '', 'trivialaugment': False,
      'augment_interpolation': '', 'augment_fill': '', 'color_jitter': 0.0,
      'color_jitter_hue': 0.0, 'random_erasing': 0.0, 'random_erasing_mode': 'pixel',
      'random_erasing_count': 1, 'repeated_aug': 1, 'preprocess': 'resize',
      'min_crop_area': 0.08, 'eval_image_size': 0}

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    t = config.task
    self.temperature = float(t.temperature)
    self.knn_k, self.knn_temperature = int(t.knn_k), float(t.knn_temperature)

  def validate(self) -> None:
    from vision_jax import models  # pylint: disable=g-import-not-at-top
    from vision_jax.data import two_views  # pylint: disable=g-import-not-at-top
    config = self.config
    self.check_dataset_keys()
    t, name = config.task, config.model.name
    if models.model_task(name) != 'classification':
      backbones = ', '.join(n for n in models.list_models()
                            if models.model_task(n) == 'classification')
      raise ConfigError(f'config.model.name={name!r} is a {models.model_task(name)} model, '
                        'but config.task.name=\'simclr\' pretrains the backbone of a '
                        f'classifier. Use one of: {backbones}.')
    for key in ('temperature', 'knn_temperature'):
      if not isinstance(t[key], (int, float)) or t[key] <= 0:
        raise ConfigError(f'config.task.{key}={t[key]!r} must be > 0 (e.g. 0.1).')
    for key in ('knn_k', 'projector_hidden_dim', 'projector_output_dim', 'projector_layers'):
      if not isinstance(t[key], int) or t[key] < 1:
        raise ConfigError(f'config.task.{key}={t[key]!r} must be a positive integer.')
    if t.views not in two_views.RECIPES:
      raise ConfigError(f'config.task.views={t.views!r}; use one of '
                        f'{", ".join(map(repr, two_views.RECIPES))}.')
    if t.blur not in _BLUR:
      raise ConfigError(f'config.task.blur={t.blur!r}; use one of '
                        f'{", ".join(map(repr, _BLUR))} (auto: from '
                        f'{two_views.BLUR_MIN_SIZE} px, as SimCLR at ImageNet size).')
    if config.train.batch_size < 2:
      raise ConfigError(f'config.train.batch_size={config.train.batch_size}: SimCLR contrasts '
                        'each image with the rest of its batch, so a batch of one has no '
                        'negatives and learns nothing. Use a batch of at least 2 (SimCLR: 4096).')
    for key in ('mixup_alpha', 'cutmix_alpha'):
      if config.dataset[key]:
        raise ConfigError(f'config.dataset.{key}={config.dataset[key]}: SimCLR trains on '
                          'pairs of views, which mixing would break. Set it to 0.')

  def create_model(self, num_classes: int, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    from vision_jax.models import ssl  # pylint: disable=g-import-not-at-top
    del num_classes  # The projector's width is the output; labels are for k-NN only.
    t = self.config.task
    return ssl.create_ssl_model(
        self.config.model.name, rngs=rngs, projector_hidden_dim=t.projector_hidden_dim,
        projector_output_dim=t.projector_output_dim, projector_layers=t.projector_layers,
        **kwargs)

  def build_data(self, shard, *, augment_on_device: bool = False):
    del augment_on_device  # The two views are drawn on the host.
    # pylint: disable=g-import-not-at-top
    from vision_jax.data import eval_transform
    from vision_jax.data import input_pipeline
    from vision_jax.data import sources
    from vision_jax.data import two_views
    ds, t = self.config.dataset, self.config.task

    def open_split(split: str):
      opened = sources.open_split(ds, split)
      sources.check_disjoint(ds, ds.train_split, split)
      return opened

    def make_transforms(layout):
      try:
        views = two_views.make_two_views(
            t.views, layout.size, crop_min_scale=t.crop_min_scale,
            color_jitter_strength=t.color_jitter_strength, blur=_BLUR[t.blur])
      except two_views.TwoViewsError as e:
        raise ConfigError(str(e)) from e
      transform = eval_transform.EvalTransform.from_config(ds, layout.size, layout.channels)
      return input_pipeline.Transforms(
          train=two_views.make_two_view_preprocess(views, channels=layout.channels),
          eval=transform.example_fn(), eval_transform=transform,
          train_preprocess=f'two_views:{t.views}')

    def bank(train_source, transforms) -> dict:
      return {'bank': input_pipeline.eval_dataset(
          train_source, transforms.eval, global_batch=self.config.eval.batch_size,
          shard=shard, skip_corrupt=ds.skip_corrupt)}

    return input_pipeline.assemble(self.config, shard, open_split=open_split,
                                   make_transforms=make_transforms,
                                   data_class=_data_class(), extra_fields=bank)

  def batch_spec(self, data) -> dict:
    b, s = self.config.train.batch_size, data.image_size
    view = jax.ShapeDtypeStruct((b, s, s, data.channels), np.uint8)
    return {'view1': view, 'view2': view, 'label': jax.ShapeDtypeStruct((b,), np.int32)}

  def train_inputs(self, batch: tasks.Batch, normalize: Callable) -> tasks.Batch:
    return {'view1': normalize(batch['view1']), 'view2': normalize(batch['view2'])}

  def loss(self, model: nnx.Module, inputs: tasks.Batch):
    n = inputs['view1'].shape[0]
    z = model(jnp.concatenate([inputs['view1'], inputs['view2']]), train=True)
    z1, z2 = z[:n], z[n:]
    return losses.nt_xent(z1, z2, self.temperature), (z1, z2)

  def train_metrics(self, loss: jax.Array, aux, inputs: tasks.Batch) -> dict:
    """The loss and the fraction of views whose most similar other view is their pair."""
    z1, z2 = aux
    n = z1.shape[0]
    u = losses.l2_normalize(jnp.concatenate([z1, z2]))
    sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, u @ u.T)
    pair = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    return {'loss': loss, 'pair_accuracy': jnp.mean(jnp.argmax(sim, -1) == pair)}

  served_outputs = "the backbone's pooled features [N, F]"

  def apply(self, models: dict[str, nnx.Module], images: jax.Array) -> jax.Array:
    return models['model'].features(images, train=False)

  def eval_outputs(self, outputs: jax.Array, batch: tasks.Batch) -> dict:
    return {'features': outputs, 'label': batch['label'], 'mask': batch['mask']}

  def eval_context(self, data, collect: Callable) -> dict:
    with data.bank_batches() as batches:
      return collect(batches)

  def summarize(self, arrays: dict, *, num_classes: int, class_names, context=None) -> dict:
    from vision_jax import knn  # pylint: disable=g-import-not-at-top
    accuracy = jax.jit(knn.knn_accuracy, static_argnames=('num_classes', 'k', 'temperature'))(
        context['features'], context['label'], arrays['features'], arrays['label'],
        num_classes=num_classes, k=self.knn_k, temperature=self.knn_temperature)
    return {'knn_accuracy': float(accuracy), 'num_examples': int(arrays['label'].shape[0]),
            'bank_size': int(context['label'].shape[0])}
