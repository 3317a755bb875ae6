"""vision_jax.data.eval_transform: torchvision's and timm's eval pipelines reproduced pixel
for pixel (against their own outputs, tests/fixtures/make_eval_transform_fixtures.py), one
object from the config through dataset.json to predict and export."""
import io
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vision_jax import config as config_lib
from vision_jax.data import decode
from vision_jax.data import eval_transform
from vision_jax.data import preprocess
from vision_jax.data.eval_transform import EvalTransform

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
# What each fixture's pipeline is, as ours: timm's resnet50 resolves to crop_pct 0.95,
# bicubic (the fixture script asserts it).
PIPELINES = {
    'torchvision_v1': EvalTransform('torchvision_v1', 224, channels=3),
    'torchvision_v2': EvalTransform('torchvision_v2', 224, channels=3),
    'timm': EvalTransform('timm', 224, crop_fraction=0.95, interpolation='bicubic',
                          channels=3),
}


def _png(data: np.ndarray) -> np.ndarray:
  array = np.asarray(Image.open(io.BytesIO(data.tobytes())))
  return array[..., None] if array.ndim == 2 else array


@pytest.fixture(scope='module')
def photos() -> dict[str, np.ndarray]:
  with np.load(os.path.join(FIXTURES, 'eval_transform_photos.npz')) as f:
    return {str(n): _png(f[f'photo/{n}']) for n in f['names']}


def _references(pipeline: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(FIXTURES, f'eval_transform_{pipeline}.npz')) as f:
    return {k.split('/', 1)[1]: _png(f[k]) for k in f.files if k.startswith(pipeline + '/')}


def _within_one_level(ours: np.ndarray, reference: np.ndarray) -> float:
  assert ours.shape == reference.shape and ours.dtype == np.uint8
  return float(np.mean(np.abs(ours.astype(np.int16) - reference) <= 1))


def test_photos_cover_sizes_aspects_and_grey(photos):
  shapes = {p.shape[:2] for p in photos.values()}
  aspects = {round(h / w, 2) for h, w in shapes}
  assert len(shapes) >= 8 and len(aspects) >= 8
  assert sum(p.shape[-1] == 1 for p in photos.values()) == 1


@pytest.mark.parametrize('pipeline', sorted(PIPELINES))
def test_network_input_equals_the_reference_pipeline(photos, pipeline):
  """Within 1 grey level on >= 99.9% of the pixels of every photo (PIL does the same
  arithmetic, so it is in fact equal)."""
  references = _references(pipeline)
  assert sorted(references) == sorted(photos)
  transform = PIPELINES[pipeline]
  for name, photo in photos.items():
    share = _within_one_level(transform(photo), references[name])
    assert share >= 0.999, f'{pipeline} {name}: {share:.4%} of pixels within 1 grey level'


def test_our_fast_center_crop_is_not_the_reference(photos):
  """The comparison above can fail: our fast center_crop of the same region (OpenCV, box
  rounded, no antialiasing) misses torchvision V1's pixels on most photos."""
  references = _references('torchvision_v1')
  fast = EvalTransform('center_crop', 224, crop_fraction=224 / 256, channels=3)
  shares = [_within_one_level(fast(photo), references[name]) for name, photo in photos.items()]
  assert sum(s < 0.999 for s in shares) >= len(shares) // 2, shares


def test_geometry_of_resize_and_crop():
  """torchvision's rule: the longer side truncated, the offset rounded half to even."""
  image = np.arange(120 * 160 * 3, dtype=np.uint8).reshape(120, 160, 3)
  v1 = EvalTransform('torchvision_v1', 224)
  assert v1.resize_size == 256 and v1(image).shape == (224, 224, 3)
  assert EvalTransform('torchvision_v2', 33).resize_size == 33 * 232 // 224 == 34
  assert EvalTransform('timm', 224, crop_fraction=0.95).resize_size == 235
  grey = np.full((300, 200, 1), 7, np.uint8)
  assert EvalTransform('timm', 224, channels=3)(grey).shape == (224, 224, 3)
  assert EvalTransform('torchvision_v1', 224)(grey).shape == (224, 224, 1)
  # At the size already: no resampling, a pure crop at int(round((W - c) / 2)).
  exact = np.random.default_rng(0).integers(0, 256, (256, 257, 3), np.uint8)
  np.testing.assert_array_equal(EvalTransform('torchvision_v1', 224)(exact),
                                exact[16:240, 16:240])
  with pytest.raises(ValueError, match='uint8 HWC image with 1 or 3 channels'):
    v1(np.zeros((10, 10, 4), np.uint8))


def test_encoded_images_take_the_same_path_as_arrays(photos):
  """The eval datasets' per-example function (JPEG bytes, decoded at full size) gives what
  predict and export give the decoded pixels."""
  photo = photos['china_229x231']
  buf = io.BytesIO()
  Image.fromarray(photo).save(buf, 'JPEG', quality=90)
  decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
  for transform in PIPELINES.values():
    out = transform.example_fn()({'image': decode.Encoded(buf.getvalue(), 'x.jpg'),
                                  'label': 3}, None)
    np.testing.assert_array_equal(out['image'], transform(decoded))
    assert out['label'] == 3 and out['label'].dtype == np.int32
  truncated = decode.Encoded(buf.getvalue()[:300], 'cut.jpg')
  with pytest.raises(decode.CorruptImageError, match='Cannot read image cut.jpg'):
    PIPELINES['timm'].example_fn()({'image': truncated, 'label': 0}, None)


def test_our_recipes_run_the_recipe_unchanged(photos):
  """resize / center_crop are preprocess.Recipe itself (bit-identical to before; an
  in-memory split at its size stays one numpy gather)."""
  fn = EvalTransform('resize', 8, channels=1).example_fn()
  assert isinstance(fn, preprocess.Recipe) and fn.identity_for((8, 8, 1))
  photo = photos['flower_300x300']
  recipe = preprocess.make_preprocess('center_crop', 64, train=False, crop_fraction=0.5)
  np.testing.assert_array_equal(EvalTransform('center_crop', 64, crop_fraction=0.5)(photo),
                                recipe({'image': photo, 'label': 0}, None)['image'])


def test_json_round_trip_and_older_dataset_json():
  timm = PIPELINES['timm']
  spec = timm.to_json()
  assert spec['exact'] and spec['resize_size'] == 235 and 'bicubic' in spec['description']
  assert EvalTransform.from_json(spec) == timm
  old = {'image_size': 33, 'eval_preprocess': 'center_crop', 'crop_fraction': 0.5,
         'mean': [0.5]}
  assert EvalTransform.from_dataset_json(old, 1) == EvalTransform('center_crop', 33, 0.5,
                                                                  channels=1)
  assert EvalTransform.from_dataset_json({'eval_transform': spec}) == timm
  # The converter once wrote a note string under that key: it is read as the old format.
  seg = EvalTransform.from_dataset_json({'image_size': 8, 'eval_preprocess': 'fit_and_pad',
                                         'mean': [0.5, 0.2, 0.0], 'eval_transform': 'note'})
  assert seg.fill == (128, 51, 0) and seg(np.zeros((4, 12, 3), np.uint8)).shape == (8, 8, 3)
  with pytest.raises(eval_transform.EvalTransformError, match='fit_and_pad moves labels'):
    seg.example_fn()


def _ds(**overrides) -> ml_collections.ConfigDict:
  ds = config_lib.base_config().dataset
  ds.update(overrides)
  return ds


def test_from_config():
  assert EvalTransform.from_config(_ds(preprocess='inception'), 224, 3) == EvalTransform(
      'center_crop', 224, channels=3)
  assert EvalTransform.from_config(_ds(), 8, 1) == EvalTransform('resize', 8, channels=1)
  timm = EvalTransform.from_config(_ds(eval_preprocess='timm', crop_fraction=0.95), 224, 3)
  assert timm == PIPELINES['timm']  # '' interpolation: bicubic, timm's default.
  lanczos = _ds(eval_preprocess='timm', eval_interpolation='lanczos')
  assert EvalTransform.from_config(lanczos, 224, 3).interpolation == 'lanczos'


@pytest.mark.parametrize('overrides,message', [
    (dict(eval_preprocess='torchvision'), "eval_preprocess='torchvision': use"),
    (dict(eval_preprocess='torchvision_v1', eval_interpolation='bicubic'),
     "applies to eval_preprocess='timm' only"),
    (dict(eval_preprocess='timm', eval_interpolation='cubic'),
     "eval_interpolation='cubic': use '' .* bicubic"),
])
def test_config_errors_name_the_key_and_the_fix(overrides, message):
  with pytest.raises(eval_transform.EvalTransformError, match=message):
    eval_transform.check_config(_ds(**overrides))


def test_bad_fields_are_refused_together():
  with pytest.raises(eval_transform.EvalTransformError,
                     match=r'crop_fraction=1.5.*interpolation=.bicubic.: resize resamples'):
    EvalTransform('resize', 8, crop_fraction=1.5, interpolation='bicubic')
