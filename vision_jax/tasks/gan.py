"""The GAN task: a generator and a discriminator trained against each other.

Two state parts, each with its own optimiser: `generator` and `discriminator`, the two
halves of the `config.model.name` pair (models/gan.py: 'dcgan', 'sngan'; sized for the
dataset's image size and channels; `config.model.conditional=True` conditions both on its
classes). Each part's optimiser config is config.optim with the keys of
`config.task.generator_optim` / `discriminator_optim` over it (by default DCGAN's Adam, lr
2e-4, beta1 0.5, constant; the generator keeps an EMA of its weights and BatchNorm
statistics, decay 0.999, which evaluation, predict and export use).

One training step, with B = config.train.batch_size real images and k = config.task.n_critic:
the batch is split into k chunks of m = B / k; for each chunk the discriminator takes one
update on those m real images against m fresh samples of the current generator, then the
generator takes one update on m fresh latents, judged by the updated discriminator. So B
is the real images a step reads, and every update (D or G) has the same batch m: the
SN-GAN recipe (n_dis = 5, batch 64) is n_critic=5 with batch_size=320. Losses:
`config.task.gan_loss` 'nonsaturating' (DCGAN) or 'hinge' (SN-GAN), gan_losses.py. Real
images enter as x / 127.5 - 1 (the generator's tanh range), not through the dataset's
mean / std. Both networks run in training mode throughout (batch statistics, a power
iteration per spectral-norm call), as PyTorch's DCGAN example; in the generator's update the
discriminator is a constant whose state changes (statistics, power-iteration vectors) are
dropped: each network's state advances only in its own update. Conditional: fake labels
are drawn uniformly; real ones are the batch's. Latents: N(0, I), keyed by (seed, step,
update), so a resumed run draws the same ones.

Evaluation (every config.train.eval_every and at the end) generates one sample per real
image of each eval split with the EMA generator in eval mode: latent i keyed by
(config.task.sample_seed, i) for the split's example i (conditional: example i's label),
so the samples do not depend on the batch size or the devices; both sides, quantised to
uint8, go through each configured feature network (gan_features.py) and their FID (float64,
pytorch-fid's sqrtm) and KID (torch-fidelity's unbiased polynomial MMD over
`kid_subsets` subsets of min(kid_subset_size, split size)) are results.json's
eval/<split>/fid, kid (Inception) and fid_<name>, kid_<name> (a classifier of ours).
--mode=predict writes a sample grid and a latent interpolation (gan_samples.py);
--mode=export serves latents (and labels) -> uint8 images.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vision_jax import gan_features
from vision_jax import gan_losses
from vision_jax import tasks
from vision_jax import train_state as ts
from vision_jax.errors import ConfigError


def to_uint8(images: jax.Array) -> jax.Array:
  """Generator output in [-1, 1] -> uint8, as a saved PNG holds it."""
  return jnp.round(jnp.clip((images + 1.0) * 127.5, 0, 255)).astype(jnp.uint8)


@dataclasses.dataclass(frozen=True)
class AddPositions:
  """Adds 'position' (each row's index in the split; padding rows too) to eval batch
  `index` (picklable for worker processes)."""
  global_batch: int
  shard: object

  def __call__(self, index: int, batch: dict) -> dict:
    from vision_jax.data import stream  # pylint: disable=g-import-not-at-top
    where = stream.positions(index, self.global_batch, self.shard)
    return {**batch, 'position': where.astype(np.int32)}


class GAN(tasks.Task):
  name = 'gan'
  serving_parts = ('generator',)
  served_outputs = 'uint8 images [N, H, W, C] generated from latents (and class labels)'
  takes_images = False
  # Mixed images are no real images; the real images are scaled to [-1, 1] whatever the
  # dataset normalisation says.
  unused_dataset_keys = {'mixup_alpha': 0.0, 'cutmix_alpha': 0.0, 'mean': (), 'std': (),
                         'normalization': ''}

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    t = config.task
    self.loss_kind, self.n_critic = t.gan_loss, int(t.n_critic)
    self.feature_names = gan_features.names(t)
    self._feature_fns: dict | None = None

  @property
  def eval_metrics(self) -> tuple[str, ...]:
    return tuple(f'{metric}{gan_features.metric_suffix(name)}'
                 for name in self.feature_names for metric in ('fid', 'kid'))

  # ------------------------------------------------------------------------- config

  def validate(self) -> None:
    from vision_jax import models  # pylint: disable=g-import-not-at-top
    config, t = self.config, self.config.task
    self.check_dataset_keys()
    models.check_model_task(config.model.name, 'gan')
    if t.gan_loss not in gan_losses.LOSSES:
      raise ConfigError(f'config.task.gan_loss={t.gan_loss!r}; use one of '
                        f'{", ".join(map(repr, gan_losses.LOSSES))} (DCGAN: nonsaturating, '
                        'SN-GAN: hinge).')
    for part in ('generator', 'discriminator'):
      unknown = sorted(set(t[f'{part}_optim']) - set(config.optim))
      if unknown:
        raise ConfigError(f'config.task.{part}_optim sets {", ".join(unknown)}, which '
                          f'{"is" if len(unknown) == 1 else "are"} not config.optim keys: '
                          'it holds the keys of config.optim that differ for the '
                          f'{part}. Known keys: {", ".join(sorted(config.optim))}.')
    batch, k = config.train.batch_size, self.n_critic
    accum = config.optim.accum_steps
    if batch % k or (batch // k) % accum:
      raise ConfigError(
          f'config.train.batch_size={batch} does not split into config.task.n_critic={k} '
          f'equal chunks of a multiple of config.optim.accum_steps={accum}: each of the '
          f'{k} discriminator updates of a step takes one chunk of the batch. Use a batch '
          f'size that is a multiple of {k * accum} (SN-GAN: n_critic 5, batch 5 x 64).')

  def create_parts(self, num_classes: int, *, rngs: nnx.Rngs, **kwargs
                   ) -> dict[str, nnx.Module]:
    pair = self.create_model(num_classes, rngs=rngs, **kwargs)
    return {'generator': pair.generator, 'discriminator': pair.discriminator}

  def part_optim(self, name: str) -> ml_collections.ConfigDict:
    merged = ml_collections.ConfigDict(self.config.optim.to_dict())
    merged.update(self.config.task[f'{name}_optim'].to_dict())
    return merged

  # --------------------------------------------------------------------------- data

  def build_data(self, shard, *, augment_on_device: bool = False):
    from vision_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    data = input_pipeline.build(self.config, shard, augment_on_device=augment_on_device)
    # Checked and loaded now, before anything compiles (the eval step closes over them).
    gan_features.check(self.config.task)
    self.feature_fns()
    add = AddPositions(self.config.eval.batch_size, shard)
    return dataclasses.replace(
        data, evals={split: ds.map_with_index(add) for split, ds in data.evals.items()})

  def batch_spec(self, data) -> dict:
    batch = self.config.train.batch_size
    return {'image': jax.ShapeDtypeStruct(
                (batch, data.image_size, data.image_size, data.channels), np.uint8),
            'label': jax.ShapeDtypeStruct((batch,), np.int32)}

  def train_inputs(self, batch: tasks.Batch, normalize: Callable) -> tasks.Batch:
    del normalize  # The generator's range, not the dataset's normalisation.
    return {'image': batch['image'].astype(jnp.float32) / 127.5 - 1.0,
            'label': batch['label']}

  # ------------------------------------------------------------------------- update

  @staticmethod
  def _labels(module: nnx.Module, batch: tasks.Batch, key: str):
    return batch[key] if module.num_classes else None

  def latents(self, generator: nnx.Module, key: jax.Array, n: int):
    """(z [n, latent_dim], uniform labels [n] or None) for training updates."""
    z_key, y_key = jax.random.split(key)
    z = jax.random.normal(z_key, (n, generator.latent_dim), jnp.float32)
    labels = (jax.random.randint(y_key, (n,), 0, generator.num_classes)
              if generator.num_classes else None)
    return z, labels

  def _d_loss(self, d: nnx.Module, batch: tasks.Batch):
    real = d(batch['real'], True, self._labels(d, batch, 'real_label'))
    fake = d(batch['fake'], True, self._labels(d, batch, 'fake_label'))
    return gan_losses.discriminator_loss(self.loss_kind, real, fake), (real, fake)

  @staticmethod
  def _d_metrics(loss, aux, batch) -> dict:
    real, fake = aux
    return {'d_loss': loss, 'd_real': jnp.mean(real), 'd_fake': jnp.mean(fake)}

  def update(self, updater, state: ts.TrainState, inputs: tasks.Batch):
    """n_critic discriminator updates on the batch's chunks, then one generator update."""
    real, labels = inputs['image'], inputs['label']
    m = real.shape[0] // self.n_critic
    key = jax.random.fold_in(jax.random.key(self.config.seed), state.step)
    d_metrics = []
    for i in range(self.n_critic):
      g = updater.model(state, 'generator')  # Its statistics' update is dropped.
      z, fake_labels = self.latents(g, jax.random.fold_in(key, i), m)
      chunk = {'real': real[i * m:(i + 1) * m],
               'fake': jax.lax.stop_gradient(g(z, True, fake_labels))}
      if fake_labels is not None:
        chunk |= {'real_label': labels[i * m:(i + 1) * m], 'fake_label': fake_labels}
      disc, metrics = updater.gradient_update(state, 'discriminator', self._d_loss,
                                              self._d_metrics, chunk)
      state = state.replace_part('discriminator', disc)
      d_metrics.append(metrics)

    d_graph, d_part = updater.structure.graphdefs['discriminator'], state.parts['discriminator']
    z, fake_labels = self.latents(updater.model(state, 'generator'),
                                  jax.random.fold_in(key, self.n_critic), m)
    g_inputs = {'z': z} if fake_labels is None else {'z': z, 'label': fake_labels}

    def g_loss(g: nnx.Module, batch: tasks.Batch):
      d = ts.merge(d_graph, d_part.params, d_part.rest)  # A constant; its state is dropped.
      y = batch.get('label')
      logits = d(g(batch['z'], True, y), True, y)
      return gan_losses.generator_loss(self.loss_kind, logits), logits

    gen, g_metrics = updater.gradient_update(
        state, 'generator', g_loss, lambda loss, aux, batch: {'loss': loss}, g_inputs)
    metrics = {**g_metrics, 'd_grad_norm': d_metrics[-1]['grad_norm']}
    for name in ('d_loss', 'd_real', 'd_fake'):
      metrics[name] = jnp.mean(jnp.stack([dm[name] for dm in d_metrics]))
    return state.replace_part('generator', gen), metrics

  # --------------------------------------------------------------------- evaluation

  def feature_fns(self) -> dict:
    """{name: uint8 images -> features} (gan_features.load), loaded once."""
    if self._feature_fns is None:
      self._feature_fns = gan_features.load(self.config.task)
    return self._feature_fns

  def eval_latents(self, generator: nnx.Module, positions: jax.Array) -> jax.Array:
    """Latent of example `position` of a split: keyed by (sample_seed, position)."""
    base = jax.random.key(self.config.task.sample_seed)
    return jax.vmap(lambda p: jax.random.normal(jax.random.fold_in(base, p),
                                                (generator.latent_dim,)))(positions)

  def eval_apply(self, models, batch: tasks.Batch, normalize: Callable) -> dict:
    g = models['generator']
    z = self.eval_latents(g, batch['position'])
    fake = to_uint8(g(z, False, self._labels(g, batch, 'label')))
    out = {}
    for name, fn in self.feature_fns().items():
      out[f'real_{name}'], out[f'fake_{name}'] = fn(batch['image']), fn(fake)
    return out

  def apply(self, models, images):
    raise TypeError('The gan task generates from latents: see eval_apply and serve.')

  # ------------------------------------------------------------- predict and export

  def serving_inputs(self, models, image_shape):
    g = models['generator']
    inputs = {'latents': ((g.latent_dim,), 'float32')}
    return inputs | ({'labels': ((), 'int32')} if g.num_classes else {})

  def serve(self, models, inputs, normalize):
    """latents [N, latent_dim] (and labels [N]) -> uint8 images [N, H, W, C]."""
    del normalize
    return to_uint8(models['generator'](inputs['latents'], False, inputs.get('labels')))

  def predict(self, loaded, inputs, *, output, top_k) -> list[dict]:
    """A sample grid and a latent interpolation (gan_samples.py); prints samples.json."""
    del top_k
    import json  # pylint: disable=g-import-not-at-top
    from vision_jax import gan_samples  # pylint: disable=g-import-not-at-top
    from vision_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    if inputs:
      raise UserError(f'--images given, but the run in {loaded.workdir} is a GAN: '
                      '--mode=predict generates images from latents and reads none. Drop '
                      '--images (--output=DIR, --config.task.num_samples and '
                      '--config.task.sample_seed choose where, how many and which).')
    report = gan_samples.write(loaded, output)
    print(json.dumps(report))
    return [report]

  def eval_outputs(self, outputs: dict, batch: tasks.Batch) -> dict:
    return {**outputs, 'label': batch['label'], 'mask': batch['mask']}

  def summarize(self, arrays: dict, *, num_classes: int, class_names, context=None) -> dict:
    from vision_jax import feature_distances as fd  # pylint: disable=g-import-not-at-top
    n = int(arrays['label'].shape[0])
    t = self.config.task
    out = {'num_examples': n, 'num_samples': n}
    size = min(int(t.kid_subset_size), n)
    # Subsets of every sample (a split smaller than kid_subset_size) are all the same sets:
    # one computes what all of them would.
    subsets = 1 if size == n else int(t.kid_subsets)
    for name in self.feature_names:
      real, fake = arrays[f'real_{name}'], arrays[f'fake_{name}']
      suffix = gan_features.metric_suffix(name)
      out[f'fid{suffix}'] = fd.frechet_distance(*fd.feature_statistics(real),
                                                *fd.feature_statistics(fake))
      out[f'kid{suffix}'], out[f'kid{suffix}_std'] = fd.kernel_distance(
          real, fake, subsets=subsets, subset_size=size)
      out[f'kid{suffix}_subsets'], out[f'kid{suffix}_subset_size'] = subsets, size
    return out
