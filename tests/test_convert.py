"""vision_jax.convert: torchvision / timm / BiT weights -> a workdir that eval, predict,
export and init_from take as it is, computing the original code's function."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from conftest import REPO, run_cli
import torch_reference
from vision_jax import checkpoint, convert, inference, models, optim, pretrained_weights
from vision_jax.data.eval_transform import EvalTransform
from vision_jax.errors import UserError

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'torchvision_resnet_logits.npz')


def _our_arrays(model: str, num_classes: int) -> dict[str, tuple]:
  abstract = nnx.eval_shape(lambda: models.create_model(model, num_classes))
  return {optim.param_path(p): x.shape
          for p, x in jax.tree_util.tree_flatten_with_path(nnx.state(abstract))[0]}


def _state_dict(arch: str, num_classes: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
  """Random torchvision-named arrays for `arch` (names checked against torchvision itself
  by the fixture tests below), with the num_batches_tracked counters torch saves."""
  shapes = pretrained_weights.our_shapes(arch, num_classes)
  names = [(t, pretrained_weights._torch_layout(o, shapes[o]))  # pylint: disable=protected-access
           for o, t in convert.torchvision_names(arch).items()]
  names += [(t.rsplit('.', 1)[0] + '.num_batches_tracked', ()) for t, _ in names
            if t.endswith('.running_var')]
  return torch_reference.random_state_dict(names, seed)


def _convert(tmp_path, weights: dict, arch: str, source: str = 'torchvision', **kwargs):
  path = str(tmp_path / f'{arch}.safetensors')
  save_file(weights, path)
  out = str(tmp_path / f'{arch}_converted')
  kwargs.setdefault('eval_transform', 'torchvision_v1')
  convert.convert(source, arch, path, out, **kwargs)
  return out


def _assert_close_to(logits: np.ndarray, reference: np.ndarray) -> None:
  """max |diff| <= 1e-4 x the logits' scale, on logits that are not degenerate."""
  scale = float(np.abs(reference).max())
  assert scale > 1 and np.ptp(reference, axis=-1).min() > 0.1 * scale
  diff = float(np.abs(logits - reference).max())
  assert diff <= 1e-4 * scale, f'max |diff| {diff:.3g} at logit scale {scale:.3g}'


# ----------------------------------------------------------------------------- name maps

@pytest.mark.parametrize('arch', ['resnet18', 'resnet34', 'resnet50', 'resnet101',
                                  'resnet152'])
def test_torchvision_map_covers_every_array_once(arch):
  names = convert.torchvision_names(arch)
  assert set(names) == set(_our_arrays(arch, 1000))  # Parameters and BatchNorm statistics.
  assert len(set(names.values())) == len(names)


@pytest.mark.parametrize('model', ['bit_r50x1', 'bit_r101x1'])
def test_bit_map_covers_every_parameter_once(model):
  names = convert.bit_names(model)
  assert set(names) == set(_our_arrays(model, 21843))
  assert len(set(names.values())) == len(names)


# ------------------------------------------- equivalence with torchvision's and timm's code

def _fixture_weights(fixture, key: str) -> tuple[list, dict[str, np.ndarray]]:
  names_shapes = list(zip(fixture[f'{key}.names'].tolist(),
                          json.loads(str(fixture[f'{key}.shapes']))))
  weights = torch_reference.random_state_dict(names_shapes, seed=0)
  assert torch_reference.checksum(weights) == pytest.approx(
      float(fixture[f'{key}.checksum']), rel=1e-12), 'numpy drew other weights than the fixture'
  return names_shapes, weights


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """The fixture's ResNet-18 (torchvision's names and shapes, 1,000 classes, numpy-drawn
  weights) converted into a workdir at 33 px: the equivalence test and every workdir test
  below use it."""
  names_shapes, weights = _fixture_weights(np.load(FIXTURE), 'torchvision_resnet18')
  assert ('layer1.0.bn1.num_batches_tracked', ()) in [(n, tuple(s)) for n, s in names_shapes]
  out = _convert(tmp_path_factory.mktemp('converted'), weights, 'resnet18',
                 eval_transform='torchvision_v2', image_size=33)
  return out, weights


@pytest.fixture(scope='module')
def loaded(converted):
  """The converted workdir as --mode=eval/predict/export load it."""
  return inference.load(converted[0], inference.read_config(converted[0]))


def test_resnet18_workdir_computes_torchvision_logits(loaded):
  """torchvision's own logits for these weights (tests/fixtures/make_torchvision_logits.py
  computed them), against the converted workdir."""
  fixture = np.load(FIXTURE)
  _assert_close_to(loaded.logits(fixture['images']), fixture['torchvision_resnet18.logits'])


def test_resnet50_conversion_computes_torchvision_and_timm_logits():
  """The bottleneck layout against torchvision's and timm's logits. The workdir around the
  arrays is the ResNet-18 test's; here they go straight into the model (by the same
  `place_arrays`), which spares two ~10 s compilations of a ResNet-50 initialiser."""
  from vision_jax.data.preprocess import normalize  # pylint: disable=g-import-not-at-top
  fixture = np.load(FIXTURE)
  names_shapes, weights = _fixture_weights(fixture, 'torchvision_resnet50')
  arrays = convert.convert_torchvision(weights, 'resnet50')
  graphdef, params, rest = nnx.split(
      nnx.eval_shape(lambda: models.create_model('resnet50', 10)), nnx.Param, ...)
  model = nnx.merge(graphdef, *convert.place_arrays(arrays, params, rest))
  images = normalize(fixture['images'], convert.IMAGENET_MEAN, convert.IMAGENET_STD)
  logits = np.asarray(model(images, train=False))
  _assert_close_to(logits, fixture['torchvision_resnet50.logits'])
  if 'timm_resnet50.names' in fixture:  # timm lists the same names: the same weights go in.
    assert _fixture_weights(fixture, 'timm_resnet50')[0] == names_shapes
    _assert_close_to(logits, fixture['timm_resnet50.logits'])


def _torch_model(name: str):
  torch = pytest.importorskip('torch')
  if name.startswith('timm_'):
    model = pytest.importorskip('timm').create_model(name[5:], num_classes=1000)
  else:
    model = getattr(pytest.importorskip('torchvision').models, name)(weights=None)
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):  # Eval-mode BN must matter.
        module.running_mean.normal_(0, 0.2, generator=generator)
        module.running_var.uniform_(0.5, 2.0, generator=generator)
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.normal_(0, 0.2, generator=generator)
  return torch, model.eval()


@pytest.mark.parametrize('name,file_type', [('resnet18', '.pth'), ('resnet50', '.safetensors'),
                                            ('timm_resnet50', '.safetensors')])
def test_logits_equal_torchvision_run_here(name, file_type, tmp_path):
  """The full comparison, when torch and torchvision (and timm) are installed."""
  torch, model = _torch_model(name)
  path = str(tmp_path / f'weights{file_type}')
  if file_type == '.pth':
    torch.save(model.state_dict(), path)
  else:
    import safetensors.torch  # pylint: disable=g-import-not-at-top
    safetensors.torch.save_file(model.state_dict(), path)
  out = str(tmp_path / 'converted')
  source, arch = ('timm', name[5:]) if name.startswith('timm_') else ('torchvision', name)
  convert.convert(source, arch, path, out, eval_transform='torchvision_v2', image_size=64)
  images = torch_reference.random_images(seed=2, count=3, size=64)
  with torch.no_grad():
    reference = model(torch.from_numpy(torch_reference.torch_input(images))).numpy()
  loaded = inference.load(out, inference.read_config(out))
  _assert_close_to(loaded.logits(images), reference)


# ----------------------------------------------------------------------------- bad input

def test_resnet50_file_as_resnet18_names_the_right_arch(tmp_path):
  with pytest.raises(convert.ConversionError) as e:
    _convert(tmp_path, _state_dict('resnet50', 10), 'resnet18')
  message = str(e.value)
  assert 'pass --arch resnet50' in message and '\n' not in message
  assert 'layer1.0.conv3.weight' in message  # Every left-over tensor is listed ...
  assert 'layer1.0.conv1.weight (64, 64, 1, 1) (wants (64, 64, 3, 3))' in message  # ... shapes.
  assert not os.path.exists(tmp_path / 'resnet18_converted')


def test_non_resnet_and_partial_state_dicts_list_each_tensor(tmp_path):
  vgg = {'features.0.weight': np.zeros((64, 3, 3, 3), np.float32),
         'classifier.6.weight': np.zeros((1000, 4096), np.float32)}
  with pytest.raises(convert.ConversionError, match='not a torchvision-layout ResNet at all'
                     ) as e:
    convert.convert_torchvision(vgg, 'resnet18')
  assert 'no place in resnet18: classifier.6.weight, features.0.weight.' in str(e.value)
  assert '102 tensors resnet18 needs are missing' in str(e.value)
  partial = _state_dict('resnet18')
  del partial['layer3.1.bn2.running_var']
  with pytest.raises(convert.ConversionError,
                     match=r'1 tensors resnet18 needs are missing: layer3\.1\.bn2\.running_var\.'):
    convert.convert_torchvision(partial, 'resnet18')


def test_truncated_or_foreign_files(tmp_path):
  path = tmp_path / 'w.safetensors'
  save_file(_state_dict('resnet18', 10), str(path))
  path.write_bytes(path.read_bytes()[:100_000])
  with pytest.raises(convert.ConversionError, match='truncated or not a safetensors file'):
    convert.read_weights(str(path))
  np.savez(tmp_path / 'bit.npz', a=np.zeros(50_000, np.float32))
  (tmp_path / 'cut.npz').write_bytes((tmp_path / 'bit.npz').read_bytes()[:1000])
  with pytest.raises(convert.ConversionError, match='truncated or not an .npz archive'):
    convert.read_weights(str(tmp_path / 'cut.npz'))
  (tmp_path / 'w.h5').write_bytes(b'x')
  with pytest.raises(convert.ConversionError, match=r"unknown file type '\.h5'"):
    convert.read_weights(str(tmp_path / 'w.h5'))


def test_pth_without_torch_names_the_safetensors_route(tmp_path, monkeypatch):
  (tmp_path / 'w.pth').write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now raises ImportError.
  with pytest.raises(convert.ConversionError, match='needs torch.*safetensors.torch.save_file'):
    convert.read_weights(str(tmp_path / 'w.pth'))


def test_pth_is_read_with_weights_only(tmp_path):
  torch = pytest.importorskip('torch')
  weights = _state_dict('resnet18', 10)
  torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, tmp_path / 'w.pth')
  read = convert.read_weights(str(tmp_path / 'w.pth'))
  assert read.keys() == weights.keys()
  np.testing.assert_array_equal(read['layer2.0.conv1.weight'], weights['layer2.0.conv1.weight'])
  torch.save({'state_dict': {}, 'epoch': 3}, tmp_path / 'ckpt.pth')
  with pytest.raises(convert.ConversionError, match="does not hold a state dict of tensors"):
    convert.read_weights(str(tmp_path / 'ckpt.pth'))
  (tmp_path / 'cut.pth').write_bytes((tmp_path / 'w.pth').read_bytes()[:5000])
  with pytest.raises(convert.ConversionError, match=r'torch\.load\(weights_only=True\)'):
    convert.read_weights(str(tmp_path / 'cut.pth'))


def test_cli_prints_one_paragraph_and_exits_2(tmp_path):
  save_file(_state_dict('resnet18', 10), str(tmp_path / 'w.safetensors'))
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'keep.txt').write_text('mine')
  cases = [(['--eval_transform', 'torchvision_v1', '--output', str(tmp_path / 'taken')],
            'is not an empty directory'),
           (['--output', str(tmp_path / 'new')], 'Pass --eval_transform for torchvision'),
           (['--eval_transform', 'torchvision_v1', '--output', str(tmp_path / 'new'),
             '--class_names', str(tmp_path / 'taken' / 'keep.txt')], 'has 1 lines')]
  for extra, expected in cases:
    proc = subprocess.run([sys.executable, '-m', 'vision_jax.convert', 'torchvision',
                           '--arch', 'resnet18', '--weights', str(tmp_path / 'w.safetensors'),
                           *extra], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith('error: ') and expected in proc.stderr
    assert proc.stderr.count('\n') == 1, proc.stderr
  assert (tmp_path / 'taken' / 'keep.txt').read_text() == 'mine'
  assert not (tmp_path / 'new').exists()


# ------------------------------------------------------- the output is a finished workdir

def test_workdir_files_describe_the_weights(converted):
  out, _ = converted
  dataset = json.loads(open(os.path.join(out, 'dataset.json')).read())
  config = inference.read_config(out)
  assert config.model.name == 'resnet18' and config.dataset.name == 'imagenet2012'
  assert dataset['mean'] == list(convert.IMAGENET_MEAN) == list(config.dataset.mean)
  transform = dataset['eval_transform']
  assert transform['name'] == config.dataset.eval_preprocess == 'torchvision_v2'
  assert dataset['image_size'] == transform['image_size'] == 33
  assert transform['exact'] and transform['resize_size'] == 33 * 232 // 224
  assert 'resize the shorter side to 34' in transform['description']
  synsets = convert.imagenet_synsets()
  assert synsets is not None and synsets[:2] == ['n01440764', 'n01443537']  # tench, goldfish.
  assert dataset['class_names'] == synsets and synsets == sorted(synsets)
  provenance = json.loads(open(os.path.join(out, 'conversion.json')).read())
  assert provenance['ignored'] == sorted(k for k in converted[1]
                                         if k.endswith('num_batches_tracked'))


def test_eval_transforms_reproduce_the_weights_own():
  timm, note = convert._eval_transform('timm_rsb', 'timm', None, None)  # pylint: disable=protected-access
  assert timm == EvalTransform('timm', 224, crop_fraction=0.95, interpolation='bicubic',
                               channels=3) and timm.exact
  assert 'a1_in1k' in note and 'PIL bicubic' in note and 'Resize(235)' in note
  given, _ = convert._eval_transform(None, 'timm', 288, 1.0)  # pylint: disable=protected-access
  assert (given.name, given.image_size, given.resize_size) == ('timm', 288, 288)
  assert given.interpolation == 'bicubic'  # timm's default; torchvision weights: bilinear.
  other, _ = convert._eval_transform(None, 'torchvision', None, 0.9, 'lanczos')  # pylint: disable=protected-access
  assert (other.crop_fraction, other.interpolation) == (0.9, 'lanczos')
  bit, note = convert._eval_transform(None, 'bit', None, None)  # pylint: disable=protected-access
  assert bit.name == 'resize' and not bit.exact and 'fast approximation' in note
  with pytest.raises(convert.ConversionError, match='--crop_fraction=1.5'):
    convert._eval_transform('timm', 'timm', None, 1.5)  # pylint: disable=protected-access
  with pytest.raises(convert.ConversionError, match='--crop_fraction cannot change '
                     '--eval_transform=torchvision_v1'):
    convert._eval_transform('torchvision_v1', 'torchvision', None, 0.9)  # pylint: disable=protected-access


def test_place_arrays_on_plain_nested_dicts_and_lists():
  """The layout the state may take besides nnx.State: plain containers of arrays."""
  params = {'blocks': [{'conv1': {'kernel': np.zeros((1, 1, 2, 3), np.float32)}}],
            'head': {'bias': np.zeros(3, np.float32)}}
  rest = {'stem_bn': {'mean': np.zeros(2, np.float32)}, 'rngs': np.zeros(2, np.uint32)}
  arrays = {'blocks/0/conv1/kernel': np.ones((1, 1, 2, 3)), 'head/bias': np.arange(3.0),
            'stem_bn/mean': np.full(2, 7.0)}
  params, rest = convert.place_arrays(arrays, params, rest)
  assert params['blocks'][0]['conv1']['kernel'].dtype == np.float32
  np.testing.assert_array_equal(params['head']['bias'], [0, 1, 2])
  np.testing.assert_array_equal(rest['stem_bn']['mean'], [7, 7])
  with pytest.raises(convert.ConversionError, match=r"without a place \['extra'\]"):
    convert.place_arrays({**arrays, 'extra': np.zeros(1)}, params, rest)


def test_checkpoint_holds_the_converted_arrays(converted):
  out, weights = converted
  step, raw = checkpoint.read_state(out)
  assert step == 0
  flat = {}
  for part in ('params', 'rest'):
    for path, leaf in jax.tree_util.tree_flatten_with_path(raw['parts']['model'][part])[0]:
      flat[optim.param_path(path).removesuffix('/value')] = np.asarray(leaf)
  np.testing.assert_array_equal(flat['stem_conv/kernel'],
                                weights['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat['head/kernel'], weights['fc.weight'].T)
  np.testing.assert_array_equal(flat['blocks/2/proj_bn/var'],
                                weights['layer2.0.downsample.1.running_var'])
  np.testing.assert_array_equal(flat['blocks/7/bn2/scale'], weights['layer4.1.bn2.weight'])


def test_predict_and_export_through_the_cli(converted, loaded, data_dir, tmp_path):
  out, _ = converted
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = torch_reference.random_images(seed=3, count=2, size=40)
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f'{i}.png')
  proc = run_cli(['--mode=predict', '--workdir', out, '--images', str(tmp_path), '--top_k',
                  '2', '--output', str(tmp_path / 'preds.json')], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  preds = json.loads((tmp_path / 'preds.json').read_text())
  assert [p['top_k'][0]['label'][0] for p in preds] == ['n', 'n']  # Synset labels.
  proc = run_cli(['--mode=export', '--workdir', out], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  from vision_jax import export  # pylint: disable=g-import-not-at-top
  served = export.load(os.path.join(out, 'export'))
  batch = torch_reference.random_images(seed=4, count=5, size=33)
  expected = loaded.logits(batch)
  np.testing.assert_allclose(served(batch), expected, atol=1e-5 * np.abs(expected).max(),
                             rtol=0)
  # Both state and run the workdir's exact transform (40 px -> shorter side 34 -> crop 33).
  recorded = json.loads(open(os.path.join(out, 'dataset.json')).read())['eval_transform']
  assert served.metadata['input']['preprocessing']['name'] == 'torchvision_v2'
  assert all(p['preprocessing'] == recorded for p in preds)
  transform = EvalTransform.from_json(recorded)
  for image, pred in zip(images, preds):
    prepared = served.prepare(image)
    np.testing.assert_array_equal(prepared, transform(image))
    probs = served.probabilities(prepared)
    np.testing.assert_allclose([t['probability'] for t in pred['top_k']],
                               [probs[t['index']] for t in pred['top_k']], atol=2e-5)


def test_eval_mode_reads_the_workdir(monkeypatch, converted, tmp_path):
  """--mode=eval's code on the converted workdir as it is (imagenet2012 mocked)."""
  import shutil  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vision_jax import evaluate  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'copy')
  shutil.copytree(converted[0], out)
  config = inference.read_config(out)
  config.dataset.download = True  # The mock is never "prepared" ...
  from vision_jax.data import sources  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sources, '_check_online', lambda name, data_dir: None)  # ... nor online.
  config.eval.batch_size = 8
  with tfds.testing.mock_data(num_examples=10):
    results = evaluate.run(config, out)
  assert results['step'] == 0 and results['eval']['validation']['num_examples'] == 10


def test_init_from_accepts_the_workdir(converted):
  """config.init_from.checkpoint=DIR: every array but the new 10-way head loads."""
  from vision_jax import config as config_lib, finetune, parallel, tasks, train_state  # pylint: disable=g-import-not-at-top
  out, weights = converted
  config = config_lib.base_config()
  config.model.name, config.model.fast_cpu_ops = 'resnet18', 'off'
  config.init_from.checkpoint = out
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  structure, state = train_state.create(
      tasks.build(config), mesh, num_classes=10, image_size=33, in_channels=3,
      steps_per_epoch=1)
  state, report = finetune.init_from_checkpoint(config, state, structure)
  assert report['reinitialized'] == ['head/bias', 'head/kernel']
  assert report['counts']['loaded'] == 100  # 60 parameters, 40 BatchNorm statistics.
  assert report['unused_from_checkpoint'] == ['head/bias', 'head/kernel']
  params = {optim.param_path(p): x
            for p, x in jax.tree_util.tree_flatten_with_path(state.parts['model'].params)[0]}
  np.testing.assert_array_equal(np.asarray(params['blocks/5/conv1/kernel']),
                                weights['layer3.1.conv1.weight'].transpose(2, 3, 1, 0))


# ----------------------------------------------------------------------------- BiT

def test_bit_npz_round_trip_lands_each_tensor_where_it_belongs(tmp_path):
  ours = _our_arrays('bit_r50x1', 10)  # A small head keeps the state small; names as BiT-M's.
  rng = np.random.default_rng(0)
  npz, expected = {}, {}
  for path, theirs in convert.bit_names('bit_r50x1').items():
    value = rng.standard_normal(ours[path]).astype(np.float32)
    expected[path] = value
    npz[theirs] = value.reshape(1, 1, *value.shape) if path == 'head/kernel' else value
  np.savez(tmp_path / 'BiT-M-R50x1.npz', **npz)
  out = str(tmp_path / 'converted')
  convert.convert('bit', 'bit_r50x1', str(tmp_path / 'BiT-M-R50x1.npz'), out)
  step, restored = checkpoint.read_state(out)
  flat = {optim.param_path(p).removesuffix('/value'): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(restored['parts']['model']['params'])[0]}
  assert step == 0 and flat.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(flat[path], value, err_msg=path)
  dataset = json.loads(open(os.path.join(out, 'dataset.json')).read())
  assert dataset['num_classes'] == 10 and dataset['eval_transform']['name'] == 'resize'
  assert dataset['mean'] == [0.5] * 3


def test_bit_wrong_file_is_a_clear_error():
  with pytest.raises(UserError, match='needs are missing.*have no place in bit_r50x1: x'):
    convert.convert_bit({'resnet/root_block/standardized_conv2d/kernel': np.zeros(1),
                         'x': np.zeros(1)}, 'bit_r50x1')
  with pytest.raises(UserError, match='not a BiT model'):
    convert.bit_names('resnet50')


# ----------------------------------------------------------------------------- the recipe

def test_finetune_recipe_builds_and_documents_the_three_commands():
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  path = 'configs/finetune_cifar10_from_torchvision_resnet50.py'
  module = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
      'recipe', os.path.join(REPO, path))
  config = module.get_config()
  config_lib.validate(config, num_devices=1)
  assert config.model.name == 'resnet50' and config.init_from.skip == ('head/.*',)
  doc = module.__doc__
  for command in ('safetensors.torch.save_file(torchvision.models.resnet50(',
                  'python -m vision_jax.convert torchvision --arch resnet50',
                  f'python -m vision_jax.main --config {path}'):
    assert command in doc
  assert config.init_from.checkpoint in doc  # Convert writes where the recipe reads.
