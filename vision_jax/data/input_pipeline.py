"""Dataset -> this host's share -> preprocess -> batches of numpy arrays.

The training stream is a pure function of (seed, step): a grain shuffle of example indices,
reshuffled every epoch, read at global positions `step * global_batch + row`. Each host
reads only the rows of each global batch that belong to it (a contiguous block, so the
global array assembled from the hosts' blocks holds the same examples in the same order
whatever the number of processes). Resuming at step k is just starting at position k: the
input state saved with a checkpoint is that one integer.

Evaluation reads every example once, padding the last global batch with masked copies.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Iterator

import grain
import ml_collections
import numpy as np

from vision_jax.data import preprocess
from vision_jax.data import sources


@dataclasses.dataclass(frozen=True)
class HostShard:
  """Which rows of each global batch this process reads."""
  index: int = 0
  count: int = 1


def _rows(global_batch: int, shard: HostShard) -> int:
  if global_batch % shard.count:
    raise ValueError(f'Global batch {global_batch} is not divisible by {shard.count} hosts.')
  return global_batch // shard.count


def _global_position(local_position: int, global_batch: int, shard: HostShard) -> int:
  rows = global_batch // shard.count
  step, row = divmod(local_position, rows)
  return step * global_batch + shard.index * rows + row


def train_dataset(source, fn: preprocess.Preprocess, *, global_batch: int, seed: int,
                  shard: HostShard = HostShard()) -> grain.MapDataset:
  """An infinite MapDataset of host-local batches; element k is the batch of step k."""
  rows = _rows(global_batch, shard)
  order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)

  def example(local_position: int):
    position = _global_position(local_position, global_batch, shard)
    rng = np.random.default_rng((seed, position))
    return fn(source[int(order[position])], rng)

  return grain.MapDataset.range(0, sys.maxsize).map(example).batch(rows, drop_remainder=True)


def eval_dataset(source, fn: preprocess.Preprocess, *, global_batch: int,
                 shard: HostShard = HostShard()) -> grain.MapDataset:
  """Every example once, in order; padded rows have mask 0."""
  rows = _rows(global_batch, shard)
  num_batches = -(-len(source) // global_batch)

  def example(local_position: int):
    position = _global_position(local_position, global_batch, shard)
    out = fn(source[min(position, len(source) - 1)], None)
    out['mask'] = np.asarray(position < len(source), np.float32)
    return out

  return grain.MapDataset.range(num_batches * rows).map(example).batch(rows)


def iterate(dataset: grain.MapDataset, start: int = 0, num_threads: int = 4) -> Iterator:
  """Iterates `dataset[start:]` with `num_threads` threads reading ahead."""
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
  return iter(dataset[start:].to_iter_dataset(options))


@dataclasses.dataclass
class Data:
  """What the training loop needs to know about a dataset."""
  train: grain.MapDataset
  evals: dict[str, grain.MapDataset]
  eval_sizes: dict[str, int]
  num_train: int
  num_classes: int
  image_size: int
  channels: int
  class_names: list[str]
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def describe(self) -> dict:
    """What inference needs without the dataset: written to the workdir as dataset.json."""
    return {'num_classes': self.num_classes, 'image_size': self.image_size,
            'channels': self.channels, 'class_names': self.class_names,
            'mean': list(self.mean), 'std': list(self.std), 'num_train': self.num_train,
            'eval_sizes': self.eval_sizes}


def build(config: ml_collections.ConfigDict, shard: HostShard = HostShard()) -> Data:
  """Opens the configured dataset (failing fast if absent) and builds both streams."""
  ds_cfg = config.dataset
  train_src, info = sources.open_split(ds_cfg, ds_cfg.train_split)
  size = ds_cfg.image_size or info.image_size
  train_fn = preprocess.make_preprocess(ds_cfg.preprocess, size, train=True)
  eval_fn = preprocess.make_preprocess('resize', size, train=False)
  evals, eval_sizes = {}, {}
  for split in ds_cfg.eval_splits:
    src, _ = sources.open_split(ds_cfg, split)
    evals[split] = eval_dataset(src, eval_fn, global_batch=config.eval.batch_size, shard=shard)
    eval_sizes[split] = len(src)
  channels = info.channels
  mean = tuple(ds_cfg.mean) or (0.5,) * channels
  std = tuple(ds_cfg.std) or (0.5,) * channels
  return Data(
      train=train_dataset(train_src, train_fn, global_batch=config.train.batch_size,
                          seed=config.seed, shard=shard),
      evals=evals, eval_sizes=eval_sizes, num_train=len(train_src),
      num_classes=info.num_classes, image_size=size, channels=channels,
      class_names=info.class_names, mean=mean, std=std)
