"""Dataset -> this host's share -> preprocess -> batches of numpy arrays, read ahead.

  data = input_pipeline.build(config, HostShard(jax.process_index(), jax.process_count()))
  with data.train_batches(start_step) as batches:   # worker processes end with the block
    for step in range(start_step, total):
      batch = next(batches)                          # {'image': uint8 NHWC, 'label': int32}

The training stream is a pure function of (seed, step) (stream.py): the same batches with
0, 1 or N worker processes, on any number of hosts, and resuming at step k is starting at
k, so the input state saved with a checkpoint is that one integer. Who computes a batch
(workers.py): for a split held in memory, a numpy gather or per-example work in threads;
for images read from files or tfds records, worker processes that decode each image once,
at the scale its crop needs. The CIFAR recipe's pad-crop-flip of an in-memory split runs on
the device (`Data.device_augment`, device_augment.py), unless host augmentations follow it
(config.dataset.randaugment, random_erasing, ...: augment.py, applied by the train recipe
in the same threads or worker processes). Evaluation reads every example once, padding the
last global batch with masked copies, through the run's eval transform (eval_transform.py,
recorded in dataset.json for predict and export).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

import grain
from absl import logging
import ml_collections
import numpy as np

from vision_jax.data import augment as augment_lib
from vision_jax.data import eval_transform as eval_transform_lib
from vision_jax.data import preprocess
from vision_jax.data import sources
from vision_jax.data import stream
from vision_jax.data.stream import EpochOrder, HostShard  # pylint: disable=unused-import
from vision_jax.data.workers import Batches


def _gatherable(source, fn: preprocess.Preprocess) -> bool:
  """Whether a batch is a numpy gather: images in memory that `fn` leaves unchanged."""
  return (isinstance(source, sources.ArraySource) and isinstance(source.images, np.ndarray)
          and getattr(fn, 'identity_for', lambda _: False)(source.images.shape[1:]))


def train_dataset(source, fn: preprocess.Preprocess, *, global_batch: int, seed: int,
                  shard: HostShard = HostShard(), skip_corrupt: bool = False,
                  repeated_aug: int = 1) -> grain.MapDataset:
  """An infinite MapDataset of host-local batches; element k is the batch of step k.
  `repeated_aug` k > 1: each example k times in a row, augmented apart
  (stream.RepeatedOrder)."""
  stream.rows(global_batch, shard)
  order = EpochOrder(len(source), seed)
  if repeated_aug > 1:
    order = stream.RepeatedOrder(order, repeated_aug)
  if _gatherable(source, fn):  # Same batches, without a Python call per example.
    batch = stream.GatheredBatch(source.images, source.labels, order, global_batch, shard)
  else:
    batch = stream.TrainBatch(stream.Examples(source, fn, seed, skip_corrupt), order,
                              global_batch, shard)
  return grain.MapDataset.range(0, sys.maxsize).map(batch)


def eval_dataset(source, fn: preprocess.Preprocess, *, global_batch: int,
                 shard: HostShard = HostShard(), skip_corrupt: bool = False
                 ) -> grain.MapDataset:
  """Every example once, in order; padded (and skipped unreadable) rows have mask 0."""
  stream.rows(global_batch, shard)
  num_batches = -(-len(source) // global_batch)
  if _gatherable(source, fn):
    batch = stream.GatheredEvalBatch(source.images, source.labels, global_batch, shard)
  else:
    batch = stream.EvalBatch(stream.Examples(source, fn, 0, skip_corrupt), global_batch,
                             shard)
  return grain.MapDataset.range(num_batches).map(batch)


def in_memory(source) -> bool:
  """Whether a split is held in host memory (its per-example work stays in threads)."""
  return isinstance(source, sources.ArraySource)


def iterate(dataset: grain.MapDataset, start: int = 0, num_threads: int = 4,
            num_workers: int = 0) -> Batches:
  """dataset[start:], read ahead by worker processes or threads (workers.Batches)."""
  return Batches(dataset, start, num_threads=num_threads, num_workers=num_workers)


@dataclasses.dataclass
class Data:
  """What the training loop needs to know about a dataset."""
  train: grain.MapDataset
  evals: dict[str, grain.MapDataset]
  eval_sizes: dict[str, int]
  num_train: int
  num_classes: int
  image_size: int  # Of the training images; evaluation's is eval_image_size.
  channels: int
  class_names: list[str]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  eval_transform: eval_transform_lib.EvalTransform  # Eval's; predict and export's too.
  num_threads: int = 4  # Reader threads (when no workers): 0 for a split held in memory.
  num_workers: int = 0  # Worker processes reading the train split (0: in-process).
  eval_workers: int = 0  # Same for the eval splits (0 when they are all in memory).
  train_preprocess: str = 'resize'
  device_augment: str = ''  # Recipe the train step applies on device (device_augment.py).
  eval_image_size: int = 0  # 0: image_size.
  decisions: dict | None = None  # sources.DatasetInfo.decisions of the train split.

  def train_batches(self, start: int = 0) -> Batches:
    """The training batches of steps start, start + 1, ...; close() (or `with`) at the end."""
    return iterate(self.train, start, self.num_threads, self.num_workers)

  def eval_batches(self, split: str) -> Batches:
    """Every batch of one eval split, once; close() (or `with`) at the end."""
    return iterate(self.evals[split], 0, self.num_threads, self.eval_workers)

  def describe(self) -> dict:
    """What inference needs without the dataset: written to the workdir as dataset.json."""
    return {'num_classes': self.num_classes,
            'image_size': self.eval_image_size or self.image_size,  # What inference feeds.
            'channels': self.channels, 'class_names': self.class_names,
            'mean': list(self.mean), 'std': list(self.std), 'num_train': self.num_train,
            'eval_sizes': self.eval_sizes, 'eval_transform': self.eval_transform.to_json(),
            'train_preprocess': self.train_preprocess,
            'device_augment': self.device_augment, 'train_image_size': self.image_size,
            **({'decisions': self.decisions} if self.decisions else {})}


def _check(ds_cfg: ml_collections.ConfigDict) -> None:
  """Dataset options that can be checked before any data is read."""
  problems = []
  if ds_cfg.channels not in (0, 1, 3):
    problems.append(f'config.dataset.channels={ds_cfg.channels!r}: use 0 (as stored), 1 '
                    '(grey) or 3 (RGB).')
  if not 0 < ds_cfg.crop_fraction <= 1:
    problems.append(f'config.dataset.crop_fraction={ds_cfg.crop_fraction}: use (0, 1].')
  if not 0 < ds_cfg.min_crop_area <= 1:
    problems.append(f'config.dataset.min_crop_area={ds_cfg.min_crop_area}: use (0, 1].')
  try:
    eval_transform_lib.check_config(ds_cfg)
  except eval_transform_lib.EvalTransformError as e:
    problems.append(str(e))
  workers = ds_cfg.num_workers
  if not isinstance(workers, int) or workers < -1:
    problems.append(f'config.dataset.num_workers={workers!r}: use -1 (auto), 0 '
                    '(read in the training process) or a number of worker processes.')
  if problems:
    raise sources.DatasetConfigError(' '.join(problems))


@dataclasses.dataclass(frozen=True)
class Layout:
  """The training images' geometry and normalisation, decided once per run from
  config.dataset and the training split."""
  size: int
  channels: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_in_memory: bool


@dataclasses.dataclass(frozen=True)
class Transforms:
  """What a task does to one example: in training, in evaluation (the per-example function
  and the transform recorded for predict and export), and the names dataset.json keeps."""
  train: Callable
  eval: Callable
  eval_transform: eval_transform_lib.EvalTransform
  train_preprocess: str
  device_augment: str = ''
  eval_image_size: int = 0  # 0: Layout.size.


def assemble(config: ml_collections.ConfigDict, shard: HostShard, *,
             open_split: Callable[[str], tuple[Any, Any]],
             make_transforms: Callable[[Layout], Transforms],
             data_class: type[Data] = Data,
             extra_fields: Callable[[Any, Transforms], dict] | None = None) -> Data:
  """The one data builder every task uses: opens the train and eval splits with the task's
  `open_split(split) -> (source, info)` (info: num_classes, class_names, channels,
  image_size), decides the Layout, builds the task's Transforms from it, and returns the
  streams with what inference needs. `extra_fields(train_source, transforms)` adds a
  `data_class`'s own fields (SimCLR's k-NN bank)."""
  ds = config.dataset
  train_src, info = open_split(ds.train_split)
  size = ds.image_size or info.image_size
  if not size:
    raise sources.DatasetConfigError(
        f'The images of {ds.name!r} {getattr(info, "size_note", "vary in size")}: set '
        'config.dataset.image_size (e.g. 224).')
  channels = ds.channels or info.channels
  mean, std = preprocess.mean_std(ds.mean, ds.std, ds.normalization, channels)
  layout = Layout(size, channels, mean, std, in_memory(train_src))
  fns = make_transforms(layout)
  evals, eval_sizes, evals_in_memory = {}, {}, True
  for split in ds.eval_splits:
    src, _ = open_split(split)
    evals[split] = eval_dataset(src, fns.eval, global_batch=config.eval.batch_size,
                                shard=shard, skip_corrupt=ds.skip_corrupt)
    eval_sizes[split] = len(src)
    evals_in_memory &= in_memory(src)
  workers = ds.num_workers
  return data_class(
      train=train_dataset(train_src, fns.train, global_batch=config.train.batch_size,
                          seed=config.seed, shard=shard, skip_corrupt=ds.skip_corrupt,
                          repeated_aug=ds.repeated_aug),
      evals=evals, eval_sizes=eval_sizes, num_train=len(train_src),
      num_classes=info.num_classes, image_size=size, channels=channels,
      class_names=list(info.class_names), mean=mean, std=std,
      eval_transform=fns.eval_transform,
      num_threads=_reader_threads(ds, _gatherable(train_src, fns.train)),
      num_workers=auto_workers(layout.train_in_memory) if workers == -1 else workers,
      eval_workers=auto_workers(evals_in_memory) if workers == -1 else workers,
      train_preprocess=fns.train_preprocess, device_augment=fns.device_augment,
      eval_image_size=fns.eval_image_size or size,
      decisions=_log_decisions(ds.name, getattr(info, 'decisions', None)),
      **(extra_fields(train_src, fns) if extra_fields else {}))


def build(config: ml_collections.ConfigDict, shard: HostShard = HostShard(), *,
          augment_on_device: bool = False) -> Data:
  """Images with one class label each (classification; a GAN's real images): `assemble`
  with config.dataset's train recipe (preprocess.py, augment.py) and eval transform.

  With `augment_on_device`, a caller whose train step applies `device_augment.
  make_device_augment(data.device_augment, ...)` lets the device do the CIFAR recipe's
  pad-crop-flip of a split held in memory; otherwise the host does the whole recipe (also
  when host augmentations follow it: they must see the cropped, flipped image).
  """
  ds = config.dataset
  _check(ds)

  def open_split(split: str):
    source, info = sources.open_split(ds, split)
    if info.num_classes < 2:
      raise sources.DatasetConfigError(
          f'{ds.name!r} has {info.num_classes} class{"es" * (info.num_classes != 1)} '
          f'({", ".join(info.class_names)}): a classifier needs at least two. Add classes '
          '(a folder dataset: one sub-folder per class) or widen config.dataset.classes.')
    sources.check_disjoint(ds, ds.train_split, split)
    return source, info

  def make_transforms(layout: Layout) -> Transforms:
    augment = augment_lib.from_config(ds, layout.mean, layout.std)
    device_augment = ('cifar' if augment_on_device and ds.preprocess == 'cifar'
                      and layout.train_in_memory and augment is None else '')
    train_fn = preprocess.make_preprocess(
        'resize' if device_augment else ds.preprocess, layout.size, train=True,
        augment=augment, channels=layout.channels, crop_fraction=ds.crop_fraction,
        min_crop_area=ds.min_crop_area)
    eval_size = ds.eval_image_size or layout.size
    transform = eval_transform_lib.EvalTransform.from_config(ds, eval_size, layout.channels)
    return Transforms(train=train_fn, eval=transform.example_fn(), eval_transform=transform,
                      train_preprocess=ds.preprocess, device_augment=device_augment,
                      eval_image_size=eval_size)

  return assemble(config, shard, open_split=open_split, make_transforms=make_transforms)


def _log_decisions(name: str, decisions: dict | None) -> dict | None:
  """Logs what was decided from the data (also written to dataset.json)."""
  for key, value in (decisions or {}).items():
    logging.info('Dataset %s: %s: %s', name, key, value)
  return decisions


def auto_workers(in_memory: bool, cores: int | None = None,
                 local_devices: int | None = None) -> int:
  """config.dataset.num_workers=-1: none for a split held in memory (a gather, or cheap
  per-example work in threads); else one per core this process may use (its CPU affinity:
  taskset, cgroups, SLURM's binding) but one left to the training loop, at least 1 and at
  most 8 per local accelerator (a ResNet-50 chip needs ~3 decoding cores)."""
  if in_memory:
    return 0
  if cores is None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (
        os.cpu_count() or 1)
  if local_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    local_devices = jax.local_device_count()
  return max(1, min(cores - 1, 8 * local_devices))


def _reader_threads(ds_cfg: ml_collections.ConfigDict, gathered: bool) -> int:
  """config.dataset.num_threads, or with -1: none when a batch is one numpy gather (cheaper
  than handing batches between threads on a busy CPU), 4 otherwise."""
  if ds_cfg.num_threads >= 0:
    return ds_cfg.num_threads
  return 0 if gathered else 4
