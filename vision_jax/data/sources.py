"""Random-access sources for a configured dataset, failing fast when data is absent.

Sources are `tfds.data_source` readers over ArrayRecord files, so any example can be read
by index: what makes the training stream a pure function of (seed, step).
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import tensorflow_datasets as tfds

from vision_jax.errors import UserError


class DatasetNotFoundError(UserError):
  """The dataset is not prepared locally; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_size: int
  channels: int
  class_names: list[str]


def _data_dir(ds_cfg: ml_collections.ConfigDict) -> str:
  return ds_cfg.data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets')


def _builder(ds_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  data_dir = _data_dir(ds_cfg)
  if ds_cfg.name == 'digits':
    from vision_jax.data import digits  # pylint: disable=g-import-not-at-top
    return digits.prepare(data_dir)  # Offline, a few seconds, only the first time.
  try:
    builder = tfds.builder(ds_cfg.name, data_dir=data_dir, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(
        f'config.dataset.name={ds_cfg.name!r} is not a tfds dataset, nor "digits" or '
        f'"folder:/path". See https://www.tensorflow.org/datasets/catalog/overview.') from e
  if not builder.is_prepared():
    if ds_cfg.download:
      builder.download_and_prepare()
    else:
      raise DatasetNotFoundError(
          f'Dataset {ds_cfg.name!r} is not prepared in {data_dir}. Prepare it once with '
          f'`tfds build {ds_cfg.name} --data_dir={data_dir} --file_format=array_record` '
          '(ImageNet and other manual datasets need their archives in '
          f'{data_dir}/downloads/manual first), or rerun with '
          '--config.dataset.download=True, or point --config.dataset.data_dir at a '
          'directory that has it.')
  return builder


def open_split(ds_cfg: ml_collections.ConfigDict, split: str):
  """(random-access source, DatasetInfo) for one split, e.g. 'train[:90%]'."""
  builder = _builder(ds_cfg)
  source = builder.as_data_source(split=split)
  features = builder.info.features
  image, label = features['image'], features['label']
  return source, DatasetInfo(num_classes=label.num_classes, image_size=image.shape[0] or 0,
                             channels=image.shape[-1] or 3, class_names=list(label.names))
