"""Issue 36, class 2: decisions about the data are made from all of it, by one rule in
every mode, stored so that later modes find the same data, and said in the log and in
dataset.json. EXIF orientation, the channel count of a folder, empty class folders, a
relative folder path."""
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import REPO
from vision_jax.data import decode, folder


def _photo(orientation: int, fmt: str = 'JPEG') -> bytes:
  """A 12x20 (h x w) colour gradient stored with this EXIF orientation."""
  y, x = np.mgrid[0:12, 0:20]
  pixels = np.stack([x * 12, y * 20, (x + y) * 6], -1).astype(np.uint8)
  exif = Image.Exif()
  exif[0x0112] = orientation
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, fmt, exif=exif, **({'quality': 95} if fmt == 'JPEG' else {}))
  return out.getvalue()


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
@pytest.mark.parametrize('value', range(1, 9))
def test_exif_orientation_is_what_predict_sees(fmt, value):
  data = _photo(value, fmt)
  with Image.open(io.BytesIO(data)) as pil:  # What predict.load_image reads.
    shown = np.asarray(ImageOps.exif_transpose(pil).convert('RGB'))
  image = decode.Encoded(data, f'photo.{fmt.lower()}')
  assert decode.orientation(data) == value
  assert decode.size(image) == shown.shape[:2]  # The recipe's crop is chosen on this.
  array, reduction = decode.decode(image)
  assert reduction == 1 and array.shape == shown.shape
  np.testing.assert_array_equal(array, shown)


def test_a_reduced_jpeg_decode_is_oriented_too():
  data = _photo(6)
  array, reduction = decode.decode(decode.Encoded(data, 'p.jpg'), max_reduction=2)
  assert reduction == 2 and array.shape[:2] == (10, 6)  # 20x12 shown, halved.


def _save(path: pathlib.Path, mode: str, size=(8, 8)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, 128 if mode == 'L' else (10, 200, 30)).save(path)


@pytest.mark.parametrize('modes, configured, channels, words', [
    (['L'] * 23 + ['RGB'], 0, 3, '1 are colour and 23 grey'),
    (['L'] * 4, 0, 1, 'every one of 4 images is grey'),
    (['RGB'] * 3, 0, 3, 'every one of 3 images is colour'),
    (['L', 'RGB'], 1, 1, 'channels=1 as configured'),
])
def test_folder_channels_are_decided_from_every_file(tmp_path, modes, configured, channels,
                                                     words):
  paths = []
  for i, mode in enumerate(modes):  # The grey ones first: the first file decided before.
    paths.append(str(tmp_path / f'{i:03d}.png'))
    _save(pathlib.Path(paths[-1]), mode)
  got, nbytes, note = folder.probe(paths, configured)
  assert (got, nbytes) == (channels, 64 * channels)
  assert words in note, note


def test_a_class_folder_without_images_is_refused(tmp_path):
  for cls in ('cat', 'dog'):
    for i in range(3):
      _save(tmp_path / 'root' / cls / f'{i}.png', 'L')
  (tmp_path / 'root' / 'emu').mkdir()
  (tmp_path / 'root' / 'emu' / 'readme.txt').write_text('photos to come')
  with pytest.raises(folder.FolderError, match=r'class folder emu has no images.*meaningless'):
    folder.index(str(tmp_path / 'root'), test_fraction=0.3, seed=0)
  (tmp_path / 'root' / 'yak').mkdir()
  with pytest.raises(folder.FolderError, match='class folders emu, yak have no images'):
    folder.index(str(tmp_path / 'root'), test_fraction=0.3, seed=1)


def test_a_class_missing_from_one_split_is_said(tmp_path, caplog):
  for split, classes in (('train', ('cat', 'dog')), ('test', ('cat',))):
    for cls in classes:
      _save(tmp_path / 'root' / split / cls / '0.png', 'L')
  names, splits = folder.index(str(tmp_path / 'root'), test_fraction=0.2, seed=7)
  assert names == ['cat', 'dog'] and len(splits['test'][0]) == 1
  assert "split 'test' has no images of class dog" in caplog.text


def _cli(args, cwd, data_dir):
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  return subprocess.run([sys.executable, '-m', 'vision_jax.main', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_a_relative_folder_is_stored_absolute_and_found_from_elsewhere(tmp_path, data_dir):
  """Trained from one directory with folder:data, evaluated from another: the same data."""
  for cls in ('a', 'b'):
    for i in range(10):
      _save(tmp_path / 'here' / 'data' / cls / f'{i}.png', 'RGB' if (cls, i) == ('b', 9) else 'L')
  (tmp_path / 'elsewhere' / 'data' / 'x').mkdir(parents=True)  # A decoy of the same name.
  workdir = tmp_path / 'W'
  train = _cli(['--config', os.path.join(REPO, 'configs', 'default.py'), '--workdir',
                str(workdir), '--config.dataset.name=folder:data',
                '--config.train.steps=2', '--config.train.batch_size=4',
                '--config.eval.batch_size=4', '--config.train.eval_every=0',
                '--config.optim.warmup_steps=0', '--config.checkpoint.every_steps=2',
                '--config.train.log_every=1'], tmp_path / 'here', data_dir)
  assert train.returncode == 0, train.stderr[-3000:]
  root = str(tmp_path / 'here' / 'data')
  assert f'folder:data -> folder:{root}' in train.stderr  # Said in the log ...
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['dataset']['name'] == f'folder:{root}'  # ... and stored absolute.
  dataset = json.loads((workdir / 'dataset.json').read_text())
  assert dataset['channels'] == 3 and dataset['decisions']['root'] == root
  assert '1 are colour and 19 grey' in dataset['decisions']['channels']
  assert 'applied' in dataset['decisions']['exif_orientation']
  results = json.loads((workdir / 'results.json').read_text())
  again = _cli(['--mode=eval', '--workdir', str(workdir)], tmp_path / 'elsewhere', data_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((workdir / 'results.json').read_text())['eval'] == results['eval']
