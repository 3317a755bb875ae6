"""Random-access sources for a configured dataset, failing fast when data is absent.

A source is a sequence: `len(source)` and `source[i] -> {'image': ..., 'label': int}`, the
image an HWC uint8 array or still encoded (decode.Encoded: decoded by the recipe, once, at
the scale its crop needs). Random access by index is what makes the training stream a pure
function of (seed, step).
  tfds datasets: `builder.as_data_source` over ArrayRecord files (the 'digits' builder and
      `tfds build --file_format=array_record`), images read as their encoded bytes. A
      split prepared as TFRecord (the default of `tfds build`) has no random access: it
      is read once into memory when small enough for the cache (below), and otherwise
      refused with the command that rebuilds it.
  folders: `folder:/root` (see folder.py).
Then, in this order: the class subset (`dataset.classes`, labels remapped to 0..k-1) and
the in-memory cache (`dataset.cache`: 'auto' reads a split whose decoded images fit in
`dataset.cache_max_mb` into numpy once, instead of decoding every example on every read).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import socket
import threading
from typing import Callable, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vision_jax.data import decode
from vision_jax.data import folder
from vision_jax.data import preprocess
from vision_jax.errors import UserError

CACHE_MODES = ('auto', 'memory', 'none')


class DatasetNotFoundError(UserError):
  """The dataset is not prepared locally; the message says how to prepare it."""


class DatasetConfigError(UserError):
  """A dataset option that cannot work with this dataset."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_size: int         # 0 when the images' sizes vary.
  channels: int
  class_names: list[str]
  size_note: str = 'vary in size'  # Why image_size is 0, after "The images of <name>".
  decisions: dict | None = None  # What was decided from the data (folders), and why.


class ArraySource:
  """Examples held in memory: one array [N, H, W, C], or a list of HWC arrays."""

  def __init__(self, images: np.ndarray | list[np.ndarray], labels: np.ndarray):
    self.images, self.labels = images, np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {'image': self.images[i], 'label': self.labels[i]}


class Subset:
  """The examples of `source` at `indices`, with labels mapped through `remap`."""

  def __init__(self, source: Sequence, indices: np.ndarray, remap: np.ndarray):
    self.source, self.indices, self.remap = source, indices, remap

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict:
    example = dict(self.source[int(self.indices[i])])
    example['label'] = self.remap[int(example['label'])]
    return example


@dataclasses.dataclass
class _Opened:
  """One split as a backend opens it, before the class subset and the cache."""
  source: Sequence
  info: DatasetInfo
  labels: Callable[[], np.ndarray]  # Every label of the split, without decoding images.
  example_bytes: int | None         # Decoded size of one image; None if unknown.


def _data_dir(ds_cfg: ml_collections.ConfigDict) -> str:
  return ds_cfg.data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets')


def _fits_cache(ds_cfg: ml_collections.ConfigDict, num: int, example_bytes: int | None) -> bool:
  if ds_cfg.cache not in CACHE_MODES:
    raise DatasetConfigError(f'config.dataset.cache={ds_cfg.cache!r}; use one of '
                             f'{", ".join(CACHE_MODES)}.')
  if ds_cfg.cache != 'auto':
    return ds_cfg.cache == 'memory'
  return example_bytes is not None and num * example_bytes <= ds_cfg.cache_max_mb * 2**20


def _decoded(source: Sequence, i: int, channels: int, skip_corrupt: bool) -> dict | None:
  example = source[i]
  try:
    image = preprocess.to_channels(decode.decode(example['image'])[0], channels)
  except decode.CorruptImageError as e:
    if not skip_corrupt:
      raise
    logging.warning('Skipping an unreadable image: %s', e)
    return None
  return {'image': image, 'label': example['label']}


def _load(source: Sequence, num_threads: int, channels: int,
          skip_corrupt: bool) -> ArraySource:
  """Decodes every example of `source` once (threads) with `channels` channels, dropping
  unreadable files when skipping them."""
  chunks = [range(s, min(s + 256, len(source))) for s in range(0, len(source), 256)]
  read = lambda chunk: [_decoded(source, i, channels, skip_corrupt) for i in chunk]
  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    examples = [ex for part in pool.map(read, chunks) for ex in part if ex is not None]
  images = [np.asarray(ex['image']) for ex in examples]
  if images and all(im.shape == images[0].shape for im in images):
    images = np.stack(images)
  return ArraySource(images, np.array([ex['label'] for ex in examples], np.int64))


class EncodedSource:
  """A tfds data source read without decoding: images as decode.Encoded."""

  def __init__(self, records: Sequence, name: str):
    self.records, self.name = records, name

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> dict:
    example = self.records[int(i)]
    image = example['image']
    if isinstance(image, (bytes, np.bytes_)):
      image = decode.Encoded(bytes(image), f'{self.name}[{int(i)}]')
    return {'image': image, 'label': example['label']}


# ----------------------------------------------------------------------------- tfds


def prepared_tfds_builder(name: str, data_dir: str, download: bool
                          ) -> tfds.core.DatasetBuilder:
  """The tfds builder `name`, prepared (downloaded if `download`), or DatasetNotFoundError
  saying how to prepare it (the segmentation and detection sources)."""
  builder = tfds.builder(name, data_dir=data_dir or None)
  if not builder.is_prepared():
    if not download:
      raise DatasetNotFoundError(
          f'Dataset {name!r} is not prepared in {builder.data_dir}. Prepare it once with '
          f'`tfds build {name} --file_format=array_record` (with --data_dir=DIR if not the '
          'default), or rerun with --config.dataset.download=True.')
    builder.download_and_prepare(file_format='array_record')
  return builder


def _builder(ds_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  data_dir = _data_dir(ds_cfg)
  if ds_cfg.name == 'digits':
    from vision_jax.data import digits  # pylint: disable=g-import-not-at-top
    return digits.prepare(data_dir)  # Offline, a few seconds, only the first time.
  try:
    builder = tfds.builder(ds_cfg.name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(
        f'config.dataset.name={ds_cfg.name!r} is not a tfds dataset, nor "digits" or '
        f'"folder:/path". See https://www.tensorflow.org/datasets/catalog/overview.') from e
  if not builder.is_prepared():
    if ds_cfg.download:
      _check_online(ds_cfg.name, data_dir)
      builder.download_and_prepare(file_format='array_record')
    else:
      raise DatasetNotFoundError(
          f'Dataset {ds_cfg.name!r} is not prepared in {data_dir}. Prepare it once with '
          f'`tfds build {ds_cfg.name} --data_dir={data_dir} --file_format=array_record` '
          '(ImageNet and other manual datasets need their archives in '
          f'{data_dir}/downloads/manual first), or rerun with '
          '--config.dataset.download=True, or point --config.dataset.data_dir at a '
          'directory that has it.')
  return builder


DOWNLOAD_PROBE = ('storage.googleapis.com', 443)  # tfds's own mirror, tried first.


def _reachable(address: tuple[str, int], timeout: float) -> str:
  """'' if a TCP connection to `address` opens within `timeout` s, else the reason."""
  outcome = ['no answer within %.0f s' % timeout]

  def connect():  # In a thread: name resolution itself has no timeout.
    try:
      socket.create_connection(address, timeout=timeout).close()
      outcome[0] = ''
    except OSError as e:
      outcome[0] = f'{type(e).__name__}: {e}'

  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout)
  return outcome[0]


def _check_online(name: str, data_dir: str, timeout: float = 10.0) -> None:
  """Fails in seconds where tfds, offline, would retry its downloads for ~3.5 minutes."""
  why = _reachable(DOWNLOAD_PROBE, timeout)
  if why:
    raise DatasetNotFoundError(
        f'Dataset {name!r} is not prepared in {data_dir} and cannot be downloaded: this '
        f'machine cannot reach {DOWNLOAD_PROBE[0]} ({why}). Prepare it where there is '
        f'network with `tfds build {name} --data_dir=<dir> --file_format=array_record` and '
        'copy <dir> here (--config.dataset.data_dir), or rerun when online.')


def _tfrecord_split(ds_cfg, builder, split: str, example_bytes: int | None) -> ArraySource:
  """A TFRecord-prepared split: read into memory if the cache allows, else refuse."""
  num = builder.info.splits[split].num_examples
  if not _fits_cache(ds_cfg, num, example_bytes):
    raise DatasetConfigError(
        f'Dataset {ds_cfg.name!r} in {builder.data_dir} was prepared as TFRecord, which has '
        f'no random access, and split {split!r} ({num} examples) is too large for '
        f'config.dataset.cache={ds_cfg.cache!r} (cache_max_mb={ds_cfg.cache_max_mb}). '
        f'Rebuild it once with `tfds build {ds_cfg.name} --data_dir=<dir> '
        '--file_format=array_record` (a new or emptied data dir), or set '
        "--config.dataset.cache=memory if the split fits in host memory.")
  logging.info('%s[%s] is TFRecord (no random access): reading %d examples into memory.',
               ds_cfg.name, split, num)
  examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
  images = [ex['image'] for ex in examples]
  if images and all(im.shape == images[0].shape for im in images):
    images = np.stack(images)
  return ArraySource(images, np.array([ex['label'] for ex in examples], np.int64))


def _open_tfds(ds_cfg: ml_collections.ConfigDict, split: str) -> _Opened:
  builder = _builder(ds_cfg)
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise DatasetConfigError(f'Dataset {ds_cfg.name!r} has no image/label features '
                             f'(it has {", ".join(features.keys())}): not an image '
                             'classification dataset.')
  shape, label = features['image'].shape, features['label']
  info = DatasetInfo(num_classes=label.num_classes, image_size=shape[0] or 0,
                     channels=shape[-1] or 3, class_names=list(label.names))
  example_bytes = int(np.prod(shape)) if None not in shape else None
  try:
    source = EncodedSource(builder.as_data_source(
        split=split, decoders={'image': tfds.decode.SkipDecoding()}), f'{ds_cfg.name}[{split}]')
  except NotImplementedError:  # Prepared as TFRecord.
    source = _tfrecord_split(ds_cfg, builder, split, example_bytes)
  except (ValueError, KeyError) as e:
    raise DatasetConfigError(f'Split {split!r} of {ds_cfg.name!r}: {e} Its splits: '
                             f'{", ".join(builder.info.splits.keys())}.') from e
  if isinstance(source, ArraySource):
    labels = lambda: source.labels
  else:
    def labels():  # Labels only: skip decoding the images.
      raw = builder.as_data_source(split=split,
                                   decoders={'image': tfds.decode.SkipDecoding()})
      return np.array([raw[i]['label'] for i in range(len(raw))], np.int64)
  return _Opened(source, info, labels, example_bytes)


# --------------------------------------------------------------------------- folders


def _open_folder(ds_cfg: ml_collections.ConfigDict, split: str) -> _Opened:
  root = os.path.expanduser(ds_cfg.name[len(folder.PREFIX):])
  class_names, splits = folder.index(root, test_fraction=ds_cfg.folder_test_fraction,
                                     seed=ds_cfg.folder_split_seed)
  paths, labels = folder.select(splits, split)
  if not paths:
    raise folder.FolderError(f'Split {split!r} of {ds_cfg.name} has no images.')
  channels, example_bytes, decided = folder.probe_dataset(
      root, test_fraction=ds_cfg.folder_test_fraction, seed=ds_cfg.folder_split_seed,
      channels=ds_cfg.channels)
  source = folder.FolderSource(paths, labels)
  size, note = (0, '') if ds_cfg.image_size else folder.common_size(paths)
  decisions = {'root': os.path.abspath(root), 'channels': decided,
               'exif_orientation': 'applied (training, evaluation and prediction alike)'}
  info = DatasetInfo(num_classes=len(class_names), image_size=size, channels=channels,
                     class_names=class_names, size_note=note, decisions=decisions)
  return _Opened(source, info, lambda: labels, example_bytes)


# ------------------------------------------------------------------------------- API


def _class_subset(classes: Sequence, info: DatasetInfo) -> list[int]:
  """Indices of the configured classes, given as indices or names."""
  chosen = []
  for c in classes:
    if isinstance(c, str) and c in info.class_names:
      chosen.append(info.class_names.index(c))
    elif isinstance(c, (int, np.integer)) and 0 <= c < info.num_classes:
      chosen.append(int(c))
    else:
      raise DatasetConfigError(
          f'config.dataset.classes has {c!r}, which is neither a class index in '
          f'0..{info.num_classes - 1} nor a class name ({", ".join(info.class_names[:20])}'
          f'{", ..." if info.num_classes > 20 else ""}).')
  if len(set(chosen)) != len(chosen):
    raise DatasetConfigError(f'config.dataset.classes={tuple(classes)} names a class twice.')
  return chosen


def open_split(ds_cfg: ml_collections.ConfigDict, split: str) -> tuple[Sequence, DatasetInfo]:
  """(random-access source, DatasetInfo) for one split, e.g. 'train[:90%]'."""
  is_folder = ds_cfg.name.startswith(folder.PREFIX)
  opened = _open_folder(ds_cfg, split) if is_folder else _open_tfds(ds_cfg, split)
  source, info = opened.source, opened.info
  if ds_cfg.classes:
    chosen = _class_subset(ds_cfg.classes, info)
    remap = np.full(info.num_classes, -1, np.int64)
    remap[chosen] = np.arange(len(chosen))
    indices = np.flatnonzero(remap[opened.labels()] >= 0)
    source = Subset(source, indices, remap)
    info = dataclasses.replace(info, num_classes=len(chosen),
                               class_names=[info.class_names[c] for c in chosen])
  fits = _fits_cache(ds_cfg, len(source), opened.example_bytes)
  # Read into memory once: a split that fits, or a class subset of one already in memory.
  if (fits or isinstance(opened.source, ArraySource)) and not isinstance(source, ArraySource):
    num = len(source)
    source = _load(source, ds_cfg.num_threads if ds_cfg.num_threads > 0 else 4,
                   info.channels, ds_cfg.skip_corrupt)
    skipped = f', {num - len(source)} unreadable images skipped' if num > len(source) else ''
    logging.info('%s[%s] in memory: %d examples%s.', ds_cfg.name, split, len(source), skipped)
  return source, info


def check_disjoint(ds_cfg: ml_collections.ConfigDict, train_split: str,
                   eval_split: str) -> None:
  """Refuses an eval split of a folder dataset that holds some, but not all, of its files in
  the training split too (copies by link, overlapping slices): its accuracy would count
  training images. All of them is deliberate (evaluating on training data) and allowed."""
  if not ds_cfg.name.startswith(folder.PREFIX) or eval_split == train_split:
    return
  root = os.path.expanduser(ds_cfg.name[len(folder.PREFIX):])
  _, splits = folder.index(root, test_fraction=ds_cfg.folder_test_fraction,
                           seed=ds_cfg.folder_split_seed)
  train = set(folder.select(splits, train_split)[0])
  evaluated = folder.select(splits, eval_split)[0]
  shared = [p for p in evaluated if p in train]
  if shared and len(shared) < len(evaluated):
    raise DatasetConfigError(
        f'Eval split {eval_split!r} of {ds_cfg.name} shares {len(shared)} of its '
        f'{len(evaluated)} files with the training split {train_split!r} (e.g. '
        f'{shared[0]}, found in both, counting each file once through any links): its '
        'accuracy would count training images. Remove the duplicates or links from the '
        'eval folder, or make the splits disjoint (config.dataset.train_split / '
        'eval_splits).')
