"""Two-view augmentation (SimCLR / BYOL): shapes, determinism, each step's effect, its
probabilities over many seeds, the blur against a loop reference, and config errors."""
import math

import numpy as np
import pytest

from vision_jax.data import preprocess
from vision_jax.data import two_views
from vision_jax.data.color_jitter import ColorJitter
from vision_jax.data.two_views import TwoViewsError, View, ViewPlan


def _photo(h=40, w=30, channels=3, seed=0) -> np.ndarray:
  """A smooth colour image with some structure (not constant, so crops and jitter show)."""
  y, x = np.mgrid[:h, :w]
  rng = np.random.default_rng(seed)
  chans = [np.sin(x / (3 + c) + rng.uniform(0, 6)) * np.cos(y / (4 + c)) for c in range(3)]
  image = (np.stack(chans, -1) * 100 + 128).clip(0, 255).astype(np.uint8)
  return image[..., :1] if channels == 1 else image


def test_two_uint8_views_of_the_requested_size_for_rgb_and_grey():
  for recipe in two_views.RECIPES:
    views = two_views.make_two_views(recipe, 24)
    v1, v2 = views(_photo(), np.random.default_rng(0))
    assert v1.shape == v2.shape == (24, 24, 3) and v1.dtype == v2.dtype == np.uint8
    assert not np.array_equal(v1, v2)  # Two different draws.
    g1, g2 = two_views.make_two_views(recipe, 16)(_photo(8, 8, 1), np.random.default_rng(1))
    assert g1.shape == g2.shape == (16, 16, 1) and g1.dtype == np.uint8
  with pytest.raises(ValueError, match='HWC uint8'):
    views(_photo().astype(np.float32), np.random.default_rng(0))


def test_the_pair_is_a_function_of_the_seed():
  views = two_views.make_two_views('byol', 64)  # Blur and solarisation in play.
  image = _photo(70, 90)
  a = views(image, np.random.default_rng((3, 17)))
  b = views(image, np.random.default_rng((3, 17)))
  c = views(image, np.random.default_rng((3, 18)))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])


def test_view_is_the_crop_then_the_planned_steps_from_one_generator():
  views = two_views.make_two_views('simclr', 64)
  image = _photo(80, 70)
  v1, v2 = views(image, np.random.default_rng(5))
  rng = np.random.default_rng(5)
  for view, got in ((views.view1, v1), (views.view2, v2)):
    box = preprocess.inception_box(image.shape[0], image.shape[1], rng, 0.08)
    crop = preprocess.crop_resize(image, box, 64)
    np.testing.assert_array_equal(got, view.apply(crop, view.plan(rng)))


@pytest.mark.parametrize('recipe,blur,solarize', [
    ('simclr', (0.5, 0.5), (0.0, 0.0)), ('byol', (1.0, 0.1), (0.0, 0.2))])
def test_probabilities_over_many_seeds(recipe, blur, solarize):
  views = two_views.make_two_views(recipe, 224)
  n = 4000
  for i, view in enumerate((views.view1, views.view2)):
    plans = [view.plan(np.random.default_rng((i, s))) for s in range(n)]
    rates = {'flip': (np.mean([p.flip for p in plans]), 0.5),
             'jitter': (np.mean([p.jitter is not None for p in plans]), 0.8),
             'grayscale': (np.mean([p.grayscale for p in plans]), 0.2),
             'blur': (np.mean([p.blur_sigma is not None for p in plans]), blur[i]),
             'solarize': (np.mean([p.solarize for p in plans]), solarize[i])}
    for name, (rate, p) in rates.items():
      tolerance = 4 * math.sqrt(p * (1 - p) / n) + 1e-9  # 4 binomial standard deviations.
      assert abs(rate - p) <= tolerance, (recipe, i, name, rate, p)
    sigmas = [p.blur_sigma for p in plans if p.blur_sigma is not None]
    if sigmas:
      assert 0.1 <= min(sigmas) and max(sigmas) <= 2.0 and abs(np.mean(sigmas) - 1.05) < 0.06


def test_jitter_strengths_per_recipe_and_strength():
  simclr = two_views.make_two_views('simclr', 32, color_jitter_strength=0.5).view1.jitter
  assert simclr == ColorJitter(0.4, 0.4, 0.4, 0.1)  # SimCLR's CIFAR setting.
  assert two_views.make_two_views('simclr', 224).view2.jitter == ColorJitter(0.8, 0.8, 0.8,
                                                                             0.2)
  assert two_views.make_two_views('byol', 224).view1.jitter == ColorJitter(0.4, 0.4, 0.2, 0.1)
  off = two_views.make_two_views('simclr', 32, color_jitter_strength=0.0).view1
  assert all(off.plan(np.random.default_rng(s)).jitter is None for s in range(50))


def test_blur_is_on_at_imagenet_size_and_off_for_small_images():
  assert two_views.make_two_views('simclr', 224).view1.blur_prob == 0.5
  for size in (8, 16, 32):
    views = two_views.make_two_views('byol', size)
    assert views.view1.blur_prob == views.view2.blur_prob == 0.0
    assert views.view2.solarize_prob == 0.2  # Solarisation does not depend on the size.
  assert two_views.make_two_views('byol', 32, blur=True).view1.blur_prob == 1.0
  assert two_views.make_two_views('simclr', 224, blur=False).view2.blur_prob == 0.0
  assert two_views.blur_radius(224) == 11  # A 23-tap kernel, SimCLR's at 224 px.
  assert two_views.blur_radius(96) == 4 and two_views.blur_radius(19) == 0


def _blur_reference(image: np.ndarray, sigma: float, radius: int) -> np.ndarray:
  """Separable truncated Gaussian with reflected edges, written out with loops."""
  taps = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-radius, radius + 1)]
  taps = [t / sum(taps) for t in taps]
  h, w, channels = image.shape
  reflect = lambda i, n: -i if i < 0 else (2 * (n - 1) - i if i >= n else i)
  src = image.astype(np.float64)
  rows = np.zeros_like(src)
  for y in range(h):
    for x in range(w):
      for c in range(channels):
        rows[y, x, c] = sum(t * src[reflect(y + d, h), x, c]
                            for t, d in zip(taps, range(-radius, radius + 1)))
  out = np.zeros_like(src)
  for y in range(h):
    for x in range(w):
      for c in range(channels):
        out[y, x, c] = sum(t * rows[y, reflect(x + d, w), c]
                           for t, d in zip(taps, range(-radius, radius + 1)))
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_blur_equals_a_truncated_gaussian_with_reflected_edges():
  image = np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8)
  for sigma, radius in ((0.7, 2), (1.9, 3)):
    got = two_views.gaussian_blur(image, sigma, radius)
    # Rounding of a value within float32 error of .5 may differ by one grey level.
    assert np.abs(got.astype(int) - _blur_reference(image, sigma, radius)).max() <= 1
    assert (got != _blur_reference(image, sigma, radius)).mean() < 0.01
  np.testing.assert_array_equal(two_views.gaussian_blur(image, 1.0, 0), image)


def test_each_step_does_what_its_plan_says():
  crop = _photo(20, 20)
  view = View(ColorJitter(0.4, 0.4, 0.4, 0.1))
  nothing = ViewPlan(flip=False, jitter=None, grayscale=False, blur_sigma=None, solarize=False)
  np.testing.assert_array_equal(view.apply(crop, nothing), crop)
  flipped = view.apply(crop, ViewPlan(True, None, False, None, False))
  np.testing.assert_array_equal(flipped, crop[:, ::-1])
  grey = view.apply(crop, ViewPlan(False, None, True, None, False))
  assert grey.shape == crop.shape and (grey == grey[..., :1]).all()
  luma = (crop.astype(float) @ [0.299, 0.587, 0.114])
  assert np.abs(grey[..., 0] - luma).max() <= 1
  solar = view.apply(crop, ViewPlan(False, None, False, None, True))
  np.testing.assert_array_equal(solar, np.where(crop >= 128, 255 - crop, crop))
  jitter = view.jitter.plan(np.random.default_rng(0), (20, 20))
  jittered = view.apply(crop, ViewPlan(False, jitter, False, None, False))
  assert not np.array_equal(jittered, crop)


def test_grey_images_go_through_every_step():
  always = View(ColorJitter(0.8, 0.8, 0.8, 0.2), jitter_prob=1.0, grayscale_prob=1.0,
                blur_prob=1.0, solarize_prob=1.0, flip_prob=1.0)
  views = two_views.TwoViews(32, always, always, crop_min_scale=0.5)
  v1, v2 = views(_photo(40, 40, 1), np.random.default_rng(0))
  assert v1.shape == v2.shape == (32, 32, 1) and v1.dtype == np.uint8
  assert not np.array_equal(v1, v2)


def test_full_crop_without_random_steps_is_the_resized_image():
  plain = View(ColorJitter(), jitter_prob=0.0, grayscale_prob=0.0, flip_prob=0.0)
  views = two_views.TwoViews(16, plain, plain, crop_min_scale=1.0)
  image = _photo(32, 32)
  for v in views(image, np.random.default_rng(0)):
    np.testing.assert_array_equal(v, preprocess.resample(image, (0, 0, 32, 32), 16))


def test_example_function():
  views = two_views.make_two_views('simclr', 16, crop_min_scale=0.3)
  assert views.crop_min_scale == 0.3 and views.view1.blur_prob == 0.0
  fn = two_views.make_two_view_preprocess(views, channels=3)
  out = fn({'image': _photo(8, 8, 1), 'label': 7}, np.random.default_rng(0))
  assert sorted(out) == ['label', 'view1', 'view2'] and out['label'] == 7
  assert out['view1'].shape == out['view2'].shape == (16, 16, 3)
  assert fn.random and not fn.identity_for((16, 16, 3))


@pytest.mark.parametrize('kwargs,key', [
    ({'recipe': 'moco'}, 'views'),
    ({'crop_min_scale': 0.0}, 'crop_min_scale'),
    ({'color_jitter_strength': 3.0}, 'color_jitter_strength'),
    ({'color_jitter_strength': -1.0}, 'color_jitter_strength'),
    ({'blur': 'yes'}, 'blur')])
def test_bad_values_name_their_config_key(kwargs, key):
  args = {'recipe': 'simclr', 'image_size': 32} | kwargs
  with pytest.raises(TwoViewsError, match=f'config.task.{key}='):
    two_views.make_two_views(args.pop('recipe'), args.pop('image_size'), **args)
