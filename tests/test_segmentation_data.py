"""Segmentation data: the digits canvases, oxford_iiit_pet (mocked), mask folders, mask PNGs."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from segmentation_mocks import mock_pets, pet_example
from vision_jax import mask_images
from vision_jax.data import digits
from vision_jax.data import digits_segmentation as dseg
from vision_jax.data import mask_folder
from vision_jax.data import segmentation_preprocess as sp
from vision_jax.data import segmentation_sources as ss

# ------------------------------------------------------------------- digits canvases


def _fake_split_arrays():
  """Solid 8x8 squares: train digits grey 100, test digits grey 200; classes 0..9."""
  make = lambda value, n: (np.full((n, 8, 8, 1), value, np.uint8), np.arange(n) % 10)
  return {'train': make(100, 30), 'test': make(200, 20)}


def test_canvases_hold_2_to_4_separate_digits_labelled_class_plus_one(monkeypatch):
  monkeypatch.setattr(digits, '_split_arrays', _fake_split_arrays)
  canvases, masks = dseg.make_split('train', 40)
  assert canvases.shape == (40, 32, 32, 1) and masks.shape == (40, 32, 32)
  counts = []
  for canvas, mask in zip(canvases[..., 0], masks):
    np.testing.assert_array_equal(canvas > 0, mask > 0)  # Solid squares: all ink.
    assert set(np.unique(canvas)) <= {0, 100}  # Train canvases use train digits only.
    squares = 0
    for quadrant in (mask[:16, :16], mask[:16, 16:], mask[16:, :16], mask[16:, 16:]):
      ys, xs = np.nonzero(quadrant)
      if len(ys):
        squares += 1
        side = ys.max() - ys.min() + 1
        assert 12 <= side <= 16 and xs.max() - xs.min() + 1 == side
        assert len(np.unique(quadrant[quadrant > 0])) == 1 and quadrant.max() <= 10
    counts.append(squares)
  assert min(counts) >= 2 and max(counts) <= 4 and len(set(counts)) == 3
  test_canvases, _ = dseg.make_split('test', 10)
  assert set(np.unique(test_canvases)) <= {0, 200}


def test_canvases_are_a_function_of_the_seed_and_label_the_ink():
  a, ma = dseg.make_split('test', 5)
  b, mb = dseg.make_split('test', 5)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ma, mb)
  assert np.all(a[..., 0][ma > 0] >= dseg.INK)  # Labelled pixels are ink...
  assert np.all(a[..., 0][ma == 0] < dseg.INK)  # ...and ink is labelled.
  assert ma.max() <= 10 and len(np.unique(ma)) > 3


def test_builder_writes_both_splits_and_the_source_reads_them(tmp_path):
  source, info = ss.open_split('digits_segmentation', 'test', data_dir=str(tmp_path))
  assert len(source) == dseg.NUM_CANVASES['test']
  assert info.num_classes == 11 and info.class_names[:2] == ['background', '0']
  assert (info.channels, info.image_size, info.ignore_label) == (1, 32, 255)
  canvases, masks = dseg.make_split('test', 3)
  for i in range(3):
    example = source[i]
    np.testing.assert_array_equal(example['image'], canvases[i])
    np.testing.assert_array_equal(example['mask'], masks[i])
    assert example['mask'].dtype == np.uint8 and example['mask'].ndim == 2
  train, _ = ss.open_split('digits_segmentation', 'train', data_dir=str(tmp_path))
  assert len(train) == dseg.NUM_CANVASES['train']


# --------------------------------------------------------------- oxford_iiit_pet (mock)


@pytest.mark.parametrize('border,classes,border_value', [
    ('ignore', ['background', 'pet'], 255), ('class', ['background', 'pet', 'border'], 2)])
def test_pets_trimap_maps_to_background_pet_and_border(border, classes, border_value):
  with mock_pets(6):
    source, info = ss.open_split('oxford_iiit_pet', 'train', download=True,
                                 pets_border=border)
    examples = [source[i] for i in range(len(source))]
  assert len(examples) == 6 and info.class_names == classes and info.image_size == 0
  for i, example in enumerate(examples):
    trimap = pet_example(i)['segmentation_mask'][..., 0]
    expected = np.select([trimap == 1, trimap == 2, trimap == 3], [1, 0, border_value])
    np.testing.assert_array_equal(example['mask'], expected)
    assert example['image'].shape[:2] == example['mask'].shape


def test_pets_through_the_eval_transform_counts_every_labelled_pixel_once():
  with mock_pets(3):
    source, _ = ss.open_split('oxford_iiit_pet', 'test', download=True)
    fn = sp.make_transform(48, train=False)
    for i in range(3):
      out = fn(source[i], None)
      assert out['label'].shape == (48, 48)
      labelled = np.count_nonzero(source[i]['mask'] != 255)
      assert np.count_nonzero(out['label'] != 255) == labelled


def test_pets_bad_masks_name_the_example_and_file():
  def broken(kind):
    def as_data_source(self, split, decoders=None, **kwargs):
      example = pet_example(0)
      if kind == 'size':
        example['segmentation_mask'] = example['segmentation_mask'][:-1]
      else:
        example['segmentation_mask'] = np.zeros_like(example['segmentation_mask'])
      return [example]
    return as_data_source
  for kind, message in (('size', r'example 0 \(pet_0.jpg\).*mask is'),
                        ('values', r'pet_0.jpg.*values \[0\].*\[1, 2, 3\]')):
    with tfds.testing.mock_data(as_data_source_fn=broken(kind)):
      source, _ = ss.open_split('oxford_iiit_pet', 'train', download=True)
      with pytest.raises(ss.SegmentationDataError, match=message):
        source[0]  # pylint: disable=pointless-statement
  # tfds' own random mock draws the mask and the image independently: rejected too.
  with tfds.testing.mock_data(num_examples=2):
    source, _ = ss.open_split('oxford_iiit_pet', 'train', download=True)
    with pytest.raises(ss.SegmentationDataError):
      source[0]  # pylint: disable=pointless-statement


def test_unknown_dataset_and_unprepared_dataset_errors(tmp_path):
  with pytest.raises(ss.SegmentationDataError, match="name='cifar10'.*oxford_iiit_pet"):
    ss.open_split('cifar10', 'train')
  from vision_jax.data.sources import DatasetNotFoundError  # pylint: disable=g-import-not-at-top
  with pytest.raises(DatasetNotFoundError, match='tfds build oxford_iiit_pet'):
    ss.open_split('oxford_iiit_pet', 'train', data_dir=str(tmp_path))
  with pytest.raises(ss.SegmentationDataError, match='pets_border'):
    ss.pets_classes('keep', 255)


# ----------------------------------------------------------------------- mask folders


def _write_pair(root, stem, size=(12, 10), mask_mode='L', values=(0, 1, 2), image_size=None,
                split=''):
  rng = np.random.default_rng(abs(hash(stem)) % 2**32)
  base = os.path.join(root, split) if split else str(root)
  os.makedirs(os.path.join(base, 'images'), exist_ok=True)
  os.makedirs(os.path.join(base, 'masks'), exist_ok=True)
  w, h = image_size or size
  Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(
      os.path.join(base, 'images', f'{stem}.jpg'))
  mask = rng.choice(np.asarray(values, np.uint8), (size[1], size[0]))
  if mask_mode == 'P':
    mask_images.save_mask_png(mask, os.path.join(base, 'masks', f'{stem}.png'))
  elif mask_mode == 'RGB':
    Image.fromarray(np.stack([mask] * 3, -1)).save(os.path.join(base, 'masks', f'{stem}.png'))
  else:
    Image.fromarray(mask, mode='L').save(os.path.join(base, 'masks', f'{stem}.png'))
  return mask


def test_folder_class_index_and_palette_masks_with_class_names(tmp_path):
  root = tmp_path / 'seg'
  written = {f'a{i}': _write_pair(root, f'a{i}', mask_mode='LP'[i % 2], values=(0, 1, 2, 255))
             for i in range(10)}
  (root / 'classes.txt').write_text('sky\n\nroad\ncar\n')
  index = mask_folder.index(str(root), test_fraction=0.2, seed=0)
  assert len(index['train']) == 8 and len(index['test']) == 2
  source, info = ss.open_split(f'folder:{root}', 'train+test')
  assert info.class_names == ['sky', 'road', 'car'] and info.channels == 3
  assert len(source) == 10
  for i in range(len(source)):
    example = source[i]
    stem = os.path.splitext(os.path.basename(source.pairs[i][1]))[0]
    np.testing.assert_array_equal(example['mask'], written[stem])
    assert example['image'].shape == (10, 12, 3)
  head, _ = ss.open_split(f'folder:{root}', 'train[:50%]')
  assert len(head) == 4


def test_folder_split_subfolders(tmp_path):
  for i in range(3):
    _write_pair(tmp_path, f't{i}', split='train')
  _write_pair(tmp_path, 'v0', split='val')
  val, info = ss.open_split(f'folder:{tmp_path}', 'val', num_classes=3)
  assert len(val) == 1 and info.class_names == ['0', '1', '2']
  with pytest.raises(mask_folder.MaskFolderError, match="Splits here: train, val"):
    ss.open_split(f'folder:{tmp_path}', 'test', num_classes=3)


@pytest.mark.parametrize('case,message', [
    ('missing_mask', r'Image .*/images/b1.jpg has no mask: expected .*/masks/b1.png'),
    ('orphan_mask', r'Mask .*/masks/zz.png has no image'),
    ('size', r'Mask .*/masks/b0.png is 12x10 \(WxH\) but its image .*/images/b0.jpg is 14x10'),
    ('class', r'Mask .*/masks/b0.png has class indices \[3, 7\].*3 classes'),
    ('rgb', r'Mask .*/masks/b0.png is a RGB image'),
    ('no_classes', r'no classes.txt and config.task.num_classes'),
])
def test_folder_errors_name_the_file(tmp_path, case, message):
  root = tmp_path / case
  values = (0, 1, 3, 7, 255) if case == 'class' else (0, 1, 2, 255)
  _write_pair(root, 'b0', values=values, mask_mode='RGB' if case == 'rgb' else 'L',
              image_size=(14, 10) if case == 'size' else None)
  _write_pair(root, 'b1')
  if case == 'missing_mask':
    os.remove(root / 'masks' / 'b1.png')
  if case == 'orphan_mask':
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / 'masks' / 'zz.png')
  num_classes = 0 if case == 'no_classes' else 3
  with pytest.raises(mask_folder.MaskFolderError, match=message):
    source, _ = ss.open_split(f'folder:{root}', 'train+test', num_classes=num_classes)
    for i in range(len(source)):
      source[i]  # pylint: disable=pointless-statement


# -------------------------------------------------------------------------- mask PNGs


def test_mask_png_shows_voc_colours_and_reads_back_as_classes(tmp_path):
  colours = mask_images.palette()
  for index, rgb in ((0, (0, 0, 0)), (1, (128, 0, 0)), (2, (0, 128, 0)), (3, (128, 128, 0)),
                     (15, (192, 128, 128)), (255, (224, 224, 192))):
    assert tuple(colours[index]) == rgb
  assert len({tuple(c) for c in colours}) == 256  # Every class its own colour.
  mask = np.random.default_rng(0).integers(0, 21, (9, 13)).astype(np.uint8)
  mask[0, 0] = 255
  path = str(tmp_path / 'pred.png')
  mask_images.save_mask_png(mask, path)
  np.testing.assert_array_equal(mask_folder.read_mask(path), mask)
  with Image.open(path) as png:
    np.testing.assert_array_equal(np.asarray(png.convert('RGB')), mask_images.colorize(mask))
  with pytest.raises(ValueError, match='0..255'):
    mask_images.save_mask_png(np.full((2, 2), 300), path)


def test_class_histogram_and_overlay():
  mask = np.array([[0, 0, 2], [2, 2, 255]])
  assert mask_images.class_histogram(mask, ['bg', 'cat', 'dog']) == {
      'bg': 2, 'cat': 0, 'dog': 3, 'ignored': 1}
  assert mask_images.class_histogram(mask[:, :2], ['bg', 'cat', 'dog']) == {
      'bg': 2, 'cat': 0, 'dog': 2}
  image = np.full((2, 3, 1), 100, np.uint8)
  out = mask_images.overlay(image, mask, alpha=0.5)
  assert out.shape == (2, 3, 3)
  np.testing.assert_array_equal(out[0, 0], [50, 50, 50])  # Class 0 is black.
  np.testing.assert_array_equal(out[0, 2], [50, 114, 50])  # Class 2 is (0, 128, 0).
