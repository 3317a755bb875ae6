"""Dataset -> this host's share -> preprocess -> batches of numpy arrays.

The training stream is a pure function of (seed, step): example indices in an order drawn
per epoch from (seed, epoch), read at global positions `step * global_batch + row`, each
example augmented with a generator seeded by (seed, position). Each host reads only the
rows of each global batch that belong to it (a contiguous block, so the global array
assembled from the hosts' blocks holds the same examples in the same order whatever the
number of processes). Resuming at step k is just starting at position k: the
input state saved with a checkpoint is that one integer.

Evaluation reads every example once, padding the last global batch with masked copies.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
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


class EpochOrder:
  """Example index at each global position: one permutation of the split per epoch.

  The permutation of epoch e is drawn from (seed, e) alone, so any position can be looked
  up directly (resume, any host) with one numpy gather; the last few epochs are kept.
  """

  def __init__(self, size: int, seed: int, keep: int = 4):
    self.size, self.seed, self.keep = size, seed, keep
    self._perms: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def _perm(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perms.get(epoch)
      if perm is None:  # Iterators may be anywhere (resume, several at once): any epoch.
        perm = np.random.default_rng((self.seed, epoch)).permutation(self.size)
        self._perms[epoch] = perm
        for old in sorted(self._perms, key=lambda e: abs(e - epoch))[self.keep:]:
          del self._perms[old]  # Keep the epochs nearest to the one just asked for.
      return perm

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    epochs, offsets = np.divmod(positions, self.size)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      out[here] = self._perm(int(epoch))[offsets[here]]
    return out


def _positions(batch: int, global_batch: int, shard: HostShard) -> np.ndarray:
  """Global positions of this host's rows of global batch `batch` (a contiguous block)."""
  rows = global_batch // shard.count
  return batch * global_batch + shard.index * rows + np.arange(rows, dtype=np.int64)


def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}


def train_dataset(source, fn: preprocess.Preprocess, *, global_batch: int, seed: int,
                  shard: HostShard = HostShard()) -> grain.MapDataset:
  """An infinite MapDataset of host-local batches; element k is the batch of step k."""
  _rows(global_batch, shard)
  order = EpochOrder(len(source), seed)
  random = getattr(fn, 'random', True)  # Seeding a Generator costs ~20 us: only if used.

  def batch(step: int) -> dict[str, np.ndarray]:
    positions = _positions(step, global_batch, shard)
    return _stack([fn(source[int(i)], np.random.default_rng((seed, int(p))) if random
                      else None) for p, i in zip(positions, order(positions))])

  if _gatherable(source, fn):  # Same batches, without a Python call per example.
    batch = ChunkedGather(source, order, global_batch, shard)

  return grain.MapDataset.range(0, sys.maxsize).map(batch)


def _gatherable(source, fn: preprocess.Preprocess) -> bool:
  """Whether a batch is a numpy gather: images in memory that `fn` leaves unchanged."""
  return (isinstance(source, sources.ArraySource) and isinstance(source.images, np.ndarray)
          and getattr(fn, 'identity_for', lambda _: False)(source.images.shape[1:]))


def _gather(source: sources.ArraySource, rows: np.ndarray) -> dict[str, np.ndarray]:
  """Examples `rows` (any shape) as the per-example path makes them: labels int32."""
  return {'image': source.images[rows], 'label': source.labels[rows].astype(np.int32)}


class ChunkedGather:
  """Batch `step` of a split held in memory, gathered with its neighbours in one go.

  What a host read costs a running step is per call more than per byte: on 2 cores a ~12 us
  gather between dispatches slowed the step ~2%, while 50 steps' gathers done at once
  slowed it by nothing measurable (bench/README.md, "Loop overhead"). So `steps` batches
  (up to 64, at most 16 MiB) are gathered together and handed out as views; each equals
  the batch gathered alone.
  """

  def __init__(self, source: sources.ArraySource, order: EpochOrder, global_batch: int,
               shard: HostShard, max_steps: int = 64, max_bytes: int = 16 << 20):
    self.source, self.order, self.global_batch, self.shard = source, order, global_batch, shard
    batch_bytes = source.images[0].nbytes * _rows(global_batch, shard)
    self.steps = int(np.clip(max_bytes // max(batch_bytes, 1), 1, max_steps))
    self._chunks: dict[int, dict[str, np.ndarray]] = {}  # The last two made.
    self._lock = threading.Lock()

  def _chunk(self, first: int) -> dict[str, np.ndarray]:
    positions = np.concatenate([_positions(s, self.global_batch, self.shard)
                                for s in range(first, first + self.steps)])
    return _gather(self.source, self.order(positions).reshape(self.steps, -1))

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    first = step - step % self.steps
    with self._lock:  # Reader threads ask for steps of the same chunk, or of two.
      chunk = self._chunks.get(first)
      if chunk is None:
        chunk = self._chunks[first] = self._chunk(first)
        if len(self._chunks) > 2:
          del self._chunks[next(iter(self._chunks))]  # The one made first.
    return {k: v[step - first] for k, v in chunk.items()}


def eval_dataset(source, fn: preprocess.Preprocess, *, global_batch: int,
                 shard: HostShard = HostShard()) -> grain.MapDataset:
  """Every example once, in order; padded rows have mask 0."""
  _rows(global_batch, shard)
  num_batches = -(-len(source) // global_batch)

  def example(position: int) -> dict[str, np.ndarray]:
    raw = source[min(position, len(source) - 1)]
    out = fn(raw, None)  # A skipped unreadable file (folder.py) is masked out too.
    out['mask'] = np.asarray(position < len(source) and not raw.get('skipped'), np.float32)
    return out

  def batch(index: int) -> dict[str, np.ndarray]:
    return _stack([example(int(p)) for p in _positions(index, global_batch, shard)])

  def gathered(index: int) -> dict[str, np.ndarray]:
    positions = _positions(index, global_batch, shard)
    return {**_gather(source, np.minimum(positions, len(source) - 1)),
            'mask': (positions < len(source)).astype(np.float32)}

  return grain.MapDataset.range(num_batches).map(
      gathered if _gatherable(source, fn) else batch)


def iterate(dataset: grain.MapDataset, start: int = 0, num_threads: int = 4) -> Iterator:
  """Iterates `dataset[start:]` with `num_threads` threads reading ahead (0: on the
  caller's thread, one read per `next`)."""
  if num_threads == 0:
    return (dataset[i] for i in range(start, len(dataset)))
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
  eval_preprocess: str = 'resize'
  crop_fraction: float = 0.875
  num_threads: int = 4  # Reader threads: 0 when the train split is already in memory.

  def describe(self) -> dict:
    """What inference needs without the dataset: written to the workdir as dataset.json."""
    return {'num_classes': self.num_classes, 'image_size': self.image_size,
            'channels': self.channels, 'class_names': self.class_names,
            'mean': list(self.mean), 'std': list(self.std), 'num_train': self.num_train,
            'eval_sizes': self.eval_sizes, 'eval_preprocess': self.eval_preprocess,
            'crop_fraction': self.crop_fraction}


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
  if ds_cfg.eval_preprocess not in ('', 'resize', 'center_crop'):
    problems.append(f'config.dataset.eval_preprocess={ds_cfg.eval_preprocess!r}: use "" '
                    '(follow config.dataset.preprocess), "resize" or "center_crop".')
  if problems:
    raise sources.DatasetConfigError(' '.join(problems))


def build(config: ml_collections.ConfigDict, shard: HostShard = HostShard()) -> Data:
  """Opens the configured dataset (failing fast if absent) and builds both streams."""
  ds_cfg = config.dataset
  _check(ds_cfg)
  train_src, info = sources.open_split(ds_cfg, ds_cfg.train_split)
  size = ds_cfg.image_size or info.image_size
  if not size:
    raise sources.DatasetConfigError(
        f'The images of {ds_cfg.name!r} vary in size: set config.dataset.image_size '
        '(e.g. 224 with preprocess="inception").')
  channels = ds_cfg.channels or info.channels
  recipe = dict(channels=channels, crop_fraction=ds_cfg.crop_fraction,
                min_crop_area=ds_cfg.min_crop_area)
  train_fn = preprocess.make_preprocess(ds_cfg.preprocess, size, train=True, **recipe)
  eval_recipe = ds_cfg.eval_preprocess or preprocess.EVAL_RECIPE.get(ds_cfg.preprocess, '')
  eval_fn = preprocess.make_preprocess(eval_recipe, size, train=False, **recipe)
  mean, std = preprocess.mean_std(ds_cfg.mean, ds_cfg.std, ds_cfg.normalization, channels)
  evals, eval_sizes = {}, {}
  for split in ds_cfg.eval_splits:
    src, _ = sources.open_split(ds_cfg, split)
    evals[split] = eval_dataset(src, eval_fn, global_batch=config.eval.batch_size, shard=shard)
    eval_sizes[split] = len(src)
  return Data(
      train=train_dataset(train_src, train_fn, global_batch=config.train.batch_size,
                          seed=config.seed, shard=shard),
      evals=evals, eval_sizes=eval_sizes, num_train=len(train_src),
      num_classes=info.num_classes, image_size=size, channels=channels,
      class_names=info.class_names, mean=mean, std=std, eval_preprocess=eval_recipe,
      crop_fraction=ds_cfg.crop_fraction, num_threads=_reader_threads(ds_cfg, train_src))


def _reader_threads(ds_cfg: ml_collections.ConfigDict, train_src) -> int:
  """config.dataset.num_threads, or with -1: none for a split held in memory (a gather
  is cheaper than handing batches between threads on a busy CPU), 4 otherwise."""
  if ds_cfg.num_threads >= 0:
    return ds_cfg.num_threads
  return 0 if isinstance(train_src, sources.ArraySource) else 4
