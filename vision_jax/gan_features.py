"""The feature networks a GAN's FID and KID are computed on, each under its own name.

- 'inception': InceptionV3 pool3 (models/inception.py, 2048 features) with the weights
  `python -m vision_jax.convert inception` wrote from pytorch-fid's file
  (`config.task.fid_inception`: that directory). Images in [0, 1], resized to 299 inside
  the network as pytorch-fid does. Its metrics are the standard `fid` and `kid`.
- a classifier of ours (`config.task.fid_classifier`: a classification run's workdir): the
  penultimate features of its network (the input of its `head`, e.g. the ConvNet's 1024
  hidden units), with its own normalisation and at its own input size (bilinear resize as
  pytorch-fid's when the GAN's images have another size). Named after the dataset it was
  trained on, e.g. `fid_digits`: an offline FID that never mixes with Inception's.

Both take uint8 NHWC images (the real ones as read, the generated ones quantised the way a
saved PNG is) and return float32 [N, F]. The networks live outside the trained state: the
task loads them once and the eval step closes over them (they are never trained,
checkpointed or exported).
"""
from __future__ import annotations

import os
import re
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vision_jax.errors import UserError

INCEPTION = 'inception'
FeatureFn = Callable[[jax.Array], jax.Array]


class FeatureNetworkError(UserError):
  """A configured FID feature network that cannot be used."""


def metric_suffix(name: str) -> str:
  """'' for Inception (the standard `fid`), else '_<name>' (`fid_digits`)."""
  return '' if name == INCEPTION else f'_{name}'


def classifier_name(workdir: str) -> str:
  """The name a classifier workdir's metrics carry: its dataset's, made an identifier
  ('digits'; 'folder:/data/pets' -> 'pets'); 'classifier' if its config is unreadable."""
  try:
    from vision_jax import inference  # pylint: disable=g-import-not-at-top
    dataset = str(inference.read_config(workdir).dataset.name)
  except Exception:  # pylint: disable=broad-except  # validate() reports what is wrong.
    return 'classifier'
  dataset = dataset.rstrip('/').split('/')[-1].split(':')[-1]
  name = re.sub(r'[^a-z0-9]+', '_', dataset.lower()).strip('_')
  return name if name and name != INCEPTION else 'classifier'


def names(task_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The configured feature networks' names, Inception first."""
  out = (INCEPTION,) if task_config.fid_inception else ()
  if task_config.fid_classifier:
    out += (classifier_name(task_config.fid_classifier),)
  return out


def check_classifier(workdir: str) -> None:
  """FeatureNetworkError unless `workdir` is a classification run with a checkpoint."""
  from vision_jax import inference  # pylint: disable=g-import-not-at-top
  from vision_jax import models  # pylint: disable=g-import-not-at-top
  fix = ('FID features are the penultimate layer of a classifier: pass the --workdir of a '
         'classification run, e.g. one trained with python -m vision_jax.main --config '
         'configs/default.py --workdir W')
  try:
    config = inference.read_config(workdir)
    inference.resolve_step(workdir, '')
  except UserError as e:
    raise FeatureNetworkError(f'config.task.fid_classifier={workdir!r} is not usable: {e} '
                              f'{fix}.') from e
  task, model = config.task.name, config.model.name
  kind = models.model_task(model) if models.known(model) else 'unknown'
  if task != 'classification' or kind != 'classification':
    raise FeatureNetworkError(
        f'config.task.fid_classifier={workdir!r} is a {task} run of model {model!r} '
        f'({kind}), not a classifier, so it has no penultimate class features to compare '
        f'images with. {fix}.')


def check(task_config: ml_collections.ConfigDict) -> None:
  """The configured networks' files, before anything compiles: a classifier workdir, and
  Inception arrays of the right names and shapes (inception_weights.load_arrays)."""
  if task_config.fid_classifier:
    check_classifier(task_config.fid_classifier)
  if task_config.fid_inception:
    from vision_jax import inception_weights  # pylint: disable=g-import-not-at-top
    inception_weights.load_arrays(task_config.fid_inception)


def _resize(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  from vision_jax.models import inception  # pylint: disable=g-import-not-at-top
  if tuple(images.shape[1:3]) == tuple(size):
    return images.astype(jnp.float32)
  return inception.resize_bilinear(images, size)


class _Identity(nnx.Module):
  def __call__(self, x: jax.Array) -> jax.Array:
    return x


def load_classifier(workdir: str) -> FeatureFn:
  """uint8 images -> the penultimate features of the classifier trained in `workdir`
  (its eval weights: the moving average when it kept one)."""
  from vision_jax import inference  # pylint: disable=g-import-not-at-top
  check_classifier(workdir)
  config = inference.read_config(workdir)
  loaded = inference.load(workdir, config, devices=jax.local_devices()[:1])
  model = loaded.model()
  model.head = _Identity()  # Every classifier ends in `head` (models/__init__.py).
  height, width, channels = loaded.image_shape
  mean = jnp.asarray(loaded.mean, jnp.float32)
  std = jnp.asarray(loaded.std, jnp.float32)

  def features(images: jax.Array) -> jax.Array:
    if images.shape[-1] != channels:
      raise FeatureNetworkError(
          f'The FID classifier in {workdir} takes {channels}-channel images and the GAN '
          f'makes {images.shape[-1]}-channel ones. Use a classifier trained on images '
          'with the same channels.')
    x = _resize(images, (height, width)) / 255.0
    out = model((x - mean) / std, train=False)
    return out.reshape(out.shape[0], -1).astype(jnp.float32)

  return features


def load_inception(directory: str) -> FeatureFn:
  """uint8 images -> InceptionV3 pool3 features [N, 2048]."""
  from vision_jax import inception_weights  # pylint: disable=g-import-not-at-top
  net = inception_weights.load_inception(directory)
  return lambda images: net(images.astype(jnp.float32) / 255.0)


def load(task_config: ml_collections.ConfigDict) -> dict[str, FeatureFn]:
  """{name: uint8 images -> features} of every configured network (names())."""
  out = {}
  if task_config.fid_inception:
    out[INCEPTION] = load_inception(os.path.expanduser(task_config.fid_inception))
  if task_config.fid_classifier:
    out[classifier_name(task_config.fid_classifier)] = load_classifier(
        os.path.expanduser(task_config.fid_classifier))
  return out
