"""Datasets beyond the digits: tfds (mocked), image folders, class subsets, channels,
TFRecord-prepared splits, mixup/cutmix, and the offline failure of the real CLI."""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import run_cli
from vision_jax.config import base_config
from vision_jax.data import decode, digits, folder, input_pipeline as ip, mixing, sources


def _config(name: str, **dataset):
  config = base_config()
  config.dataset.name = name
  config.dataset.update(dataset)
  config.train.batch_size, config.eval.batch_size = 8, 6
  return config


def _all_eval(data: ip.Data, split: str) -> dict[str, np.ndarray]:
  batches = list(data.evals[split])
  keep = np.concatenate([b['mask'] for b in batches]) > 0
  return {k: np.concatenate([b[k] for b in batches])[keep] for k in ('image', 'label')}


# ------------------------------------------------------------------------ tfds (mocked)
# mock_data replaces builder.as_data_source with random examples; its builders are never
# "prepared", so these runs set download=True (download_and_prepare is a no-op there), and
# `online` stands in for the network check that precedes a real download.


@pytest.fixture
def online(monkeypatch):
  monkeypatch.setattr(sources, '_check_online', lambda name, data_dir: None)


def test_mock_cifar10_cifar_recipe(online):
  config = _config('cifar10', download=True, preprocess='cifar', normalization='cifar10')
  with tfds.testing.mock_data(num_examples=20):
    data = ip.build(config)
    batch = data.train[3]
    evaluated = _all_eval(data, 'test')
  assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and np.all(batch['label'] < 10)
  assert (data.num_classes, data.image_size, data.channels) == (10, 32, 3)
  assert len(data.class_names) == 10  # The mock has no label names file: '0'..'9'.
  assert data.mean == (0.4914, 0.4822, 0.4465)
  assert evaluated['image'].shape == (20, 32, 32, 3)  # 20 = 3 batches of 6 + 2, masked.
  assert data.describe()['eval_transform']['name'] == 'resize'


def test_mock_imagenet_inception_and_center_crop(online):
  config = _config('imagenet2012', download=True, preprocess='inception', image_size=24,
                   eval_splits=('validation',), normalization='imagenet')
  with tfds.testing.mock_data(num_examples=12):
    data = ip.build(config)
    first, again = data.train[1], data.train[1]
    evaluated = _all_eval(data, 'validation')
    raw = sources.open_split(config.dataset, 'validation')[0]
    sizes = {decode.size(raw[i]['image']) for i in range(len(raw))}  # Headers only.
  assert len(sizes) > 1  # The mocked images vary in size, like ImageNet's.
  assert first['image'].shape == (8, 24, 24, 3)
  np.testing.assert_array_equal(first['image'], again['image'])  # Pure function of step.
  assert evaluated['image'].shape == (12, 24, 24, 3)
  assert data.num_classes == 1000
  assert data.describe()['eval_transform']['name'] == 'center_crop'


def test_mock_imagenet_exact_eval_transform(online):
  """config.dataset.eval_preprocess='torchvision_v1': the eval split's images (tfds JPEG
  records, read through the worker path) are the transform of the fully decoded images,
  the very function predict and export run; dataset.json records it."""
  from vision_jax.data.eval_transform import EvalTransform  # pylint: disable=g-import-not-at-top
  config = _config('imagenet2012', download=True, preprocess='inception', image_size=24,
                   eval_splits=('validation',), normalization='imagenet',
                   eval_preprocess='torchvision_v1')
  with tfds.testing.mock_data(num_examples=6):
    data = ip.build(config)
    evaluated = _all_eval(data, 'validation')
    raw = sources.open_split(config.dataset, 'validation')[0]
    decoded = [decode.decode(raw[i]['image'])[0] for i in range(len(raw))]
  transform = EvalTransform.from_json(data.describe()['eval_transform'])
  assert transform == EvalTransform('torchvision_v1', 24, channels=3)
  np.testing.assert_array_equal(evaluated['image'], np.stack([transform(d) for d in decoded]))


def test_variable_size_images_need_an_image_size(online):
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(sources.DatasetConfigError, match='config.dataset.image_size'):
      ip.build(_config('imagenet2012', download=True, eval_splits=('validation',)))


# ---------------------------------------------------------------------------- folders


def _write(path, size=(12, 10), mode='RGB', seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  shape = (size[1], size[0]) + ((3,) if mode == 'RGB' else ())
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


@pytest.fixture(scope='module')
def split_root(tmp_path_factory):
  """root/{train,test}/{cat,dog}: PNGs and JPEGs, one unreadable file in train/dog."""
  root = tmp_path_factory.mktemp('folder')
  for split, n in (('train', 5), ('test', 3)):
    for c, name in enumerate(('cat', 'dog')):
      for i in range(n):
        _write(str(root / split / name / f'{i}.{"png" if i % 2 else "jpg"}'), seed=c * 10 + i)
  (root / 'train' / 'dog' / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  return root


def test_folder_with_train_and_test(split_root):
  config = _config(f'folder:{split_root}', skip_corrupt=True, image_size=16,
                   preprocess='inception')
  data = ip.build(config)
  assert data.class_names == ['cat', 'dog'] and data.num_train == 10  # 11 files, 1 broken.
  assert data.train[0]['image'].shape == (8, 16, 16, 3)
  evaluated = _all_eval(data, 'test')
  assert evaluated['image'].shape == (6, 16, 16, 3)
  np.testing.assert_array_equal(np.bincount(evaluated['label']), [3, 3])
  # An image reads back as written (PNG is lossless; resize 12x10 -> 16 is not identity).
  raw = sources.open_split(config.dataset, 'test[1:2]')[0][0]
  with Image.open(split_root / 'test' / 'cat' / '1.png') as png:
    np.testing.assert_array_equal(raw['image'], np.asarray(png))


def test_corrupt_image_is_an_error_naming_the_file(split_root):
  with pytest.raises(folder.CorruptImageError, match='broken.jpg.*skip_corrupt'):
    ip.build(_config(f'folder:{split_root}'))


def test_corrupt_image_skipped_without_cache_keeps_the_count(split_root, caplog):
  config = _config(f'folder:{split_root}', skip_corrupt=True, cache='none',
                   eval_splits=('train',), image_size=10)
  data = ip.build(config)
  assert len(_all_eval(data, 'train')['label']) == 10  # Masked, not counted twice.
  assert any('broken.jpg' in r.getMessage() for r in caplog.records)
  batches = [data.train[k]['image'] for k in range(3)]  # Substitutes are deterministic.
  np.testing.assert_array_equal(np.stack(batches), np.stack([data.train[k]['image']
                                                             for k in range(3)]))


def test_folder_split_by_fraction_and_slicing(tmp_path):
  for c, name in enumerate(('a', 'b', 'c')):
    for i in range(10):
      _write(str(tmp_path / name / f'{i}.png'), mode='L', seed=c * 10 + i)
  config = _config(f'folder:{tmp_path}', folder_test_fraction=0.3)
  train, info = sources.open_split(config.dataset, 'train')
  test, _ = sources.open_split(config.dataset, 'test')
  assert info.channels == 1 and info.class_names == ['a', 'b', 'c']
  assert (len(train), len(test)) == (21, 9)
  np.testing.assert_array_equal(np.bincount(test.labels), [3, 3, 3])  # Stratified.
  key = lambda src: {src[i]['image'].tobytes() for i in range(len(src))}
  assert not key(train) & key(test) and len(key(train) | key(test)) == 30
  assert key(sources.open_split(config.dataset, 'test')[0]) == key(test)  # Fixed seed.
  assert len(sources.open_split(config.dataset, 'train[:50%]')[0]) == 10  # tfds rounding.
  config.dataset.channels, config.dataset.image_size = 3, 10  # Grey files, RGB batches.
  assert ip.build(config).train[0]['image'].shape == (8, 10, 10, 3)


# ------------------------------------------------------------------ digits: subset etc.


def test_class_subset_on_digits(data_dir):
  config = _config('digits', classes=(5, 6, 7, 8, 9), data_dir=data_dir)
  full = sources.open_split(_config('digits', data_dir=data_dir).dataset, 'train')[0]
  sub, info = sources.open_split(config.dataset, 'train')
  assert info.num_classes == 5 and info.class_names == ['5', '6', '7', '8', '9']
  wanted = [i for i in range(len(full)) if full[i]['label'] >= 5]
  assert len(sub) == len(wanted)
  for j in (0, len(sub) // 2, len(sub) - 1):
    np.testing.assert_array_equal(sub[j]['image'], full[wanted[j]]['image'])
    assert sub[j]['label'] == full[wanted[j]]['label'] - 5
  config.dataset.cache = 'none'  # Read through tfds (encoded): the same examples.
  encoded = sources.open_split(config.dataset, 'train')[0][9]['image']
  np.testing.assert_array_equal(decode.decode(encoded)[0], sub[9]['image'])
  config.dataset.classes = ('4', '0')  # Names work too, in the order given.
  data = ip.build(config)
  assert data.class_names == ['4', '0'] and data.num_classes == 2
  assert set(np.unique(_all_eval(data, 'test')['label'])) == {0, 1}
  with pytest.raises(sources.DatasetConfigError, match='neither a class index'):
    sources.open_split(_config('digits', classes=(10,), data_dir=data_dir).dataset, 'test')


def test_grey_digits_as_rgb(data_dir):
  data = ip.build(_config('digits', channels=3, data_dir=data_dir))
  image = data.train[0]['image']
  assert image.shape == (8, 8, 8, 3) and data.channels == 3 and len(data.mean) == 3
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_tfrecord_split_is_read_into_memory_or_refused(tmp_path, data_dir):
  digits.Digits(data_dir=str(tmp_path), file_format='tfrecord').download_and_prepare()
  tfrecord = sources.open_split(_config('digits', data_dir=str(tmp_path)).dataset, 'test')[0]
  array = sources.open_split(_config('digits', data_dir=data_dir).dataset, 'test')[0]
  np.testing.assert_array_equal(tfrecord.labels, array.labels)
  np.testing.assert_array_equal(tfrecord.images, array.images)
  with pytest.raises(sources.DatasetConfigError, match='--file_format=array_record'):
    sources.open_split(_config('digits', data_dir=str(tmp_path), cache='none').dataset,
                       'test')


# --------------------------------------------------------------------- mixup / cutmix


def test_mixing_maths():
  images = jnp.concatenate([jnp.zeros((4, 6, 5, 1)), jnp.ones((4, 6, 5, 1))])
  labels = jnp.array([0] * 4 + [1] * 4)
  fn = jax.jit(lambda step: mixing.mix(mixing.step_key(7, step), images, labels, 3,
                                       mixup_alpha=0.4, cutmix_alpha=1.0, cutmix_prob=0.5))
  lams, kinds = set(), set()
  for step in range(8):
    mixed, soft, lam = fn(step)
    np.testing.assert_array_equal(mixed, fn(step)[0])  # Deterministic per (seed, step).
    assert 0 <= lam <= 1
    lams.add(float(lam))
    kinds.add('cutmix' if set(np.unique(mixed[0]).tolist()) <= {0.0, 1.0} else 'mixup')
    np.testing.assert_allclose(soft.sum(-1), 1, rtol=1e-6)
    # Example 0 (zeros, class 0) is mixed with the last one (ones, class 1): the mean of
    # its pixels is the share of the partner, 1 - lam, for mixup and cutmix alike.
    np.testing.assert_allclose(mixed[0].mean(), 1 - lam, atol=1e-6)
    np.testing.assert_allclose(soft[0], [lam, 1 - lam, 0], atol=1e-6)
  assert kinds == {'cutmix', 'mixup'}  # Both happened in these 8 steps,
  assert len(lams) > 1  # and steps differ.


def test_mix_in_the_train_step():
  from vision_jax import parallel, steps, tasks, train_state  # pylint: disable=g-import-not-at-top
  config = base_config()
  config.train.batch_size = 8
  config.model.width, config.model.hidden = 4, 16  # A small ConvNet: quick to compile.
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  task = tasks.build(config)
  structure, state = train_state.create(
      task, mesh, num_classes=10, image_size=8, in_channels=1, steps_per_epoch=10)
  mix = mixing.make_mix(num_classes=10, seed=0, mixup_alpha=0.2)
  step = jax.jit(steps.make_train_step(task, structure, mean=(0.5,), std=(0.5,), mix=mix))
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  _, metrics = step(state, batch)
  assert np.isfinite(metrics['loss']) and 0 <= metrics['accuracy'] <= 1
  assert mixing.make_mix(num_classes=10, seed=0) is None  # Off by default.


# --------------------------------------------------------------------------- the CLI


def test_cli_fails_fast_offline_when_the_dataset_is_absent(tmp_path, data_dir):
  config = 'configs/cifar10_resnet18.py'
  start = time.time()
  proc = run_cli(['--config', config, '--workdir', str(tmp_path / 'w')], data_dir,
                 timeout=120)
  elapsed = time.time() - start
  assert proc.returncode != 0 and elapsed < 30, (elapsed, proc.stderr[-2000:])
  assert "'cifar10'" in proc.stderr and data_dir in proc.stderr
  assert 'tfds build cifar10' in proc.stderr and 'Traceback' not in proc.stderr


# ------------------------------------------------------------------------ data hygiene


def test_a_symlink_loop_lists_each_real_file_once(tmp_path):
  for c, name in enumerate(('a', 'b')):
    for i in range(4):
      _write(str(tmp_path / name / f'{i}.png'), size=(6, 6), seed=c * 10 + i)
  os.symlink(tmp_path / 'b', tmp_path / 'b' / 'again')  # b/again/again/... -> b
  os.symlink(tmp_path / 'a' / '0.png', tmp_path / 'a' / 'same.png')  # A second name.
  config = _config(f'folder:{tmp_path}', folder_test_fraction=0.25)
  train, _ = sources.open_split(config.dataset, 'train')
  test, _ = sources.open_split(config.dataset, 'test')
  assert (len(train), len(test)) == (6, 2)  # 8 real files, not 8 + links x loop depth.
  key = lambda src: {src[i]['image'].tobytes() for i in range(len(src))}
  assert not key(train) & key(test)


def test_an_eval_split_sharing_training_files_is_refused(tmp_path):
  for split in ('train', 'test'):
    for c, name in enumerate(('a', 'b')):
      for i in range(3):
        _write(str(tmp_path / split / name / f'{i}.png'), size=(6, 6),
               seed=(split == 'test') * 100 + c * 10 + i)
  os.symlink(tmp_path / 'train' / 'a' / '1.png', tmp_path / 'test' / 'a' / 'copy.png')
  with pytest.raises(sources.DatasetConfigError,
                     match=r"'test' .* shares 1 of its 7 files .*train/a/1.png"):
    ip.build(_config(f'folder:{tmp_path}'))
  data = ip.build(_config(f'folder:{tmp_path}', eval_splits=('train', 'train[:50%]')))
  assert data.eval_sizes == {'train': 6, 'train[:50%]': 3}  # Training data on purpose.


def test_sixteen_bit_images_train_on_their_high_byte(tmp_path):
  values = np.arange(0, 65536, 1024, dtype=np.uint16).reshape(8, 8)
  for c, name in enumerate(('a', 'b')):
    os.makedirs(tmp_path / name)
    Image.fromarray(values).save(tmp_path / name / 'deep.png')  # 16-bit grey ('I;16').
  config = _config(f'folder:{tmp_path}', folder_test_fraction=0.0, eval_splits=())
  config.train.batch_size = 2
  data = ip.build(config)
  assert data.channels == 1 and data.image_size == 8
  np.testing.assert_array_equal(data.train[0]['image'][0, ..., 0], values >> 8)
  from vision_jax import predict  # pylint: disable=g-import-not-at-top
  with Image.open(tmp_path / 'a' / 'deep.png') as image:  # Predict reads it alike.
    read = predict._channels(image, 1)  # pylint: disable=protected-access
  np.testing.assert_array_equal(read[..., 0], values >> 8)


def test_fewer_than_two_classes_is_refused(tmp_path, data_dir):
  for i in range(3):
    _write(str(tmp_path / 'only' / f'{i}.png'), size=(6, 6), seed=i)
  with pytest.raises(sources.DatasetConfigError, match='1 class .*at least two'):
    ip.build(_config(f'folder:{tmp_path}'))
  with pytest.raises(sources.DatasetConfigError, match='at least two'):
    ip.build(_config('digits', classes=(3,), data_dir=data_dir))


def test_a_folder_of_one_size_has_that_native_size(tmp_path):
  for c, name in enumerate(('a', 'b')):
    for i in range(3):
      _write(str(tmp_path / 'square' / name / f'{i}.png'), size=(9, 9), seed=c * 10 + i)
      _write(str(tmp_path / 'wide' / name / f'{i}.png'), size=(12, 9), seed=c * 10 + i)
      _write(str(tmp_path / 'mixed' / name / f'{i}.png'), size=(9 + i, 9), seed=i)
  assert ip.build(_config(f'folder:{tmp_path / "square"}')).image_size == 9
  with pytest.raises(sources.DatasetConfigError, match=r'are all 12x9 .*not square'):
    ip.build(_config(f'folder:{tmp_path / "wide"}'))
  with pytest.raises(sources.DatasetConfigError, match=r'vary in size \(.*is 9x9.*10x9'):
    ip.build(_config(f'folder:{tmp_path / "mixed"}'))


def test_download_offline_fails_fast_with_the_reason(tmp_path):
  config = _config('cifar10', download=True, data_dir=str(tmp_path))
  start = time.time()
  with pytest.raises(sources.DatasetNotFoundError, match='cannot be downloaded.*tfds build'):
    sources.open_split(config.dataset, 'train')  # Offline here: tfds would retry ~205 s.
  assert time.time() - start < 30
