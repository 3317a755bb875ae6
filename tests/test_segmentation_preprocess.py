"""Joint image / label-map transforms: every kept label stays on its image pixel.

The test image encodes its own coordinates: channel 0 is 15 * x, channel 1 is 15 * y, so a
bilinearly resampled pixel reads back the (fractional) source position it was sampled at.
The label map encodes the same position as one class index, y * W + x (< 255). After any
transform, the position a kept label names and the position its image pixel reads must be
the same source pixel: within half a pixel (nearest neighbour picks the pixel containing
the sampling point) plus uint8 rounding and PIL's edge handling.
"""
import numpy as np
import pytest

from vision_jax.data import segmentation_preprocess as sp

H, W = 13, 17


def coordinate_example() -> dict:
  y, x = np.mgrid[0:H, 0:W]
  image = np.stack([15 * x, 15 * y, np.full_like(x, 7)], axis=-1).astype(np.uint8)
  return {'image': image, 'mask': (y * W + x).astype(np.uint8)}


def misalignment(image: np.ndarray, label: np.ndarray) -> np.ndarray:
  """|source position read from the image - position named by the label| per kept pixel,
  in source pixels (the larger of the two axes)."""
  kept = label != 255
  ym, xm = np.divmod(label[kept].astype(int), W)
  xi, yi = image[kept][:, 0] / 15.0, image[kept][:, 1] / 15.0
  return np.maximum(np.abs(xi - xm), np.abs(yi - ym))


@pytest.mark.parametrize('size,base_size,pads', [(16, 0, True), (9, 24, False)])
def test_random_scale_crop_flip_keeps_labels_on_their_pixels(size, base_size, pads):
  """Shorter side 8..32 px for a 16 px crop (padded when smaller), or 12..48 for 9 px."""
  fn = sp.make_transform(size, train=True, base_size=base_size)
  errors, flips, padded = [], 0, 0
  for seed in range(60):
    out = fn(coordinate_example(), np.random.default_rng(seed))
    assert out['image'].shape == (size, size, 3) and out['label'].shape == (size, size)
    assert out['image'].dtype == out['label'].dtype == np.uint8
    errors.append(misalignment(out['image'], out['label']))
    kept = out['label'] != 255
    padded += int((~kept).any())
    assert np.all(out['image'][~kept] == 0)  # Padding: image fill 0 where labels ignore.
    xs = np.where(kept, out['label'] % W, -1)
    row = xs[np.argmax(kept.sum(1))]
    row = row[row >= 0]
    flips += int(row[0] > row[-1])  # x decreasing along a row: flipped.
  errors = np.concatenate(errors)
  assert errors.max() <= 0.75 and errors.mean() <= 0.4, (errors.max(), errors.mean())
  assert 15 <= flips <= 45  # Both flip states were drawn.
  assert (padded > 0) == pads


def test_flip_can_be_turned_off():
  fn = sp.make_transform(16, train=True, flip=False, scale_range=(1.0, 1.0), base_size=13)
  for seed in range(10):
    label = fn(coordinate_example(), np.random.default_rng(seed))['label']
    xs = label[label != 255] % W
    rows = np.where(label != 255, label % W, -1)
    for row in rows:
      row = row[row >= 0]
      assert np.all(np.diff(row) >= 0)  # x increases along every row: never mirrored.
    assert len(xs)


def test_training_draws_are_a_function_of_the_generator():
  fn = sp.make_transform(16, train=True)
  a = fn(coordinate_example(), np.random.default_rng(3))
  b = fn(coordinate_example(), np.random.default_rng(3))
  c = fn(coordinate_example(), np.random.default_rng(4))
  np.testing.assert_array_equal(a['label'], b['label'])
  np.testing.assert_array_equal(a['image'], b['image'])
  assert not np.array_equal(a['label'], c['label'])
  assert fn.random and not sp.make_transform(16, train=False).random


def test_eval_pads_a_small_image_and_counts_each_label_once():
  example = coordinate_example()
  out = sp.make_transform(20, train=False, fill=(1, 2, 3))(example, None)
  np.testing.assert_array_equal(out['image'][:H, :W], example['image'])
  np.testing.assert_array_equal(out['label'][:H, :W], example['mask'])
  assert np.all(out['label'][H:] == 255) and np.all(out['label'][:, W:] == 255)
  assert np.all(out['image'][H:] == (1, 2, 3))
  kept = np.sort(out['label'][out['label'] != 255])
  np.testing.assert_array_equal(kept, np.arange(H * W))  # Every source pixel exactly once.


def test_eval_shrinks_a_larger_image_keeping_aspect_and_alignment():
  out = sp.make_transform(8, train=False)(coordinate_example(), None)
  h, w = round(H * 8 / W), 8
  assert np.all(out['label'][:h, :w] != 255) and np.all(out['label'][h:] == 255)
  assert misalignment(out['image'], out['label']).max() <= 0.75


def test_grey_images_and_bad_inputs():
  example = coordinate_example()
  grey = {'image': example['image'][..., :1], 'mask': example['mask']}
  out = sp.make_transform(16, train=True)(grey, np.random.default_rng(0))
  assert out['image'].shape == (16, 16, 1)
  with pytest.raises(sp.SegmentationPreprocessError, match=r'\(13, 17, 3\).*\(13, 16\)'):
    sp.fit_and_pad(example['image'], example['mask'][:, :16], 20)
  with pytest.raises(sp.SegmentationPreprocessError, match='config.dataset.image_size=0'):
    sp.make_transform(0, train=True)
  with pytest.raises(sp.SegmentationPreprocessError, match='scale_range'):
    sp.make_transform(16, train=True, scale_range=(2.0, 0.5))
