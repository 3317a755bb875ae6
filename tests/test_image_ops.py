"""The op set of the augmentations against its PIL references (Image.transform with the same
affine matrix and fill, ImageEnhance, ImageOps) and closed-form lookup tables, on a real
photo in RGB and grey."""
import math

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from sklearn.datasets import load_sample_images

from vision_jax.data import image_ops
from vision_jax.data.image_ops import BICUBIC, BILINEAR, NEAREST, Step


@pytest.fixture(scope='module')
def photo() -> np.ndarray:
  """A 64 x 72 RGB crop of scikit-learn's 'flower' photo (not square: catches w/h swaps)."""
  return np.ascontiguousarray(load_sample_images().images[1][150:214, 200:272])


@pytest.fixture(scope='module', params=[3, 1], ids=['rgb', 'grey'])
def image(request, photo) -> np.ndarray:
  if request.param == 3:
    return photo
  return np.asarray(Image.fromarray(photo).convert('L'))[..., None]


def _run(image: np.ndarray, step: Step, fill=(10, 200, 30)) -> np.ndarray:
  fill = fill[:image.shape[-1]]
  return image_ops.to_numpy(image_ops.run(image_ops.to_pil(image), [step], fill))


def _pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _np(img: Image.Image) -> np.ndarray:
  out = np.asarray(img)
  return out[..., None] if out.ndim == 2 else out


def _rotation_matrix(degrees: float, width: int, height: int) -> tuple[float, ...]:
  """Output -> source for a counter-clockwise rotation about the centre (y points down)."""
  t = math.radians(degrees)
  m = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
  centre = np.array([width / 2, height / 2])
  offset = centre - m @ centre
  return (m[0, 0], m[0, 1], offset[0], m[1, 0], m[1, 1], offset[1])


@pytest.mark.parametrize('op,value,resample', [
    ('rotate', 27.0, BILINEAR), ('rotate', -13.5, BICUBIC), ('rotate', 100.0, NEAREST),
    ('shear_x', 0.3, BILINEAR), ('shear_x', -0.27, BICUBIC), ('shear_y', 0.21, BILINEAR),
    ('translate_x', 32.4, BILINEAR), ('translate_x', -7.0, NEAREST),
    ('translate_y', -28.8, BICUBIC)])
def test_geometric_ops_equal_pil_affine_with_the_same_matrix_and_fill(image, op, value,
                                                                      resample):
  h, w = image.shape[:2]
  matrix = {'rotate': _rotation_matrix(value, w, h), 'shear_x': (1, value, 0, 0, 1, 0),
            'shear_y': (1, 0, 0, value, 1, 0), 'translate_x': (1, 0, value, 0, 1, 0),
            'translate_y': (1, 0, 0, 0, 1, value)}[op]
  fill = (10, 200, 30)[:image.shape[-1]]
  want = _np(_pil(image).transform((w, h), Image.Transform.AFFINE, matrix, resample=resample,
                                   fillcolor=fill if len(fill) == 3 else fill[0]))
  got = _run(image, Step(op, (value,), resample))
  np.testing.assert_array_equal(got, want)
  assert got.shape == image.shape and got.dtype == np.uint8
  assert not np.array_equal(got, image)
  corner = {'rotate': (0, 0), 'shear_x': (h - 1, w - 1) if value > 0 else (h - 1, 0),
            'shear_y': (h - 1, w - 1) if value > 0 else (0, w - 1),
            'translate_x': (0, w - 1) if value > 0 else (0, 0),
            'translate_y': (0, 0) if value < 0 else (h - 1, 0)}[op]
  np.testing.assert_array_equal(got[corner], fill)  # Outside the source: the fill.


@pytest.mark.parametrize('op,args,reference', [
    ('color', (0.1,), lambda im: ImageEnhance.Color(im).enhance(0.1)),
    ('color', (1.9,), lambda im: ImageEnhance.Color(im).enhance(1.9)),
    ('contrast', (0.55,), lambda im: ImageEnhance.Contrast(im).enhance(0.55)),
    ('contrast', (1.72,), lambda im: ImageEnhance.Contrast(im).enhance(1.72)),
    ('brightness', (0.19,), lambda im: ImageEnhance.Brightness(im).enhance(0.19)),
    ('brightness', (1.45,), lambda im: ImageEnhance.Brightness(im).enhance(1.45)),
    ('sharpness', (0.1,), lambda im: ImageEnhance.Sharpness(im).enhance(0.1)),
    ('sharpness', (1.9,), lambda im: ImageEnhance.Sharpness(im).enhance(1.9)),
    ('equalize', (), ImageOps.equalize), ('autocontrast', (), ImageOps.autocontrast),
    ('invert', (), ImageOps.invert),
    ('posterize', (3,), lambda im: ImageOps.posterize(im, 3)),
    ('solarize', (128,), lambda im: ImageOps.solarize(im, 128)),
    ('solarize', (246.5,), lambda im: ImageOps.solarize(im, 246.5)),
    ('identity', (), lambda im: im)])
def test_colour_ops_equal_imageenhance_and_imageops(image, op, args, reference):
  np.testing.assert_array_equal(_run(image, Step(op, args)), _np(reference(_pil(image))))


def test_lookup_table_ops_equal_their_formulas(image):
  x = image.astype(np.int32)
  for bits in range(9):
    mask = 0xFF ^ ((1 << (8 - bits)) - 1)
    np.testing.assert_array_equal(_run(image, Step('posterize', (bits,))), x & mask)
  assert not _run(image, Step('posterize', (0,))).any()  # 0 bits: black (Pillow refuses 0).
  for threshold in (0, 26, 128, 230, 256):
    np.testing.assert_array_equal(_run(image, Step('solarize', (threshold,))),
                                  np.where(x >= threshold, 255 - x, x))
  for addition in (0, 55, 110):
    np.testing.assert_array_equal(_run(image, Step('solarize_add', (addition,))),
                                  np.where(x < 128, np.minimum(255, x + addition), x))
  np.testing.assert_array_equal(_run(image, Step('invert')), 255 - x)


def test_hue_shift_follows_torchvision(photo):
  """torchvision's adjust_hue on PIL: 8-bit HSV, hue channel + np.uint8(h * 255), wrapping."""
  hsv = np.asarray(Image.fromarray(photo).convert('HSV')).astype(np.int32)
  for hue in (0.1, 0.5, -0.25):
    shifted = hsv.copy()
    shifted[..., 0] = (shifted[..., 0] + int(hue * 255)) % 256
    want = np.asarray(Image.fromarray(shifted.astype(np.uint8), 'HSV').convert('RGB'))
    np.testing.assert_array_equal(_run(photo, Step('adjust_hue', (hue,))), want)
  grey = photo[..., :1]
  np.testing.assert_array_equal(_run(grey, Step('adjust_hue', (0.3,))), grey)
