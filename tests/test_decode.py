"""Decoding at the crop's scale, 16-bit images, and the CIFAR recipe on device."""
import io

import jax
import numpy as np
import pytest
from PIL import Image

from vision_jax.data import decode, device_augment, preprocess


@pytest.fixture(scope='module')
def big_jpeg():
  """One of scikit-learn's real photos upscaled to 1920x1280 (a phone-sized JPEG)."""
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photo = Image.fromarray(load_sample_images().images[0]).resize((1920, 1280),
                                                                  Image.BICUBIC)
  buffer = io.BytesIO()
  photo.save(buffer, 'JPEG', quality=92)
  return decode.Encoded(buffer.getvalue(), 'big.jpg')


def _shift_errors(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], float]:
  """Mean |a - b| over the interior, with b shifted by -1..1 pixels each way."""
  a, b = a.astype(np.float32), b.astype(np.float32)
  return {(dy, dx): float(np.abs(a[2:-2, 2:-2] - np.roll(b, (dy, dx), (0, 1))[2:-2, 2:-2])
                          .mean()) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


@pytest.mark.parametrize('recipe, seed', [('center_crop', 0), ('inception', 1),
                                          ('inception', 2), ('inception', 3)])
def test_reduced_decode_gives_the_full_decodes_crop(big_jpeg, recipe, seed):
  """Decoding 2-8x smaller (DCT scaling) takes the same crop as decoding in full.

  Same geometry: the mean |difference| without a shift is well below (< 0.75x) the best
  one-pixel shift's: a crop misplaced by a pixel or more would match better shifted. Same
  pixels up to the low-pass filter: a 1/8 DCT decode keeps each 8x8 block's mean, where
  the full decode is area-averaged by OpenCV; on this photo the two differ by 0.5-5.4 grey
  levels on average (measured over 9 crops; PIL's antialiased bilinear and OpenCV's area
  filter, both full decodes, differ by 0.2-2.5), so the bound is 6, while a 1-pixel
  shift costs 6-9 on the textured crops.
  """
  fn = preprocess.make_preprocess(recipe, 112, train=recipe == 'inception', channels=3)
  full, reduction = decode.decode(big_jpeg, max_reduction=1)
  assert reduction == 1 and full.shape == (1280, 1920, 3)
  example = lambda image: {'image': image, 'label': 0}
  rng = lambda: np.random.default_rng(seed) if recipe == 'inception' else None
  reduced = fn(example(big_jpeg), rng())['image']
  reference = fn(example(full), rng())['image']
  assert reduced.shape == reference.shape == (112, 112, 3)
  errors = _shift_errors(reduced, reference)
  shifted = min(v for shift, v in errors.items() if shift != (0, 0))
  assert errors[(0, 0)] < 0.75 * shifted and errors[(0, 0)] < 6, errors
  # And the crop did come from a reduced decode: centre crop 1120 px -> 112 is 8x.
  box = preprocess.center_box(1280, 1920)
  assert decode.reduction_for(box[3] - box[1], box[2] - box[0], 112) == 8


def test_reduction_keeps_at_least_the_output_size(big_jpeg):
  for crop_h, crop_w, size, expected in ((1120, 1680, 112, 8), (999, 1500, 224, 4),
                                         (448, 600, 224, 2), (447, 600, 224, 1),
                                         (600, 447, 224, 1), (100, 100, 224, 1)):
    assert decode.reduction_for(crop_h, crop_w, size) == expected, (crop_h, crop_w, size)
  image, reduction = decode.decode(big_jpeg, max_reduction=4)
  assert reduction == 4 and image.shape == (320, 480, 3)


def test_sixteen_bit_images_keep_their_high_byte():
  values = np.array([[0, 255, 256, 32768], [40000, 65280, 65535, 1000]], np.uint16)
  buffer = io.BytesIO()
  Image.fromarray(values).save(buffer, 'PNG')  # A 16-bit greyscale PNG ('I;16').
  image, _ = decode.decode(decode.Encoded(buffer.getvalue(), 'deep.png'))
  np.testing.assert_array_equal(image[..., 0], values >> 8)  # Not clipped to 0/255.
  with pytest.raises(decode.CorruptImageError, match='float.png.*no defined 8-bit'):
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.float32)).save(buffer, 'TIFF')
    decode.decode(decode.Encoded(buffer.getvalue(), 'float.png'))


def test_device_cifar_augmentation_equals_the_host_recipe_for_fixed_draws():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  tops, lefts = rng.integers(0, 9, 16), rng.integers(0, 9, 16)
  flips = rng.random(16) < 0.5
  on_device = jax.jit(device_augment.crop_flip)(images, tops, lefts, flips)
  for i in range(16):
    host = preprocess.crop_flip(images[i], int(tops[i]), int(lefts[i]), bool(flips[i]), 4)
    np.testing.assert_array_equal(np.asarray(on_device[i]), host)


def test_device_augmentation_is_a_function_of_seed_step_and_row():
  augment = jax.jit(device_augment.make_device_augment('cifar', seed=3, image_size=8))
  images = np.random.default_rng(1).integers(1, 256, (64, 8, 8, 1), dtype=np.uint8)
  a, again, other = augment(images, 5), augment(images, 5), augment(images, 6)
  np.testing.assert_array_equal(a, again)
  assert not np.array_equal(a, other)
  np.testing.assert_array_equal(augment(images[:16], 5), a[:16])  # Rows, not batch size.
  tops, lefts, flips = device_augment.draws(device_augment.step_key(3, 5), 4096)
  assert set(np.unique(tops)) == set(range(9)) == set(np.unique(lefts))  # 0..2 pad.
  assert 0.45 < float(np.mean(flips)) < 0.55
  assert device_augment.make_device_augment('', seed=3, image_size=8) is None
