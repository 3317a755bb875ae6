"""Segmentation folders: `folder:/root` with images and their label maps as PNG masks.

Layouts (stems pair an image with its mask: images/cat_01.jpg <-> masks/cat_01.png):
  root/images/*, root/masks/*.png: one pool, split into 'train' and 'test' by
      `test_fraction` with the fixed `seed` (every run and host sees the same split);
  root/<split>/images/*, root/<split>/masks/*.png: one split per sub-folder that has an
      images/ folder (any names: train, val, test, ...).
Split slicing (`train[:90%]`, `train+val`) follows tfds.

A mask is a class-index PNG (mode L: the grey value is the class) or a palette PNG (mode P:
the palette index is the class, whatever colours the palette shows, as PASCAL VOC's); the
ignore label (255 by default) marks unlabelled pixels. Class names come from
root/classes.txt, one per line in class-index order; without it, `num_classes` must be
given and the names are '0', '1', .... Checked when an example is read (the files are not
all opened up front): the mask's size must be its image's, and every value a class or the
ignore label; an image without a mask, or a mask without an image, stops the listing.
Each error names the file and the fix.
"""
from __future__ import annotations

import functools
import os
import types

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vision_jax.errors import UserError

PREFIX = 'folder:'
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
MASK_MODES = ('L', 'P', '1', 'I;16', 'I')

Pairs = list[tuple[str, str]]


class MaskFolderError(UserError):
  """A segmentation folder, image or mask that cannot be used; the message names it."""


def _stems(directory: str, extensions: tuple[str, ...]) -> dict[str, str]:
  out = {}
  for f in sorted(os.listdir(directory)):
    stem, ext = os.path.splitext(f)
    if ext.lower() in extensions and not f.startswith('.'):
      if stem in out:
        raise MaskFolderError(f'{directory} has two files with the stem {stem!r} '
                              f'({os.path.basename(out[stem])}, {f}); keep one.')
      out[stem] = os.path.join(directory, f)
  return out


def _pairs(directory: str) -> Pairs:
  """(image, mask) paths of directory/images and directory/masks, paired by stem."""
  images_dir, masks_dir = os.path.join(directory, 'images'), os.path.join(directory, 'masks')
  if not os.path.isdir(masks_dir):
    raise MaskFolderError(f'{images_dir} has no sibling masks/ folder: put one PNG label map '
                          f'per image in {masks_dir}, with the same file name stem.')
  images, masks = _stems(images_dir, IMAGE_EXTENSIONS), _stems(masks_dir, ('.png',))
  for stem, path in images.items():
    if stem not in masks:
      raise MaskFolderError(f'Image {path} has no mask: expected {masks_dir}/{stem}.png (a '
                            'class-index or palette PNG of the same size). Add it, or move '
                            'the image out of the dataset.')
  for stem, path in masks.items():
    if stem not in images:
      raise MaskFolderError(f'Mask {path} has no image of the same stem in {images_dir}. '
                            'Add the image or remove the mask.')
  return [(images[s], masks[s]) for s in sorted(images)]


def read_class_names(root: str) -> list[str] | None:
  """root/classes.txt, one name per line (blank lines skipped), or None without one."""
  path = os.path.join(root, 'classes.txt')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    raise MaskFolderError(f'{path} lists no class; write one class name per line, in '
                          'class-index order.')
  return names


@functools.lru_cache(maxsize=4)  # Train and eval splits list the folder once.
def index(root: str, *, test_fraction: float, seed: int) -> dict[str, Pairs]:
  """{split: [(image path, mask path)]} of a segmentation folder (do not modify)."""
  if not os.path.isdir(root):
    raise MaskFolderError(f'Segmentation folder {PREFIX}{root}: {root} is not a directory. '
                          'Point config.dataset.name at a folder with images/ and masks/ '
                          '(or <split>/images and <split>/masks).')
  if os.path.isdir(os.path.join(root, 'images')):
    pairs = _pairs(root)
    if not 0 <= test_fraction < 1:
      raise MaskFolderError(f'config.dataset.folder_test_fraction={test_fraction} must be '
                            'in [0, 1).')
    order = np.random.default_rng(seed).permutation(len(pairs))
    held_out = set(order[:round(test_fraction * len(pairs))].tolist())
    splits = {'train': [p for i, p in enumerate(pairs) if i not in held_out],
              'test': [p for i, p in enumerate(pairs) if i in held_out]}
  else:
    splits = {d: _pairs(os.path.join(root, d)) for d in sorted(os.listdir(root))
              if os.path.isdir(os.path.join(root, d, 'images'))}
  if not any(splits.values()):
    raise MaskFolderError(f'Segmentation folder {root} has no images: expected '
                          f'{root}/images/<name>.jpg with {root}/masks/<name>.png, or the '
                          f'same under {root}/<split>/.')
  return splits


def select(splits: dict[str, Pairs], spec: str) -> Pairs:
  """The pairs of a tfds-style split spec ('train', 'train[:90%]', 'train+val')."""
  infos = {name: types.SimpleNamespace(num_examples=len(p)) for name, p in splits.items()}
  try:
    instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
  except (ValueError, KeyError) as e:
    raise MaskFolderError(f'Split {spec!r} of a segmentation folder: {e} Splits here: '
                          f'{", ".join(sorted(splits))}.') from e
  return [p for ins in instructions for p in splits[ins.splitname][ins.from_:ins.to]]


def read_mask(path: str) -> np.ndarray:
  """HW uint8 class indices of a class-index (L) or palette (P) PNG."""
  with Image.open(path) as mask:
    if mask.mode not in MASK_MODES:
      raise MaskFolderError(
          f'Mask {path} is a {mask.mode} image. Masks are class-index PNGs (mode L, the '
          'value is the class) or palette PNGs (mode P, the palette index is the class); '
          'convert colour masks to class indices first.')
    array = np.asarray(mask)
  if array.dtype == bool:
    return array.astype(np.uint8)
  if array.max(initial=0) > 255 or array.min(initial=0) < 0:
    raise MaskFolderError(f'Mask {path} has values up to {array.max()}: class indices and '
                          'the ignore label must be in 0..255.')
  return array.astype(np.uint8)


def _decode(path: str, channels: int) -> np.ndarray:
  try:
    with Image.open(path) as image:
      array = np.asarray(image.convert('L' if channels == 1 else 'RGB'))
  except Exception as e:  # pylint: disable=broad-except
    raise MaskFolderError(f'Cannot read image {path} ({type(e).__name__}: {e}). Replace or '
                          'remove it (and its mask).') from e
  return array[..., None] if channels == 1 else array


class MaskFolderSource:
  """Random access to {'image', 'mask'} of (image, mask) file pairs, checked on read."""

  def __init__(self, pairs: Pairs, *, class_names: list[str], ignore_label: int,
               channels: int):
    self.pairs, self.class_names = pairs, class_names
    self.num_classes, self.ignore_label, self.channels = len(class_names), ignore_label, channels

  def __len__(self) -> int:
    return len(self.pairs)

  def __getitem__(self, i: int) -> dict:
    image_path, mask_path = self.pairs[int(i)]
    image, mask = _decode(image_path, self.channels), read_mask(mask_path)
    if mask.shape != image.shape[:2]:
      raise MaskFolderError(
          f'Mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image '
          f'{image_path} is {image.shape[1]}x{image.shape[0]}: a mask labels every pixel of '
          'its image. Resize the mask with nearest-neighbour sampling (never bilinear) or '
          'fix the pair.')
    bad = (mask >= self.num_classes) & (mask != self.ignore_label)
    if bad.any():
      values = sorted(set(np.unique(mask[bad]).tolist()))
      raise MaskFolderError(
          f'Mask {mask_path} has class indices {values}, but the dataset has '
          f'{self.num_classes} classes (0..{self.num_classes - 1}) and ignore label '
          f'{self.ignore_label}. List every class in classes.txt (or raise '
          'config.task.num_classes), or set those pixels to the ignore label.')
    return {'image': image, 'mask': mask}


def open_split(root: str, split: str, *, num_classes: int = 0, ignore_label: int = 255,
               channels: int = 0, test_fraction: float = 0.2, seed: int = 0
               ) -> MaskFolderSource:
  """The source of one split of the folder at `root`. channels=0: 1 when the split's first
  image is grey, else 3."""
  pairs = select(index(root, test_fraction=test_fraction, seed=seed), split)
  if not pairs:
    raise MaskFolderError(f'Split {split!r} of segmentation folder {root} has no images.')
  class_names = read_class_names(root)
  if class_names is None:
    if num_classes < 1:
      raise MaskFolderError(
          f'Segmentation folder {root} has no classes.txt and config.task.num_classes is '
          f'not set: write {root}/classes.txt (one class name per line, in class-index '
          'order) or set config.task.num_classes.')
    class_names = [str(c) for c in range(num_classes)]
  elif num_classes and num_classes != len(class_names):
    raise MaskFolderError(
        f'{root}/classes.txt lists {len(class_names)} classes but config.task.num_classes='
        f'{num_classes}; make them agree (or leave num_classes unset).')
  if ignore_label < len(class_names):
    raise MaskFolderError(f'config.task.ignore_label={ignore_label} is one of the '
                          f'{len(class_names)} class indices of {root}; use 255.')
  if not channels:
    with Image.open(pairs[0][0]) as first:
      channels = 1 if first.mode in ('1', 'L', 'LA', 'I', 'I;16', 'F') else 3
  return MaskFolderSource(pairs, class_names=class_names, ignore_label=ignore_label,
                          channels=channels)
