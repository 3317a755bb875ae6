"""The BiT .npz converter: every tensor of the authors' layout lands on our parameter."""
import jax
import numpy as np
import pytest
from flax import nnx

from vision_jax import bit_weights, checkpoint, models, optim
from vision_jax.errors import UserError


def _our_params(model: str) -> dict:
  abstract = nnx.eval_shape(lambda: models.create_model(model, 21843))
  params = nnx.split(abstract, nnx.Param, ...)[1]
  return {optim.param_path(p): x.shape
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize('model', ['bit_r50x1', 'bit_r101x1'])
def test_name_map_covers_every_parameter_once(model):
  names = bit_weights.name_map(model)
  assert set(names) == set(_our_params(model))
  assert len(set(names.values())) == len(names)  # No npz tensor used twice.


def test_npz_round_trip_lands_each_tensor_where_it_belongs(tmp_path):
  ours = _our_params('bit_r50x1')
  rng = np.random.default_rng(0)
  npz, expected = {}, {}
  for path, theirs in bit_weights.name_map('bit_r50x1').items():
    shape = ours[path]
    value = rng.standard_normal(shape).astype(np.float32)
    expected[path] = value
    if path == 'head/kernel':
      value = value.reshape(1, 1, *shape)  # The authors' head is a 1x1 conv.
    npz[theirs] = value
  np.savez(tmp_path / 'BiT-M-R50x1.npz', **npz)
  with np.load(tmp_path / 'BiT-M-R50x1.npz') as f:
    state = bit_weights.convert(dict(f), 'bit_r50x1')
  bit_weights.save(state, str(tmp_path / 'converted'), 'BiT-M-R50x1.npz')
  step, restored = checkpoint.read_state(str(tmp_path / 'converted'))
  assert step == 0
  flat = {optim.param_path(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(restored['params'])[0]}
  assert flat.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(flat[path], value, err_msg=path)


def test_wrong_file_is_a_clear_error():
  with pytest.raises(UserError, match='lacks .* tensors that bit_r50x1 needs'):
    bit_weights.convert({'resnet/root_block/standardized_conv2d/kernel': np.zeros(1)},
                        'bit_r50x1')
  with pytest.raises(UserError, match='not a BiT model'):
    bit_weights.name_map('resnet50')
