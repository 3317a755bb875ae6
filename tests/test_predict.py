"""--mode=predict on image files: accuracy on real digits, the JSON, and bad files."""
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from test_evaluate import trained_workdir


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, data_dir) -> pathlib.Path:
  return trained_workdir(tmp_path_factory, data_dir)


@pytest.fixture(scope='module')
def digit_dir(tmp_path_factory, data_dir) -> pathlib.Path:
  """The 360 test-split digits as 8x8 greyscale PNGs named <index>_<label>.png."""
  from vision_jax import config as config_lib
  from vision_jax.data import sources
  source, _ = sources.open_split(config_lib.base_config().dataset, 'test')
  path = tmp_path_factory.mktemp('digits')
  for i in range(len(source)):
    example = source[i]
    Image.fromarray(np.asarray(example['image'])[..., 0]).save(
        path / f'{i:03d}_{int(example["label"])}.png')
  return path


def test_predict_returns_the_true_digit(run_dir, digit_dir, tmp_path, data_dir):
  out = tmp_path / 'preds.json'
  proc = run_cli(['--mode=predict', '--workdir', str(run_dir), '--images', str(digit_dir),
                  '--top_k=3', '--output', str(out)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  preds = json.loads(out.read_text())
  files = sorted(digit_dir.iterdir())
  assert [p['image'] for p in preds] == [str(f) for f in files]  # Input order.
  assert len(proc.stdout.strip().splitlines()) == len(files) == 360
  for p in preds:
    assert [t['label'] for t in p['top_k']] == [str(t['index']) for t in p['top_k']]
    probs = [t['probability'] for t in p['top_k']]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
  truth = [int(f.stem.split('_')[1]) for f in files]
  accuracy = np.mean([p['top_k'][0]['index'] == t for p, t in zip(preds, truth)])
  assert accuracy >= 0.95, accuracy


def test_bad_files_are_reported_and_the_others_predicted(run_dir, digit_dir, tmp_path,
                                                         data_dir):
  good = sorted(digit_dir.iterdir())[0]
  corrupt = tmp_path / 'corrupt.png'
  corrupt.write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
  colour = tmp_path / 'colour.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)).save(colour)
  grey_rgb = tmp_path / 'grey_as_rgb.png'  # R == G == B: converting loses nothing.
  Image.open(good).convert('RGB').save(grey_rgb)
  truncated = tmp_path / 'truncated.png'
  Image.fromarray(np.full((64, 64), 9, np.uint8)).save(truncated)
  truncated.write_bytes(truncated.read_bytes()[:60])
  missing = tmp_path / 'missing.png'
  inputs = [good, corrupt, truncated, colour, missing, grey_rgb]
  out = tmp_path / 'preds.json'
  proc = run_cli(['--mode=predict', '--workdir', str(run_dir), '--output', str(out)]
                 + [a for p in inputs for a in ('--images', str(p))], data_dir)
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  assert f'{corrupt}: is not an image file' in proc.stderr
  assert f'{truncated}: cannot be read' in proc.stderr
  assert f'{colour}: has 3 channels (RGB colour) but the model was trained on 1-channel' \
      in proc.stderr
  assert f'{missing}: no such file or folder' in proc.stderr
  assert '4 of 6 images could not be predicted' in proc.stderr
  preds = json.loads(out.read_text())
  assert [p['image'] for p in preds] == [str(p) for p in inputs]
  assert ['top_k' in p for p in preds] == [True, False, False, False, False, True]
  assert preds[0]['top_k'] == preds[5]['top_k']
  assert len(proc.stdout.strip().splitlines()) == 2


def _pil(array: np.ndarray, mode: str | None = None) -> Image.Image:
  return Image.fromarray(array.astype(np.uint8), mode)


@pytest.mark.parametrize('make, channels, expected', [
    (lambda: _pil(np.full((4, 4), 7)), 3, 'ok'),                        # grey -> RGB
    (lambda: _pil(np.full((4, 4, 3), 7)), 1, 'ok'),                     # R=G=B -> grey
    (lambda: _pil(np.full((4, 4, 4), 255)), 3, 'ok'),                   # opaque alpha
    (lambda: _pil(np.full((4, 4), 7)).convert('P'), 1, 'ok'),          # palette
    (lambda: _pil(np.full((4, 4), 255)).convert('1'), 1, 'ok'),        # bilevel
    (lambda: _pil(np.arange(48).reshape(4, 4, 3)), 1, 'has 3 channels'),
    (lambda: _pil(np.full((4, 4, 4), 100)), 3, 'transparent'),
    (lambda: Image.new('I;16', (4, 4)), 1, 'ok'),                      # 16-bit: high byte
    (lambda: Image.new('F', (4, 4)), 1, "pixel format 'F'"),
    (lambda: Image.new('CMYK', (4, 4)), 3, "pixel format 'CMYK'"),
])
def test_channel_conversion_only_when_nothing_is_lost(make, channels, expected):
  from vision_jax import predict
  image = make()
  if expected == 'ok':
    array = predict._channels(image, channels)  # pylint: disable=protected-access
    assert array.shape == (4, 4, channels) and array.dtype == np.uint8
    assert np.all(array == array.flat[0])
  else:
    with pytest.raises(predict.ImageError, match=expected):
      predict._channels(image, channels)  # pylint: disable=protected-access


def test_a_run_that_converted_channels_converts_them_at_predict_time_too():
  from vision_jax import predict
  colour = _pil(np.arange(48).reshape(4, 4, 3))
  assert predict._channels(colour, 1, run_converts=True).shape == (4, 4, 3)  # pylint: disable=protected-access


def test_folders_expand_recursively_in_sorted_order(tmp_path):
  from vision_jax import predict
  (tmp_path / 'b').mkdir()
  for name in ('b/2.png', 'a.JPG', 'notes.txt', 'c.png'):
    (tmp_path / name).write_bytes(b'')
  (tmp_path / 'empty').mkdir()
  items = predict.expand([str(tmp_path), str(tmp_path / 'empty')])
  assert [i.path for i in items] == [str(tmp_path / n) for n in ('a.JPG', 'b/2.png', 'c.png',
                                                                 'empty')]
  assert items[-1].error.startswith('folder has no image files')


def test_several_images_after_one_flag_a_glob_and_repeated_flags(run_dir, digit_dir,
                                                                 tmp_path, data_dir):
  """`--images a.png b.png` (what a shell glob expands to) and repeated --images: every
  path is predicted, in the given order. Elsewhere a stray argument is still refused."""
  files = [str(f) for f in sorted(digit_dir.iterdir())[:4]]
  out = tmp_path / 'preds.json'
  proc = run_cli(['--mode=predict', '--workdir', str(run_dir), '--output', str(out),
                  '--images', files[0], files[1], '--images', files[2], files[3]], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [p['image'] for p in json.loads(out.read_text())] == files
  stray = run_cli(['--mode=eval', '--workdir', str(run_dir), 'extra.png'], data_dir)
  assert stray.returncode == 2 and 'Unexpected arguments: extra.png' in stray.stderr
