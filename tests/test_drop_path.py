"""Stochastic depth (`config.model.drop_path_rate`) in the ResNets and BiT."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vision_jax.errors import ConfigError
from vision_jax.models import bit, resnet


def _leaves(tree):
  return jax.tree.leaves(tree)


def test_rates_rise_linearly_over_the_blocks_as_timm():
  model = nnx.eval_shape(lambda: resnet.ResNet50(10, width=8, drop_path_rate=0.05,
                                                 rngs=nnx.Rngs(0)))
  rates = [0.0 if b.drop_path is None else b.drop_path.rate for b in model.blocks]
  np.testing.assert_allclose(rates, [0.05 * i / 15 for i in range(16)])  # 16 bottlenecks.
  assert model.blocks[0].drop_path is None  # Rate 0: no module, no RNG state.


def test_rate_zero_is_the_model_without_it_and_the_rate_leaves_the_initialisation():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  plain = resnet.CifarResNet18(10, width=4, rngs=nnx.Rngs(0))  # drop_path_rate=0.0.
  dropped = resnet.CifarResNet18(10, width=4, drop_path_rate=0.5, rngs=nnx.Rngs(0))
  assert all(b.drop_path is None for b in plain.blocks)  # No module, no RNG state.
  for a, c in zip(_leaves(nnx.state(plain, nnx.Param)), _leaves(nnx.state(dropped, nnx.Param))):
    np.testing.assert_array_equal(a, c)  # The rate leaves the initialisation alone.
  np.testing.assert_array_equal(plain(x), dropped(x))  # Eval: identity, whatever the rate.
  first, second = dropped(x, train=True), dropped(x, train=True)  # The stream advances.
  assert not np.allclose(first, second) and not np.allclose(first, plain(x, train=True))
  again = resnet.CifarResNet18(10, width=4, drop_path_rate=0.5, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(again(x, train=True), first)  # Same seed: same draws.


@pytest.mark.parametrize('block_cls', [resnet.BasicBlock, resnet.Bottleneck])
def test_a_block_keeps_or_drops_each_examples_branch_with_survival_scaling(block_cls):
  rngs = nnx.Rngs(3)
  cin = 8 * block_cls.expansion
  block = block_cls(cin, 8, 1, zero_init_residual=False, dtype=jnp.float32,
                    kernels=resnet.ops.XLA, rngs=rngs)
  resnet.add_drop_path([block], 0.0, rngs)
  assert block.drop_path is None
  block.drop_path = resnet.DropPath(0.4, rngs)
  x = jax.random.normal(jax.random.key(1), (32, 4, 4, cin))
  key = nnx.clone(block.drop_path.rngs)()  # The draw the next call makes.
  kept = np.asarray(jax.random.bernoulli(key, 0.6, (32, 1, 1, 1)))
  reference = nnx.clone(block)
  reference.drop_path = None
  y = _branch(reference, x)  # The plain residual branch (batch statistics).
  out = np.asarray(block(x, train=True))
  # relu(shortcut + kept * y / (1 - rate)), the shortcut being x itself here.
  np.testing.assert_allclose(out, jax.nn.relu(x + jnp.where(kept, y / 0.6, 0.0)),
                             rtol=1e-5, atol=1e-5)
  assert 0 < kept.sum() < 32  # Both cases happened.
  dropped = ~kept[:, 0, 0, 0]
  np.testing.assert_array_equal(out[dropped], np.asarray(jax.nn.relu(x))[dropped])
  np.testing.assert_array_equal(block(x, train=False), reference(x, train=False))


def _branch(block, x):
  """The residual branch of a BasicBlock or Bottleneck in train mode (batch statistics)."""
  ura = False
  if isinstance(block, resnet.BasicBlock):
    y = nnx.relu(block.bn1(block.conv1(x), use_running_average=ura))
    return block.bn2(block.conv2(y), use_running_average=ura)
  y = nnx.relu(block.bn1(block.conv1(x), use_running_average=ura))
  y = nnx.relu(block.bn2(block.conv2(y), use_running_average=ura))
  return block.bn3(block.conv3(y), use_running_average=ura)


class _TinyBiT(bit.BiTResNet):
  STAGES, WIDTH_FACTOR = (1, 1), 1


def test_bit_drops_paths_in_training_only():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  plain = _TinyBiT(5, rngs=nnx.Rngs(0))
  dropped = _TinyBiT(5, drop_path_rate=0.5, rngs=nnx.Rngs(0))
  dropped.head.kernel[...] = plain.head.kernel[...] = jnp.ones_like(plain.head.kernel[...])
  np.testing.assert_array_equal(plain(x, train=True), plain(x))  # GroupNorm: no difference.
  np.testing.assert_array_equal(plain(x), dropped(x))
  outs = [np.asarray(dropped(x, train=True)) for _ in range(3)]
  assert any(not np.allclose(outs[0], o) for o in outs[1:])


def test_a_rate_outside_0_1_is_a_config_error():
  with pytest.raises(ConfigError, match=r'config\.model\.drop_path_rate=1\.0'):
    resnet.CifarResNet18(10, width=4, drop_path_rate=1.0, rngs=nnx.Rngs(0))
