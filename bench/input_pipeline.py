"""Input-pipeline throughput on the host (images/sec): read -> decode -> augment -> batch.

  python bench/input_pipeline.py                          # every case, ~1 minute
  python bench/input_pipeline.py --cases imagenet --threads 1 2 4 --batches 20

Cases (each timed through the real `input_pipeline.train_dataset` / `eval_dataset` and
`iterate`, i.e. grain threads reading ahead, exactly what training consumes):
  cifar     CIFAR recipe (pad 4, random 32 crop, flip) over 10,000 in-memory 32x32x3
            images: what `dataset.cache='auto'` makes of cifar10/100 (random pixels stand
            in for CIFAR here: no network).
  imagenet  ImageNet recipe over JPEGs this script writes into a temporary folder dataset
            (smooth synthetic 500x375 images, JPEG quality 90, about ImageNet's mean size):
            train = decode + inception crop 224 + flip, eval = decode + resize 256 +
            centre crop 224.
  digits    the default dataset (tfds ArraySource, 8x8 grey), 'resize' recipe, with the
            in-memory cache (`dataset.cache='auto'`, the default) and without ('none').
`--repo DIR` times another checkout's vision_jax (e.g. an older commit) on the same cases
where it supports them.
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Iterator


def _args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cases', nargs='+', default=['cifar', 'imagenet', 'digits'])
  parser.add_argument('--threads', nargs='+', type=int, default=[4])
  parser.add_argument('--batches', type=int, default=20, help='Least timed batches a round.')
  parser.add_argument('--seconds', type=float, default=3.0, help='Least time a round.')
  parser.add_argument('--rounds', type=int, default=3, help='Median over this many.')
  parser.add_argument('--repo', default=os.path.join(os.path.dirname(__file__), '..'))
  return parser.parse_args()


ARGS = _args()
sys.path.insert(0, os.path.abspath(ARGS.repo))
# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from PIL import Image

from vision_jax.config import base_config
from vision_jax.data import input_pipeline as ip
from vision_jax.data import preprocess, sources
# pylint: enable=g-import-not-at-top,wrong-import-position


def images_per_second(make_batches: Callable[[int], Iterator]) -> float:
  """Median images/sec over rounds, each >= ARGS.seconds and >= ARGS.batches batches.

  A round starts a fresh iterator, drops 2 warm-up batches and then times steady state:
  the few batches grain had read ahead are a small part of a round that long.
  """
  rates = []
  for r in range(ARGS.rounds):
    batches = make_batches(r)
    next(batches), next(batches)
    images, count, start = 0, 0, time.perf_counter()
    while count < ARGS.batches or time.perf_counter() - start < ARGS.seconds:
      images, count = images + len(next(batches)['label']), count + 1
    rates.append(images / (time.perf_counter() - start))
  return statistics.median(rates)


def _train(dataset, threads: int) -> Callable[[int], Iterator]:
  return lambda r: ip.iterate(dataset, r * 100_000, threads)


def _eval_forever(dataset, threads: int) -> Callable[[int], Iterator]:
  return lambda r: itertools.chain.from_iterable(
      ip.iterate(dataset, 0, threads) for _ in itertools.count())


def _smooth_image(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image:
  """A photo-like image (smooth shapes + mild noise) that compresses like one."""
  coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC),
                     np.int16)
  image = image + rng.integers(-12, 13, image.shape)
  return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def case_cifar(threads: int) -> list[tuple[str, float]]:
  rng = np.random.default_rng(0)
  source = sources.ArraySource(rng.integers(0, 256, (10_000, 32, 32, 3), dtype=np.uint8),
                               rng.integers(0, 10, 10_000))
  fn = preprocess.make_preprocess('cifar', 32, train=True)
  dataset = ip.train_dataset(source, fn, global_batch=128, seed=0)
  return [('cifar train (pad-crop-flip, in memory), batch 128',
           images_per_second(_train(dataset, threads)))]


def case_imagenet(threads: int) -> list[tuple[str, float]]:
  with tempfile.TemporaryDirectory() as root:
    rng = np.random.default_rng(0)
    for i in range(256):
      path = os.path.join(root, f'class{i % 2}', f'{i}.jpg')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      _smooth_image(rng).save(path, quality=90)
    size_kb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root)
                  for f in fs) / 256 / 1024
    config = base_config()
    config.dataset.name, config.dataset.folder_test_fraction = f'folder:{root}', 0.5
    config.dataset.cache = 'none'  # Decode on every read, as ImageNet-size data must.
    config.dataset.num_threads = threads
    train, _ = sources.open_split(config.dataset, 'train')
    test, _ = sources.open_split(config.dataset, 'test')
    train_fn = preprocess.make_preprocess('inception', 224, train=True)
    eval_fn = preprocess.make_preprocess('inception', 224, train=False)
    train_ds = ip.train_dataset(train, train_fn, global_batch=32, seed=0)
    eval_ds = ip.eval_dataset(test, eval_fn, global_batch=32)
    out = [(f'imagenet train (JPEG {size_kb:.0f} KB decode + inception crop 224 + flip), '
            'batch 32', images_per_second(_train(train_ds, threads))),
           ('imagenet eval (JPEG decode + resize 256 + centre crop 224), batch 32',
            images_per_second(_eval_forever(eval_ds, threads)))]
  return out


def case_digits(threads: int) -> list[tuple[str, float]]:
  out = []
  for cache in ('auto', 'none'):
    config = base_config()
    if 'cache' not in config.dataset:  # An older checkout (--repo): no cache at all.
      if cache == 'none':
        continue
      cache = 'absent'
    else:
      config.dataset.cache = cache
    data = ip.build(config)
    out.append((f'digits train (tfds, resize 8, cache={cache}), batch 128',
                images_per_second(_train(data.train, threads))))
  return out


def main() -> None:
  cases = {'cifar': case_cifar, 'imagenet': case_imagenet, 'digits': case_digits}
  print(f'{os.cpu_count()} CPUs, repo {os.path.abspath(ARGS.repo)}')
  for name in ARGS.cases:
    for threads in ARGS.threads:
      for label, rate in cases[name](threads):
        print(f'{label:<78} threads {threads}: {rate:8.0f} images/s', flush=True)


if __name__ == '__main__':
  main()
