"""Model zoo: parameter counts, shapes, train/eval behaviour, bf16, one train step each.

Big models are checked abstractly (`nnx.eval_shape`, `jax.eval_shape` of the jitted step):
nothing large is allocated or compiled. Each family also runs one real jitted step, on its
smallest registered member or on a shallow subclass of the same code.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vision_jax import models
from vision_jax import ops
from vision_jax.models import bit, cnn, resnet

# The classifiers; segmentation models have their own contract (test_segmentation_models.py).
CLASSIFIERS = [n for n in models.list_models() if models.model_task(n) == 'classification']

# torchvision's counts at 1,000 classes (and the papers' CIFAR models at 10).
TORCHVISION_COUNTS = {
    ('resnet18', 1000): 11_689_512,
    ('resnet34', 1000): 21_797_672,
    ('resnet50', 1000): 25_557_032,
    ('resnet101', 1000): 44_549_160,
    ('resnet152', 1000): 60_192_808,
    ('alexnet', 1000): 61_100_840,
    ('cifar_resnet18', 10): 11_173_962,
    ('wide_resnet28_10', 10): 36_479_194,
}


class TinyBottleneckResNet(resnet.ResNet):
  STAGES, BLOCK = (1, 1), 'bottleneck'


class TinyBasicResNet(resnet.ResNet):
  STAGES, BLOCK, STEM = (1, 1), 'basic', 'cifar'


class TinyWideResNet(resnet.WideResNet):
  DEPTH, WIDEN = 10, 1


class TinyBiT(bit.BiTResNet):
  STAGES, WIDTH_FACTOR = (1, 1), 1


def fast_rngs(seed: int = 0) -> nnx.Rngs:
  """Rngs over 'unsafe_rbg' keys. Eager init compiles one small kernel per parameter shape
  on XLA:CPU; rbg's kernel compiles several times faster than threefry's."""
  return nnx.Rngs(jax.random.key(seed, impl='unsafe_rbg'))


@functools.lru_cache(maxsize=None)
def abstract_model(name: str, num_classes: int = 10, image_size: int = 224) -> nnx.Module:
  return nnx.eval_shape(lambda: models.create_model(name, num_classes, image_size=image_size))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
  """The DESIGN's functional step: merge inside jit, nnx.value_and_grad, split again."""
  @jax.jit
  def step(params, rest, opt_state, images, labels):
    model = nnx.merge(graphdef, params, rest)

    def loss_fn(model):
      logits = model(images, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state, loss, logits
  return step


def run_step(model: nnx.Module, size: int, channels: int, *, abstract: bool = False):
  """One SGD-momentum step on a batch of 2; abstract=True only traces it."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.sgd(0.1, momentum=0.9)
  images = jax.random.normal(jax.random.key(1), (2, size, size, channels))
  labels = jnp.array([1, 2])
  step = make_train_step(graphdef, tx)
  if abstract:
    return jax.eval_shape(step, params, rest, jax.eval_shape(tx.init, params), images, labels)
  return params, step(params, rest, tx.init(params), images, labels)


# --- Parameter counts -------------------------------------------------------------------

@pytest.mark.parametrize('name,num_classes', sorted(TORCHVISION_COUNTS))
def test_parameter_count_matches_reference(name, num_classes):
  model = abstract_model(name, num_classes)
  assert models.count_params(model) == TORCHVISION_COUNTS[name, num_classes]


def test_count_excludes_batch_stats_and_overview_totals():
  model = abstract_model('cifar_resnet18')
  overview = models.parameter_overview(model)
  assert 'head/kernel' in overview and '(512, 10)' in overview
  assert 'Total: 11,173,962 trainable parameters' in overview
  assert 'mean' not in overview.split('Total')[0]  # running stats are not rows...
  assert 'Plus 9,600 BatchNorm statistics' in overview  # ...but are reported apart.


# --- Registry and the model contract ----------------------------------------------------

def test_unknown_model_lists_known_names():
  with pytest.raises(ValueError, match='nope') as err:
    models.create_model('nope', 10)
  for name in models.list_models():
    assert name in str(err.value)


def test_image_size_goes_only_to_models_that_take_it():
  convnet = nnx.eval_shape(lambda: models.create_model('convnet', 10, image_size=8,
                                                       in_channels=1))
  assert convnet.fc1.kernel.shape == (2 * 2 * 128, 1024)
  assert convnet.conv1.kernel.shape == (3, 3, 1, 64)
  net = nnx.eval_shape(lambda: models.create_model('resnet18', 10, image_size=8,
                                                   in_channels=1))
  assert net.stem_conv.kernel.shape == (7, 7, 1, 64)


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_contract_head_and_abstract_forward(name):
  """Every model: a top-level nnx.Linear `head`; float32 (N, classes) logits in eval
  mode, at 8px too (the digits). Train mode: see the train-step tests."""
  model = abstract_model(name, 10, 8)
  assert isinstance(model.head, nnx.Linear)
  graphdef, state = nnx.split(model)
  logits = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state,
                          jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32))
  assert (logits.shape, logits.dtype) == ((2, 10), jnp.float32)


def test_alexnet_sizes_follow_torchvision_at_224_and_shrink_at_small_inputs():
  assert abstract_model('alexnet', 1000).fc1.kernel.shape == (6 * 6 * 256, 4096)
  assert abstract_model('alexnet', 10, 32).fc1.kernel.shape == (256, 4096)
  with pytest.raises(ValueError, match='at least 7x7'):
    models.create_model('alexnet', 10, image_size=4)


# --- One jitted train step per registered model -----------------------------------------

# (model, image size, channels) run for real: the cheap registered members and a shallow
# subclass of each family whose smallest member is too slow to compile on 2 CPU cores.
REAL_STEPS = {
    'convnet': (lambda r: models.create_model('convnet', 10, image_size=8, in_channels=1,
                                              rngs=r), 8, 1),
    'alexnet': (lambda r: models.create_model('alexnet', 10, image_size=8, in_channels=1,
                                              hidden=256, rngs=r), 8, 1),
    'resnet_basic_cifar_stem': (lambda r: TinyBasicResNet(10, width=8, in_channels=1, rngs=r),
                                8, 1),
    'resnet_bottleneck_imagenet_stem': (lambda r: TinyBottleneckResNet(10, width=8, rngs=r),
                                        16, 3),
    'wide_resnet': (lambda r: TinyWideResNet(10, dropout_rate=0.3, rngs=r), 8, 3),
    'bit': (lambda r: TinyBiT(10, rngs=r), 16, 3),
}


@pytest.mark.parametrize('name', sorted(REAL_STEPS))
def test_real_train_step(name):
  build, size, channels = REAL_STEPS[name]
  params, (new_params, _, _, loss, logits) = run_step(build(fast_rngs()), size, channels)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.isfinite(float(loss))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new_params)
  assert any(jax.tree.leaves(changed))


# Tracing a train step is quadratic in depth with nnx.BatchNorm (flax 0.12.8 + jax 0.10.2:
# each running-stat update asks a tracer for `.sharding`, whose error message scans every
# equation traced so far): ~10 s for resnet152 and ~25 s for resnet200 on 2 CPU cores.
# Their code is resnet50/101's with longer stages, so they run on request only.
DEEP = ('resnet152', 'resnet200')
SLOW = os.environ.get('VISION_JAX_SLOW_TESTS') == '1'


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.skipif(n in DEEP and not SLOW, reason=(
        'quadratic BatchNorm tracing; set VISION_JAX_SLOW_TESTS=1 to run')))
    for n in CLASSIFIERS if n not in REAL_STEPS])
def test_abstract_train_step(name):
  """The same jitted step, traced (not compiled), for the members too big for a CPU test."""
  new_params, _, _, loss, logits = run_step(abstract_model(name, 10, 8), 8, 3, abstract=True)
  assert (loss.shape, logits.shape, logits.dtype) == ((), (2, 10), jnp.float32)
  params = nnx.state(abstract_model(name, 10, 8), nnx.Param)
  assert jax.tree.map(lambda x: x.shape, new_params) == jax.tree.map(lambda x: x.shape, params)


# --- Train/eval behaviour ---------------------------------------------------------------

def test_batchnorm_statistics_move_in_train_mode_only():
  model = TinyBasicResNet(10, width=8, rngs=fast_rngs())
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3)) * 3 + 1
  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
  model(x, train=False)
  after_eval = nnx.state(model, nnx.BatchStat)
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, before, after_eval)))
  model(x, train=True)
  after_train = nnx.state(model, nnx.BatchStat)
  assert not any(jax.tree.leaves(jax.tree.map(jnp.array_equal, before, after_train)))
  # Momentum 0.9: one step moves the stem's running mean 10% of the way to the batch mean.
  batch_mean = jnp.mean(model.stem_conv(x), axis=(0, 1, 2))
  np.testing.assert_allclose(model.stem_bn.mean[...], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)


def test_dropout_follows_train_flag():
  model = TinyWideResNet(10, dropout_rate=0.5, rngs=fast_rngs())
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  np.testing.assert_array_equal(model(x), model(x))
  # Train mode normalises with batch statistics, so only the dropout masks differ.
  assert not np.allclose(model(x, train=True), model(x, train=True))


@pytest.mark.parametrize('block_cls,last', [(TinyBasicResNet, 'bn2'),
                                            (TinyBottleneckResNet, 'bn3'),
                                            (TinyWideResNet, 'bn2')])
def test_zero_init_residual_zeroes_last_norm_of_each_block(block_cls, last):
  kwargs = {'width': 8} if issubclass(block_cls, resnet.ResNet) else {}
  model = block_cls(10, zero_init_residual=True, rngs=fast_rngs(), **kwargs)
  for block in model.blocks:
    assert not np.any(getattr(block, last).scale[...])
  default = block_cls(10, rngs=fast_rngs(), **kwargs)
  assert np.all(getattr(default.blocks[0], last).scale[...] == 1)


def test_weight_standardisation_ignores_kernel_scale_and_shift():
  conv = bit.std_conv(8, 4, 3, fast_rngs(), jnp.float32, ops.XLA)
  x = jax.random.normal(jax.random.key(0), (1, 5, 5, 8))
  y = conv(x)
  conv.kernel[...] = conv.kernel[...] * jnp.array([2.0, 3.0, 0.5, 7.0]) + 1.0
  np.testing.assert_allclose(conv(x), y, rtol=1e-4, atol=1e-4)


# --- bf16 compute, fp32 parameters ------------------------------------------------------

BF16_CASES = {
    'convnet': lambda dtype: cnn.ConvNet(10, image_size=16, width=8, hidden=32, dtype=dtype,
                                         rngs=fast_rngs()),
    'alexnet': lambda dtype: cnn.AlexNet(10, image_size=16, hidden=64, dtype=dtype,
                                         rngs=fast_rngs()),
    # CIFAR stem: wide final maps. A batch of 2 at 1x1 would make train-mode BatchNorm
    # (x - mean) / std of two nearly equal numbers, amplifying any rounding.
    'resnet': lambda dtype: TinyBasicResNet(10, width=8, dtype=dtype, rngs=fast_rngs()),
    'wide_resnet': lambda dtype: TinyWideResNet(10, dtype=dtype, rngs=fast_rngs()),
    'bit': lambda dtype: TinyBiT(10, dtype=dtype, rngs=fast_rngs()),
}


@nnx.jit(static_argnames='train')
def _forward(model: nnx.Module, images: jax.Array, train: bool) -> jax.Array:
  return model(images, train=train)


@pytest.mark.parametrize('name', sorted(BF16_CASES))
def test_bfloat16_forward_matches_float32(name):
  fp32, bf16 = BF16_CASES[name]('float32'), BF16_CASES[name]('bfloat16')
  if name == 'bit':  # BiT's head starts at zero: give it weights so logits differ.
    for m in (fp32, bf16):
      m.head.kernel[...] = jax.random.normal(jax.random.key(2), m.head.kernel.shape) * 0.05
  for leaf in jax.tree.leaves(nnx.state(bf16, nnx.Param)):
    assert leaf.dtype == jnp.float32
  size = 16
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  for train in (False, True):  # BatchNorm on running and on batch statistics.
    want, got = _forward(fp32, x, train), _forward(bf16, x, train)
    assert got.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(want)))
    assert float(jnp.max(jnp.abs(got - want))) <= 0.05 * scale + 1e-3, (name, train)
