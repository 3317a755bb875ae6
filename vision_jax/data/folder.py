"""Image-folder datasets: `folder:/root`, one sub-folder per class.

Two layouts:
  root/train/<class>/*.jpg, root/test/<class>/*.jpg (any split names: every sub-folder of
      root is a split as soon as root has a `train/` folder);
  root/<class>/*.jpg: one folder, split into 'train' and 'test' per class by
      `dataset.folder_test_fraction`, with the fixed `dataset.folder_split_seed`, so
      every run and every host sees the same split.
Class names are the sorted class-folder names over all splits; the label of an image is
its class's index in that list. Split slicing (`train[:90%]`, `train+test`) follows tfds.

Images are decoded with PIL on read (random access by index, like the tfds sources). An
unreadable file stops the run with its path, unless `dataset.skip_corrupt=True`: then it
is replaced by the next readable image of the split (the stream stays a pure function of
(seed, step)), flagged `skipped` so evaluation masks it out, and logged once.
"""
from __future__ import annotations

import functools
import os
import threading
import types

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from vision_jax.errors import UserError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
PREFIX = 'folder:'


class CorruptImageError(UserError):
  """An image file that PIL cannot decode."""


class FolderError(UserError):
  """A folder dataset that does not exist or has no images."""


def _images_under(directory: str) -> list[str]:
  found = []
  for dirpath, _, files in os.walk(directory, followlinks=True):
    found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
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
  splits = {}
  for split, directory in split_dirs.items():
    paths, labels = [], []
    for label, name in enumerate(class_names):
      files = _images_under(os.path.join(directory, name))
      paths += files
      labels += [label] * len(files)
    splits[split] = (paths, np.asarray(labels, np.int64))
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


def decode(path: str, channels: int) -> np.ndarray:
  """HWC uint8 array of an image file: grey (channels=1) or RGB (alpha dropped)."""
  with Image.open(path) as image:
    array = np.asarray(image.convert('L' if channels == 1 else 'RGB'))
  return array[..., None] if channels == 1 else array


def probe(path: str, channels: int) -> tuple[int, int | None]:
  """(channels, decoded bytes of one image) from the header of a split's first image.

  channels=0 becomes 1 for a grey image, else 3; the bytes size the in-memory cache.
  """
  try:
    with Image.open(path) as image:
      channels = channels or (1 if image.mode in ('1', 'L', 'LA', 'I', 'I;16', 'F') else 3)
      return channels, image.size[0] * image.size[1] * channels
  except Exception:  # pylint: disable=broad-except
    return channels or 3, None  # Unreadable: reported (or skipped) when it is read.


class FolderSource:
  """Random access to (image, label) of a list of files."""

  def __init__(self, paths: list[str], labels: np.ndarray, *, channels: int,
               skip_corrupt: bool):
    self.paths, self.labels = paths, labels
    self.channels, self.skip_corrupt = channels, skip_corrupt
    self.skipped: set[str] = set()
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.paths)

  def read(self, i: int) -> np.ndarray | None:
    """The image at i; None for an unreadable file when skipping, else CorruptImageError."""
    try:
      return decode(self.paths[i], self.channels)
    except Exception as e:  # pylint: disable=broad-except
      if not self.skip_corrupt:
        raise CorruptImageError(
            f'Cannot read image {self.paths[i]} ({type(e).__name__}: {e}). Remove or '
            'replace the file, or rerun with --config.dataset.skip_corrupt=True to skip '
            'unreadable images (they are counted in the log).') from e
      with self._lock:
        if self.paths[i] not in self.skipped:
          self.skipped.add(self.paths[i])
          logging.warning('Skipping unreadable image %s (%s); %d skipped so far.',
                          self.paths[i], e, len(self.skipped))
      return None

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    for offset in range(len(self)):  # A deterministic substitute for an unreadable file.
      j = (i + offset) % len(self)
      image = self.read(j)
      if image is not None:
        return {'image': image, 'label': self.labels[j], 'skipped': offset > 0}
    raise CorruptImageError(f'No readable image among the {len(self)} files of this split '
                            f'(first: {self.paths[0]}).')
