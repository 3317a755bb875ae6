"""Image-folder datasets: `folder:/root`, one sub-folder per class.

Two layouts:
  root/train/<class>/*.jpg, root/test/<class>/*.jpg (any split names: every sub-folder of
      root is a split as soon as root has a `train/` folder);
  root/<class>/*.jpg: one folder, split into 'train' and 'test' per class by
      `dataset.folder_test_fraction`, with the fixed `dataset.folder_split_seed`, so
      every run and every host sees the same split.
Class names are the sorted class-folder names over all splits; the label of an image is
its class's index in that list. Split slicing (`train[:90%]`, `train+test`) follows tfds.

Every real file is listed once: symbolic links are followed, but a directory already
visited (a link loop such as `ln -s D/3 D/3/again`) is not entered again, and a file
reached through several links counts once, under its resolved path. A source hands out a
file's bytes (random access by index, like the tfds sources); the recipe decodes them
(decode.py), only as far as its crop needs. An unreadable file stops the run with its
path, unless `dataset.skip_corrupt=True`: then it is replaced by the next readable image
of the split (the stream stays a pure function of (seed, step)), flagged `skipped` so
evaluation masks it out, and logged once (stream.Examples).
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import types

import numpy as np
from absl import logging
from PIL import Image

from vision_jax.data import decode
from vision_jax.data.decode import CorruptImageError  # pylint: disable=unused-import
from vision_jax.errors import UserError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
PREFIX = 'folder:'


class FolderError(UserError):
  """A folder dataset that does not exist or has no images."""


def _images_under(directory: str) -> list[str]:
  """The resolved paths of the image files under `directory`, each real file once."""
  found, seen_dirs, pending = set(), set(), [os.path.realpath(directory)]
  while pending:
    real_dir = pending.pop()
    if real_dir in seen_dirs:
      continue  # A link back to a directory already listed (a loop, or a second name).
    seen_dirs.add(real_dir)
    with os.scandir(real_dir) as entries:
      for entry in entries:
        if entry.is_dir():  # Follows links.
          pending.append(os.path.realpath(entry.path) if entry.is_symlink() else entry.path)
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
          found.add(os.path.realpath(entry.path) if entry.is_symlink() else entry.path)
  return sorted(found)


def _class_dirs(directory: str) -> list[str]:
  return sorted(d for d in os.listdir(directory)
                if not d.startswith('.') and os.path.isdir(os.path.join(directory, d)))


@functools.lru_cache(maxsize=4)  # Train and eval splits list the folder once.
def index(root: str, *, test_fraction: float, seed: int
          ) -> tuple[list[str], dict[str, tuple[list[str], np.ndarray]]]:
  """(class names, {split: (paths, labels)}) for a folder dataset root (do not modify)."""
  if not os.path.isdir(root):
    raise FolderError(f'Folder dataset {PREFIX}{root}: {root} is not a directory. Point '
                      'config.dataset.name at a folder with one sub-folder per class (or '
                      'train/ and test/ folders, each with one sub-folder per class).')
  if os.path.isdir(os.path.join(root, 'train')):
    split_dirs = {s: os.path.join(root, s) for s in _class_dirs(root)}
  else:
    split_dirs = {'': root}  # One folder of classes, split by fraction below.
  class_names = sorted({c for d in split_dirs.values() for c in _class_dirs(d)})
  if not class_names:
    raise FolderError(f'Folder dataset {PREFIX}{root} has no class sub-folders. Expected '
                      f'{root}/<class>/<image> or {root}/train/<class>/<image>.')
  splits, counts = {}, {name: 0 for name in class_names}
  for split, directory in split_dirs.items():
    paths, labels, missing = [], [], []
    for label, name in enumerate(class_names):
      files = (_images_under(os.path.join(directory, name))
               if os.path.isdir(os.path.join(directory, name)) else [])
      paths += files
      labels += [label] * len(files)
      counts[name] += len(files)
      missing += [] if files else [name]
    splits[split] = (paths, np.asarray(labels, np.int64))
    if split and missing:
      logging.warning('Folder dataset %s%s: split %r has no images of class%s %s; its '
                      'accuracy there is not measured.', PREFIX, root, split,
                      'es' * (len(missing) > 1), ', '.join(missing[:10]))
  empty = [name for name, n in counts.items() if not n]
  if empty and len(empty) < len(class_names):
    raise FolderError(
        f'Folder dataset {PREFIX}{root}: the class folder{"s" * (len(empty) > 1)} '
        f'{", ".join(empty[:10])}{", ..." if len(empty) > 10 else ""} '
        f'{"have" if len(empty) > 1 else "has"} no images (extensions '
        f'{", ".join(IMAGE_EXTENSIONS)}), so the class would be one no image can teach and '
        'its accuracy a meaningless 0. Add its images, or remove the folder.')
  if '' in splits:
    splits = _split_by_fraction(*splits.pop(''), test_fraction, seed)
  if not any(len(p) for p, _ in splits.values()):
    raise FolderError(f'Folder dataset {PREFIX}{root} has no images with extensions '
                      f'{", ".join(IMAGE_EXTENSIONS)}.')
  return class_names, splits


def _split_by_fraction(paths: list[str], labels: np.ndarray, test_fraction: float,
                       seed: int) -> dict[str, tuple[list[str], np.ndarray]]:
  """Holds out round(fraction * n_c) images of every class c as 'test' (stratified)."""
  if not 0 <= test_fraction < 1:
    raise FolderError(f'config.dataset.folder_test_fraction={test_fraction} must be in '
                      '[0, 1).')
  rng = np.random.default_rng(seed)
  is_test = np.zeros(len(paths), bool)
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    is_test[rng.permutation(members)[:round(test_fraction * len(members))]] = True
  pick = lambda mask: ([p for p, m in zip(paths, mask) if m], labels[mask])
  return {'train': pick(~is_test), 'test': pick(is_test)}


def select(splits: dict[str, tuple[list[str], np.ndarray]], spec: str
           ) -> tuple[list[str], np.ndarray]:
  """The files of a tfds-style split spec ('train', 'train[:90%]', 'train+test')."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Imported here: worker processes load this module (FolderSource), not TensorFlow.
  infos = {name: types.SimpleNamespace(num_examples=len(p)) for name, (p, _) in splits.items()}
  try:
    instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
  except (ValueError, KeyError) as e:
    raise FolderError(f'Split {spec!r} of a folder dataset: {e} Splits here: '
                      f'{", ".join(sorted(splits))}.') from e
  paths, labels = [], []
  for ins in instructions:
    split_paths, split_labels = splits[ins.splitname]
    paths += split_paths[ins.from_:ins.to]
    labels.append(split_labels[ins.from_:ins.to])
  return paths, np.concatenate(labels)


_GREY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


def _header(path: str) -> tuple[tuple[int, int], bool] | None:
  """((width, height) as shown, grey) from a file's header; None if unreadable."""
  try:
    with Image.open(path) as image:  # Reads the header only.
      width, height = image.size
      if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF: shown rotated a quarter.
        width, height = height, width
      return (width, height), image.mode in _GREY_MODES
  except Exception:  # pylint: disable=broad-except
    return None  # Reported (or skipped) when the recipe reads it.


def _header_size(path: str) -> tuple[int, int] | None:
  found = _header(path)
  return None if found is None else found[0]


def _spread(paths: list[str], sample: int) -> list[str]:
  return [paths[i] for i in np.linspace(0, len(paths) - 1, min(sample, len(paths)),
                                        dtype=np.int64)]


@functools.lru_cache(maxsize=4)  # Train and eval splits decide once, together.
def probe_dataset(root: str, *, test_fraction: float, seed: int, channels: int
                  ) -> tuple[int, int | None, str]:
  """`probe` over the files of every split of a folder dataset: train and evaluation
  see the images with the same channels whichever split the odd one is in."""
  _, splits = index(root, test_fraction=test_fraction, seed=seed)
  return probe([p for paths, _ in splits.values() for p in paths], channels)


def probe(paths: list[str], channels: int, sample: int = 20000
          ) -> tuple[int, int | None, str]:
  """(channels, decoded bytes of one image, what was decided and why) from the headers
  of the files (up to `sample`, spread evenly over the split: every file of a smaller one).

  channels=0 (as stored) becomes 1 if every image is grey, else 3: one colour image makes
  the dataset colour, and its grey images are repeated to 3 channels (never the other way:
  colour is not thrown away because the first file happened to be grey).
  """
  picked = _spread(paths, sample)
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    headers = [h for h in pool.map(_header, picked) if h is not None]
  if not headers:
    return channels or 3, None, ''  # Unreadable: reported (or skipped) when read.
  grey = sum(is_grey for _, is_grey in headers)
  looked = (f'{len(headers)} images' if len(picked) == len(paths) else
            f'{len(headers)} images spread over the {len(paths)}')
  if channels:
    note = f'channels={channels} as configured (of {looked}, {grey} are grey)'
  else:
    channels = 1 if grey == len(headers) else 3
    note = (f'channels={channels}: every one of {looked} is grey' if channels == 1 else
            f'channels=3: of {looked}, {len(headers) - grey} are colour and {grey} grey '
            '(grey images are repeated to 3 channels)' if grey else
            f'channels=3: every one of {looked} is colour')
  (width, height), _ = headers[0]
  return channels, width * height * channels, note


def common_size(paths: list[str], sample: int = 2000) -> tuple[int, str]:
  """(side, '') if the images are all side x side, else (0, why not), from the headers of
  up to `sample` files spread evenly over the split (every file of a smaller split)."""
  picked = _spread(paths, sample)
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    found = {}
    for path, found_size in zip(picked, pool.map(_header_size, picked)):
      if found_size is not None:
        found.setdefault(found_size, path)
  if len(found) > 1:
    (a, path_a), (b, path_b) = list(found.items())[:2]
    return 0, (f'vary in size ({path_a} is {a[0]}x{a[1]}, {path_b} {b[0]}x{b[1]}, '
               'width x height)')
  if not found:
    return 0, 'have no readable header'
  (width, height), = found
  if width != height:
    return 0, f'are all {width}x{height} (width x height), not square'
  return width, ''


class FolderSource:
  """Random access to (encoded image, label) of a list of files."""

  def __init__(self, paths: list[str], labels: np.ndarray):
    self.paths, self.labels = paths, labels

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> dict:
    path = self.paths[int(i)]
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise decode.corrupt(path, e) from e
    return {'image': decode.Encoded(data, path), 'label': self.labels[int(i)]}
