"""Which examples make batch k, and the batch itself: what worker processes run.

The training stream is a pure function of (seed, step): example indices in an order drawn
per epoch from (seed, epoch), read at global positions `step * global_batch + row`, each
example augmented with a generator seeded by (seed, position). Each host reads only the
rows of each global batch that belong to it (a contiguous block, so the global array
assembled from the hosts' blocks holds the same examples in the same order whatever the
number of processes). Evaluation reads every example once, padding the last global batch
with masked copies.

Everything here is picklable and imports neither TensorFlow nor tfds, so a worker process
(workers.py) starts with only what it runs.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Sequence

import numpy as np
from absl import logging

from vision_jax.data import decode
from vision_jax.data import preprocess


@dataclasses.dataclass(frozen=True)
class HostShard:
  """Which rows of each global batch this process reads."""
  index: int = 0
  count: int = 1


def rows(global_batch: int, shard: HostShard) -> int:
  if global_batch % shard.count:
    raise ValueError(f'Global batch {global_batch} is not divisible by {shard.count} hosts.')
  return global_batch // shard.count


def positions(batch: int, global_batch: int, shard: HostShard) -> np.ndarray:
  """Global positions of this host's rows of global batch `batch` (a contiguous block)."""
  count = global_batch // shard.count
  return batch * global_batch + shard.index * count + np.arange(count, dtype=np.int64)


class EpochOrder:
  """Example index at each global position: one permutation of the split per epoch.

  The permutation of epoch e is drawn from (seed, e) alone, so any position can be looked
  up directly (resume, any host) with one numpy gather; the last few epochs are kept.
  """

  def __init__(self, size: int, seed: int, keep: int = 4):
    self.size, self.seed, self.keep = size, seed, keep
    self._perms: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self) -> dict:  # Sent to worker processes without its cache and lock.
    return {'size': self.size, 'seed': self.seed, 'keep': self.keep}

  def __setstate__(self, state: dict) -> None:
    self.__init__(**state)

  def _perm(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perms.get(epoch)
      if perm is None:  # Iterators may be anywhere (resume, several at once): any epoch.
        perm = np.random.default_rng((self.seed, epoch)).permutation(self.size)
        self._perms[epoch] = perm
        for old in sorted(self._perms, key=lambda e: abs(e - epoch))[self.keep:]:
          del self._perms[old]  # Keep the epochs nearest to the one just asked for.
      return perm

  def __call__(self, where: np.ndarray) -> np.ndarray:
    epochs, offsets = np.divmod(where, self.size)
    out = np.empty_like(where)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      out[here] = self._perm(int(epoch))[offsets[here]]
    return out


@dataclasses.dataclass(frozen=True)
class RepeatedOrder:
  """Repeated augmentation (Hoffer et al. 2020; DeiT's and timm's `aug_repeats`, RSB's
  k = 3): position p reads slot p // k of `order`, so k consecutive positions hold one
  example, each copy augmented apart (every position seeds its own draws).

  Slots read the shuffled epochs of `order` as positions do without repetition, so every
  k * N consecutive positions from 0 (N examples) hold each example exactly k times, and a
  global batch divisible by k holds batch / k examples, k times each. When k does not divide
  the batch (RSB: 2048 and 3), one example's copies may straddle two consecutive batches.
  An "epoch" of N positions (timm's: as many images seen as the split has) thus sees N / k
  distinct examples. Copies sit in adjacent rows, hence mostly on one device: BatchNorm here
  uses global-batch statistics, so placement changes nothing (timm spreads copies over
  its GPUs because its BatchNorm is per GPU). The stream stays a pure function of
  (seed, step).
  """
  order: EpochOrder
  repeats: int

  def __call__(self, where: np.ndarray) -> np.ndarray:
    return self.order(where // self.repeats)


def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}


@dataclasses.dataclass
class Examples:
  """Example i of `source` through `fn`; an unreadable image (decode.CorruptImageError)
  stops the run, or with `skip_corrupt` is replaced by the next readable example of the
  split (deterministically), flagged `skipped`, and logged once per process."""
  source: Sequence
  fn: preprocess.Preprocess
  seed: int = 0
  skip_corrupt: bool = False

  def __call__(self, index: int, position: int | None) -> dict:
    """`position` seeds the example's augmentation (None: no randomness)."""
    random = position is not None and getattr(self.fn, 'random', True)  # Seeding: ~20 us.
    for offset in range(len(self.source)):
      j = (index + offset) % len(self.source)
      rng = np.random.default_rng((self.seed, position)) if random else None
      try:
        out = self.fn(self.source[j], rng)
      except decode.CorruptImageError as e:
        if not self.skip_corrupt:
          raise
        _log_skipped(str(e))
        continue
      out['skipped'] = np.asarray(offset > 0)
      return out
    raise decode.CorruptImageError(f'No readable image among the {len(self.source)} '
                                   'examples of this split.')


_SKIPPED: set[str] = set()


def _log_skipped(message: str) -> None:
  if message not in _SKIPPED:
    _SKIPPED.add(message)
    logging.warning('Skipping an unreadable image (%d so far in this process): %s',
                    len(_SKIPPED), message)


@dataclasses.dataclass
class TrainBatch:
  """Batch `step` of the training stream, one example at a time."""
  examples: Examples
  order: EpochOrder
  global_batch: int
  shard: HostShard

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    where = positions(step, self.global_batch, self.shard)
    batch = _stack([self.examples(int(i), int(p)) for p, i in zip(where, self.order(where))])
    del batch['skipped']  # A substitute trains like any example.
    return batch


@dataclasses.dataclass
class GatheredBatch:
  """Batch `step` of a split held in memory whose recipe leaves images unchanged: one
  numpy gather (labels as int32, like the per-example path)."""
  images: np.ndarray
  labels: np.ndarray
  order: EpochOrder
  global_batch: int
  shard: HostShard

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    rows_ = self.order(positions(step, self.global_batch, self.shard))
    return {'image': self.images[rows_], 'label': self.labels[rows_].astype(np.int32)}


@dataclasses.dataclass
class EvalBatch:
  """Eval batch `index`: every example once, in order; padded and skipped rows masked."""
  examples: Examples
  global_batch: int
  shard: HostShard

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    size = len(self.examples.source)
    out = []
    for p in positions(index, self.global_batch, self.shard):
      example = self.examples(min(int(p), size - 1), None)
      example['mask'] = np.asarray(p < size and not example.pop('skipped'), np.float32)
      out.append(example)
    return _stack(out)


@dataclasses.dataclass
class GatheredEvalBatch:
  """EvalBatch of a split held in memory whose recipe leaves images unchanged."""
  images: np.ndarray
  labels: np.ndarray
  global_batch: int
  shard: HostShard

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    where = positions(index, self.global_batch, self.shard)
    rows_ = np.minimum(where, len(self.labels) - 1)
    return {'image': self.images[rows_], 'label': self.labels[rows_].astype(np.int32),
            'mask': (where < len(self.labels)).astype(np.float32)}
