"""Segmentation models: dilated backbones, FCN / DeepLabv3 heads, torchvision equivalence.

ResNet-50-sized models are only built abstractly (`nnx.eval_shape`) or, for the torchvision
comparison, filled with the fixture's weights (no initialiser compiled); anything trained
is a shallow subclass at width 8.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch_reference
from flax import nnx
from jax import lax

from vision_jax import convert
from vision_jax import losses
from vision_jax import models
from vision_jax import ops
from vision_jax.data.preprocess import normalize
from vision_jax.errors import ConfigError
from vision_jax.models import bit, layers, resnet, segmentation

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures',
                       'torchvision_segmentation_logits.npz')
SEGMENTERS = [n for n in models.list_models() if models.model_task(n) == 'segmentation']


class TinyBottleneck(resnet.ResNet):
  STAGES, BLOCK = (1, 1, 2, 2), 'bottleneck'


class TinyBasic(resnet.ResNet):
  STAGES, BLOCK = (1, 1, 2, 2), 'basic'


class TinyBiT(bit.BiTResNet):
  STAGES = (1, 1, 1, 1)


class TinyCifar(resnet.ResNet):
  STAGES, BLOCK, STEM = (1, 1, 1), 'basic', 'cifar'


TinyFCN = segmentation.dense_model_class(TinyCifar, 'fcn')
TinyDeepLab = segmentation.dense_model_class(TinyCifar, 'deeplabv3')


def rngs(seed: int = 0) -> nnx.Rngs:
  return nnx.Rngs(jax.random.key(seed, impl='unsafe_rbg'))


def build(make) -> nnx.Module:
  """`make()` initialised in one jitted call (eager NNX init compiles one kernel per
  parameter shape: tens of seconds for a small ResNet on 2 shared cores)."""
  graphdef = nnx.split(nnx.eval_shape(make))[0]
  return nnx.merge(graphdef, jax.jit(lambda: nnx.split(make())[1])())


def jitted(method):
  """`method(model, x)` under jax.jit (eager NNX compiles op by op: slow on the CPU)."""
  def run(model, x):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: method(nnx.merge(graphdef, s), x))(state, x)
  return run


features = jitted(lambda m, x: m.features(x, train=False))
logits = jitted(lambda m, x: m(x, train=False))


def shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """{path: shape} of every array of a model (parameters and statistics)."""
  from vision_jax import optim  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
  return {optim.param_path(p): tuple(x.shape) for p, x in leaves
          if not optim.param_path(p).split('/')[-2:-1] == ['rngs']
          and '/rngs/' not in f'/{optim.param_path(p)}/'}


# --- Dilated convolution ------------------------------------------------------------------

@pytest.mark.parametrize('fast', [False, True])
def test_dilated_conv_equals_lax_rhs_dilation(fast):
  """layers.conv with kernel_dilation (on XLA's kernels or the CPU fast path's) computes
  lax.conv_general_dilated with rhs_dilation, forward and input/weight gradients."""
  kernels = ops.choose(True, platform='cpu') if fast else ops.XLA
  conv = layers.conv(5, 7, 3, padding=((2, 2), (2, 2)), kernel_dilation=2, use_bias=False,
                     kernels=kernels, rngs=rngs())
  x = jax.random.normal(jax.random.key(1), (2, 9, 11, 5))
  graphdef, w = nnx.split(conv)[0], conv.kernel[...]

  def ours(x, w):
    return jnp.sum(jnp.sin(nnx.merge(graphdef, {'kernel': w})(x)))

  def reference(x, w):
    y = lax.conv_general_dilated(x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(jnp.sin(y))

  np.testing.assert_allclose(ours(x, w), reference(x, w), rtol=1e-5)
  for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(reference, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --- Backbones: features, output stride ---------------------------------------------------

@pytest.mark.parametrize('make', [lambda: TinyBottleneck(5, width=8, rngs=rngs()),
                                  lambda: TinyBiT(5, rngs=rngs())])
def test_features_pooled_through_head_is_call(make):
  model = build(make)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  maps, pooled, out = jitted(lambda m, x: (
      m.features(x), m.head(jnp.mean(m.features(x), axis=(1, 2))), m(x)))(model, x)
  assert maps.shape == (2, 1, 1, model.num_features)
  np.testing.assert_allclose(pooled, out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('cls', [TinyBottleneck, TinyBasic])
def test_dilated_backbone_is_the_strided_one_at_every_strided_position(cls):
  """The atrous identity: with the same weights, in eval mode, the map at output stride 16
  (8) sampled every 2nd (4th) pixel is the stride-32 map, exactly up to float rounding.
  A wrong dilation or padding anywhere in the last stages breaks it."""
  strided = build(lambda: cls(5, width=8, rngs=rngs()))
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  reference = features(strided, x)
  assert reference.shape == (2, 2, 2, strided.num_features)
  for output_stride, step in ((16, 2), (8, 4)):
    abstract = nnx.eval_shape(lambda: cls(5, width=8, output_stride=output_stride,
                                          rngs=rngs()))
    assert shapes(abstract) == shapes(strided)
    dilated = nnx.merge(nnx.split(abstract)[0], nnx.state(strided))  # The same weights.
    dense = features(dilated, x)
    assert dense.shape == (2, 64 // output_stride, 64 // output_stride, strided.num_features)
    np.testing.assert_allclose(dense[:, ::step, ::step], reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name,size', [('resnet50', 64), ('bit_r50x1', 64),
                                       ('cifar_resnet18', 32)])
def test_output_stride_keeps_every_parameter_path_and_shape(name, size):
  own = 8 if name.startswith('cifar') else 32
  reference = shapes(nnx.eval_shape(lambda: models.create_model(name, 10)))
  for output_stride in (own, own // 2, own // 4):
    model = nnx.eval_shape(lambda: models.create_model(name, 10, output_stride=output_stride))
    assert shapes(model) == reference
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).features(x), state,
                         jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    assert out.shape[1:3] == (size // output_stride, size // output_stride)


def test_unsupported_output_stride_names_the_key_and_the_choices():
  with pytest.raises(ConfigError, match=r'config.model.output_stride=4 .* 32, 16, 8'):
    nnx.eval_shape(lambda: models.create_model('resnet18', 10, output_stride=4))
  with pytest.raises(ConfigError, match=r'8, 4, 2'):
    nnx.eval_shape(lambda: models.create_model('fcn_cifar_resnet18', 10, output_stride=16))


# --- Segmentation models ------------------------------------------------------------------

# torchvision's counts with num_classes=21 and aux_loss=False (measured with torchvision
# 0.28: its documented 42,004,074 / 35,322,218 / 60,996,202 / 54,314,346 include the
# auxiliary FCN head on layer3, 2,365,205 parameters).
TORCHVISION_COUNTS = {'deeplabv3_resnet50': 39_638_869, 'fcn_resnet50': 32_957_013,
                      'deeplabv3_resnet101': 58_630_997, 'fcn_resnet101': 51_949_141}


@pytest.mark.parametrize('name', sorted(TORCHVISION_COUNTS))
def test_parameter_count_matches_torchvision(name):
  model = nnx.eval_shape(lambda: models.create_model(name, 21))
  assert models.count_params(model) == TORCHVISION_COUNTS[name]


@pytest.mark.parametrize('name', SEGMENTERS)
def test_contract_dense_float32_logits_at_the_input_size(name):
  model = nnx.eval_shape(lambda: models.create_model(name, 7))
  graphdef, state = nnx.split(model)
  for size in ((32, 32), (40, 24)):
    logits = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state,
                            jax.ShapeDtypeStruct((2, *size, 3), jnp.float32))
    assert (logits.shape, logits.dtype) == ((2, *size, 7), jnp.float32)
  assert not isinstance(model.head, nnx.Linear)


@pytest.mark.parametrize('name,backbone,kwargs', [
    ('deeplabv3_resnet50', 'resnet50', {}), ('fcn_resnet18', 'resnet18', {}),
    ('deeplabv3_bit_r50x1', 'bit_r50x1', {}),
    ('fcn_cifar_resnet18', 'cifar_resnet18', {'width': 16, 'in_channels': 1})])
def test_backbone_paths_are_the_classifiers_and_head_is_all_else(name, backbone, kwargs):
  """What fine-tuning from a classifier checkpoint relies on: every array outside 'head/'
  has the classifier's path and shape, so `init_from.skip=('head/.*',)` loads the whole
  backbone and re-initialises exactly the dense head."""
  ours = shapes(nnx.eval_shape(lambda: models.create_model(name, 11, **kwargs)))
  theirs = shapes(nnx.eval_shape(lambda: models.create_model(backbone, 10, **kwargs)))
  body = {p: s for p, s in ours.items() if not p.startswith('head/')}
  assert body == {p: s for p, s in theirs.items() if not p.startswith('head/')}
  assert len(ours) > len(body) and set(theirs) - set(body) == {'head/kernel', 'head/bias'}


def test_aspp_rates_follow_the_output_stride():
  rates = lambda name, **kw: [b.conv.kernel_dilation for b in nnx.eval_shape(
      lambda: models.create_model(name, 3, **kw)).head.aspp.branches]
  assert rates('deeplabv3_resnet50') == [1, 12, 24, 36]  # Output stride 8 by default.
  assert rates('deeplabv3_resnet50', output_stride=16) == [1, 6, 12, 18]
  assert rates('deeplabv3_bit_r50x1', aspp_rates=(2, 3)) == [1, 2, 3]
  assert rates('deeplabv3_cifar_resnet18') == [1, 4, 8, 12]  # Output stride 2.


def test_fcn_takes_no_aspp_rates_and_dropout_must_be_a_probability():
  with pytest.raises(ConfigError, match='aspp_rates'):
    nnx.eval_shape(lambda: models.create_model('fcn_resnet18', 3, aspp_rates=(1, 2, 3)))
  with pytest.raises(ConfigError, match='head_dropout=1.5'):
    nnx.eval_shape(lambda: models.create_model('fcn_resnet18', 3, head_dropout=1.5))


def test_classification_model_for_segmentation_names_the_key():
  with pytest.raises(ConfigError, match=r"config.model.name='convnet' .* no feature map") as e:
    models.check_model_task('convnet', 'segmentation')
  assert 'deeplabv3_resnet50' in str(e.value) and 'fcn_resnet50' in str(e.value)
  with pytest.raises(ConfigError, match=r"'fcn_resnet50' is a segmentation model") as e:
    models.check_model_task('fcn_resnet50', 'classification')
  assert 'resnet50' in str(e.value)
  models.check_model_task('deeplabv3_resnet50', 'segmentation')
  models.check_model_task('resnet50', 'classification')


def test_upsampling_equals_pytorch_bilinear_without_align_corners():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).standard_normal((2, 5, 7, 3)).astype(np.float32)
  ours = segmentation.upsample(jnp.asarray(x), (33, 41))
  theirs = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                           size=(33, 41), mode='bilinear',
                                           align_corners=False)
  np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), atol=1e-5)


# --- torchvision's own models -------------------------------------------------------------

def _head_names(head: str) -> dict[str, str]:
  """{our path: torchvision name} for the dense head (torchvision's nn.Sequential indices)."""
  bn = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}

  def block(ours: str, conv: str, norm: str) -> dict[str, str]:
    return {f'{ours}/conv/kernel': f'{conv}.weight',
            **{f'{ours}/norm/{o}': f'{norm}.{t}' for o, t in bn.items()}}

  names = {'head/classifier/kernel': 'classifier.4.weight',
           'head/classifier/bias': 'classifier.4.bias'}
  if head == 'fcn':
    return names | block('head/block', 'classifier.0', 'classifier.1')
  for i in range(4):
    names |= block(f'head/aspp/branches/{i}', f'classifier.0.convs.{i}.0',
                   f'classifier.0.convs.{i}.1')
  names |= block('head/aspp/pooling', 'classifier.0.convs.4.1', 'classifier.0.convs.4.2')
  names |= block('head/aspp/project', 'classifier.0.project.0', 'classifier.0.project.1')
  return names | block('head/block', 'classifier.1', 'classifier.2')


@pytest.mark.parametrize('name,kwargs', [('fcn_resnet50', {}),
                                         ('deeplabv3_resnet50', {'aspp_rates': (2, 4, 6)})])
def test_logits_equal_torchvision(name, kwargs):
  """torchvision's FCN / DeepLabv3 (output stride 8) for numpy-drawn weights
  (tests/fixtures/make_torchvision_segmentation_logits.py), against ours with them."""
  fixture = np.load(FIXTURE)
  names_shapes = list(zip(fixture[f'{name}.names'].tolist(),
                          json.loads(str(fixture[f'{name}.shapes']))))
  weights = torch_reference.random_state_dict(names_shapes, seed=0)
  assert torch_reference.checksum(weights) == pytest.approx(
      float(fixture[f'{name}.checksum']), rel=1e-12)
  names = {o: f'backbone.{t}' for o, t in convert.torchvision_names('resnet50').items()
           if not o.startswith('head/')}
  names |= _head_names(name.split('_')[0])
  used = set(names.values()) | {n for n in weights if n.endswith('num_batches_tracked')}
  assert used == set(weights)  # Every torchvision tensor has its place in ours.
  arrays = {}
  for ours, theirs in names.items():
    value = weights[theirs]
    arrays[ours] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
  graphdef, params, rest = nnx.split(
      nnx.eval_shape(lambda: models.create_model(name, 3, **kwargs)), nnx.Param, ...)
  params, rest = convert.place_arrays(arrays, params, rest)
  images = normalize(fixture['images'], convert.IMAGENET_MEAN, convert.IMAGENET_STD)
  ours = jax.jit(lambda p, r, x: nnx.merge(graphdef, p, r)(x, train=False))(
      params, rest, images)
  reference = fixture[f'{name}.logits']
  scale = float(np.abs(reference).max())
  diff = float(np.abs(np.asarray(ours) - reference).max())
  assert scale > 1 and diff <= 1e-4 * scale, f'max |diff| {diff:.3g} at logit scale {scale:.3g}'


# --- Training ---------------------------------------------------------------------------

@pytest.mark.parametrize('cls', [TinyFCN, TinyDeepLab])
def test_a_few_steps_fit_one_batch(cls):
  """Ten Adam steps on one batch of 16x16 label maps lower the pixel loss and move both the
  backbone and the head (gradients reach through the dilated stages and the upsampling)."""
  model = build(lambda: cls(4, width=8, in_channels=1, head_dropout=0.0, rngs=rngs()))
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
  labels = (x[..., 0] > 0).astype(jnp.int32) + 2 * (jnp.arange(16)[None, :, None] > 7)
  labels = labels.at[:, :2].set(255)  # Ignored rows.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, rest, opt_state):
    model = nnx.merge(graphdef, params, rest)
    loss_fn = lambda m: losses.mean_pixel_cross_entropy(m(x, train=True), labels)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state, loss

  start, opt_state, first = nnx.to_pure_dict(params), tx.init(params), None
  for _ in range(10):
    params, rest, opt_state, loss = step(params, rest, opt_state)
    first = loss if first is None else first
  params = nnx.to_pure_dict(params)
  assert float(loss) < 0.7 * float(first)
  moved = lambda tree: float(sum(jnp.abs(a - b).sum() for a, b in zip(
      jax.tree.leaves(tree[0]), jax.tree.leaves(tree[1]))))
  assert moved((start['stem_conv'], params['stem_conv'])) > 0
  assert moved((start['head'], params['head'])) > 0


def test_bfloat16_compute_returns_float32_logits():
  model = build(lambda: TinyDeepLab(3, width=8, dtype='bfloat16', rngs=rngs()))
  out = logits(model, jnp.ones((1, 16, 16, 3)))
  assert out.dtype == jnp.float32 and out.shape == (1, 16, 16, 3)
  assert model.head.classifier.kernel[...].dtype == jnp.float32


def test_any_registered_backbone_takes_a_dense_head_by_name():
  """'<head>_<backbone>' composes a head with a registered backbone that has a feature map,
  listed or not; its options are the backbone's and the head's; a backbone without a
  feature map is refused."""
  from vision_jax.config import base_config  # pylint: disable=g-import-not-at-top
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  assert models.known('deeplabv3_resnet34') and 'deeplabv3_resnet34' not in models.list_models()
  model = build(lambda: models.create_model('deeplabv3_resnet34', 5, rngs=rngs(), width=8,
                                            head_dropout=0.2))
  assert model.TASK == 'segmentation' and isinstance(model, resnet.ResNet34)
  out = jax.eval_shape(lambda: model(jnp.zeros((1, 64, 64, 3)), train=False))
  assert out.shape == (1, 64, 64, 5)
  assert isinstance(model.head, segmentation.DeepLabHead)
  config = base_config()
  config.task.name, config.model.name, config.model.widht = 'segmentation', 'fcn_resnet34', 8
  with pytest.raises(ConfigError, match="Did you mean 'width'"):
    config_lib.validate(config, num_devices=1)
  assert not models.known('fcn_convnet')
