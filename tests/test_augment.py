"""The augmentation policies: the magnitude tables against timm's and torchvision's, the
random draws statistically, colour jitter, random erasing, determinism, grey images and the
config errors (the op set itself: test_image_ops.py).

timm cannot be imported here (it needs torchvision, which is not installed), so the expected
magnitude-to-argument values below were derived by hand from timm's
timm/data/auto_augment.py (`_rotate_level_to_arg` ... `_solarize_add_level_to_arg`) and
torchvision's TrivialAugmentWide._augmentation_space, not computed by the code under test.
"""
import math
import pickle

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image, ImageEnhance
from scipy import stats
from sklearn.datasets import load_sample_images

from vision_jax.config import base_config
from vision_jax.data import augment, autoaugment, color_jitter, erasing, image_ops
from vision_jax.data import trivialaugment
from vision_jax.data.image_ops import BICUBIC, BILINEAR, NEAREST, Step
from vision_jax.errors import UserError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CHI2_P = 1e-3  # Fixed seeds: a failure here is a real change in the distribution.


@pytest.fixture(scope='module')
def photo() -> np.ndarray:
  """A 64 x 72 RGB crop of scikit-learn's 'flower' photo (not square: catches w/h swaps)."""
  return np.ascontiguousarray(load_sample_images().images[1][150:214, 200:272])


@pytest.fixture(scope='module', params=[3, 1], ids=['rgb', 'grey'])
def image(request, photo) -> np.ndarray:
  if request.param == 3:
    return photo
  return np.asarray(Image.fromarray(photo).convert('L'))[..., None]



# --------------------------------------------------------------- magnitudes -> arguments

# (timm op, magnitude, negated) -> (op, argument) on a 72 x 64 (width x height) image.
TIMM_TABLE = [
    ('Rotate', 10, False, 'rotate', 30.0), ('Rotate', 10, True, 'rotate', -30.0),
    ('Rotate', 9, False, 'rotate', 27.0), ('Rotate', 0, True, 'rotate', 0.0),
    ('ShearX', 10, False, 'shear_x', 0.3), ('ShearY', 9, True, 'shear_y', -0.27),
    ('TranslateXRel', 10, False, 'translate_x', 0.45 * 72),
    ('TranslateYRel', 10, True, 'translate_y', -0.45 * 64),
    ('TranslateXRel', 5, False, 'translate_x', 0.225 * 72),
    ('Posterize', 10, False, 'posterize', 4), ('Posterize', 9, False, 'posterize', 3),
    ('Posterize', 5, False, 'posterize', 2), ('Posterize', 0, False, 'posterize', 0),
    ('PosterizeIncreasing', 10, False, 'posterize', 0),
    ('PosterizeIncreasing', 9, False, 'posterize', 1),
    ('PosterizeIncreasing', 0, False, 'posterize', 4),
    ('PosterizeOriginal', 10, False, 'posterize', 8),
    ('PosterizeOriginal', 9, False, 'posterize', 7),
    ('PosterizeOriginal', 0, False, 'posterize', 4),
    ('Solarize', 10, False, 'solarize', 256), ('Solarize', 9, False, 'solarize', 230),
    ('Solarize', 5, False, 'solarize', 128), ('Solarize', 0, False, 'solarize', 0),
    ('SolarizeIncreasing', 10, False, 'solarize', 0),
    ('SolarizeIncreasing', 9, False, 'solarize', 26),
    ('SolarizeIncreasing', 0, False, 'solarize', 256),
    ('SolarizeAdd', 10, False, 'solarize_add', 110), ('SolarizeAdd', 9, False, 'solarize_add', 99),
    ('SolarizeAdd', 3, False, 'solarize_add', 33),
    ('Color', 10, False, 'color', 1.9), ('Contrast', 9, False, 'contrast', 1.72),
    ('Brightness', 5, False, 'brightness', 1.0), ('Sharpness', 0, False, 'sharpness', 0.1),
    ('ColorIncreasing', 10, False, 'color', 1.9), ('ColorIncreasing', 10, True, 'color', 0.1),
    ('ContrastIncreasing', 9, True, 'contrast', 0.19),
    ('BrightnessIncreasing', 5, False, 'brightness', 1.45),
    ('SharpnessIncreasing', 0, True, 'sharpness', 1.0),
    ('AutoContrast', 7, False, 'autocontrast', None), ('Equalize', 3, False, 'equalize', None),
    ('Invert', 9, False, 'invert', None),
    ('Desaturate', 10, False, 'color', 0.0), ('Desaturate', 0, False, 'color', 0.5),
    ('GaussianBlur', 10, False, 'gaussian_blur', 2.0),
    ('GaussianBlur', 0, False, 'gaussian_blur', 0.1),
]


@pytest.mark.parametrize('name,level,negate,op,arg', TIMM_TABLE)
def test_timm_magnitude_to_argument(name, level, negate, op, arg):
  got_op, args = autoaugment.op_arguments(name, level, negate, (72, 64))
  assert got_op == op
  if arg is None:
    assert args == ()
  else:
    assert args == pytest.approx((arg,), rel=1e-12, abs=1e-12)
    assert type(args[0]) is type(arg) or isinstance(arg, float)  # Bits/thresholds are ints.


def test_trivialaugment_wide_bins_are_torchvisions():
  bins = trivialaugment.magnitude_bins
  assert bins('ShearX')[[0, 1, 30]] == pytest.approx([0, 0.033, 0.99])
  assert bins('TranslateY')[[0, 15, 30]] == pytest.approx([0, 16, 32])
  assert bins('Rotate')[[1, 30]] == pytest.approx([4.5, 135])
  assert bins('Contrast')[30] == pytest.approx(0.99)
  assert bins('Solarize')[[0, 1, 30]] == pytest.approx([255, 246.5, 0])
  assert list(bins('Posterize')) == [8] * 3 + [7] * 5 + [6] * 5 + [5] * 5 + [4] * 5 \
      + [3] * 5 + [2] * 3
  assert bins('Identity') is None and bins('Equalize') is None
  step = trivialaugment.op_step
  assert step('TranslateX', 16.9, NEAREST) == Step('translate_x', (-16,), NEAREST)  # Right 16.
  assert step('Brightness', -0.99) == Step('brightness', (1 - 0.99,))
  assert step('Posterize', 7.0) == Step('posterize', (7,))
  assert len(trivialaugment.OPS) == 14


# ------------------------------------------------------------------------ random draws

def test_magnitude_noise_is_a_clipped_normal():
  rng = np.random.default_rng(0)
  draws = np.array([autoaugment.sample_magnitude(9, 0.5, 10, rng) for _ in range(20000)])
  clipped = np.mean(draws == 10)
  p = stats.norm.sf(2.0)  # P(N(9, 0.5) > 10).
  assert abs(clipped - p) < 4 * math.sqrt(p * (1 - p) / len(draws))
  inside = draws[draws < 10]
  truncated = stats.truncnorm(-np.inf, 2.0, loc=9, scale=0.5)
  assert abs(inside.mean() - truncated.mean()) < 4 * truncated.std() / math.sqrt(len(inside))
  assert inside.std() == pytest.approx(truncated.std(), rel=0.03)
  uniform = np.array([autoaugment.sample_magnitude(9, math.inf, 10, rng) for _ in range(20000)])
  assert abs(uniform.mean() - 4.5) < 4 * 9 / math.sqrt(12 * len(uniform))
  assert uniform.min() >= 0 and uniform.max() <= 9
  assert autoaugment.sample_magnitude(15, 0, 10, rng) == 10  # No mmax: clipped to 10.
  assert autoaugment.sample_magnitude(15, 0, 20, rng) == 15


def test_randaugment_noise_reaches_the_argument_with_a_random_sign():
  ra = autoaugment.RandAugment(ops=('Rotate',), num_ops=1, prob=1.0, magnitude=9,
                               magnitude_std=0.5)
  degrees = np.array([ra.plan(np.random.default_rng((1, i)), (72, 64))[0].args[0]
                      for i in range(4000)])
  positive = np.mean(degrees > 0)
  assert abs(positive - 0.5) < 4 * math.sqrt(0.25 / len(degrees))
  levels = np.abs(degrees) / 3
  want = stats.norm(9, 0.5).expect(lambda m: min(m, 10))  # E[min(N(9, .5), 10)].
  assert abs(levels.mean() - want) < 4 * 0.5 / math.sqrt(len(levels))


def test_randaugment_draws_n_ops_uniformly_with_replacement_each_with_probability_p():
  ra = autoaugment.parse_randaugment('rand-m9-n2')
  counts, applied, repeats = {}, [], 0
  for i in range(6000):
    steps = ra.plan(np.random.default_rng((2, i)), (72, 64))
    applied.append(len(steps))
    repeats += len(steps) == 2 and steps[0].op == steps[1].op
    for step in steps:
      counts[step.op] = counts.get(step.op, 0) + 1
  both = applied.count(2)
  assert abs(repeats / both - 1 / 15) < 4 * math.sqrt(1 / 15 * 14 / 15 / both)  # Replacement.
  assert len(counts) == 15  # The 15 ops of timm's set map to 15 distinct image ops.
  assert stats.chisquare(list(counts.values())).pvalue > CHI2_P
  per_image = np.bincount(applied, minlength=3)
  assert stats.chisquare(per_image, len(applied) * np.array([0.25, 0.5, 0.25])).pvalue > CHI2_P
  ra3 = autoaugment.parse_randaugment('rand-m9-n3-p1')
  assert all(len(ra3.plan(np.random.default_rng(i), (72, 64))) == 3 for i in range(50))


def test_weighted_randaugment_draws_without_replacement_by_weight():
  ra = autoaugment.parse_randaugment('rand-m9-n2-p1-tweights')
  weights = np.array(ra.weights) / sum(ra.weights)
  first = {op: 0 for op in ra.ops}
  names = {autoaugment.op_arguments(op, 9)[0]: op for op in ra.ops}
  for i in range(6000):
    a, b = ra.plan(np.random.default_rng((3, i)), (72, 64))
    assert a.op != b.op
    first[names[a.op]] += 1
  observed = np.array([first[op] for op in ra.ops])
  assert stats.chisquare(observed, 6000 * weights).pvalue > CHI2_P


def test_autoaugment_draws_one_sub_policy_and_each_op_with_its_probability():
  policy = ((('Rotate', 1.0, 10),), (('Invert', 1.0, 0),), (('Equalize', 0.3, 0),))
  aa = autoaugment.AutoAugment(policy=policy)
  outcomes = {'rotate': 0, 'invert': 0, 'equalize': 0, 'none': 0}
  for i in range(6000):
    steps = aa.plan(np.random.default_rng((4, i)), (72, 64))
    outcomes[steps[0].op if steps else 'none'] += 1
    if steps and steps[0].op == 'rotate':
      assert abs(steps[0].args[0]) == 30.0
  want = 6000 * np.array([1 / 3, 1 / 3, 0.1, 1 / 3 * 0.7])
  assert stats.chisquare(list(outcomes.values()), want).pvalue > CHI2_P


def test_autoaugment_policies_are_the_imagenet_ones():
  original = autoaugment.AUTOAUGMENT_POLICIES['original']
  assert len(original) == 25 and len(autoaugment.AUTOAUGMENT_POLICIES['v0']) == 25
  assert original[0] == (('PosterizeOriginal', 0.4, 8), ('Rotate', 0.6, 9))  # The paper's.
  assert original[-1] == (('Equalize', 0.8, 8), ('Equalize', 0.6, 3))
  assert autoaugment.AUTOAUGMENT_POLICIES['v0'][0] == (('Equalize', 0.8, 1), ('ShearY', 0.8, 4))
  assert autoaugment.AUTOAUGMENT_POLICIES['originalr'][0][0] == ('PosterizeIncreasing', 0.4, 8)
  assert all(op in autoaugment.OP_NAMES for policy in autoaugment.AUTOAUGMENT_POLICIES.values()
             for sub in policy for op, _, _ in sub)


def test_trivialaugment_draws_ops_and_bins_uniformly():
  ta = trivialaugment.TrivialAugmentWide()
  ops, rotations = {}, []
  for i in range(7000):
    (step,) = ta.plan(np.random.default_rng((5, i)), (72, 64))
    ops[step.op] = ops.get(step.op, 0) + 1
    if step.op == 'rotate':
      rotations.append(step.args[0])
      assert step.resample == NEAREST
  assert len(ops) == 14 and stats.chisquare(list(ops.values())).pvalue > CHI2_P
  bins = np.round(np.abs(rotations) / 4.5).astype(int)
  assert stats.chisquare(np.bincount(bins, minlength=31)[1:]).pvalue > CHI2_P  # 0 has no sign.


def test_random_interpolation_is_bilinear_or_bicubic_evenly():
  ra = autoaugment.RandAugment(ops=('ShearX',), num_ops=1, prob=1.0)
  filters = [ra.plan(np.random.default_rng(i), (72, 64))[0].resample for i in range(2000)]
  assert set(filters) == {BILINEAR, BICUBIC}
  assert abs(filters.count(BICUBIC) / 2000 - 0.5) < 4 * math.sqrt(0.25 / 2000)


# ------------------------------------------------------------------------- colour jitter

def test_color_jitter_factors_and_order():
  jitter = color_jitter.ColorJitter(0.4, 0.3, 0.2, 0.1)
  first, factors = {}, {'brightness': [], 'contrast': [], 'color': [], 'adjust_hue': []}
  for i in range(4000):
    steps = jitter.plan(np.random.default_rng((6, i)), (72, 64))
    assert sorted(s.op for s in steps) == sorted(factors)  # Each once, in a random order.
    first[steps[0].op] = first.get(steps[0].op, 0) + 1
    for step in steps:
      factors[step.op].append(step.args[0])
  assert stats.chisquare(list(first.values())).pvalue > CHI2_P
  for op, (lo, hi) in {'brightness': (0.6, 1.4), 'contrast': (0.7, 1.3), 'color': (0.8, 1.2),
                       'adjust_hue': (-0.1, 0.1)}.items():
    f = np.array(factors[op])
    assert lo <= f.min() and f.max() <= hi
    assert abs(f.mean() - (lo + hi) / 2) < 4 * (hi - lo) / math.sqrt(12 * len(f))
  assert [s.op for s in color_jitter.ColorJitter(brightness=0.4).plan(
      np.random.default_rng(0), (1, 1))] == ['brightness']


def test_color_jitter_applies_torchvisions_pil_ops_in_the_drawn_order(photo):
  jitter = color_jitter.ColorJitter(0.4, 0.4, 0.4, 0.1)
  steps = jitter.plan(np.random.default_rng(7), (72, 64))
  want = Image.fromarray(photo)
  enhancers = {'brightness': ImageEnhance.Brightness, 'contrast': ImageEnhance.Contrast,
               'color': ImageEnhance.Color}
  for step in steps:
    want = (enhancers[step.op](want).enhance(step.args[0]) if step.op in enhancers
            else image_ops.adjust_hue(want, step.args[0]))
  got = jitter(photo, np.random.default_rng(7))
  np.testing.assert_array_equal(got, np.asarray(want))


# ----------------------------------------------------------------------- random erasing

def test_random_erasing_probability_and_count():
  eraser = erasing.RandomErasing(probability=0.3, max_count=3)
  draws = [eraser.boxes(100, 100, np.random.default_rng((8, i))) for i in range(6000)]
  counts = [len(boxes) for boxes in draws]
  erased = np.count_nonzero(counts)
  assert abs(erased / 6000 - 0.3) < 4 * math.sqrt(0.21 / 6000)
  assert stats.chisquare(np.bincount(counts)[1:]).pvalue > CHI2_P  # k ~ U{1, 2, 3}.
  # Each of k boxes draws 1/k of the area: the total erased area does not grow with k.
  mid = (0.02 + 1 / 3) / 2
  for k in (1, 3):
    areas = [sum(h * w for _, _, h, w in boxes) / 100 ** 2 for boxes in draws
             if len(boxes) == k]
    assert np.mean(areas) == pytest.approx(mid, rel=0.06)


def test_random_erasing_area_and_log_uniform_aspect():
  # Aspect 0.5..2: no box can exceed the image, so area and aspect are the drawn ones.
  eraser = erasing.RandomErasing(probability=1.0, min_aspect=0.5, max_aspect=2.0)
  boxes = [eraser.boxes(300, 300, np.random.default_rng((9, i)))[0] for i in range(5000)]
  h, w = np.array([b[2] for b in boxes]), np.array([b[3] for b in boxes])
  area, log_aspect = h * w / 300 ** 2, np.log(h / w)
  lo, hi = 0.02, 1 / 3
  assert abs(area.mean() - (lo + hi) / 2) < 4 * (hi - lo) / math.sqrt(12 * len(area)) + 1e-3
  assert area.std() == pytest.approx((hi - lo) / math.sqrt(12), rel=0.03)
  assert abs(log_aspect.mean()) < 4 * math.log(4) / math.sqrt(12 * len(h)) + 1e-3
  assert log_aspect.std() == pytest.approx(math.log(4) / math.sqrt(12), rel=0.03)
  default = erasing.RandomErasing(probability=1.0, max_count=2)
  for i in range(2000):
    for top, left, bh, bw in default.boxes(64, 72, np.random.default_rng((10, i))):
      assert 0 <= top and top + bh <= 64 and 0 <= left and left + bw <= 72
      assert bh < 64 and bw < 72


@pytest.mark.parametrize('mode', ['const', 'rand', 'pixel'])
def test_random_erasing_values_are_normalised_draws_in_pixels(photo, mode):
  mean, std = (0.5, 0.4, 0.6), (0.15, 0.1, 0.12)
  eraser = erasing.RandomErasing(probability=1.0, mode=mode, mean=mean, std=std)
  values = []
  for i in range(40):
    rng_boxes, rng = np.random.default_rng(i), np.random.default_rng(i)
    (top, left, h, w), = eraser.boxes(64, 72, rng_boxes)
    out = eraser(photo, rng)
    inside = np.zeros((64, 72), bool)
    inside[top:top + h, left:left + w] = True
    np.testing.assert_array_equal(out[~inside], photo[~inside])
    box = out[inside]
    if mode == 'const':
      np.testing.assert_array_equal(box, np.full_like(box, 0) + [128, 102, 153])
    elif mode == 'rand':
      assert (box == box[0]).all()
    values.append((box / 255 - mean) / std)
  z = np.concatenate(values)
  if mode == 'pixel':  # Normalised, the erased pixels are N(0, 1) (rounded to 1/255).
    assert np.abs(z.mean(0)).max() < 0.02 and np.abs(z.std(0) - 1).max() < 0.02


def test_random_erasing_clips_like_the_docstring_says(photo):
  eraser = erasing.RandomErasing(probability=1.0, mode='pixel', min_area=0.3, max_area=0.3,
                                 mean=IMAGENET[0], std=IMAGENET[1])
  blue = np.stack([eraser(photo, np.random.default_rng(i))[..., 2] for i in range(200)])
  changed = blue[blue != photo[None, ..., 2]]  # The erased pixels (bar a few equal by luck).
  want = stats.norm.cdf((0.5 / 255 - 0.406) / 0.225)  # v below this becomes pixel 0.
  assert changed.size > 100_000 and abs(np.mean(changed == 0) - want) < 0.005


# ----------------------------------------------------------------- composition and config

POLICIES = [dict(randaugment='rand-m9-mstd0.5-inc1'), dict(autoaugment='original'),
            dict(autoaugment='v0-mstd0.5'), dict(trivialaugment=True),
            dict(randaugment='rand-m9-n3-mstd101-t3aw', color_jitter=(0.4, 0.4, 0.4, 0.1),
                 random_erasing=0.5, random_erasing_count=3)]


@pytest.mark.parametrize('kw', POLICIES, ids=lambda kw: '+'.join(kw))
def test_same_image_and_seed_give_the_same_output(image, kw):
  mean, std = (IMAGENET[0], IMAGENET[1]) if image.shape[-1] == 3 else ((0.45,), (0.25,))
  before = image.copy()
  outs = []
  for _ in range(2):
    fn = augment.make_augment(mean=mean, std=std, **kw)
    outs.append([fn(image, np.random.default_rng((11, i))) for i in range(30)])
  for a, b in zip(*outs):
    np.testing.assert_array_equal(a, b)
    assert a.shape == image.shape and a.dtype == np.uint8 and a.flags.c_contiguous
  assert len({o.tobytes() for o in outs[0]}) > 10  # Different seeds, different images.
  np.testing.assert_array_equal(image, before)  # The input is never written.


def test_an_augment_pickles_for_worker_processes(photo):
  fn = augment.make_augment(mean=IMAGENET[0], std=IMAGENET[1], randaugment='rand-m9-inc1',
                            color_jitter=0.4, random_erasing=0.5)
  copy = pickle.loads(pickle.dumps(fn))
  for i in range(10):
    np.testing.assert_array_equal(copy(photo, np.random.default_rng(i)),
                                  fn(photo, np.random.default_rng(i)))


def test_policy_runs_before_jitter_and_erasing_comes_last(photo):
  fn = augment.make_augment(mean=IMAGENET[0], std=IMAGENET[1], randaugment='rand-m9-p1',
                            color_jitter=0.4, random_erasing=1.0,
                            random_erasing_mode='const')
  rng = np.random.default_rng(12)
  policy = fn.policy.apply(image_ops.to_pil(photo), rng)
  jittered = image_ops.to_numpy(fn.jitter.apply(policy, rng))
  want = fn.erasing(jittered, rng)
  np.testing.assert_array_equal(fn(photo, np.random.default_rng(12)), want)
  assert (want == [124, 116, 104]).all(-1).any()  # The mean pixel: erased after the jitter.


def test_config_defaults_are_off_and_from_config_reads_the_keys():
  assert augment.make_augment(mean=(0.5,), std=(0.5,)) is None
  defaults = base_config().dataset
  assert augment.from_config(defaults, (0.5,), (0.5,)) is None
  cfg = ConfigDict(dict(defaults.to_dict(), randaugment='rand-m7-n3-p0.3-mmax15',
                        random_erasing=0.25))
  fn = augment.from_config(cfg, *IMAGENET)
  ra = fn.policy
  assert (ra.magnitude, ra.num_ops, ra.prob, ra.magnitude_max) == (7, 3, 0.3, 15)
  assert ra.ops == autoaugment.RAND_OPS and ra.fill == (124, 116, 104)
  assert ra.interpolation == 'random' and fn.jitter is None
  assert fn.erasing.probability == 0.25 and fn.erasing.mode == 'pixel'
  inc = autoaugment.parse_randaugment('rand-m9-mstd0.5-inc1')
  assert inc.ops == autoaugment.RAND_INCREASING_OPS and inc.magnitude_std == 0.5
  assert autoaugment.parse_randaugment('rand-inc0').ops == autoaugment.RAND_OPS
  assert autoaugment.parse_randaugment('rand-mstd101').magnitude_std == math.inf
  ta = augment.make_augment(mean=(0.5,), std=(0.5,), trivialaugment=True).policy
  assert ta.fill == (0,) and ta.interpolation == 'nearest'
  ta = augment.make_augment(mean=(0.5,), std=(0.5,), trivialaugment=True, fill='mean',
                            interpolation='bilinear').policy
  assert ta.fill == (128,) and ta.interpolation == 'bilinear'
  jitter = augment.make_augment(mean=(0.5,), std=(0.5,), color_jitter=0.4).jitter
  assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
      0.4, 0.4, 0.4, 0.0)
  cfg = ConfigDict(dict(defaults.to_dict(), color_jitter=0.3, color_jitter_hue=0.05))
  jitter = augment.from_config(cfg, (0.5,), (0.5,)).jitter
  assert (jitter.brightness, jitter.saturation, jitter.hue) == (0.3, 0.3, 0.05)


@pytest.mark.parametrize('kw,key', [
    (dict(randaugment='rand-m9-x3'), 'randaugment'),
    (dict(randaugment='rand-m9.5'), 'randaugment'),
    (dict(randaugment='m9-n2'), 'randaugment'),
    (dict(randaugment='rand-n20-tweights'), 'randaugment'),
    (dict(autoaugment='imagenet'), 'autoaugment'),
    (dict(autoaugment='v0-m3'), 'autoaugment'),
    (dict(randaugment='rand-m9', trivialaugment=True), 'trivialaugment'),
    (dict(trivialaugment='yes'), 'trivialaugment'),
    (dict(interpolation='lanczos'), 'augment_interpolation'),
    (dict(fill='grey'), 'augment_fill'),
    (dict(color_jitter=(0.4, 0.4)), 'color_jitter'),
    (dict(color_jitter=(0.4, 0.4, 0.4, 0.7)), 'color_jitter'),
    (dict(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_hue=0.1), 'color_jitter'),
    (dict(color_jitter=0.4, color_jitter_hue=0.6), 'color_jitter_hue'),
    (dict(random_erasing=1.5), 'random_erasing'),
    (dict(random_erasing=0.25, random_erasing_mode='zeros'), 'random_erasing_mode'),
    (dict(random_erasing=0.25, random_erasing_count=0), 'random_erasing_count')])
def test_bad_values_name_the_key_and_the_allowed_form(kw, key):
  with pytest.raises(augment.AugmentError) as e:
    augment.make_augment(mean=(0.5,) * 3, std=(0.5,) * 3, **kw)
  assert isinstance(e.value, UserError)
  message = str(e.value)
  assert f'config.dataset.{key}' in message and '\n' not in message
  assert any(word in message for word in ('use', 'the form is', 'Keep'))  # The fix.
