"""config.model.remat: the same loss, gradients and BatchNorm statistics as without it,
really recomputed (more FLOPs, less temporary memory in the compiled step), and a clear
error for a setting it does not know.

Steps are compiled with `ops.compiler_options(remat=True)`: without it XLA:CPU merges the
recomputation back into the forward pass (models/remat.py), and equality would hold
trivially.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vision_jax import config as config_lib
from vision_jax import models
from vision_jax import ops
from vision_jax import tasks
from vision_jax import train_state
from vision_jax.errors import ConfigError
from vision_jax.models import bit, resnet


class TwoStageBasic(resnet.ResNet):
  STAGES, BLOCK, STEM = (1, 1), 'basic', 'cifar'


class FourBlockBasic(resnet.ResNet):
  STAGES, BLOCK, STEM = (2, 2), 'basic', 'cifar'


class TinyWide(resnet.WideResNet):
  DEPTH, WIDEN = 10, 1


class TinyBiT(bit.BiTResNet):
  STAGES, WIDTH_FACTOR = (2,), 1  # A projected block, then an identity one.


def _rngs() -> nnx.Rngs:
  """unsafe_rbg keys: eager initialisation compiles a kernel per parameter shape, and
  rbg's compile several times faster than threefry's on XLA:CPU."""
  return nnx.Rngs(jax.random.key(0, impl='unsafe_rbg'))


def _numbers(tree):
  """Arrays of `tree` with RNG keys as their raw data (for comparing them)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x, tree)


def _step(graphdef: nnx.GraphDef, compile_for_cpu: bool = True):
  """(loss, gradients, updated non-parameter state) of one training-mode forward pass,
  jitted with the options under which XLA:CPU keeps remat (or the plain function)."""
  def step(params, rest, images, labels):
    model = nnx.merge(graphdef, params, rest)

    def loss_fn(model):
      logits = model(images, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    return loss, nnx.to_pure_dict(grads), nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])
  if not compile_for_cpu:
    return step
  return jax.jit(step, compiler_options=ops.compiler_options(remat=True))


@functools.cache
def _initial(case: str):
  """(params, rest) of CASES[case], initialised in one jitted call (eagerly, each
  parameter shape would compile its own kernel). remat changes the graph, not these."""
  build, _ = CASES[case]
  return jax.jit(lambda: tuple(
      nnx.to_pure_dict(s) for s in nnx.split(build('none'), nnx.Param, ...)[1:]))()


@functools.cache
def _run(case: str, remat: str):
  """((loss, grads, new state), initial state, FLOPs of the compiled step)."""
  build, size = CASES[case]
  graphdef = nnx.split(nnx.eval_shape(lambda: build(remat)), nnx.Param, ...)[0]
  params, rest = _initial(case)
  images = jax.random.normal(jax.random.key(1), (4, size, size, 3)) * 2 + 0.5
  labels = jnp.array([0, 1, 2, 3])
  compiled = _step(graphdef).lower(params, rest, images, labels).compile()
  loss, grads, new_rest = compiled(params, rest, images, labels)
  return (loss, grads, _numbers(new_rest)), _numbers(rest), compiled.cost_analysis()['flops']


CASES = {
    'resnet_basic': (lambda r: TwoStageBasic(10, width=8, remat=r, rngs=_rngs()), 8),
    'resnet_basic_cpu_fast_path': (
        lambda r: TwoStageBasic(10, width=8, remat=r, rngs=_rngs(),
                                kernels=ops.choose('on', platform='cpu')), 8),
    'wide_resnet_dropout': (lambda r: TinyWide(10, dropout_rate=0.3, remat=r,
                                               rngs=_rngs()), 8),
    'bit': (lambda r: TinyBiT(10, remat=r, rngs=_rngs()), 16),
}


@pytest.mark.parametrize('case,remat', [(c, 'blocks') for c in sorted(CASES)] +
                         [('resnet_basic', 'dots_with_no_batch_dims_saveable')])
def test_remat_equals_no_remat(case, remat):
  (loss, grads, rest), initial, flops = _run(case, 'none')
  (loss_r, grads_r, rest_r), _, flops_r = _run(case, remat)
  assert flops_r > flops  # The blocks' forward pass really runs again.
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grads_r, grads)
  # Updated BatchNorm statistics (and dropout RNG state): the same, and they did move.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               rest_r, rest)
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), rest, initial)
  assert any(jax.tree.leaves(moved)) or case == 'bit'  # BiT has no BatchNorm.


def test_remat_lowers_temporary_memory_of_the_compiled_step():
  """XLA's buffer assignment of the compiled step: recomputing blocks keeps fewer
  activations alive between the forward and the backward pass."""
  temp = {}
  for remat in ('none', 'blocks'):
    model = nnx.eval_shape(lambda: FourBlockBasic(10, width=8, remat=remat, rngs=_rngs()))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    images = jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((8,), jnp.int32)
    compiled = _step(graphdef).lower(nnx.to_pure_dict(params), nnx.to_pure_dict(rest),
                                     images, labels).compile()
    temp[remat] = compiled.memory_analysis().temp_size_in_bytes
  assert temp['blocks'] < 0.7 * temp['none'], temp  # 0.53 measured.


def test_unknown_remat_setting_names_the_allowed_ones():
  with pytest.raises(ConfigError) as err:
    models.create_model('resnet18', 10, remat='sometimes')
  message = str(err.value)
  assert "config.model.remat='sometimes'" in message
  for allowed in ('none', 'blocks', 'nothing_saveable', 'dots_with_no_batch_dims_saveable'):
    assert allowed in message
  # A factory of policies is not a policy: refused too.
  with pytest.raises(ConfigError, match='save_only_these_names'):
    models.create_model('bit_r50x1', 10, remat='save_only_these_names')


def test_remat_is_a_config_option_of_the_residual_models_only():
  config = config_lib.base_config()
  config.model.name, config.model.remat = 'resnet50', 'blocks'
  config_lib.validate(config, num_devices=1)
  build = lambda: train_state.build_models(tasks.build(config), num_classes=10,
                                           image_size=32, in_channels=3)['model']
  model = nnx.eval_shape(build)
  assert model.remat == 'blocks'
  config.model.remat = 'sometimes'
  with pytest.raises(ConfigError, match='remat'):
    build()
  config.model.name = 'convnet'
  with pytest.raises(ConfigError, match="config.model.remat is not an option of model "
                                        "'convnet'"):
    config_lib.validate(config, num_devices=1)


def test_remat_lowers_for_cuda_and_tpu():
  """The rematerialised step exports for GPUs and TPUs (the whole loop step's lowering is
  tests/test_accelerator_lowering.py's), its recomputation fenced by optimisation barriers,
  which XLA:GPU and TPU keep until after scheduling."""
  model = nnx.eval_shape(lambda: FourBlockBasic(10, width=8, remat='blocks', rngs=_rngs()))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  specs = (nnx.to_pure_dict(params), nnx.to_pure_dict(rest),
           jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.float32),
           jax.ShapeDtypeStruct((4,), jnp.int32))
  exported = jax.export.export(jax.jit(_step(graphdef, compile_for_cpu=False)),
                               platforms=('cuda', 'tpu'))(*specs)
  # One barrier per rematerialised block (four here), in the backward pass.
  assert exported.mlir_module().count('stablehlo.optimization_barrier') >= 4
