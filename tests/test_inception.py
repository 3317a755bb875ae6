"""FID's InceptionV3: models/inception.py through the converter computes pytorch-fid's pool3
features (fixture from tests/fixtures/make_inception_features.py), its resize is
F.interpolate's, and a weights file that is not FID's is refused with one paragraph."""
import contextlib
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import REPO
import torch_reference
from vision_jax import convert, inception_weights
from vision_jax.errors import UserError
from vision_jax.models import inception

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'fid_inception_features.npz')


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE) as npz:
    return dict(npz)


def _names_shapes(fixture) -> list[tuple[str, tuple[int, ...]]]:
  return [(str(n), tuple(s)) for n, s in zip(fixture['names'],
                                              json.loads(str(fixture['shapes'])))]


@pytest.fixture(scope='module')
def weights(fixture) -> dict[str, np.ndarray]:
  """The random weights the fixture's pytorch-fid network had, redrawn from their seed."""
  state = torch_reference.random_state_dict(_names_shapes(fixture), seed=0)
  assert torch_reference.checksum(state) == pytest.approx(float(fixture['checksum']),
                                                          rel=1e-12)
  return state


@pytest.fixture(scope='module')
def converted(tmp_path_factory, weights) -> tuple[str, str]:
  """(directory, printed message) of the CLI's conversion of those weights (saved as .npz:
  no torch needed)."""
  tmp = tmp_path_factory.mktemp('inception')
  path = str(tmp / 'pt_inception.npz')
  np.savez(path, **weights)
  out = str(tmp / 'converted')
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    assert convert.main(['inception', '--weights', path, '--output', out]) == 0
  return out, printed.getvalue()


def _features(model: inception.FIDInceptionV3, images: np.ndarray) -> np.ndarray:
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  return np.asarray(fn(state, images))


def test_expected_tensors_are_pytorch_fids(fixture):
  """The names and shapes the converter demands are those pytorch-fid loaded strictly."""
  theirs = {n: s for n, s in _names_shapes(fixture) if not n.endswith('num_batches_tracked')}
  assert inception_weights.torch_shapes() == theirs


def test_pool3_features_equal_pytorch_fid(fixture, converted):
  """32x32 images (a GAN's) resized to 299 as pytorch-fid does, then the whole network:
  max |diff| <= 1e-5 x the features' scale (float32 convolutions in another order; 3.5e-7
  measured on CPU)."""
  directory, printed = converted
  with open(os.path.join(directory, inception_weights.PROVENANCE_FILE)) as f:
    provenance = json.load(f)
  assert provenance['arrays_written'] == 470 and not provenance['published_file']
  assert 'not that of the published file' in printed
  model = inception_weights.load_inception(directory)
  ours = _features(model, fixture['images'])
  reference = fixture['features']
  assert ours.shape == reference.shape == (2, 2048)
  scale = float(np.abs(reference).max())
  diff = float(np.abs(ours - reference).max())
  print(f'pool3 max |diff| {diff:.3g} at feature scale {scale:.3g}')
  assert diff <= 1e-5 * scale, f'max |diff| {diff:.3g} at feature scale {scale:.3g}'
  # Not degenerate: the two images' features differ by far more than the tolerance.
  assert scale > 1 and np.abs(reference[0] - reference[1]).max() > 1000 * 1e-5 * scale
  # A grey image is the same image repeated to RGB (pytorch-fid's convert('RGB')).
  grey = fixture['images'][:, :, :, :1]
  np.testing.assert_allclose(_features(model, grey),
                             _features(model, np.repeat(grey, 3, axis=-1)), atol=1e-6)


@pytest.mark.parametrize('case', ['up', 'down', 'mixed'])
def test_resize_equals_torch_interpolate(fixture, case):
  x, y = fixture[f'resize_{case}_in'], fixture[f'resize_{case}_out']
  ours = np.asarray(inception.resize_bilinear(x, y.shape[1:3]))
  np.testing.assert_allclose(ours, y, rtol=0, atol=5e-7)  # float32 rounding.


def test_resize_rows_sum_to_one_and_identity_at_same_size():
  for n_in, n_out in ((32, 299), (512, 299), (299, 299), (3, 1)):
    m = inception.resize_matrix(n_in, n_out)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(inception.resize_matrix(299, 299), np.eye(299))


# ----------------------------------------------------------------------------- bad input

def _run(tmp_path, weights: dict, capsys) -> tuple[int, str]:
  path = str(tmp_path / 'weights.npz')
  np.savez(path, **weights)
  code = convert.main(['inception', '--weights', path, '--output', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'out')
  return code, err


def test_wrong_shape_is_one_paragraph_with_exit_2(tmp_path, weights, capsys):
  bad = dict(weights)
  bad['Mixed_6b.branch7x7_2.conv.weight'] = np.zeros((128, 128, 7, 1), np.float32)
  code, err = _run(tmp_path, bad, capsys)
  assert code == 2
  assert err.startswith('error: ') and err.count('\n') == 1
  assert ('1 tensors have another shape: Mixed_6b.branch7x7_2.conv.weight (128, 128, 7, 1) '
          '(wants (128, 128, 1, 7))') in err
  assert 'pt_inception-2015-12-05-6726825d.pth' in err


def test_torchvision_imagenet_inception_is_named(tmp_path, weights, capsys):
  bad = {n: v for n, v in weights.items() if not n.startswith('fc.')}
  bad['fc.weight'] = np.zeros((1000, 2048), np.float32)
  bad['fc.bias'] = np.zeros((1000,), np.float32)
  bad['AuxLogits.fc.weight'] = np.zeros((1000, 768), np.float32)
  code, err = _run(tmp_path, bad, capsys)
  assert code == 2 and err.count('\n') == 1
  assert "torchvision's ImageNet InceptionV3 (1000 classes)" in err
  assert '1 tensors have no place: AuxLogits.fc.weight' in err
  assert 'fc.weight (1000, 2048) (wants (1008, 2048))' in err


def test_unrelated_file_and_missing_tensors(tmp_path, weights, capsys):
  code, err = _run(tmp_path, {'conv1.weight': np.zeros((64, 3, 7, 7), np.float32)}, capsys)
  assert code == 2 and 'it is not an InceptionV3 state dict' in err
  assert '472 tensors are missing' in err  # 470 conv/BatchNorm + fc.
  assert 'and 464 more' in err  # Long lists are cut.
  partial = {n: v for n, v in weights.items() if not n.startswith('Mixed_7c.branch_pool.')}
  code, err = _run(tmp_path, partial, capsys)
  assert code == 2 and 'truncated' in err
  assert '5 tensors are missing: Mixed_7c.branch_pool.bn.bias' in err


def test_existing_output_and_unconverted_directory(tmp_path, capsys):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'x').write_text('')
  code = convert.main(['inception', '--weights', 'missing.pth', '--output',
                       str(tmp_path / 'out')])
  assert code == 2 and 'exists and is not an empty directory' in capsys.readouterr().err
  with pytest.raises(UserError, match='holds no converted Inception weights'):
    inception_weights.load_inception(str(tmp_path))


def test_module_cli_route(tmp_path):
  """`python -m vision_jax.convert inception` reaches this converter from the command line."""
  proc = subprocess.run([sys.executable, '-m', 'vision_jax.convert', 'inception', '--weights',
                         str(tmp_path / 'none.pth'), '--output', str(tmp_path / 'out')],
                        cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 2
  assert proc.stderr == f'error: --weights={tmp_path / "none.pth"} does not exist. Pass the ' \
      'weights file.\n'
