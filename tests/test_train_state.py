"""The training state's own semantics: EMA of weights and BatchNorm statistics with its
warm-up, and BatchNorm statistics under gradient accumulation (once per update)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vision_jax import config as config_lib
from vision_jax import steps
from vision_jax import tasks
from vision_jax import train_state as ts
from vision_jax.data.preprocess import normalize
from vision_jax.models import layers


class _NormThenLinear(nnx.Module):
  """BatchNorm straight on the (normalised) pixels, then a linear head: its running
  statistics are statistics of the input batch, which the test can compute."""

  def __init__(self, rngs: nnx.Rngs):
    self.bn = layers.BatchNorm(1, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x, train: bool = False):
    x = self.bn(x, use_running_average=not train)
    return self.head(x.reshape(x.shape[0], -1))


def _state(tx, ema_decay: float = 0.0):
  return ts.from_model(_NormThenLinear(nnx.Rngs(0)), tx, schedule=lambda s: 0.1,
                       ema_decay=ema_decay)


def _step(structure, **kwargs):
  task = tasks.build(config_lib.base_config())
  return jax.jit(steps.make_train_step(task, structure, mean=(0.5,), std=(0.5,), **kwargs))


def _batches(n: int, size: int = 8):
  rng = np.random.default_rng(0)
  return [{'image': jnp.asarray(rng.integers(0, 256, (size, 4, 4, 1)), jnp.uint8),
           'label': jnp.asarray(rng.integers(0, 3, size), jnp.int32)} for _ in range(n)]


def test_ema_averages_weights_and_batch_norm_statistics_with_warm_up():
  tx, decay = optax.sgd(0.1), 0.9
  structure, state = _state(tx, ema_decay=decay)
  step = _step(structure)
  part = state.parts['model']
  want = jax.tree.map(np.asarray, {'params': part.params, 'rest': part.rest})
  for t, batch in enumerate(_batches(4)):
    state, _ = step(state, batch)
    part = state.parts['model']
    d = min(decay, (1 + t) / (10 + t))  # The warm-up: 0.1, 0.18, 0.25, 0.31 < 0.9.
    now = {'params': part.params, 'rest': part.rest}
    want = jax.tree.map(lambda e, x: d * e + (1 - d) * np.asarray(x) if
                        np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x),
                        want, now)
  np.testing.assert_allclose(part.ema['params']['head']['kernel'],
                             want['params']['head']['kernel'], rtol=1e-5, atol=1e-7)
  for stat in ('mean', 'var'):  # BatchNorm statistics are averaged too, not taken raw.
    np.testing.assert_allclose(part.ema['rest']['bn'][stat], want['rest']['bn'][stat],
                               rtol=1e-5)
    assert not np.allclose(part.ema['rest']['bn'][stat], part.rest['bn'][stat])
  params, rest = part.eval_variables()
  assert params is part.ema['params'] and rest is part.ema['rest']


def test_update_ema_leaves_integer_and_key_leaves_alone():
  ema = {'params': {'w': jnp.zeros(2)}, 'rest': {'count': jnp.uint32(3),
                                                 'key': jax.random.key(0)}}
  new = ts.update_ema(ema, {'w': jnp.ones(2)}, {'count': jnp.uint32(7),
                                                'key': jax.random.key(1)},
                      jnp.int32(1000), 0.5)
  np.testing.assert_allclose(new['params']['w'], 0.5)  # Past the warm-up: the decay.
  assert int(new['rest']['count']) == 7
  assert jax.random.key_data(new['rest']['key']).tolist() == jax.random.key_data(
      jax.random.key(1)).tolist()


@pytest.mark.parametrize('k', [2, 4])
def test_batch_norm_statistics_advance_once_per_update_under_accumulation(k):
  """new = m * old + (1 - m) * (mean over the k micro-batches of their statistics);
  micro-batch j holds examples j, j + k, ... (optim.accumulate_gradients)."""
  tx = optax.sgd(0.1)
  structure, state = _state(tx)
  step = _step(structure, accum_steps=k)
  batch = _batches(1)[0]
  new, _ = step(state, batch)
  x = np.asarray(normalize(batch['image'], (0.5,), (0.5,)), np.float64)
  micro = [x[j::k] for j in range(k)]
  mean = np.mean([m.mean() for m in micro])
  var = np.mean([(m * m).mean() - m.mean() ** 2 for m in micro])
  bn = new.parts['model'].rest['bn']
  np.testing.assert_allclose(bn['mean'], [0.9 * 0 + 0.1 * mean], rtol=1e-5)
  np.testing.assert_allclose(bn['var'], [0.9 * 1 + 0.1 * var], rtol=1e-5)
  # The mean of the micro-batch means is the batch mean: the same as without accumulation.
  one = _step(structure)
  np.testing.assert_allclose(bn['mean'], one(state, batch)[0].parts['model'].rest['bn']['mean'],
                             rtol=1e-5)
